// CPU kernel of detbench.grid_anchors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "detbench.h"
#include "ops/anchors/anchor_math.h"
#include "ops/anchors/anchors.h"

namespace detbench {

namespace {

std::tuple<at::Tensor, at::Tensor> grid_anchors_cpu(at::TensorList cell_anchors, at::IntArrayRef feature_sizes,
                                                    at::IntArrayRef strides, at::OptionalIntArrayRef image_size,
                                                    double straddle_thresh) {
  auto [anchors, visible] = grid_anchors_allocate(cell_anchors, feature_sizes, strides, image_size, straddle_thresh);
  const int64_t n = anchors.size(0);
  if (n == 0) {
    return {anchors, visible};
  }
  const AnchorLevels lv = anchor_levels(cell_anchors, feature_sizes, strides);
  const at::Tensor cells = at::cat(cell_anchors).contiguous();
  const bool masked = visible.numel() > 0;
  const double height = image_size.has_value() ? double((*image_size)[0]) : 0.0;
  const double width = image_size.has_value() ? double((*image_size)[1]) : 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, anchors.scalar_type(), "detbench.grid_anchors", [&] {
    const scalar_t* c = cells.const_data_ptr<scalar_t>();
    scalar_t* out = anchors.mutable_data_ptr<scalar_t>();
    bool* vis = masked ? visible.mutable_data_ptr<bool>() : nullptr;
    at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        grid_anchor<scalar_t>(lv, c, i, out + 4 * i);
        if (vis != nullptr) {
          vis[i] = anchor_visible<scalar_t>(out + 4 * i, height, width, straddle_thresh);
        }
      }
    });
  });
  return {anchors, visible};
}

}  // namespace

TORCH_LIBRARY_IMPL(detbench, CPU, m) {
  m.impl("grid_anchors", &grid_anchors_cpu);
}

}  // namespace detbench
