// detbench.gaussian_focal_loss and its backward: the element formula and its derivative
// (shared by the CPU and CUDA kernels), the reduction, and the argument checks.
//
// The formula is mmdet's gaussian_focal_loss (mmdet 3.x, mmdet/models/losses/
// gaussian_focal_loss.py), with eps = 1e-12:
//   pos  = (target == 1)
//   loss = pos_weight * (-log(pred + eps) * (1 - pred)^alpha * pos)
//        + neg_weight * (-log(1 - pred + eps) * pred^alpha * (1 - target)^gamma)
// reduced as mmdet's weight_reduce_loss (mmdet/models/losses/utils.py): 'none', 'mean'
// (sum / numel, or sum / (avg_factor + float32 eps) with avg_factor), 'sum' (no avg_factor).
// Computed in float32 for float16/bfloat16/float32 inputs (float64 for float64).
// log(1 - pred + eps) is evaluated as log1p(eps - pred) for pred < 0.5, which keeps its
// relative accuracy for small pred where 1 - pred would round (for pred >= 0.5, 1 - pred is exact).
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/string_view.h>

namespace detbench {

enum class FocalReduction : int { kNone = 0, kMean = 1, kSum = 2 };

template <typename T>
struct FocalParams {
  T alpha, gamma, pos_weight, neg_weight;
};

// x^e with the exponents the loss uses by default done by multiplication.
template <typename T>
C10_HOST_DEVICE inline T focal_pow(T x, T e) {
  if (e == T(2)) return x * x;
  if (e == T(4)) {
    const T s = x * x;
    return s * s;
  }
  if (e == T(1)) return x;
  return std::pow(x, e);
}

// d/dx x^e = e * x^(e - 1), and 0 for e == 0 (torch's pow backward).
template <typename T>
C10_HOST_DEVICE inline T focal_dpow(T x, T e) {
  if (e == T(0)) return T(0);
  if (e == T(2)) return T(2) * x;
  if (e == T(1)) return T(1);
  return e * std::pow(x, e - T(1));
}

template <typename T>
C10_HOST_DEVICE inline T focal_eps() {
  return T(1e-12);
}

// log(1 - p + eps), see the header comment.
template <typename T>
C10_HOST_DEVICE inline T focal_log_one_minus(T p) {
  return p < T(0.5) ? std::log1p(focal_eps<T>() - p) : std::log((T(1) - p) + focal_eps<T>());
}

template <typename T>
C10_HOST_DEVICE inline T focal_loss_value(T p, T t, const FocalParams<T>& q) {
  const T pos = t == T(1) ? T(1) : T(0);
  const T neg_weights = focal_pow(T(1) - t, q.gamma);
  const T pos_loss = -std::log(p + focal_eps<T>()) * focal_pow(T(1) - p, q.alpha) * pos;
  const T neg_loss = -focal_log_one_minus(p) * focal_pow(p, q.alpha) * neg_weights;
  return q.pos_weight * pos_loss + q.neg_weight * neg_loss;
}

// d loss / d pred at one element.
template <typename T>
C10_HOST_DEVICE inline T focal_loss_grad(T p, T t, const FocalParams<T>& q) {
  const T eps = focal_eps<T>();
  const T pos = t == T(1) ? T(1) : T(0);
  const T neg_weights = focal_pow(T(1) - t, q.gamma);
  const T log_p = std::log(p + eps);
  const T log_q = focal_log_one_minus(p);
  // d/dp [-log(p + eps) (1 - p)^a] and d/dp [-log(1 - p + eps) p^a]
  const T d_pos = -focal_pow(T(1) - p, q.alpha) / (p + eps) + log_p * focal_dpow(T(1) - p, q.alpha);
  const T d_neg = focal_pow(p, q.alpha) / (T(1) - p + eps) - log_q * focal_dpow(p, q.alpha);
  return q.pos_weight * d_pos * pos + q.neg_weight * d_neg * neg_weights;
}

// Parses 'none' | 'mean' | 'sum' and checks the arguments (metadata only, never a sync).
FocalReduction gaussian_focal_loss_check(const at::Tensor& pred, const at::Tensor& target, double alpha,
                                         double gamma, c10::string_view reduction,
                                         std::optional<double> avg_factor);

// The loss: [same shape as pred] for 'none', else a 0-dim tensor; pred's dtype. Uninitialized.
at::Tensor gaussian_focal_loss_allocate(const at::Tensor& pred, FocalReduction reduction);

// What the reduced sum is divided by: numel (mean), avg_factor + float32 eps (mean with
// avg_factor), 1 (sum and none).
double gaussian_focal_loss_divisor(int64_t numel, FocalReduction reduction, std::optional<double> avg_factor);

// The backward's checks: grad is 0-dim ('mean'/'sum') or shaped like pred ('none').
FocalReduction gaussian_focal_loss_backward_check(const at::Tensor& grad, const at::Tensor& pred,
                                                  const at::Tensor& target, double alpha, double gamma,
                                                  c10::string_view reduction, std::optional<double> avg_factor);

}  // namespace detbench
