// Schema, argument checks and Meta kernel of detbench.grid_anchors.
#include "ops/anchors/anchors.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

constexpr const char* kOp = "grid_anchors";

}  // namespace

std::tuple<at::Tensor, at::Tensor> grid_anchors_allocate(at::TensorList cell_anchors, at::IntArrayRef feature_sizes,
                                                         at::IntArrayRef strides,
                                                         at::OptionalIntArrayRef image_size, double straddle_thresh) {
  const int64_t levels = int64_t(cell_anchors.size());
  DETBENCH_CHECK(levels >= 1 && levels <= kMaxAnchorLevels, kOp, "cell_anchors must hold 1 to ",
                 kMaxAnchorLevels, " levels, got ", levels);
  DETBENCH_CHECK(int64_t(feature_sizes.size()) == 2 * levels, kOp,
                 "feature_sizes must have one (height, width) per level: ", levels, " levels in cell_anchors, got ",
                 feature_sizes.size() / 2.0, " (", feature_sizes, ")");
  DETBENCH_CHECK(int64_t(strides.size()) == 2 * levels, kOp,
                 "strides must have one (stride_y, stride_x) per level: ", levels, " levels in cell_anchors, got ",
                 strides.size() / 2.0, " (", strides, ")");
  const at::Tensor& first = cell_anchors[0];
  int64_t total = 0;
  for (int64_t l = 0; l < levels; ++l) {
    const at::Tensor& c = cell_anchors[l];
    DETBENCH_CHECK(c.dim() == 2 && c.size(1) == 4, kOp, "cell_anchors[", l, "] must have shape [A, 4], got ",
                   c.sizes());
    DETBENCH_CHECK(c.scalar_type() == at::kHalf || c.scalar_type() == at::kBFloat16 ||
                       c.scalar_type() == at::kFloat || c.scalar_type() == at::kDouble,
                   kOp, "cell_anchors[", l, "] must be float16, bfloat16, float32 or float64, got ", c.scalar_type());
    DETBENCH_CHECK(c.scalar_type() == first.scalar_type(), kOp, "cell_anchors[", l,
                   "] must have the dtype of cell_anchors[0] (", first.scalar_type(), "), got ", c.scalar_type());
    DETBENCH_CHECK(c.device() == first.device(), kOp, "cell_anchors[", l, "] must be on the device of cell_anchors[0] (",
                   first.device(), "), got ", c.device());
    DETBENCH_CHECK(feature_sizes[2 * l] >= 0 && feature_sizes[2 * l + 1] >= 0, kOp,
                   "feature_sizes must be >= 0, got (", feature_sizes[2 * l], ", ", feature_sizes[2 * l + 1],
                   ") at level ", l);
    DETBENCH_CHECK(strides[2 * l] >= 0 && strides[2 * l + 1] >= 0, kOp, "strides must be >= 0, got (",
                   strides[2 * l], ", ", strides[2 * l + 1], ") at level ", l);
    total += feature_sizes[2 * l] * feature_sizes[2 * l + 1] * c.size(0);
  }
  DETBENCH_CHECK(!std::isnan(straddle_thresh), kOp, "straddle_thresh must not be NaN");
  const bool masked = straddle_thresh >= 0;
  if (masked) {
    DETBENCH_CHECK(image_size.has_value(), kOp, "image_size (height, width) is required when straddle_thresh >= 0");
  }
  if (image_size.has_value()) {
    DETBENCH_CHECK(image_size->size() == 2, kOp, "image_size must be (height, width), got ", *image_size);
  }
  return {at::empty({total, 4}, first.options()), at::empty({masked ? total : 0}, first.options().dtype(at::kBool))};
}

AnchorLevels anchor_levels(at::TensorList cell_anchors, at::IntArrayRef feature_sizes, at::IntArrayRef strides) {
  AnchorLevels lv{};
  lv.levels = int(cell_anchors.size());
  lv.start[0] = 0;
  int64_t cell_offset = 0;
  for (int l = 0; l < lv.levels; ++l) {
    lv.width[l] = feature_sizes[2 * l + 1];
    lv.count[l] = cell_anchors[l].size(0);
    lv.stride_y[l] = strides[2 * l];
    lv.stride_x[l] = strides[2 * l + 1];
    lv.cell_offset[l] = cell_offset;
    cell_offset += lv.count[l];
    lv.start[l + 1] = lv.start[l] + feature_sizes[2 * l] * feature_sizes[2 * l + 1] * lv.count[l];
  }
  return lv;
}

namespace {

std::tuple<at::Tensor, at::Tensor> grid_anchors_meta(at::TensorList cell_anchors, at::IntArrayRef feature_sizes,
                                                     at::IntArrayRef strides, at::OptionalIntArrayRef image_size,
                                                     double straddle_thresh) {
  return grid_anchors_allocate(cell_anchors, feature_sizes, strides, image_size, straddle_thresh);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def(
      "grid_anchors(Tensor[] cell_anchors, int[] feature_sizes, int[] strides, int[]? image_size, "
      "float straddle_thresh) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("grid_anchors", &grid_anchors_meta);
}

}  // namespace detbench
