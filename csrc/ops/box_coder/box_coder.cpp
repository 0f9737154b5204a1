// Schema, argument checks and Meta kernel of detbench.decode_boxes.
#include "ops/box_coder/box_coder.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

constexpr const char* kOp = "decode_boxes";

bool is_float_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

}  // namespace

at::Tensor decode_boxes_allocate_output(const at::Tensor& deltas, const at::Tensor& boxes, at::ArrayRef<double> weights,
                                        double clip) {
  DETBENCH_CHECK((deltas.dim() == 2 || deltas.dim() == 3) && deltas.sym_size(-1) % 4 == 0, kOp,
                 "deltas must have shape [N, 4 * C] or [B, N, 4 * C], got ", deltas.sym_sizes());
  DETBENCH_CHECK(is_float_dtype(deltas.scalar_type()), kOp,
                 "deltas must be float16, bfloat16, float32 or float64, got ", deltas.scalar_type());
  DETBENCH_CHECK(boxes.dim() >= 2 && boxes.dim() <= deltas.dim() && boxes.sym_size(-1) == 4, kOp,
                 "boxes must have shape [N, 4] or, for deltas [B, N, 4 * C], [B, N, 4], got ", boxes.sym_sizes());
  DETBENCH_CHECK(boxes.sym_size(-2) == deltas.sym_size(-2), kOp, "boxes must have N = ", deltas.sym_size(-2),
                 " rows (as deltas), got shape ", boxes.sym_sizes());
  if (boxes.dim() == 3) {
    DETBENCH_CHECK(boxes.sym_size(0) == deltas.sym_size(0), kOp, "boxes must have batch size ", deltas.sym_size(0),
                   " (as deltas), got shape ", boxes.sym_sizes());
  }
  DETBENCH_CHECK(is_float_dtype(boxes.scalar_type()), kOp,
                 "boxes must be float16, bfloat16, float32 or float64, got ", boxes.scalar_type());
  DETBENCH_CHECK(boxes.device() == deltas.device(), kOp, "boxes must be on the same device as deltas (",
                 deltas.device(), "), got ", boxes.device());
  DETBENCH_CHECK(weights.size() == 4, kOp, "weights must have 4 values (wx, wy, ww, wh), got ", weights.size());
  for (const double w : weights) {
    DETBENCH_CHECK(std::isfinite(w) && w != 0, kOp, "weights must be finite and non-zero, got ", weights);
  }
  DETBENCH_CHECK(!std::isnan(clip), kOp, "clip must not be NaN");
  return at::empty_symint(deltas.sym_sizes(), deltas.options());
}

DecodeShape decode_shape(const at::Tensor& deltas, const at::Tensor& boxes) {
  const int64_t n = deltas.size(-2);
  const int64_t rows = deltas.dim() == 3 ? deltas.size(0) * n : n;
  return {rows, deltas.size(-1) / 4, boxes.dim() == 3 ? rows : n};
}

namespace {

at::Tensor decode_boxes_meta(const at::Tensor& deltas, const at::Tensor& boxes, at::ArrayRef<double> weights,
                             double clip) {
  return decode_boxes_allocate_output(deltas, boxes, weights, clip);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def("decode_boxes(Tensor deltas, Tensor boxes, float[] weights, float clip) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("decode_boxes", &decode_boxes_meta);
}

}  // namespace detbench
