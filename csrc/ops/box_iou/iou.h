// The IoU of two xyxy boxes: the one formula of every detbench op that computes IoUs (box_iou,
// nms), on the host and the device. It is torchvision's (no +1, areas (x2 - x1) * (y2 - y1) not
// clamped, inter = max(min(x2) - max(x1), 0) * max(min(y2) - max(y1), 0), iou = inter / union),
// except that the IoU is 0 where the union is <= 0 (torchvision: NaN). A positive intersection
// implies a positive union, so that rule is the same as "iou = 0 where inter <= 0".
//
// T is the type computed in: float (float16, bfloat16 and float32 inputs) or double.
//
// Products are rounded on their own (no fused multiply-add) on the device too, so a CUDA kernel
// computes the same bits as the CPU kernels and as PyTorch's float32/float64 operations: the
// NMS ops then make the same decision on either device, even for an IoU a hair from the threshold.
#pragma once

#include <algorithm>
#include <cfloat>

#include <c10/macros/Macros.h>

namespace detbench {

C10_HOST_DEVICE inline float iou_max(float a, float b) {
#ifdef __CUDA_ARCH__
  return fmaxf(a, b);
#else
  return std::max(a, b);
#endif
}
C10_HOST_DEVICE inline double iou_max(double a, double b) {
#ifdef __CUDA_ARCH__
  return fmax(a, b);
#else
  return std::max(a, b);
#endif
}
C10_HOST_DEVICE inline float iou_min(float a, float b) {
#ifdef __CUDA_ARCH__
  return fminf(a, b);
#else
  return std::min(a, b);
#endif
}
C10_HOST_DEVICE inline double iou_min(double a, double b) {
#ifdef __CUDA_ARCH__
  return fmin(a, b);
#else
  return std::min(a, b);
#endif
}

// a * b rounded on its own: the compiler may not fuse it with a following addition.
C10_HOST_DEVICE inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
C10_HOST_DEVICE inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

template <typename T>
C10_HOST_DEVICE inline T box_area(T x1, T y1, T x2, T y2) {
  return mul_rn(x2 - x1, y2 - y1);
}

template <typename T>
C10_HOST_DEVICE inline T box_intersection(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2) {
  const T w = iou_max(iou_min(ax2, bx2) - iou_max(ax1, bx1), T(0));
  const T h = iou_max(iou_min(ay2, by2) - iou_max(ay1, by1), T(0));
  return mul_rn(w, h);
}

// The IoU from the intersection and the two areas. Skipping the division where inter <= 0
// matters on the GPU, where most pairs do not overlap and 0 / x takes IEEE division's slow path.
template <typename T>
C10_HOST_DEVICE inline T iou_from_intersection(T inter, T area_a, T area_b) {
  return inter > T(0) ? inter / (area_a + area_b - inter) : T(0);
}

// The same value, written so that a loop of it vectorizes (gcc does not vectorize a select of
// the denominator): where inter <= 0 the quotient is 0, -0 or NaN (0 / 0), and all become 0.
template <typename T>
C10_HOST_DEVICE inline T iou_from_intersection_vectorizable(T inter, T area_a, T area_b) {
  const T q = inter / (area_a + area_b - inter);
  return q > T(0) ? q : T(0);
}

// Exactly iou_from_intersection(inter, area_a, area_b) > threshold, mostly without the division.
// p = threshold * union is rounded with relative error <= 2^-24 (2^-53 for double) when it is a
// normal number, so inter > p * (1 + 2^-20) implies inter / union > threshold * (1 + 2^-21),
// whose rounding is above threshold; likewise below with 1 - 2^-20. Only the narrow band in
// between, and the cases where p is tiny, zero or negative, pay for the division.
template <typename T>
struct IouCut;
template <>
struct IouCut<float> {
  static constexpr float kHi = 1.0f + 0x1p-20f;
  static constexpr float kLo = 1.0f - 0x1p-20f;
  static constexpr float kMinP = 4 * FLT_MIN;
};
template <>
struct IouCut<double> {
  static constexpr double kHi = 1.0 + 0x1p-49;
  static constexpr double kLo = 1.0 - 0x1p-49;
  static constexpr double kMinP = 4 * DBL_MIN;
};

template <typename T>
C10_HOST_DEVICE inline bool iou_above(T inter, T area_a, T area_b, T threshold) {
  if (!(inter > T(0))) {
    return T(0) > threshold;
  }
  const T uni = area_a + area_b - inter;
  const T p = threshold * uni;
  if (p > IouCut<T>::kMinP) {  // threshold > 0 and union > 0
    if (inter > p * IouCut<T>::kHi) {
      return true;
    }
    if (inter < p * IouCut<T>::kLo) {
      return false;
    }
  }
  return inter / uni > threshold;
}

// iou_above without the division and without branches, for loops that test many pairs at
// once, with the cutoffs threshold * (1 +- 2^-20) computed once: `decided` is false where only
// the division can tell (the band around the threshold, or the cutoff times the union tiny,
// zero or negative), and the result is then meaningless. Where decided, it is exact: the two
// roundings of cutoff * union move it by at most 2^-23 relative, far inside the 2^-20 margin.
template <typename T>
struct IouCutoffs {
  T threshold, above, below;
  C10_HOST_DEVICE explicit IouCutoffs(T t) : threshold(t), above(t * IouCut<T>::kHi), below(t * IouCut<T>::kLo) {}
};

template <typename T>
C10_HOST_DEVICE inline bool iou_above_without_division(T inter, T area_a, T area_b, const IouCutoffs<T>& cut,
                                                       bool& decided) {
  const T uni = area_a + area_b - inter;
  const T hi = cut.above * uni;
  const T lo = cut.below * uni;
  const bool overlap = inter > T(0);
  const bool above = inter > hi;
  decided = !overlap || (lo > IouCut<T>::kMinP && (above || inter < lo));
  return overlap ? above : T(0) > cut.threshold;
}

}  // namespace detbench
