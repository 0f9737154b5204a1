// detbench.retinanet_postprocess: pieces shared by its schema, Meta kernel, the composite
// pipeline and the CPU/CUDA decode kernels.
#pragma once

#include <cstdint>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>

namespace detbench {

constexpr int kRetinaMaxLevels = 8;

// Checks every argument (metadata only, never a sync; symbolic sizes, so the Meta kernel runs it).
void retinanet_check(at::TensorList cls_logits, at::TensorList box_deltas, at::TensorList anchors,
                     const at::Tensor& image_sizes, double score_thresh, int64_t topk_candidates,
                     double nms_thresh, int64_t detections_per_img);

// The inputs of the decode kernels, for one call. Level l's top-k: topk_logits[l] / topk_index[l]
// [B, k_l] (k_l = min(K, N_l * C)); deltas[l] [B, N_l, 4] and anchors[l] [N_l, 4] or [B, N_l, 4],
// contiguous, in the logits' dtype; image_sizes [B, 2] int64 (height, width).
struct RetinaDecodeInputs {
  std::vector<at::Tensor> topk_logits, topk_index, deltas, anchors;
  at::Tensor image_sizes;
  int64_t batch, classes, candidates_per_level;  // B, C, K
  double score_thresh;
};

// The candidates, slot (b, l * K + j) for the j-th of level l's top-k of image b: boxes
// [B, L * K, 4], scores [B, L * K] (logits' dtype), labels [B, L * K] int64, and segment [B * L * K]
// int64: b * C + label for a candidate scoring > score_thresh, B * C (no segment) otherwise.
// Slots without a candidate (j >= k_l, or scoring <= score_thresh) have box 0 and score 0.
struct RetinaCandidates {
  at::Tensor boxes, scores, labels, segment;
  // How many slots hold a candidate (score above score_thresh), where the decode kernel knows it
  // without a sync (the CPU's: the pipeline then skips NMS when there is none); -1 where unknown.
  int64_t valid_slots = -1;
};

using RetinaDecodeFn = RetinaCandidates (*)(const RetinaDecodeInputs&);

// A device's own per-level top-k (values = the logits, index = anchor * C + class, both [B, k]),
// or nullptr for at::topk of the logits. It may take only candidates scoring above score_thresh,
// padding with logit -inf (score 0, never a candidate for score_thresh >= 0, where it is used).
using RetinaTopkFn = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& logits, int64_t k, double score_thresh);

// Checks the arguments of detbench._retinanet_topk_above (logits [B, m] floating, k >= 0).
void retinanet_topk_check(const at::Tensor& logits, int64_t k);

// The whole pipeline on any device, given that device's decode kernel: per-level top-k, decode,
// class-aware NMS (segmented over image x class), the top detections per image.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> retinanet_postprocess_pipeline(
    at::TensorList cls_logits, at::TensorList box_deltas, at::TensorList anchors, const at::Tensor& image_sizes,
    double score_thresh, int64_t topk_candidates, double nms_thresh, int64_t detections_per_img,
    RetinaDecodeFn decode, RetinaTopkFn topk = nullptr);

// The error for a candidate whose decoded box is NaN (a NaN in box_deltas or anchors).
[[noreturn]] void retinanet_nan_box_error(int64_t level, int64_t image, int64_t anchor);

}  // namespace detbench
