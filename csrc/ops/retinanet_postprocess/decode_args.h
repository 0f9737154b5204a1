// Builds the decode kernels' arguments and outputs from a RetinaDecodeInputs (host side; shared
// by the CPU and CUDA kernels).
#pragma once

#include <ATen/ATen.h>

#include "ops/retinanet_postprocess/decode_math.h"
#include "ops/retinanet_postprocess/retinanet_postprocess.h"

namespace detbench {

inline RetinaCandidates retinanet_allocate_candidates(const RetinaDecodeInputs& in) {
  const int64_t slots = static_cast<int64_t>(in.topk_logits.size()) * in.candidates_per_level;
  const auto options = in.deltas[0].options();
  return {at::empty({in.batch, slots, 4}, options), at::empty({in.batch, slots}, options),
          at::empty({in.batch, slots}, options.dtype(at::kLong)), at::empty({in.batch * slots}, options.dtype(at::kLong))};
}

template <typename scalar_t>
RetinaDecodeArgs<scalar_t> retinanet_decode_args(const RetinaDecodeInputs& in, const RetinaCandidates& out) {
  RetinaDecodeArgs<scalar_t> a{};
  a.levels = static_cast<int64_t>(in.topk_logits.size());
  for (int64_t l = 0; l < a.levels; ++l) {
    RetinaLevelView<scalar_t>& lv = a.level[l];
    lv.topk_logits = in.topk_logits[l].const_data_ptr<scalar_t>();
    lv.topk_index = in.topk_index[l].const_data_ptr<int64_t>();
    lv.deltas = in.deltas[l].const_data_ptr<scalar_t>();
    lv.anchors = in.anchors[l].const_data_ptr<scalar_t>();
    lv.k = in.topk_logits[l].size(1);
    lv.n = in.deltas[l].size(1);
    lv.anchors_image_stride = in.anchors[l].dim() == 3 ? lv.n * 4 : 0;
  }
  a.image_sizes = in.image_sizes.const_data_ptr<int64_t>();
  a.boxes = out.boxes.mutable_data_ptr<scalar_t>();
  a.scores = out.scores.mutable_data_ptr<scalar_t>();
  a.labels = out.labels.mutable_data_ptr<int64_t>();
  a.segment = out.segment.mutable_data_ptr<int64_t>();
  a.K = in.candidates_per_level;
  a.classes = in.classes;
  a.batch = in.batch;
  a.score_thresh = static_cast<scalar_t>(in.score_thresh);
  return a;
}

// Level, image and anchor of a slot whose box came out NaN, for retinanet_nan_box_error.
template <typename scalar_t>
[[noreturn]] void retinanet_raise_nan_slot(const RetinaDecodeInputs& in, const RetinaDecodeArgs<scalar_t>& a,
                                           int64_t s) {
  const int64_t j = s % a.K, l = (s / a.K) % a.levels, b = s / (a.K * a.levels);
  const int64_t flat = in.topk_index[l].select(0, b).select(0, j).item<int64_t>();
  retinanet_nan_box_error(l, b, flat / a.classes);
}

}  // namespace detbench
