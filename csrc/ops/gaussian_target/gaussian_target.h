// detbench.draw_heatmap, draw_heatmap_batched and gaussian_radius (CenterNet-style targets):
// the arithmetic shared by the CPU and CUDA kernels, and the argument checks.
//
// Exactness: the values are mmdet's gen_gaussian_target / gaussian_radius (mmdet 3.x,
// mmdet/models/utils/gaussian_target.py) computed with the same float32 operations in the same
// order. Where torch's kernels differ by device, so do these: torch divides a CUDA tensor by a
// Python scalar as a multiplication by the float32 reciprocal (div_true_kernel_cuda), and by an
// IEEE division on the CPU; each device follows its torch.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

namespace detbench {

// One Gaussian box as the kernels see it. Center (x, y), integer radius r >= 0.
struct GaussianBox {
  int64_t x, y, r;
};

// Rounded-to-nearest float arithmetic that the CUDA compiler may not contract into FMAs, so
// that each step rounds as torch's one-op-per-kernel arithmetic does.
template <typename T>
C10_HOST_DEVICE inline T add_rn(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4) return __fadd_rn(a, b); else return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

template <typename T>
C10_HOST_DEVICE inline T sub_rn(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4) return __fsub_rn(a, b); else return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

template <typename T>
C10_HOST_DEVICE inline T mul_rn(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4) return __fmul_rn(a, b); else return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// x / d for a divisor d that torch would receive as a Python scalar (see the header comment).
C10_HOST_DEVICE inline float div_by_scalar(float x, float d) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(x, __fdiv_rn(1.0f, d));
#else
  return x / d;
#endif
}

C10_HOST_DEVICE inline double div_by_scalar(double x, double d) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(x, __ddiv_rn(1.0, d));
#else
  return x / d;
#endif
}

// mmdet's gaussian2D divides by 2 * sigma * sigma, sigma = (2r + 1) / 6, both Python floats
// (double); torch casts the divisor to float32 for a float32 tensor.
C10_HOST_DEVICE inline float gaussian_divisor(int64_t radius) {
  const double sigma = double(2 * radius + 1) / 6.0;
  return static_cast<float>(2.0 * sigma * sigma);
}

// Element (dx, dy) of mmdet's gaussian2D(radius, sigma) times k, in float32:
// exp(-(x*x + y*y) / (2 sigma^2)), zeroed below finfo(float32).eps * max (the max is exp(0) = 1).
C10_HOST_DEVICE inline float gaussian_value(int64_t dx, int64_t dy, float divisor, float k) {
  const float fx = static_cast<float>(dx);
  const float fy = static_cast<float>(dy);
  const float g = ::expf(div_by_scalar(-add_rn(mul_rn(fx, fx), mul_rn(fy, fy)), divisor));
  return (g < FLT_EPSILON ? 0.0f : g) * k;
}

// torch.max(a, b) elementwise: NaN if either is NaN.
C10_HOST_DEVICE inline float max_propagate_nan(float a, float b) {
  return (a > b || a != a) ? a : b;
}

// mmdet's gaussian_radius([height, width], min_overlap) evaluated as mmdet evaluates it on
// 0-dim tensors of type T (CenterNetHead.get_targets passes float32 tensors): every tensor op
// rounds to T, Python scalars are cast to T where they meet a tensor, and math.sqrt works in
// double and is rounded back to T where the result meets a tensor (for float32 that is the
// correctly rounded sqrtf). For T = double on the CPU this is mmdet called with Python floats.
// A negative discriminant (math.sqrt raises in mmdet) gives NaN, for any of the three roots.
template <typename T>
C10_HOST_DEVICE inline T gaussian_radius_value(T height, T width, double min_overlap) {
  const T sum = add_rn(height, width);  // b1 = height + width
  // r1 = (b1 - sqrt(b1**2 - 4 * c1)) / 2, c1 = width * height * (1 - mo) / (1 + mo)
  const T c1 = div_by_scalar(mul_rn(mul_rn(width, height), T(1 - min_overlap)), T(1 + min_overlap));
  const T sq1 = std::sqrt(sub_rn(mul_rn(sum, sum), mul_rn(T(4), c1)));
  const T r1 = mul_rn(sub_rn(sum, sq1), T(0.5));
  // r2 = (b2 - sqrt(b2**2 - 16 * c2)) / 8, b2 = 2 * (height + width), c2 = (1 - mo) * width * height
  const T b2 = mul_rn(T(2), sum);
  const T c2 = mul_rn(mul_rn(T(1 - min_overlap), width), height);
  const T sq2 = std::sqrt(sub_rn(mul_rn(b2, b2), mul_rn(T(16), c2)));
  const T r2 = mul_rn(sub_rn(b2, sq2), T(0.125));
  // r3 = (b3 + sqrt(b3**2 - (16 mo) * c3)) / (8 mo), b3 = -2 mo (height + width), c3 = (mo - 1) w h
  const T b3 = mul_rn(T(-2 * min_overlap), sum);
  const T c3 = mul_rn(mul_rn(T(min_overlap - 1), width), height);
  const T sq3 = std::sqrt(sub_rn(mul_rn(b3, b3), mul_rn(T(4 * (4 * min_overlap)), c3)));
  const T r3 = div_by_scalar(add_rn(b3, sq3), T(2 * (4 * min_overlap)));
  // mmdet raises where any discriminant is negative, whichever root it belongs to; Python's min
  // would drop a NaN second or third root (NaN < r is false), so test the roots first.
  if (sq1 != sq1 || sq2 != sq2 || sq3 != sq3) {
    return sq1 != sq1 ? sq1 : (sq2 != sq2 ? sq2 : sq3);
  }
  // Python's min(r1, r2, r3): the first of the smallest.
  T r = r1;
  if (r2 < r) r = r2;
  if (r3 < r) r = r3;
  return r;
}

// Argument checks (shapes, dtypes, devices, layout: metadata only, never a sync), shared by the
// Meta and the device kernels. labels: nullptr when not given.
void draw_heatmap_check(const at::Tensor& heatmaps, const at::Tensor& centers, const at::Tensor& radii,
                        const at::Tensor& heatmap_index, double k);
void draw_heatmap_batched_check(const at::Tensor& heatmaps, const at::Tensor& centers, const at::Tensor& radii,
                                const at::Tensor& counts, const at::Tensor* labels, double k);
void gaussian_radius_check(const at::Tensor& heights, const at::Tensor& widths, double min_overlap);

// Value checks on host (CPU) data, raising the documented errors. H, W: the heatmap's plane
// size; planes: M (flat) or C (class-wise labels); T: boxes per image (batched) or in all (flat).
// Flat: index = heatmap_index, counts = nullptr, B = 1. Batched: index = labels or nullptr.
void draw_heatmap_check_values(const char* op, const at::Tensor& centers, const at::Tensor& radii,
                               const at::Tensor* index, const at::Tensor* counts, int64_t H, int64_t W,
                               int64_t planes);

}  // namespace detbench
