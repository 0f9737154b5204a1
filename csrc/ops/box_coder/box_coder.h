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

template <typename T>
struct DecodeParams {
  T wx, wy, ww, wh;  // weights
  T clip;            // dw and dh are clamped to at most this (bbox_xform_clip)
};

// Decodes one box. box: the reference box (already in S, as torchvision converts it with
// boxes.to(rel_codes.dtype)); d: the 4 deltas; out: x1, y1, x2, y2 (rounded to S).
// NaN deltas give NaN coordinates, as in torchvision (torch.clamp keeps NaN).
template <typename S>
C10_HOST_DEVICE inline void decode_box(const at::opmath_type<S> box[4], const at::opmath_type<S> d[4],
                                       const DecodeParams<at::opmath_type<S>>& p, at::opmath_type<S> out[4]) {
  using T = at::opmath_type<S>;
  const T width = round_to<S>(box[2] - box[0]);
  const T height = round_to<S>(box[3] - box[1]);
  const T ctr_x = round_to<S>(box[0] + round_to<S>(mul_rn(T(0.5), width)));
  const T ctr_y = round_to<S>(box[1] + round_to<S>(mul_rn(T(0.5), height)));
  const T dx = round_to<S>(d[0] / p.wx);
  const T dy = round_to<S>(d[1] / p.wy);
  T dw = round_to<S>(d[2] / p.ww);
  T dh = round_to<S>(d[3] / p.wh);
  const T clip = round_to<S>(p.clip);
  dw = dw > clip ? clip : dw;  // NaN stays NaN, as with torch.clamp(max=)
  dh = dh > clip ? clip : dh;
  const T pred_ctr_x = round_to<S>(round_to<S>(mul_rn(dx, width)) + ctr_x);
  const T pred_ctr_y = round_to<S>(round_to<S>(mul_rn(dy, height)) + ctr_y);
  const T pred_w = round_to<S>(mul_rn(round_to<S>(exp_of(dw)), width));
  const T pred_h = round_to<S>(mul_rn(round_to<S>(exp_of(dh)), height));
  const T half_w = round_to<S>(mul_rn(T(0.5), pred_w));
  const T half_h = round_to<S>(mul_rn(T(0.5), pred_h));
  out[0] = round_to<S>(pred_ctr_x - half_w);
  out[1] = round_to<S>(pred_ctr_y - half_h);
  out[2] = round_to<S>(pred_ctr_x + half_w);
  out[3] = round_to<S>(pred_ctr_y + half_h);
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
