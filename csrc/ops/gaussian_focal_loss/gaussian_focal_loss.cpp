// Schemas, argument checks and Meta kernels of detbench.gaussian_focal_loss and its backward.
#include "ops/gaussian_focal_loss/gaussian_focal_loss.h"

#include <cfloat>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

constexpr const char* kOp = "gaussian_focal_loss";

}  // namespace

GaussianFocalReduction gaussian_focal_loss_check(const at::Tensor& pred, const at::Tensor& target, double alpha,
                                         double gamma, double pos_weight, double neg_weight,
                                         c10::string_view reduction,
                                         std::optional<double> avg_factor) {
  const auto dtype = pred.scalar_type();
  DETBENCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble, kOp,
                 "pred must be float16, bfloat16, float32 or float64, got ", dtype);
  DETBENCH_CHECK(target.scalar_type() == dtype, kOp, "target must have the same dtype as pred (", dtype, "), got ",
                 target.scalar_type());
  DETBENCH_CHECK(target.sym_sizes() == pred.sym_sizes(), kOp, "target must have the same shape as pred (",
                 pred.sym_sizes(), "), got ", target.sym_sizes());
  DETBENCH_CHECK(target.device() == pred.device(), kOp, "target must be on the same device as pred (", pred.device(),
                 "), got ", target.device());
  DETBENCH_CHECK(std::isfinite(alpha) && std::isfinite(gamma), kOp, "alpha and gamma must be finite, got ", alpha,
                 " and ", gamma);
  DETBENCH_CHECK(std::isfinite(pos_weight) && std::isfinite(neg_weight), kOp,
                 "pos_weight and neg_weight must be finite, got ", pos_weight, " and ", neg_weight);
  GaussianFocalReduction r;
  if (reduction == "none") {
    r = GaussianFocalReduction::kNone;
  } else if (reduction == "mean") {
    r = GaussianFocalReduction::kMean;
  } else if (reduction == "sum") {
    r = GaussianFocalReduction::kSum;
  } else {
    TORCH_CHECK(false, "detbench.", kOp, ": reduction must be 'none', 'mean' or 'sum', got '", std::string(reduction),
                "'");
  }
  DETBENCH_CHECK(!(avg_factor.has_value() && r == GaussianFocalReduction::kSum), kOp,
                 "avg_factor can not be used with reduction='sum' (as in mmdet)");
  return r;
}

at::Tensor gaussian_focal_loss_allocate(const at::Tensor& pred, GaussianFocalReduction reduction) {
  if (reduction == GaussianFocalReduction::kNone) {
    return at::empty_symint(pred.sym_sizes(), pred.options().memory_format(at::MemoryFormat::Contiguous));
  }
  return at::empty({}, pred.options());
}

double gaussian_focal_loss_divisor(int64_t numel, GaussianFocalReduction reduction, std::optional<double> avg_factor) {
  if (reduction != GaussianFocalReduction::kMean) {
    return 1.0;
  }
  // mmdet: loss.sum() / (avg_factor + torch.finfo(torch.float32).eps); loss.mean() without it.
  return avg_factor.has_value() ? *avg_factor + double(FLT_EPSILON) : double(numel);
}

GaussianFocalReduction gaussian_focal_loss_backward_check(const at::Tensor& grad, const at::Tensor& pred,
                                                  const at::Tensor& target, double alpha, double gamma,
                                                  double pos_weight, double neg_weight, c10::string_view reduction, std::optional<double> avg_factor) {
  const GaussianFocalReduction r = gaussian_focal_loss_check(pred, target, alpha, gamma, pos_weight, neg_weight, reduction, avg_factor);
  if (r == GaussianFocalReduction::kNone) {
    DETBENCH_CHECK(grad.sym_sizes() == pred.sym_sizes(), kOp, "grad must have the same shape as pred (",
                   pred.sym_sizes(), "), got ", grad.sym_sizes());
  } else {
    DETBENCH_CHECK(grad.dim() == 0, kOp, "grad must be 0-dim for reduction='", std::string(reduction), "', got ",
                   grad.sym_sizes());
  }
  DETBENCH_CHECK(grad.scalar_type() == pred.scalar_type(), kOp, "grad must have the same dtype as pred (",
                 pred.scalar_type(), "), got ", grad.scalar_type());
  DETBENCH_CHECK(grad.device() == pred.device(), kOp, "grad must be on the same device as pred (", pred.device(),
                 "), got ", grad.device());
  return r;
}

namespace {

at::Tensor forward_meta(const at::Tensor& pred, const at::Tensor& target, double alpha, double gamma,
                        double pos_weight, double neg_weight, c10::string_view reduction,
                        std::optional<double> avg_factor) {
  return gaussian_focal_loss_allocate(pred,
                                      gaussian_focal_loss_check(pred, target, alpha, gamma, pos_weight, neg_weight, reduction, avg_factor));
}

at::Tensor backward_meta(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target, double alpha,
                         double gamma, double pos_weight, double neg_weight, c10::string_view reduction,
                         std::optional<double> avg_factor) {
  gaussian_focal_loss_backward_check(grad, pred, target, alpha, gamma, pos_weight, neg_weight, reduction, avg_factor);
  return at::empty_symint(pred.sym_sizes(), pred.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def(
      "gaussian_focal_loss(Tensor pred, Tensor target, float alpha=2.0, float gamma=4.0, float pos_weight=1.0, "
      "float neg_weight=1.0, str reduction='mean', float? avg_factor=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "gaussian_focal_loss_backward(Tensor grad, Tensor pred, Tensor target, float alpha, float gamma, "
      "float pos_weight, float neg_weight, str reduction, float? avg_factor) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("gaussian_focal_loss", &forward_meta);
  m.impl("gaussian_focal_loss_backward", &backward_meta);
}

}  // namespace detbench
