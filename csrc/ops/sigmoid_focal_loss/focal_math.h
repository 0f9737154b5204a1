// The sigmoid focal loss of one element and its derivative: one formula for the CPU and CUDA
// kernels. T is the type computed in: float (float16, bfloat16 and float32 inputs) or double.
//
// torchvision's definition (x: logit, t: target, any real values):
//   p = sigmoid(x), ce = BCE-with-logits(x, t), p_t = p t + (1 - p)(1 - t),
//   loss = a_t ce (1 - p_t)^gamma, a_t = alpha t + (1 - alpha)(1 - t) (1 when alpha < 0).
// Written so that no step overflows or cancels for large |x|: with e = exp(-|x|) in (0, 1],
//   p = 1 / (1 + e) or e / (1 + e), q = 1 - p the other one (never computed as 1 - p),
//   ce = max(x, 0) - x t + log1p(e)     (softplus(x) - x t),
//   m = 1 - p_t = p (1 - t) + q t       (exact for t in {0, 1}, no 1 - (1 - tiny)),
// and the derivative d loss / dx = a_t [ (p - t) m^gamma + gamma ce m^(gamma-1) dm ],
// dm = dm/dx = p q (1 - 2t), with p - t = p (1 - t) - q t (no 1 - (1 - tiny) for t = 1 either). The second term is computed as gamma ce (dm / m) m^gamma, and as 0
// where m == 0 (its limit: ce -> 0 as fast as m there), so m^(gamma-1) never overflows for
// gamma < 1. gamma == 2 (RetinaNet's) is specialized: m * m, no pow.
// Math supplies exp, log1p and a reciprocal: std's by default (float32 and float64 on CUDA); the
// CPU kernels pass a float version that vectorizes (cpu/focal_float_math.h), the CUDA kernels of
// float16/bfloat16 inputs the hardware's (FocalFastMath).
#pragma once

#include <cmath>

#include <c10/macros/Macros.h>

namespace detbench {

enum class FocalReduction { kNone = 0, kMean = 1, kSum = 2 };

template <typename T>
struct FocalParams {
  T alpha;         // used only when use_alpha
  T gamma;
  bool use_alpha;  // alpha >= 0
};

struct FocalStdMath {
  template <typename T>
  C10_HOST_DEVICE static T exp(T v) {
    using std::exp;
    return exp(v);
  }
  template <typename T>
  C10_HOST_DEVICE static T log1p(T v) {
    using std::log1p;
    return log1p(v);
  }
  template <typename T>
  C10_HOST_DEVICE static T recip(T v) {
    return T(1) / v;
  }
};

// For float16/bfloat16 inputs on the GPU (11/8-bit significands, computed in float): exp by the
// hardware exp2 (__expf: 2 + 1.2|y| ulp, below 1e-5 relative for y >= -87; subnormal results
// flush to 0 as in the CPU's FocalFloatMath); log1p(e), e in [0, 1], by its series below 1/32
// (truncation below 2^-25 relative) and the hardware log2 of 1 + e above (__logf: absolute error
// 2^-21.4 on [1, 2], relative below 1.2e-5 where log1p(e) >= 0.03); the reciprocal as __fdividef
// (2 ulp). ~10 instructions where expf, log1pf and IEEE division take ~45: the half-precision
// loss ran no faster than float32's for half the bytes, issue-bound (as gaussian_focal_loss).
struct FocalFastMath {
  template <typename T>
  C10_HOST_DEVICE static T exp(T v) {
#if defined(__CUDA_ARCH__)
    return __expf(v);
#else
    return std::exp(v);
#endif
  }
  template <typename T>
  C10_HOST_DEVICE static T log1p(T e) {
    const T series = e * (T(1) + e * (T(-1) / 2 + e * (T(1) / 3 + e * (T(-1) / 4 + e * (T(1) / 5)))));
#if defined(__CUDA_ARCH__)
    const T hardware = __logf(T(1) + e);
#else
    const T hardware = std::log1p(e);
#endif
    return e < T(1) / 32 ? series : hardware;  // NaN takes the hardware log: NaN
  }
  template <typename T>
  C10_HOST_DEVICE static T recip(T v) {
#if defined(__CUDA_ARCH__)
    return __fdividef(T(1), v);
#else
    return T(1) / v;
#endif
  }
};

template <typename T>
struct FocalTerms {
  T p, q, ce, m;
};

template <typename T, typename Math = FocalStdMath>
C10_HOST_DEVICE inline FocalTerms<T> focal_terms(T x, T t) {
  const T e = Math::exp(-(x < T(0) ? -x : x));
  const T inv = Math::recip(T(1) + e);
  const T small = e * inv;  // sigmoid(-|x|)
  const bool nonneg = x >= T(0);
  FocalTerms<T> r;
  r.p = nonneg ? inv : small;
  r.q = nonneg ? small : inv;
  r.ce = (x > T(0) ? x : T(0)) - x * t + Math::log1p(e);
  r.m = r.p * (T(1) - t) + r.q * t;
  return r;
}

template <typename T>
C10_HOST_DEVICE inline T focal_alpha_t(const FocalParams<T>& fp, T t) {
  const T weighted = fp.alpha * t + (T(1) - fp.alpha) * (T(1) - t);
  return fp.use_alpha ? weighted : T(1);  // a select, not a branch: CPU loops stay vectorizable
}

template <typename T, bool kGamma2>
C10_HOST_DEVICE inline T focal_modulator(T m, T gamma) {
  using std::pow;
  if constexpr (kGamma2) {
    return m * m;
  } else {
    return pow(m, gamma);
  }
}

template <typename T, bool kGamma2, typename Math = FocalStdMath>
C10_HOST_DEVICE inline T focal_loss_value(T x, T t, const FocalParams<T>& fp) {
  const FocalTerms<T> f = focal_terms<T, Math>(x, t);
  return focal_alpha_t(fp, t) * f.ce * focal_modulator<T, kGamma2>(f.m, fp.gamma);
}

template <typename T, bool kGamma2, typename Math = FocalStdMath>
C10_HOST_DEVICE inline T focal_loss_grad(T x, T t, const FocalParams<T>& fp) {
  const FocalTerms<T> f = focal_terms<T, Math>(x, t);
  const T mod = focal_modulator<T, kGamma2>(f.m, fp.gamma);
  const T dm = f.p * f.q * (T(1) - T(2) * t);
  T second;
  if constexpr (kGamma2) {
    second = T(2) * (f.ce * (f.m * dm));  // 2 ce alone overflows float for |x| > 1.7e38 (then inf * 0)
  } else {
    second = f.m != T(0) ? fp.gamma * (f.ce * (dm / f.m)) * mod : T(0);  // |dm / m| <= 1; ce / m may overflow
  }
  return focal_alpha_t(fp, t) * ((f.p * (T(1) - t) - f.q * t) * mod + second);
}

}  // namespace detbench
