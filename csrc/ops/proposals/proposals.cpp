// Schema, argument checks and Meta kernel of detbench.generate_proposals.
#include "ops/proposals/proposals.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

constexpr const char* kOp = "generate_proposals";

bool is_float_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> generate_proposals_allocate(
    const at::Tensor& objectness, const at::Tensor& deltas, const at::Tensor& anchors, const at::Tensor& image_sizes,
    at::IntArrayRef num_anchors_per_level, int64_t pre_nms_top_n, int64_t post_nms_top_n, double nms_thresh,
    double min_size, double score_thresh) {
  DETBENCH_CHECK(objectness.dim() == 2, kOp, "objectness must have shape [B, A], got ", objectness.sym_sizes());
  const c10::SymInt B = objectness.sym_size(0);
  const c10::SymInt A = objectness.sym_size(1);
  DETBENCH_CHECK(is_float_dtype(objectness.scalar_type()), kOp,
                 "objectness must be float16, bfloat16, float32 or float64, got ", objectness.scalar_type());
  DETBENCH_CHECK(deltas.dim() == 3 && deltas.sym_size(0) == B && deltas.sym_size(1) == A && deltas.sym_size(2) == 4,
                 kOp, "deltas must have shape [B, A, 4] = [", B, ", ", A, ", 4] (as objectness), got ",
                 deltas.sym_sizes());
  DETBENCH_CHECK(deltas.scalar_type() == objectness.scalar_type(), kOp, "deltas must have the dtype of objectness (",
                 objectness.scalar_type(), "), got ", deltas.scalar_type());
  DETBENCH_CHECK((anchors.dim() == 2 && anchors.sym_size(0) == A && anchors.sym_size(1) == 4) ||
                     (anchors.dim() == 3 && anchors.sym_size(0) == B && anchors.sym_size(1) == A &&
                      anchors.sym_size(2) == 4),
                 kOp, "anchors must have shape [A, 4] or [B, A, 4] with A = ", A, ", B = ", B, ", got ",
                 anchors.sym_sizes());
  DETBENCH_CHECK(is_float_dtype(anchors.scalar_type()), kOp,
                 "anchors must be float16, bfloat16, float32 or float64, got ", anchors.scalar_type());
  DETBENCH_CHECK(image_sizes.dim() == 2 && image_sizes.sym_size(0) == B && image_sizes.sym_size(1) == 2, kOp,
                 "image_sizes must have shape [B, 2] (height, width) with B = ", B, ", got ", image_sizes.sym_sizes());
  DETBENCH_CHECK(image_sizes.scalar_type() == at::kInt || image_sizes.scalar_type() == at::kLong, kOp,
                 "image_sizes must be int32 or int64, got ", image_sizes.scalar_type());
  for (const auto* t : {&deltas, &anchors, &image_sizes}) {
    DETBENCH_CHECK(t->device() == objectness.device(), kOp,
                   "deltas, anchors and image_sizes must be on the device of objectness (", objectness.device(),
                   "), got ", t->device());
  }
  const int64_t levels = int64_t(num_anchors_per_level.size());
  DETBENCH_CHECK(levels >= 1 && levels <= kMaxProposalLevels, kOp, "num_anchors_per_level must list 1 to ",
                 kMaxProposalLevels, " levels, got ", levels);
  int64_t sum = 0;
  for (int64_t l = 0; l < levels; ++l) {
    DETBENCH_CHECK(num_anchors_per_level[l] >= 0, kOp, "num_anchors_per_level must be >= 0, got ",
                   num_anchors_per_level[l], " at level ", l);
    sum += num_anchors_per_level[l];
  }
  DETBENCH_CHECK(A == sum, kOp, "num_anchors_per_level must sum to A = ", A, " (the anchors of objectness), got ",
                 sum, " (", num_anchors_per_level, ")");
  DETBENCH_CHECK(pre_nms_top_n >= 0, kOp, "pre_nms_top_n must be >= 0, got ", pre_nms_top_n);
  DETBENCH_CHECK(post_nms_top_n >= 0, kOp, "post_nms_top_n must be >= 0, got ", post_nms_top_n);
  DETBENCH_CHECK(!std::isnan(nms_thresh), kOp, "nms_thresh must not be NaN");
  DETBENCH_CHECK(!std::isnan(min_size), kOp, "min_size must not be NaN");
  DETBENCH_CHECK(!std::isnan(score_thresh), kOp, "score_thresh must not be NaN");
  const auto options = objectness.options();
  const c10::SymInt post(post_nms_top_n);
  return {at::empty_symint({B, post, 4}, options), at::empty_symint({B, post}, options),
          at::empty_symint({B}, options.dtype(at::kLong))};
}

ProposalLevels proposal_levels(at::IntArrayRef num_anchors_per_level, int64_t pre_nms_top_n) {
  ProposalLevels lv{};
  lv.levels = int(num_anchors_per_level.size());
  for (int l = 0; l < lv.levels; ++l) {
    lv.anchor_start[l + 1] = lv.anchor_start[l] + num_anchors_per_level[l];
    lv.top[l] = std::min(pre_nms_top_n, num_anchors_per_level[l]);
    lv.cand_start[l + 1] = lv.cand_start[l] + lv.top[l];
  }
  return lv;
}

std::tuple<at::Tensor, at::Tensor> proposals_nms(const at::Tensor& boxes, const at::Tensor& scores,
                                                 const at::Tensor& offsets, double nms_thresh, int64_t post_nms_top_n) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("detbench::segmented_nms_padded", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&, double, int64_t,
                                                                       std::optional<double>)>();
  return op.call(boxes, scores, offsets, nms_thresh, post_nms_top_n, -std::numeric_limits<double>::infinity());
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> generate_proposals_meta(
    const at::Tensor& objectness, const at::Tensor& deltas, const at::Tensor& anchors, const at::Tensor& image_sizes,
    at::IntArrayRef num_anchors_per_level, int64_t pre_nms_top_n, int64_t post_nms_top_n, double nms_thresh,
    double min_size, double score_thresh) {
  return generate_proposals_allocate(objectness, deltas, anchors, image_sizes, num_anchors_per_level, pre_nms_top_n,
                                     post_nms_top_n, nms_thresh, min_size, score_thresh);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def(
      "generate_proposals(Tensor objectness, Tensor deltas, Tensor anchors, Tensor image_sizes, "
      "int[] num_anchors_per_level, int pre_nms_top_n, int post_nms_top_n, float nms_thresh, float min_size, "
      "float score_thresh) -> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("generate_proposals", &generate_proposals_meta);
}

}  // namespace detbench
