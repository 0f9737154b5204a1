// Host-only AVX2 (+ F16C) helpers for CPU kernels with an explicit 8-lane path, compiled per
// function with DETBENCH_AVX2_F16C and chosen at run time with cpu_has_avx2_f16c(); the baseline
// build stays SSE2. Never FMA: the target does not enable it, so no multiply-add is contracted and
// every product and sum rounds on its own, as in the scalar code these helpers must match.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DETBENCH_HAVE_AVX2_F16C 1

#include <immintrin.h>

#include <cstdint>

#define DETBENCH_AVX2_F16C __attribute__((target("avx2,f16c")))

namespace detbench::avx2 {

// The CPU and the OS support AVX2 and F16C (gcc's and clang's checks include the OS's AVX state).
inline bool cpu_has_avx2_f16c() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return supported;
}

// 8 floats rounded to the nearest float16 values (ties to even), as floats: c10::Half's rounding;
// NaN stays NaN (quiet, sign and high payload bits kept, as vectorizable::round_to_half).
DETBENCH_AVX2_F16C inline __m256 round_to_half(__m256 x) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// vectorizable::exp(float) on 8 lanes, operation for operation (so bit for bit): the same clamp,
// Cody-Waite reduction, Cephes polynomial and two-step scaling by 2^n.
DETBENCH_AVX2_F16C inline __m256 exp(__m256 x) {
  const __m256 nan_mask = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  // NaN lanes are zeroed (max/min return their second operand for NaN; the mask overrides it)
  const __m256 xc =
      _mm256_andnot_ps(nan_mask, _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-104.0f)), _mm256_set1_ps(89.0f)));
  const __m256 round_shift = _mm256_set1_ps(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const __m256 shifted = _mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)), round_shift);
  const __m256 n = _mm256_sub_ps(shifted, round_shift);
  const __m256i e = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(round_shift));
  __m256 r = _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
  const __m256 z = _mm256_mul_ps(r, r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(y, z), r), _mm256_set1_ps(1.0f));
  const __m256i e1 = _mm256_srai_epi32(e, 1);
  const __m256i e2 = _mm256_sub_epi32(e, e1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 scale1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e1, bias), 23));
  const __m256 scale2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e2, bias), 23));
  const __m256 scaled = _mm256_mul_ps(_mm256_mul_ps(y, scale1), scale2);
  return _mm256_blendv_ps(scaled, x, nan_mask);
}

// Transposes 8 records of 4 floats (v0: records 0-1, v1: 2-3, v2: 4-5, v3: 6-7) into 4 vectors of
// one field each, lanes in record order 0 2 4 6 1 3 5 7; interleave4 is its exact inverse.
DETBENCH_AVX2_F16C inline void deinterleave4(__m256 v0, __m256 v1, __m256 v2, __m256 v3, __m256 field[4]) {
  const __m256 t0 = _mm256_unpacklo_ps(v0, v1), t1 = _mm256_unpackhi_ps(v0, v1);
  const __m256 t2 = _mm256_unpacklo_ps(v2, v3), t3 = _mm256_unpackhi_ps(v2, v3);
  field[0] = _mm256_shuffle_ps(t0, t2, 0x44);
  field[1] = _mm256_shuffle_ps(t0, t2, 0xee);
  field[2] = _mm256_shuffle_ps(t1, t3, 0x44);
  field[3] = _mm256_shuffle_ps(t1, t3, 0xee);
}

DETBENCH_AVX2_F16C inline void interleave4(const __m256 field[4], __m256 v[4]) {
  const __m256 t0 = _mm256_unpacklo_ps(field[0], field[1]), t1 = _mm256_unpackhi_ps(field[0], field[1]);
  const __m256 t2 = _mm256_unpacklo_ps(field[2], field[3]), t3 = _mm256_unpackhi_ps(field[2], field[3]);
  v[0] = _mm256_shuffle_ps(t0, t2, 0x44);
  v[1] = _mm256_shuffle_ps(t0, t2, 0xee);
  v[2] = _mm256_shuffle_ps(t1, t3, 0x44);
  v[3] = _mm256_shuffle_ps(t1, t3, 0xee);
}

}  // namespace detbench::avx2

#endif
