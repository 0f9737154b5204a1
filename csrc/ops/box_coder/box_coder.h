// detbench.decode_boxes and the decode step of detbench.generate_proposals: torchvision's
// BoxCoder.decode_single arithmetic, shared by the host and device kernels.
#pragma once

#include <cstdint>

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include "ops/box_iou/iou.h"

namespace detbench {

// torchvision runs decode_single as a chain of eager PyTorch ops in the deltas' dtype S: each op
// computes in float (double for float64) and rounds its result to S. round_to<S> repeats that
// rounding after every step, so float16/bfloat16 results are torchvision's bits (up to exp's and
// the division's last float ulp); for float32 and float64 it is the identity. Products go
// through mul_rn, so no fused multiply-add changes a result on the device.
template <typename S>
C10_HOST_DEVICE inline at::opmath_type<S> round_to(at::opmath_type<S> x) {
  return static_cast<at::opmath_type<S>>(static_cast<S>(x));
}

template <typename T>
C10_HOST_DEVICE inline T exp_of(T x);
template <>
C10_HOST_DEVICE inline float exp_of(float x) {
#ifdef __CUDA_ARCH__
  return expf(x);
#else
  return std::exp(x);
#endif
}
template <>
C10_HOST_DEVICE inline double exp_of(double x) {
#ifdef __CUDA_ARCH__
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

// decode_box's two primitives in T: rounding to S, and exp. The CPU kernel passes others of the
// same values (exp: within its last ulp) written so that its loop vectorizes.
template <typename S>
struct DecodeMath {
  using T = at::opmath_type<S>;
  C10_HOST_DEVICE static T round(T x) {
    return round_to<S>(x);
  }
  C10_HOST_DEVICE static T exp(T x) {
    return exp_of(x);
  }
};

template <typename T>
struct DecodeParams {
  T wx, wy, ww, wh;  // weights
  T clip;            // dw and dh are clamped to at most this (bbox_xform_clip)
};

// Decodes one box. box: the reference box (already in S, as torchvision converts it with
// boxes.to(rel_codes.dtype)); d: the 4 deltas; out: x1, y1, x2, y2 (rounded to S).
// NaN deltas give NaN coordinates, as in torchvision (torch.clamp keeps NaN).
template <typename S, typename Math = DecodeMath<S>>
C10_HOST_DEVICE inline void decode_box(const at::opmath_type<S> box[4], const at::opmath_type<S> d[4],
                                       const DecodeParams<at::opmath_type<S>>& p, at::opmath_type<S> out[4]) {
  using T = at::opmath_type<S>;
  const T width = Math::round(box[2] - box[0]);
  const T height = Math::round(box[3] - box[1]);
  const T ctr_x = Math::round(box[0] + Math::round(mul_rn(T(0.5), width)));
  const T ctr_y = Math::round(box[1] + Math::round(mul_rn(T(0.5), height)));
  const T dx = Math::round(d[0] / p.wx);
  const T dy = Math::round(d[1] / p.wy);
  T dw = Math::round(d[2] / p.ww);
  T dh = Math::round(d[3] / p.wh);
  const T clip = Math::round(p.clip);
  dw = dw > clip ? clip : dw;  // NaN stays NaN, as with torch.clamp(max=)
  dh = dh > clip ? clip : dh;
  const T pred_ctr_x = Math::round(Math::round(mul_rn(dx, width)) + ctr_x);
  const T pred_ctr_y = Math::round(Math::round(mul_rn(dy, height)) + ctr_y);
  const T pred_w = Math::round(mul_rn(Math::round(Math::exp(dw)), width));
  const T pred_h = Math::round(mul_rn(Math::round(Math::exp(dh)), height));
  const T half_w = Math::round(mul_rn(T(0.5), pred_w));
  const T half_h = Math::round(mul_rn(T(0.5), pred_h));
  out[0] = Math::round(pred_ctr_x - half_w);
  out[1] = Math::round(pred_ctr_y - half_h);
  out[2] = Math::round(pred_ctr_x + half_w);
  out[3] = Math::round(pred_ctr_y + half_h);
}

// Checks decode_boxes' arguments (metadata only) and returns its uninitialized output (the
// deltas' shape and dtype). Also its Meta kernel's core.
at::Tensor decode_boxes_allocate_output(const at::Tensor& deltas, const at::Tensor& boxes, at::ArrayRef<double> weights,
                                        double clip);

// The boxes' row for delta row r: decode_boxes accepts boxes [N, 4] shared by every leading
// batch of deltas, or boxes with the deltas' leading dimensions.
struct DecodeShape {
  int64_t rows;        // B * N: rows of deltas
  int64_t classes;     // C: deltas rows hold 4 * C values
  int64_t box_period;  // boxes row of delta row r: r % box_period (N if boxes are shared, else rows)
};
DecodeShape decode_shape(const at::Tensor& deltas, const at::Tensor& boxes);

}  // namespace detbench
