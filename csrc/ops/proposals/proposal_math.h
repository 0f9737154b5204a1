// One candidate of detbench.generate_proposals, on the host and the device: torchvision's
// decode (BoxCoder(weights=(1, 1, 1, 1)), clip log(1000 / 16)), clip_boxes_to_image,
// remove_small_boxes and the score threshold, each rounded to S as torchvision's eager ops are.
#pragma once

#include <cmath>
#include <limits>

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>

#include "ops/box_coder/box_coder.h"

namespace detbench {

template <typename T>
C10_HOST_DEVICE inline bool finite_value(T x) {
#ifdef __CUDA_ARCH__
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

// torch.clamp(x, min=0, max=limit): NaN stays NaN.
template <typename T>
C10_HOST_DEVICE inline T clamp_keep_nan(T x, T limit) {
  if (x != x) {
    return x;
  }
  x = x < T(0) ? T(0) : x;
  return x > limit ? limit : x;
}

struct CandidateParams {
  double min_size;
  double score_thresh;
};

// anchor: the anchor as stored (any float type A); returns whether the candidate survives the
// filters; box and score are written either way (box zero and score -inf when it does not).
template <typename S, typename A>
C10_HOST_DEVICE inline bool candidate_box(const A* anchor, const S* delta, S logit, int64_t height, int64_t width,
                                          const CandidateParams& p, S box[4], S* score) {
  using T = at::opmath_type<S>;
  const T ref[4] = {T(S(anchor[0])), T(S(anchor[1])), T(S(anchor[2])), T(S(anchor[3]))};
  const T d[4] = {T(delta[0]), T(delta[1]), T(delta[2]), T(delta[3])};
  const DecodeParams<T> dp{T(1), T(1), T(1), T(1), T(4.135166556742356)};  // log(1000 / 16)
  T b[4];
  decode_box<S>(ref, d, dp, b);
  const T w_limit = T(S(T(width)));
  const T h_limit = T(S(T(height)));
  b[0] = clamp_keep_nan(b[0], w_limit);
  b[2] = clamp_keep_nan(b[2], w_limit);
  b[1] = clamp_keep_nan(b[1], h_limit);
  b[3] = clamp_keep_nan(b[3], h_limit);
  const T min_size = T(S(p.min_size));
  const T ws = round_to<S>(b[2] - b[0]);
  const T hs = round_to<S>(b[3] - b[1]);
  const T prob = round_to<S>(T(1) / (T(1) + exp_of(-T(logit))));
  const bool keep = ws >= min_size && hs >= min_size && prob >= T(S(p.score_thresh)) && finite_value(b[0]) &&
                    finite_value(b[1]) && finite_value(b[2]) && finite_value(b[3]);
  for (int k = 0; k < 4; ++k) {
    box[k] = keep ? S(b[k]) : S(0);
  }
  *score = keep ? S(prob) : S(-std::numeric_limits<T>::infinity());
  return keep;
}

}  // namespace detbench
