// RoI Align sampling geometry and FPN level mapping, shared by the CPU and CUDA kernels.
//
// Everything follows torchvision's roi_align kernels step by step, in the op-math type T
// (float for float16/bfloat16/float32, double for float64), so fp32 results agree with
// torchvision's to rounding. Bilinear interpolation is separable: a sample's four corner
// weights are products of a y-factor and an x-factor, and a sample outside [-1, H] x [-1, W]
// contributes 0, which is a per-axis condition too. The kernels exploit that by computing the
// y-terms once per sample row and the x-terms once per sample column.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include <c10/macros/Macros.h>

namespace detbench {

// Adaptive sampling (sampling_ratio <= 0) takes ceil(roi size / bins) points per bin and axis.
// torchvision converts that float to int unchecked (undefined for absurd boxes); we cap it, so a
// RoI larger than kMaxGrid * bins feature pixels (28,672 at 7 bins) is sampled on a 4096-point grid.
constexpr int kMaxGrid = 4096;

// Most FPN levels a multiscale call accepts (torchvision's poolers use 4: P2-P5).
constexpr int kMaxLevels = 8;

// Coordinate arithmetic rounded step by step: nvcc would contract a * b + c into one FMA and
// move sample positions by an ulp away from the CPU kernel's (and the float64 reference's, which
// computes positions with float32 torch ops).
template <typename T>
C10_HOST_DEVICE inline T mul_rn(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (std::is_same_v<T, float>) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

template <typename T>
C10_HOST_DEVICE inline T add_rn(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (std::is_same_v<T, float>) {
    return __fadd_rn(a, b);
  } else {
    return __dadd_rn(a, b);
  }
#else
  return a + b;
#endif
}

template <typename T>
struct RoiGeometry {
  T start_h, start_w;  // top-left corner on the feature map
  T bin_h, bin_w;      // bin size
  int grid_h, grid_w;  // sampling points per bin along each axis (0: the RoI samples nothing)
  T inv_count;         // 1 / max(grid_h * grid_w, 1)
};

template <typename T>
C10_HOST_DEVICE inline int sampling_grid(int sampling_ratio, T roi_size_per_bin) {
  if (sampling_ratio > 0) {
    return sampling_ratio;
  }
  const T g = ceil(roi_size_per_bin);
  // Negative or NaN: no sampling point (torchvision's loops do not run either).
  return g > T(0) ? int(g < T(kMaxGrid) ? g : T(kMaxGrid)) : 0;
}

// (x1, y1, x2, y2) in image coordinates -> sampling geometry on a feature map of that scale.
template <typename T>
C10_HOST_DEVICE inline RoiGeometry<T> roi_geometry(T x1, T y1, T x2, T y2, T spatial_scale, int pooled_height,
                                                   int pooled_width, int sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  RoiGeometry<T> g;
  g.start_w = add_rn(mul_rn(x1, spatial_scale), -offset);
  g.start_h = add_rn(mul_rn(y1, spatial_scale), -offset);
  const T end_w = add_rn(mul_rn(x2, spatial_scale), -offset);
  const T end_h = add_rn(mul_rn(y2, spatial_scale), -offset);
  T roi_w = end_w - g.start_w;
  T roi_h = end_h - g.start_h;
  if (!aligned) {  // legacy mode: RoIs at least 1x1
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  g.bin_h = roi_h / T(pooled_height);
  g.bin_w = roi_w / T(pooled_width);
  g.grid_h = sampling_grid<T>(sampling_ratio, roi_h / T(pooled_height));
  g.grid_w = sampling_grid<T>(sampling_ratio, roi_w / T(pooled_width));
  const int64_t count = int64_t(g.grid_h) * g.grid_w;
  g.inv_count = T(1) / T(count > 1 ? count : 1);
  return g;
}

// Coordinate of sampling point i (of `grid`) in bin p: torchvision's expression, same order.
template <typename T>
C10_HOST_DEVICE inline T sample_coord(T start, T bin, int p, int i, int grid) {
  return add_rn(add_rn(start, mul_rn(T(p), bin)), mul_rn(T(i) + T(0.5), bin) / T(grid));
}

// One axis of a bilinear sample: the two neighbouring rows (or columns) and their weights.
// valid == false: the point is outside [-1, size] and the whole sample contributes 0.
template <typename T>
struct AxisSample {
  int low, high;
  T w_low, w_high;
  bool valid;
};

template <typename T>
C10_HOST_DEVICE inline AxisSample<T> axis_sample(T v, int size) {
  AxisSample<T> s{0, 0, T(0), T(0), false};
  // `!(v >= -1 && v <= size)` also rejects NaN; size <= 0 has no pixel to read.
  if (!(v >= T(-1) && v <= T(size)) || size <= 0) {
    return s;
  }
  if (v <= T(0)) {
    v = T(0);
  }
  int low = int(v);
  int high;
  if (low >= size - 1) {
    high = low = size - 1;
    v = T(low);
  } else {
    high = low + 1;
  }
  const T l = v - T(low);
  s.low = low;
  s.high = high;
  s.w_low = T(1) - l;
  s.w_high = l;
  s.valid = true;
  return s;
}

// A RoI's batch index as stored (a float): usable when integral and in [0, batch).
template <typename T>
C10_HOST_DEVICE inline bool batch_index_ok(T b, int64_t batch) {
  return b >= T(0) && b < T(batch) && b == floor(b);
}

template <typename T>
C10_HOST_DEVICE inline bool finite_coord(T v) {
  return v - v == T(0);  // false for inf and NaN; works in device code without <cmath> overloads
}

// torchvision's LevelMapper for one box, in the boxes' dtype S like torch's elementwise ops:
// each step computed in T and rounded to S. Returns the level index (0 = finest feature map),
// possibly >= the number of levels (torchvision then pools that RoI from no level: zeros).
//   level = clamp(floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6), k_min, k_max) - k_min
template <typename S, typename T>
C10_HOST_DEVICE inline int fpn_level(T x1, T y1, T x2, T y2, int k_min, int k_max, T canonical_scale,
                                     T canonical_level) {
  auto r = [](T v) { return static_cast<T>(static_cast<S>(v)); };
  const T area = r(mul_rn(r(x2 - x1), r(y2 - y1)));
  const T s = r(sqrt(area));
  T lvl = r(r(canonical_level + r(log2(r(s / canonical_scale)))) + r(T(1e-6)));
  if (lvl != lvl) {
    return -1;
  }
  lvl = floor(lvl);
  lvl = lvl < T(k_min) ? T(k_min) : (lvl > T(k_max) ? T(k_max) : lvl);
  return int(lvl) - k_min;
}

// What a kernel needs to place a RoI: the levels' sizes and scales, the output size, the
// sampling, the level mapping. Plain data, passed to CUDA kernels by value.
template <typename T>
struct PoolConfig {
  int num_levels;
  int height[kMaxLevels];
  int width[kMaxLevels];
  T scale[kMaxLevels];
  int64_t batch, channels;
  int pooled_height, pooled_width, sampling_ratio;
  bool aligned;
  bool map_levels;  // false: every RoI on level 0
  int k_min, k_max;
  T canonical_scale, canonical_level;
};

// Where RoI `roi` (5 values of the boxes' dtype S: batch index, x1, y1, x2, y2) pools from.
// Returns false when it pools from nothing and its output is zeros: a batch index that is not
// an integer in [0, batch) or a non-finite coordinate (CPU and validation mode raise before
// any kernel runs; the default CUDA path lands here), no level (multiscale), or no sampling point.
template <typename S, typename T>
C10_HOST_DEVICE inline bool resolve_roi(const PoolConfig<T>& cfg, const S* roi, int& level, int64_t& n,
                                        RoiGeometry<T>& g) {
  const T b = T(roi[0]), x1 = T(roi[1]), y1 = T(roi[2]), x2 = T(roi[3]), y2 = T(roi[4]);
  if (!batch_index_ok(b, cfg.batch) || !(finite_coord(x1) && finite_coord(y1) && finite_coord(x2) && finite_coord(y2))) {
    return false;
  }
  level = cfg.map_levels ? fpn_level<S, T>(x1, y1, x2, y2, cfg.k_min, cfg.k_max, cfg.canonical_scale,
                                           cfg.canonical_level)
                         : 0;
  if (level < 0 || level >= cfg.num_levels) {
    return false;
  }
  n = int64_t(b);
  g = roi_geometry<T>(x1, y1, x2, y2, cfg.scale[level], cfg.pooled_height, cfg.pooled_width, cfg.sampling_ratio,
                      cfg.aligned);
  return g.grid_h > 0 && g.grid_w > 0;
}

}  // namespace detbench
