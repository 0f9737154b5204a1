// Schemas, argument checks and Meta kernels of detbench.sigmoid_focal_loss and
// detbench.sigmoid_focal_loss_backward.
#include "ops/sigmoid_focal_loss/sigmoid_focal_loss.h"

#include <cmath>
#include <string>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

constexpr const char* kOp = "sigmoid_focal_loss";

bool is_loss_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble;
}

}  // namespace

FocalReduction focal_check(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                           c10::string_view reduction) {
  DETBENCH_CHECK(is_loss_dtype(inputs.scalar_type()), kOp, "inputs must be float16, bfloat16, float32 or float64, got ",
                 inputs.scalar_type());
  const bool same = targets.scalar_type() == inputs.scalar_type();
  const bool half_with_float = targets.scalar_type() == at::kFloat &&
                               (inputs.scalar_type() == at::kHalf || inputs.scalar_type() == at::kBFloat16);
  DETBENCH_CHECK(same || half_with_float, kOp, "targets must have the dtype of inputs (", inputs.scalar_type(),
                 "), or float32 for float16/bfloat16 inputs, got ", targets.scalar_type());
  DETBENCH_CHECK(targets.sym_sizes() == inputs.sym_sizes(), kOp, "targets must have the shape of inputs (",
                 inputs.sym_sizes(), "), got ", targets.sym_sizes());
  DETBENCH_CHECK(targets.device() == inputs.device(), kOp, "targets must be on the same device as inputs (",
                 inputs.device(), "), got ", targets.device());
  DETBENCH_CHECK(!std::isnan(alpha) && alpha <= 1.0, kOp,
                 "alpha must be in [0, 1], or negative for no alpha weighting, got ", alpha);
  DETBENCH_CHECK(std::isfinite(gamma) && gamma >= 0.0, kOp, "gamma must be finite and >= 0, got ", gamma);
  if (reduction == "none") {
    return FocalReduction::kNone;
  }
  if (reduction == "mean") {
    return FocalReduction::kMean;
  }
  DETBENCH_CHECK(reduction == "sum", kOp, "reduction must be 'none', 'mean' or 'sum', got '", std::string(reduction),
                 "'");
  return FocalReduction::kSum;
}

at::ScalarType focal_result_dtype(const at::Tensor& inputs, const at::Tensor& targets) {
  return targets.scalar_type() == inputs.scalar_type() ? inputs.scalar_type() : at::kFloat;
}

at::Tensor focal_allocate_output(const at::Tensor& inputs, const at::Tensor& targets, FocalReduction reduction) {
  const auto options = inputs.options().dtype(focal_result_dtype(inputs, targets));
  if (reduction == FocalReduction::kNone) {
    return at::empty_symint(inputs.sym_sizes(), options);
  }
  return at::empty({}, options);
}

void focal_check_grad(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& targets,
                      FocalReduction reduction) {
  const auto dtype = focal_result_dtype(inputs, targets);
  if (reduction == FocalReduction::kNone) {
    DETBENCH_CHECK(grad.sym_sizes() == inputs.sym_sizes(), kOp, "grad must have the shape of inputs (",
                   inputs.sym_sizes(), "), got ", grad.sym_sizes());
  } else {
    DETBENCH_CHECK(grad.dim() == 0, kOp, "grad must be a 0-dim tensor for a reduced loss, got shape ",
                   grad.sym_sizes());
  }
  DETBENCH_CHECK(grad.scalar_type() == dtype, kOp, "grad must have the loss's dtype (", dtype, "), got ",
                 grad.scalar_type());
  DETBENCH_CHECK(grad.device() == inputs.device(), kOp, "grad must be on the same device as inputs (", inputs.device(),
                 "), got ", grad.device());
}

namespace {

at::Tensor focal_meta(const at::Tensor& inputs, const at::Tensor& targets, double alpha, double gamma,
                      c10::string_view reduction) {
  return focal_allocate_output(inputs, targets, focal_check(inputs, targets, alpha, gamma, reduction));
}

at::Tensor focal_backward_meta(const at::Tensor& grad, const at::Tensor& inputs, const at::Tensor& targets,
                               double alpha, double gamma, c10::string_view reduction) {
  focal_check_grad(grad, inputs, targets, focal_check(inputs, targets, alpha, gamma, reduction));
  return at::empty_symint(inputs.sym_sizes(), inputs.options());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def(
      "sigmoid_focal_loss(Tensor inputs, Tensor targets, float alpha=0.25, float gamma=2, str reduction='none') "
      "-> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "sigmoid_focal_loss_backward(Tensor grad, Tensor inputs, Tensor targets, float alpha, float gamma, "
      "str reduction) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("sigmoid_focal_loss", &focal_meta);
  m.impl("sigmoid_focal_loss_backward", &focal_backward_meta);
}

}  // namespace detbench
