// detbench.generate_proposals: pieces shared by its schema, Meta kernel and CPU/CUDA kernels.
//
// Pipeline (both devices): per (image, level) the pre_nms_top_n anchors with the highest
// objectness (ties: lower anchor index first; NaN counts as the highest, as in torch.topk) ->
// candidates, laid out image-major then level-major, each (image, level) segment in descending
// objectness -> decode, clip, size and score filters (candidate_box) -> segmented NMS, one
// segment per (image, level), at most post_nms_top_n kept each -> per image, the kept boxes of
// all levels merged by (descending score, ascending candidate position), the first post_nms_top_n.
#pragma once

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace detbench {

constexpr int kMaxProposalLevels = 16;

// Per level: where its anchors start, how many candidates it gives (min(pre_nms_top_n, anchors))
// and where they start among an image's K = cand_start[levels] candidates.
struct ProposalLevels {
  int levels;
  int64_t anchor_start[kMaxProposalLevels + 1];
  int64_t top[kMaxProposalLevels];
  int64_t cand_start[kMaxProposalLevels + 1];
};

// Checks generate_proposals' arguments (metadata, the level list and the scalars; never a sync)
// and returns its uninitialized outputs: boxes [B, post, 4] and scores [B, post] in the
// objectness' dtype, counts [B] int64.
std::tuple<at::Tensor, at::Tensor, at::Tensor> generate_proposals_allocate(
    const at::Tensor& objectness, const at::Tensor& deltas, const at::Tensor& anchors, const at::Tensor& image_sizes,
    at::IntArrayRef num_anchors_per_level, int64_t pre_nms_top_n, int64_t post_nms_top_n, double nms_thresh,
    double min_size, double score_thresh);

ProposalLevels proposal_levels(at::IntArrayRef num_anchors_per_level, int64_t pre_nms_top_n);

// detbench.segmented_nms_padded through the dispatcher (either device). Invalid candidates carry
// the score -inf and are dropped by its score_threshold of -inf.
std::tuple<at::Tensor, at::Tensor> proposals_nms(const at::Tensor& boxes, const at::Tensor& scores,
                                                 const at::Tensor& offsets, double nms_thresh, int64_t post_nms_top_n);

}  // namespace detbench
