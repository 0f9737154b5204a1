// RoI Align arithmetic shared by the CPU and CUDA kernels: torchvision's roi_align (geometry,
// adaptive sampling grid, bilinear sampling) factored into one axis at a time, and
// MultiScaleRoIAlign's LevelMapper.
//
// torchvision samples bin (ph, pw) of a RoI at y = start_h + ph * bin_h + (iy + .5) * bin_h / grid_h
// and x likewise, and interpolates bilinearly; a sample with y outside [-1, H] or x outside
// [-1, W] contributes 0. The corner indices and weights of a sample depend on y or on x alone,
// so each RoI needs PH * grid_h row entries and PW * grid_w column entries (AxisSample), computed
// once and shared by every channel. The geometry is rounded operation by operation as in
// torchvision (no contraction into FMA, on the device too), so positions are bit-identical to
// torchvision's CPU kernel and to the float64 reference (which computes positions in float32).
#pragma once

#include <cmath>
#include <cstdint>

#include <c10/macros/Macros.h>

namespace detbench {
namespace roi {

// Adaptive sampling grid per axis is capped here (a RoI over 1024 x pooled pixels tall or wide
// samples 1024 rows or columns per bin; torchvision would sample more): a bound on the work of
// one bin whatever the coordinates.
constexpr int kMaxGrid = 1024;
constexpr int kMaxLevels = 8;

template <typename T>
C10_HOST_DEVICE inline T add(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4) {
    return __fadd_rn(a, b);
  } else {
    return __dadd_rn(a, b);
  }
#else
  return a + b;
#endif
}

template <typename T>
C10_HOST_DEVICE inline T mul(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4) {
    return __fmul_rn(a, b);
  } else {
    return __dmul_rn(a, b);
  }
#else
  return a * b;
#endif
}

template <typename T>
C10_HOST_DEVICE inline T div(T a, T b) {
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(T) == 4) {
    return __fdiv_rn(a, b);
  } else {
    return __ddiv_rn(a, b);
  }
#else
  return a / b;
#endif
}

// One sample along one axis: the two neighbours (lo, hi) and their weights (1 - l, l);
// lo = -1 when the sample is outside [-1, size] (it contributes nothing).
template <typename T>
struct AxisSample {
  int lo, hi;
  T wlo, whi;
};

// torchvision's bilinear_interpolate, one axis.
template <typename T>
C10_HOST_DEVICE inline AxisSample<T> axis_sample(T v, int size) {
  AxisSample<T> s;
  if (!(v >= T(-1) && v <= T(size))) {  // also NaN
    s.lo = -1;
    s.hi = -1;
    s.wlo = T(0);
    s.whi = T(0);
    return s;
  }
  if (v <= T(0)) {
    v = T(0);
  }
  int lo = static_cast<int>(v);
  int hi;
  if (lo >= size - 1) {
    hi = lo = size - 1;
    v = static_cast<T>(lo);
  } else {
    hi = lo + 1;
  }
  const T l = v - static_cast<T>(lo);
  s.lo = lo;
  s.hi = hi;
  s.wlo = T(1) - l;
  s.whi = l;
  return s;
}

// A RoI's sampling geometry on its feature map (torchvision's arithmetic).
template <typename T>
struct Geometry {
  T start_h, start_w, bin_h, bin_w;
  int grid_h, grid_w;
  T count;  // samples per bin, at least 1: the divisor of a bin's sum
};

template <typename T>
C10_HOST_DEVICE inline int grid_size(T bin, int sampling_ratio) {
  if (sampling_ratio > 0) {
    return sampling_ratio;
  }
  const T g = std::ceil(bin);  // torchvision: ceil(roi_size / pooled_size), the same division
  // torchvision's loops run no sample for g <= 0 (and its count is then 1): grid 0 here.
  return g > T(0) ? (g < T(kMaxGrid) ? static_cast<int>(g) : kMaxGrid) : 0;
}

// roi points at (x1, y1, x2, y2) in image coordinates.
template <typename T>
C10_HOST_DEVICE inline Geometry<T> geometry(const T* box, T scale, int pooled_h, int pooled_w, int sampling_ratio,
                                            bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  const T start_w = mul(box[0], scale) - offset;
  const T start_h = mul(box[1], scale) - offset;
  const T end_w = mul(box[2], scale) - offset;
  const T end_h = mul(box[3], scale) - offset;
  T roi_w = end_w - start_w;
  T roi_h = end_h - start_h;
  if (!aligned) {  // force malformed RoIs to be 1x1
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  Geometry<T> g;
  g.start_h = start_h;
  g.start_w = start_w;
  g.bin_h = div(roi_h, static_cast<T>(pooled_h));
  g.bin_w = div(roi_w, static_cast<T>(pooled_w));
  g.grid_h = grid_size(g.bin_h, sampling_ratio);
  g.grid_w = grid_size(g.bin_w, sampling_ratio);
  const int n = g.grid_h * g.grid_w;
  g.count = static_cast<T>(n > 1 ? n : 1);
  return g;
}

// Sample i of bin p along an axis: start + p * bin + (i + .5) * bin / grid, rounded as torchvision.
template <typename T>
C10_HOST_DEVICE inline T sample_position(T start, T bin, int p, int i, int grid) {
  return add(add(start, mul(static_cast<T>(p), bin)),
             div(mul(static_cast<T>(static_cast<float>(i) + .5f), bin), static_cast<T>(grid)));
}

template <typename T>
C10_HOST_DEVICE inline AxisSample<T> axis_entry(T start, T bin, int p, int i, int grid, int size) {
  return axis_sample(sample_position(start, bin, p, i, grid), size);
}

// Whether a RoI can be pooled: a finite box and a batch index that is an integer in [0, N).
// (The CPU and validation mode raise for any other; the default CUDA path gives such a RoI a
// zero output and no gradient.)
template <typename T>
C10_HOST_DEVICE inline bool roi_ok(const T* roi, int64_t batch) {
  const T b = roi[0];
  bool ok = b >= T(0) && b < static_cast<T>(batch) && b == std::floor(b);
#pragma unroll
  for (int i = 1; i < 5; ++i) {
    ok = ok && std::isfinite(roi[i]);
  }
  return ok;
}

// MultiScaleRoIAlign's LevelMapper, in the boxes' arithmetic (float32 for all but float64):
// floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6), clamped to
// [k_min, k_max], minus k_min. -1 where torchvision's level is NaN (negative area: such a RoI
// matches no level and stays zero in torchvision).
template <typename T>
C10_HOST_DEVICE inline int map_level(const T* box, T canonical_scale, int canonical_level, int k_min, int k_max) {
  const T area = mul(box[2] - box[0], box[3] - box[1]);
  const T s = std::sqrt(area);
  const T t = std::floor(add(add(static_cast<T>(canonical_level), std::log2(div(s, canonical_scale))), T(1e-6)));
  if (!(t == t)) {
    return -1;
  }
  const T c = t < T(k_min) ? T(k_min) : (t > T(k_max) ? T(k_max) : t);
  return static_cast<int>(c) - k_min;
}

}  // namespace roi
}  // namespace detbench
