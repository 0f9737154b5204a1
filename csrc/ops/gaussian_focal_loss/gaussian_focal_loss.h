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
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/string_view.h>

namespace detbench {

enum class GaussianFocalReduction : int { kNone = 0, kMean = 1, kSum = 2 };

template <typename T>
struct GaussianFocalParams {
  T alpha, gamma, pos_weight, neg_weight;
  // Whether an element may evaluate only the term its target selects (see gaussian_focal_term).
  bool one_term;
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

// factor * d/dx x^e = factor * e * x^(e - 1); exactly 0 for e == 0, whatever the factor (torch's
// pow backward masks it, so mmdet's gradient has no NaN there even where log(pred) is NaN).
template <typename T>
C10_HOST_DEVICE inline T focal_times_dpow(T factor, T x, T e) {
  if (e == T(0)) return T(0);
  if (e == T(2)) return factor * (T(2) * x);
  if (e == T(1)) return factor;
  return factor * (e * std::pow(x, e - T(1)));
}

// a / b for the two divisions of the one-term path, divisors of magnitude in [1e-12, 1]: on the GPU
// in float32 the 2-ulp division (__fdividef: a reciprocal and a multiply, exact enough there)
// instead of IEEE division's ~10 instructions and slow-path branch; the loss is
// instruction-bound on the GPU.
template <typename T>
C10_HOST_DEVICE inline T focal_div(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, float>) {
    return __fdividef(a, b);
  }
#endif
  return a / b;
}

template <typename T>
C10_HOST_DEVICE inline T focal_eps() {
  return T(1e-12);
}

// The one-term shortcut is exact when the dropped term is finite for every pred in [0, 1], so
// that mmdet's `term * 0` is a zero: alpha = 0 or >= 1 (else (1 - p)^(alpha - 1) in the gradient
// is infinite at p = 1), gamma > 0 (else (1 - 1)^gamma = 1 keeps the negative term at positives).
// The weights are finite (checked).
template <typename T>
GaussianFocalParams<T> gaussian_focal_params(double alpha, double gamma, double pos_weight, double neg_weight) {
  const bool one_term = (alpha == 0 || alpha >= 1) && gamma > 0;
  return {T(alpha), T(gamma), T(pos_weight), T(neg_weight), one_term};
}

// log(1 - p + eps), see the header comment.
template <typename T>
C10_HOST_DEVICE inline T focal_log_one_minus(T p) {
  return p < T(0.5) ? std::log1p(focal_eps<T>() - p) : std::log((T(1) - p) + focal_eps<T>());
}

// mmdet's two terms, both evaluated (the general case: a dropped term may be inf or NaN, and
// 0 * inf must give mmdet's NaN).
template <typename T>
C10_HOST_DEVICE inline T gaussian_focal_value_both(T p, T t, const GaussianFocalParams<T>& q) {
  const T pos = t == T(1) ? T(1) : T(0);
  const T neg_weights = focal_pow(T(1) - t, q.gamma);
  const T pos_loss = -std::log(p + focal_eps<T>()) * focal_pow(T(1) - p, q.alpha) * pos;
  const T neg_loss = -focal_log_one_minus(p) * focal_pow(p, q.alpha) * neg_weights;
  return q.pos_weight * pos_loss + q.neg_weight * neg_loss;
}

template <typename T>
C10_HOST_DEVICE inline T gaussian_focal_grad_both(T p, T t, const GaussianFocalParams<T>& q) {
  const T eps = focal_eps<T>();
  const T pos = t == T(1) ? T(1) : T(0);
  const T neg_weights = focal_pow(T(1) - t, q.gamma);
  const T log_p = std::log(p + eps);
  const T log_q = focal_log_one_minus(p);
  // d/dp [-log(p + eps) (1 - p)^a] and d/dp [-log(1 - p + eps) p^a]
  const T d_pos = -focal_pow(T(1) - p, q.alpha) / (p + eps) + focal_times_dpow(log_p, T(1) - p, q.alpha);
  const T d_neg = focal_pow(p, q.alpha) / (T(1) - p + eps) - focal_times_dpow(log_q, p, q.alpha);
  return q.pos_weight * d_pos * pos + q.neg_weight * d_neg * neg_weights;
}

// log(den) of the one-term formula for float16/bfloat16 inputs on the GPU (11/8-bit significands,
// computed in float32). u = den - 1 is passed computed without rounding (eps - p for a negative,
// (p - 1) + eps for a positive near 1); log1p(u) by its series where |u| < 1/32 (truncation below
// 2^-25 relative), else the hardware log2 (__logf: absolute error 2^-21.4 on [0.5, 2], 3 ulp
// elsewhere; relative error below 1.2e-5 where |log(den)| >= 1/32, 100x inside float16's rounding).
// ~10 instructions instead of logf's integer range reduction and the log1p correction's division:
// the half-precision loss ran at float32's speed, issue-bound (ncu: ALU pipe 70 % busy).
template <typename T>
C10_HOST_DEVICE inline T focal_fast_log_den(T den, T u) {
  const T series = u * (T(1) + u * (T(-1) / 2 + u * (T(1) / 3 + u * (T(-1) / 4 + u * (T(1) / 5)))));
#if defined(__CUDA_ARCH__)
  // __logf's log2 with subnormals flushed: den >= eps is never subnormal, and __logf's guard for
  // them (a compare, a scale and an add around lg2) was 3 of the ~35 instructions per element.
  static_assert(std::is_same_v<T, float>, "the hardware log is float32");
  T log2_den;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(log2_den) : "f"(den));
  const T hardware = log2_den * T(0.693147180559945309);
#else
  const T hardware = std::log(den);
#endif
  return std::abs(u) < T(1) / 32 ? series : hardware;
}

// The term an element's target selects, in the common form -log(den) * base^alpha * weight:
//   positive (t == 1): den = p + eps,         base = 1 - p, weight = pos_weight
//   negative:          den = (1 - p) + eps,   base = p,     weight = neg_weight * (1 - t)^gamma
// with one log, chosen by selects rather than branches (a warp's elements mix both kinds, and
// the negatives mix p < 0.5 and >= 0.5). log1p(eps - p) for a negative with p < 0.5 is
// log(den) * (eps - p) / (den - 1) (den - 1 is exact, and log(u) / (u - 1) varies slowly, so
// the rounding of den costs nothing): a log1p accurate to a few ulp without a second function.
// The coefficient is folded into the weight (one select for both: the loss is instruction-bound
// on the GPU); the gradient's sign for a positive is folded into pos_coef (see the gradient).
template <typename T>
struct GaussianFocalTerm {
  T log_den, den, base, weight;
};

// kFastLog: focal_fast_log_den (half-precision inputs on the GPU). pos_coef: a positive's weight.
template <bool kFastLog, typename T>
C10_HOST_DEVICE inline GaussianFocalTerm<T> gaussian_focal_term(T p, T t, const GaussianFocalParams<T>& q,
                                                                T pos_coef) {
  const T eps = focal_eps<T>();
  const bool positive = t == T(1);
  const T den = positive ? p + eps : (T(1) - p) + eps;
  const T x = eps - p;
  T log_term;
  if constexpr (kFastLog) {
    log_term = focal_fast_log_den(den, positive ? (p - T(1)) + eps : x);
  } else {
    const T log_den = std::log(den);
    // a select, not a branch (den - 1 may be 0 where it is not taken: the quotient is discarded)
    const T log1p_den = den == T(1) ? x : log_den * focal_div(x, den - T(1));
    log_term = !positive && p < T(0.5) ? log1p_den : log_den;
  }
  return {log_term, den, positive ? T(1) - p : p,
          positive ? pos_coef : q.neg_weight * focal_pow(T(1) - t, q.gamma)};
}

// Where only the selected term may be evaluated: q.one_term and pred in [0, 1] (always, for a
// clamped sigmoid); the other term is an exact zero there, so the value is the same (its rounding
// may differ from mmdet's by the order of the final products).
template <typename T>
C10_HOST_DEVICE inline bool gaussian_focal_one_term_ok(T p, const GaussianFocalParams<T>& q) {
  return q.one_term & (p >= T(0)) & (p <= T(1));
}

// The one-term value and gradient: branch-free, so that a thread's elements interleave.
template <bool kFastLog = false, typename T>
C10_HOST_DEVICE inline T gaussian_focal_value_one_term(T p, T t, const GaussianFocalParams<T>& q) {
  const GaussianFocalTerm<T> e = gaussian_focal_term<kFastLog>(p, t, q, q.pos_weight);
  return -e.log_den * focal_pow(e.base, q.alpha) * e.weight;
}

// d/dp [-log(den) base^a] = s (base^a / den - log(den) d(base^a)), s = -1 for a positive (den and
// base move in opposite directions to p there): the positive's weight is -pos_weight.
template <bool kFastLog = false, typename T>
C10_HOST_DEVICE inline T gaussian_focal_grad_one_term(T p, T t, const GaussianFocalParams<T>& q) {
  const GaussianFocalTerm<T> e = gaussian_focal_term<kFastLog>(p, t, q, -q.pos_weight);
  const T d = focal_div(focal_pow(e.base, q.alpha), e.den) - focal_times_dpow(e.log_den, e.base, q.alpha);
  return d * e.weight;
}

// mmdet's formula at one element, and d loss / d pred.
template <typename T>
C10_HOST_DEVICE inline T gaussian_focal_value(T p, T t, const GaussianFocalParams<T>& q) {
  return gaussian_focal_one_term_ok(p, q) ? gaussian_focal_value_one_term(p, t, q) : gaussian_focal_value_both(p, t, q);
}

template <typename T>
C10_HOST_DEVICE inline T gaussian_focal_grad(T p, T t, const GaussianFocalParams<T>& q) {
  return gaussian_focal_one_term_ok(p, q) ? gaussian_focal_grad_one_term(p, t, q) : gaussian_focal_grad_both(p, t, q);
}

// Parses 'none' | 'mean' | 'sum' and checks the arguments (metadata only, never a sync).
GaussianFocalReduction gaussian_focal_loss_check(const at::Tensor& pred, const at::Tensor& target, double alpha,
                                         double gamma, double pos_weight, double neg_weight,
                                         c10::string_view reduction,
                                         std::optional<double> avg_factor);

// The loss: [same shape as pred] for 'none', else a 0-dim tensor; pred's dtype. Uninitialized.
at::Tensor gaussian_focal_loss_allocate(const at::Tensor& pred, GaussianFocalReduction reduction);

// What the reduced sum is divided by: numel (mean), avg_factor + float32 eps (mean with
// avg_factor), 1 (sum and none).
double gaussian_focal_loss_divisor(int64_t numel, GaussianFocalReduction reduction, std::optional<double> avg_factor);

// The backward's checks: grad is 0-dim ('mean'/'sum') or shaped like pred ('none').
GaussianFocalReduction gaussian_focal_loss_backward_check(const at::Tensor& grad, const at::Tensor& pred,
                                                  const at::Tensor& target, double alpha, double gamma,
                                                  double pos_weight, double neg_weight, c10::string_view reduction, std::optional<double> avg_factor);

}  // namespace detbench
