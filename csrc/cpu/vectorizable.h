// Host-only float helpers written so that loops calling them vectorize with gcc at the build's
// baseline ISA: no library calls, and no select between two floats computed from the input
// (gcc sinks each into its own branch, and -ftrapping-math then keeps the branches); values are
// chosen with integer bit masks instead. Each equals its c10/libm counterpart's value: the
// conversions bit for bit (checked over all 2^32 floats / 2^16 halves), exp within 1 ulp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

// Marks a function with a hot loop to vectorize: everything it calls is inlined (flatten: a call
// left in the loop, e.g. to a large float16 helper, keeps it scalar), and gcc also compiles an AVX2
// version, chosen at load time where the CPU has AVX2 (the baseline build targets SSE2). Not FMA:
// a fused multiply-add would change results (the -mavx512f target implies it).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DETBENCH_VECTOR_CLONES __attribute__((flatten, target_clones("avx2", "default")))
#elif defined(__GNUC__)
#define DETBENCH_VECTOR_CLONES __attribute__((flatten))
#else
#define DETBENCH_VECTOR_CLONES
#endif

namespace detbench::vectorizable {

inline float float_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline uint32_t mask_if(bool c) {  // all ones where c
  return 0u - static_cast<uint32_t>(c);
}

inline uint32_t blend(uint32_t mask, uint32_t a, uint32_t b) {  // a where mask, else b
  return (a & mask) | (b & ~mask);
}

// float(c10::Half(x)): x rounded to the nearest float16 value, ties to even.
inline float round_to_half(float x) {
  const uint32_t u = bits_of(x);
  const uint32_t a = u & 0x7fffffffu;
  // float16 normal range: round the mantissa to 10 bits; a carry moves into the exponent
  uint32_t normal = (a + 0xfffu + ((a >> 13) & 1u)) & 0xffffe000u;
  normal = blend(mask_if(normal > 0x477fe000u), 0x7f800000u, normal);  // beyond 65504: inf
  // below 2^-14 (float16 subnormals): adding 0.5 rounds to a multiple of 2^-24
  const uint32_t subnormal = bits_of((float_from_bits(a) + 0.5f) - 0.5f);
  uint32_t r = blend(mask_if(a < 0x38800000u), subnormal, normal);
  r = blend(mask_if(a > 0x7f800000u), a | 0x00400000u, r);  // NaN stays NaN
  return float_from_bits(r | (u & 0x80000000u));
}

// float(c10::BFloat16(x)): x rounded to the nearest bfloat16 value, ties to even.
inline float round_to_bfloat16(float x) {
  const uint32_t u = bits_of(x);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  return float_from_bits(blend(mask_if((u & 0x7fffffffu) > 0x7f800000u), 0x7fc00000u, r));
}

inline float half_to_float(c10::Half h) {
  const uint32_t a = h.x & 0x7fffu;
  const uint32_t normal = (a << 13) + ((127u - 15u) << 23);
  const uint32_t inf_nan = (a << 13) | 0x7f800000u;
  const uint32_t subnormal = bits_of(static_cast<float>(static_cast<int32_t>(a)) * 0x1p-24f);
  uint32_t r = blend(mask_if(a >= 0x7c00u), inf_nan, normal);
  r = blend(mask_if(a < 0x0400u), subnormal, r);
  return float_from_bits(r | (static_cast<uint32_t>(h.x & 0x8000u) << 16));
}

// c10::Half(x) for an x that is a float16 value (round_to_half's results): packing, no rounding.
inline c10::Half half_from_exact_float(float x) {
  const uint32_t u = bits_of(x);
  const uint32_t a = u & 0x7fffffffu;
  const uint32_t normal = (a >> 13) - ((127u - 15u) << 10);
  const uint32_t inf_nan = ((a >> 13) & 0x3ffu) | 0x7c00u | (mask_if(a > 0x7f800000u) & 0x200u);
  const uint32_t subnormal = static_cast<uint32_t>(static_cast<int32_t>(float_from_bits(a) * 0x1p24f));
  uint32_t r = blend(mask_if(a >= 0x7f800000u), inf_nan, normal);
  r = blend(mask_if(a < 0x38800000u), subnormal, r);
  return c10::Half(static_cast<uint16_t>(r | ((u >> 16) & 0x8000u)), c10::Half::from_bits());
}

inline float bfloat16_to_float(c10::BFloat16 h) {
  return float_from_bits(static_cast<uint32_t>(h.x) << 16);
}

// c10::BFloat16(x) for an x that is a bfloat16 value (round_to_bfloat16's results).
inline c10::BFloat16 bfloat16_from_exact_float(float x) {
  return c10::BFloat16(static_cast<uint16_t>(bits_of(x) >> 16), c10::BFloat16::from_bits());
}

// exp(x) in float, within 1 ulp of the exact value (the maximum measured over every 7th float of
// [-110, 90] is 0.98 ulp; torch's own vectorized exp, Sleef's, is also a 1-ulp one): x = n ln2 + r,
// |r| <= ln2 / 2 (Cody-Waite: n times ln2's 9-bit high part is exact), exp(r) by Cephes' expf
// polynomial, then 2^n applied in two exact steps so that subnormal results round once. inf above
// 88.73, 0 below -103.98, NaN for NaN.
inline float exp(float x) {
  const uint32_t nan_mask = mask_if(x != x);
  const float xc = float_from_bits(bits_of(std::min(std::max(x, -104.0f), 89.0f)) & ~nan_mask);  // NaN -> 0
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = xc * 1.44269504088896341f + kRound;
  const float n = shifted - kRound;
  const int32_t e = static_cast<int32_t>(bits_of(shifted) - bits_of(kRound));  // n, in [-150, 128]
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  const float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  const int32_t e1 = e >> 1, e2 = e - e1;  // each in [-75, 64]: 2^e1 and 2^e2 are normal floats
  const float scaled = y * float_from_bits(static_cast<uint32_t>(e1 + 127) << 23) *
                       float_from_bits(static_cast<uint32_t>(e2 + 127) << 23);
  return float_from_bits(blend(nan_mask, bits_of(x), bits_of(scaled)));
}

inline double exp(double x) {
  return std::exp(x);
}

// Loads, rounding and stores of a storage type S computed in at::opmath_type<S>.
template <typename S>
struct Float {
  using T = S;  // float, double: rounding is the identity
  static T load(S x) {
    return x;
  }
  static T round(T x) {
    return x;
  }
  static S store(T x) {
    return x;
  }
};
template <>
struct Float<c10::Half> {
  using T = float;
  static T load(c10::Half x) {
    return half_to_float(x);
  }
  static T round(T x) {
    return round_to_half(x);
  }
  static c10::Half store(T x) {  // x already rounded
    return half_from_exact_float(x);
  }
};
template <>
struct Float<c10::BFloat16> {
  using T = float;
  static T load(c10::BFloat16 x) {
    return bfloat16_to_float(x);
  }
  static T round(T x) {
    return round_to_bfloat16(x);
  }
  static c10::BFloat16 store(T x) {  // x already rounded
    return bfloat16_from_exact_float(x);
  }
};

// A float type's bit patterns mapped to unsigned integers in the floats' order (-NaN < -inf <
// ... < -0 < +0 < ... < +inf < +NaN), branch-free: order comparisons of float16/bfloat16/float/
// double without a conversion.
template <typename F>
struct OrderedBits {
  using U = std::conditional_t<sizeof(F) == 2, uint16_t, std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>>;
  static constexpr U kSign = U(U(1) << (8 * sizeof(F) - 1));
  // negative: all bits flipped; positive: the sign bit set
  static U key_of_bits(U b) { return U(b ^ (U(U(0) - U(b >> (8 * sizeof(F) - 1))) | kSign)); }
  static U key(F x) {
    U b;
    std::memcpy(&b, &x, sizeof(U));
    return key_of_bits(b);
  }
  static F value(U k) {
    const U b = (k & kSign) ? U(k & ~kSign) : U(~k);
    F x;
    std::memcpy(&x, &b, sizeof(U));
    return x;
  }
};

}  // namespace detbench::vectorizable
