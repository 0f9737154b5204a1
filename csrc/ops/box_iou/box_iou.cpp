// Schema, argument checks and Meta kernel of detbench.box_iou.
#include "ops/box_iou/box_iou.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

constexpr const char* kOp = "box_iou";

void check_boxes(const char* arg, const char* shape, const at::Tensor& boxes) {
  DETBENCH_CHECK((boxes.dim() == 2 || boxes.dim() == 3) && boxes.sym_size(-1) == 4, kOp, arg,
                 " must have shape ", shape, ", got ", boxes.sym_sizes());
  const auto dtype = boxes.scalar_type();
  DETBENCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble,
                 kOp, arg, " must be float16, bfloat16, float32 or float64, got ", dtype);
}

}  // namespace

at::Tensor box_iou_allocate_output(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes("boxes1", "[N, 4] or [B, N, 4]", boxes1);
  check_boxes("boxes2", "[M, 4] or [B, M, 4]", boxes2);
  DETBENCH_CHECK(boxes2.dim() == boxes1.dim(), kOp, "boxes2 must have as many dimensions as boxes1 (",
                 boxes1.dim(), "), got shape ", boxes2.sym_sizes());
  if (boxes1.dim() == 3) {
    DETBENCH_CHECK(boxes2.sym_size(0) == boxes1.sym_size(0), kOp,
                   "boxes2 must have the same batch size as boxes1 (", boxes1.sym_size(0), "), got shape ",
                   boxes2.sym_sizes());
  }
  DETBENCH_CHECK(boxes2.device() == boxes1.device(), kOp, "boxes2 must be on the same device as boxes1 (",
                 boxes1.device(), "), got ", boxes2.device());
  DETBENCH_CHECK(boxes2.scalar_type() == boxes1.scalar_type(), kOp, "boxes2 must have the same dtype as boxes1 (",
                 boxes1.scalar_type(), "), got ", boxes2.scalar_type());

  c10::SymDimVector shape(boxes1.sym_sizes().begin(), boxes1.sym_sizes().end() - 1);  // [B,] N
  shape.push_back(boxes2.sym_size(-2));
  const auto dtype = boxes1.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return at::empty_symint(shape, boxes1.options().dtype(dtype));
}

void box_iou_nonfinite_error(const char* arg, const at::Tensor& boxes, int64_t index) {
  if (boxes.dim() == 3) {
    const int64_t n = boxes.size(1);
    TORCH_CHECK(false, "detbench.", kOp, ": ", arg, " has a non-finite coordinate (NaN or inf) at box ",
                index % n, " of batch ", index / n);
  }
  TORCH_CHECK(false, "detbench.", kOp, ": ", arg, " has a non-finite coordinate (NaN or inf) at box ", index);
}

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor", {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("box_iou", &box_iou_allocate_output);
}

}  // namespace detbench
