// exp and log1p in float for the focal loss's CPU kernels, written as plain branch-free arithmetic
// (selects, no calls, no tables) so that the compiler vectorizes the loops that inline them; libm's
// expf/log1pf are calls the loop cannot vectorize, and cost ~10x the loss's other arithmetic.
// Only the domains focal_terms uses are covered:
//   exp(y) for y <= 0 (y = -|x|): Cephes-style, n = round(y / ln 2), r = y - n ln 2 (two-part
//     ln 2), exp(r) by a degree-7 polynomial, times 2^n built in the exponent bits; ~1 ulp.
//     Results below float's normal range (y < -87.3) are flushed to 0: the loss and gradient terms
//     they feed are then < 1e-37, under every dtype's tolerance (and torch's own vectorized exp
//     flushes them too); NaN propagates.
//   log1p(e) for e in [0, 1]: log(u) of u = 1 + e (u in [1, 2]: z = u - 1 or u / 2 - 1, exact)
//     by Cephes's logf polynomial, plus the rounding of 1 + e, (e - (u - 1)) / u, the classic
//     log1p correction: ~1-2 ulp down to e = 0 (u = 1 gives log1p(e) = e).
// Both are ~2 ulp against float64 (tests/test_sigmoid_focal_loss_op.py checks the loss and
// gradient over the whole logit range); no -ffast-math is needed, so NaN and inf keep torch's
// behaviour.
#pragma once

#include <cstdint>
#include <cstring>

namespace detbench {

struct FocalFloatMath {
  static inline float exp(float y) {
    constexpr float kLog2e = 1.44269504088896341f;
    constexpr float kLn2Hi = 0.693359375f;  // exact in 9 bits: n * kLn2Hi is exact
    constexpr float kLn2Lo = -2.12194440e-4f;
    constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    const float clamped = y < -87.0f ? -87.0f : y;   // NaN stays NaN (the comparison is false)
    const float shifted = clamped * kLog2e + kRoundMagic;
    const float n = shifted - kRoundMagic;          // round(y / ln 2), in [-126, 0]
    const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;
    // Estrin's scheme, not Horner's: a shorter dependency chain (the loop is latency-bound).
    const float r2 = r * r;
    const float r4 = r2 * r2;
    const float p = (5.0000001201e-1f + 1.6666665459e-1f * r) + r2 * (4.1665795894e-2f + 8.3334519073e-3f * r) +
                    r4 * (1.3981999507e-3f + 1.9875691500e-4f * r);
    const float er = p * r2 + r + 1.0f;
    int32_t shifted_bits;
    std::memcpy(&shifted_bits, &shifted, sizeof(float));
    // shifted's low mantissa bits hold n (two's complement, offset by 1.5 * 2^23's bits).
    const int32_t n_int = shifted_bits - 0x4B400000;
    const int32_t scale_bits = (n_int + 127) << 23;
    float scale;
    std::memcpy(&scale, &scale_bits, sizeof(float));
    // A multiply by 0 or 1 rather than a select: a select would make the compiler branch around
    // the polynomial, and branches stop the vectorizer.
    const float keep = static_cast<float>(!(y < -87.0f));
    return er * scale * keep;
  }

  static inline float log1p(float e) {
    constexpr float kSqrtHalf = 0.707106781186547524f;
    constexpr float kLn2Hi = 0.693359375f;
    constexpr float kLn2Lo = -2.12194440e-4f;
    const float u = 1.0f + e;
    const float k = static_cast<float>(u > 2.0f * kSqrtHalf);  // 1: halve u (no select: see exp)
    const float z = u * (1.0f - 0.5f * k) - 1.0f;                  // in [-0.3, 0.42], exact
    const float z2 = z * z;
    const float z4 = z2 * z2;
    const float p = ((3.3333331174e-1f - 2.4999993993e-1f * z) + z2 * (2.0000714765e-1f - 1.6668057665e-1f * z)) +
                    z4 * ((1.4249322787e-1f - 1.2420140846e-1f * z) + z2 * (1.1676998740e-1f - 1.1514610310e-1f * z)) +
                    (z4 * z4) * 7.0376836292e-2f;
    const float log_u = (((p * z) * z2 + k * kLn2Lo) - 0.5f * z2 + z) + k * kLn2Hi;
    // 1 / u: the same expression as focal_terms's 1 / (1 + e), which the compiler then computes once.
    const float correction = (e - (u - 1.0f)) * (1.0f / (1.0f + e));
    return log_u + correction;
  }

  static inline float recip(float v) {
    return 1.0f / v;
  }
};

}  // namespace detbench
