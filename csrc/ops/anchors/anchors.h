// detbench.grid_anchors: pieces shared by its schema, Meta kernel and CPU/CUDA kernels.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

namespace detbench {

constexpr int kMaxAnchorLevels = 16;

// Everything a kernel needs about the levels (passed to CUDA kernels by value). Anchor i of the
// output belongs to level l with start[l] <= i < start[l + 1]; within the level, location
// (i - start[l]) / count[l] (row-major over [height, width]) and cell anchor (i - start[l]) % count[l].
struct AnchorLevels {
  int levels;
  int64_t start[kMaxAnchorLevels + 1];
  int64_t width[kMaxAnchorLevels];
  int64_t count[kMaxAnchorLevels];  // cell anchors per location
  int64_t stride_y[kMaxAnchorLevels];
  int64_t stride_x[kMaxAnchorLevels];
  int64_t cell_offset[kMaxAnchorLevels];  // first row of the level's cell anchors in the concatenated table
};

// Checks grid_anchors' arguments (metadata and the host-side integer lists) and returns the
// uninitialized outputs: anchors [N, 4] in the cell anchors' dtype and the visibility mask
// [N] bool ([0] when straddle_thresh < 0).
std::tuple<at::Tensor, at::Tensor> grid_anchors_allocate(at::TensorList cell_anchors, at::IntArrayRef feature_sizes,
                                                         at::IntArrayRef strides,
                                                         at::OptionalIntArrayRef image_size, double straddle_thresh);

AnchorLevels anchor_levels(at::TensorList cell_anchors, at::IntArrayRef feature_sizes, at::IntArrayRef strides);

}  // namespace detbench
