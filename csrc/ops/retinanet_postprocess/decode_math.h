// One RetinaNet candidate's score and box, computed exactly as torchvision's
// postprocess_detections computes them in the inputs' dtype: every PyTorch operation rounds its
// result to the dtype, so each step here is rounded to scalar_t (R below) and products are
// rounded on their own (no fused multiply-add), on the host and the device alike.
//   score = sigmoid(logit) = 1 / (1 + exp(-logit))     (torch's sigmoid kernel, in float/double)
//   BoxCoder(weights=(1, 1, 1, 1)).decode_single, then clip_boxes_to_image.
#pragma once

#include <cmath>
#include <cstdint>

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include "ops/box_iou/iou.h"  // mul_rn

namespace detbench {

// torchvision's BoxCoder default bbox_xform_clip: log(1000 / 16).
constexpr double kBoxXformClip = 4.135166556742356;

// The top-k pre-filter's logit bound (CPU and CUDA): score_thresh's logit log(t) - log1p(-t) minus a
// margin of 1, far above any rounding of a score; a logit below it cannot score above the
// threshold. -inf at t = 0, +inf at t = 1.
inline double score_threshold_logit_bound(double score_thresh) {
  return std::log(score_thresh) - std::log1p(-score_thresh) - 1.0;
}

template <typename scalar_t, typename T>
C10_HOST_DEVICE inline T round_to(T v) {
  return static_cast<T>(static_cast<scalar_t>(v));
}

template <typename scalar_t, typename T>
C10_HOST_DEVICE inline T sigmoid_score(scalar_t logit) {
  using std::exp;
  return round_to<scalar_t>(T(1) / (T(1) + exp(-static_cast<T>(logit))));
}

// clamp(v, lo, hi) as torch.clamp: NaN stays NaN.
template <typename T>
C10_HOST_DEVICE inline T clamp_nan(T v, T lo, T hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// delta: (dx, dy, dw, dh); anchor: (x1, y1, x2, y2); writes the clipped box to out.
template <typename scalar_t, typename T>
C10_HOST_DEVICE inline void decode_clip(const scalar_t* delta, const scalar_t* anchor, T height, T width,
                                        scalar_t* out) {
  using std::exp;
  auto R = [](T v) { return round_to<scalar_t>(v); };
  const T ax1 = anchor[0], ay1 = anchor[1], ax2 = anchor[2], ay2 = anchor[3];
  const T widths = R(ax2 - ax1);
  const T heights = R(ay2 - ay1);
  const T ctr_x = R(ax1 + R(mul_rn(T(0.5), widths)));
  const T ctr_y = R(ay1 + R(mul_rn(T(0.5), heights)));
  const T clip = static_cast<T>(kBoxXformClip);
  const T dx = delta[0], dy = delta[1];
  T dw = delta[2], dh = delta[3];
  dw = R(dw > clip ? clip : dw);
  dh = R(dh > clip ? clip : dh);
  const T pred_ctr_x = R(R(mul_rn(dx, widths)) + ctr_x);
  const T pred_ctr_y = R(R(mul_rn(dy, heights)) + ctr_y);
  const T pred_w = R(mul_rn(R(exp(dw)), widths));
  const T pred_h = R(mul_rn(R(exp(dh)), heights));
  const T half_w = R(mul_rn(T(0.5), pred_w));
  const T half_h = R(mul_rn(T(0.5), pred_h));
  out[0] = static_cast<scalar_t>(clamp_nan(R(pred_ctr_x - half_w), T(0), width));
  out[1] = static_cast<scalar_t>(clamp_nan(R(pred_ctr_y - half_h), T(0), height));
  out[2] = static_cast<scalar_t>(clamp_nan(R(pred_ctr_x + half_w), T(0), width));
  out[3] = static_cast<scalar_t>(clamp_nan(R(pred_ctr_y + half_h), T(0), height));
}

}  // namespace detbench

namespace detbench {

constexpr int kRetinaDecodeMaxLevels = 8;

// Level l's pointers for the decode kernels (contiguous tensors).
template <typename scalar_t>
struct RetinaLevelView {
  const scalar_t* topk_logits;   // [B, k]
  const int64_t* topk_index;     // [B, k], flat index anchor * C + class
  const scalar_t* deltas;        // [B, n, 4]
  const scalar_t* anchors;       // [n, 4] (image stride 0) or [B, n, 4] (image stride n * 4)
  int64_t k, n, anchors_image_stride;
};

template <typename scalar_t>
struct RetinaDecodeArgs {
  RetinaLevelView<scalar_t> level[kRetinaDecodeMaxLevels];
  const int64_t* image_sizes;  // [B, 2] (height, width)
  scalar_t* boxes;             // [B, L * K, 4]
  scalar_t* scores;            // [B, L * K]
  int64_t* labels;             // [B, L * K]
  int64_t* segment;            // [B * L * K]
  int64_t levels, K, classes, batch;
  scalar_t score_thresh;  // in the logits' dtype, as torch compares `scores > score_thresh`
};

// Decodes candidate slot s = (b * L + l) * K + j. Returns whether it holds a candidate above the
// score threshold whose box is NaN (the CPU raises for it; CUDA's NMS never keeps it).
template <typename scalar_t>
C10_HOST_DEVICE inline bool retinanet_decode_slot(const RetinaDecodeArgs<scalar_t>& a, int64_t s) {
  using T = at::opmath_type<scalar_t>;
  const int64_t j = s % a.K;
  const int64_t l = (s / a.K) % a.levels;
  const int64_t b = s / (a.K * a.levels);
  const RetinaLevelView<scalar_t>& lv = a.level[l];
  scalar_t* box = a.boxes + 4 * s;
  bool valid = false;
  T score = 0;
  int64_t label = 0;
  if (j < lv.k) {
    score = sigmoid_score<scalar_t, T>(lv.topk_logits[b * lv.k + j]);
    valid = score > static_cast<T>(a.score_thresh);
    if (valid) {
      const int64_t flat = lv.topk_index[b * lv.k + j];
      const int64_t anchor = flat / a.classes;
      label = flat % a.classes;
      decode_clip<scalar_t, T>(lv.deltas + (b * lv.n + anchor) * 4, lv.anchors + b * lv.anchors_image_stride + anchor * 4,
                               static_cast<T>(a.image_sizes[2 * b]), static_cast<T>(a.image_sizes[2 * b + 1]), box);
    }
  }
  if (!valid) {
    score = 0;
    for (int c = 0; c < 4; ++c) {
      box[c] = static_cast<scalar_t>(0);
    }
  }
  a.scores[s] = static_cast<scalar_t>(score);
  a.labels[s] = label;
  a.segment[s] = valid ? b * a.classes + label : a.batch * a.classes;
  if (!valid) {
    return false;
  }
  using std::isnan;
  return isnan(static_cast<T>(box[0])) || isnan(static_cast<T>(box[1])) || isnan(static_cast<T>(box[2])) ||
         isnan(static_cast<T>(box[3]));
}

}  // namespace detbench
