// Schema, argument checks, Meta kernel and the device-independent pipeline of
// detbench.retinanet_postprocess (torchvision's RetinaNet.postprocess_detections, batched).
//
// Pipeline, with no host sync and fixed-size intermediates (CUDA-graph capturable):
//  1. per level (a loop over <= 8 levels in C++, each step batched over the images): top-k of the
//     raw logits, k = min(topk_candidates, N_l * C). sigmoid is increasing, so the top-k logits
//     are the top-k scores, and the elements above score_thresh among them are exactly those
//     torchvision keeps (up to which of several equal scores at the k-th place are taken). The
//     CPU and CUDA take their own top-k of only the elements above score_thresh (RetinaTopkFn:
//     equal scores by index; CUDA's in cuda/topk_above.cu, exactly the CPU's selection); below a
//     score_thresh of 0 every non-NaN logit is above it: the k largest, NaN ranked last;
//  2. one decode kernel over all levels' candidates: score, threshold, label, decode, clip;
//  3. a stable sort of the candidates by segment (image x class), so each segment is contiguous
//     and keeps the candidates' order (level, then top-k rank) for equal scores;
//  4. detbench.segmented_nms_padded over those segments, at most detections_per_img kept each;
//  5. per image, the kept detections of all classes ordered by score (ties: candidate order) and
//     the first detections_per_img taken; padding is box 0, score 0, label -1.
#include "ops/retinanet_postprocess/retinanet_postprocess.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

constexpr const char* kOp = "retinanet_postprocess";

bool is_float_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble;
}

// The k largest logits of each row with NaN ranked below -inf, and the logits themselves as values
// (NaN included). torchvision thresholds the scores before its top-k, so a NaN logit is never a
// candidate; at::topk ranks NaN above +inf, and NaNs would take real candidates' slots. Ranked by
// the logits' bits as integers in float order (exact: float32 holds half and bfloat16 values).
std::tuple<at::Tensor, at::Tensor> topk_nan_last(const at::Tensor& logits, int64_t k) {
  const bool wide = logits.scalar_type() == at::kDouble;
  const at::Tensor f = logits.to(wide ? at::kDouble : at::kFloat).contiguous();
  const at::Tensor bits = f.view(wide ? at::kLong : at::kInt);
  const int64_t magnitude = wide ? std::numeric_limits<int64_t>::max() : std::numeric_limits<int32_t>::max();
  // negative floats: their magnitude bits flipped, so that more negative is smaller
  const at::Tensor ordered = bits.bitwise_xor(bits.bitwise_right_shift(wide ? 63 : 31).bitwise_and(magnitude));
  const int64_t lowest = wide ? std::numeric_limits<int64_t>::min() : std::numeric_limits<int32_t>::min();
  const at::Tensor key = ordered.masked_fill(f.isnan(), lowest);
  const at::Tensor index = std::get<1>(at::topk(key, k, 1, /*largest=*/true, /*sorted=*/true));
  return {logits.gather(1, index), index};
}

}  // namespace

void retinanet_check(at::TensorList cls_logits, at::TensorList box_deltas, at::TensorList anchors,
                     const at::Tensor& image_sizes, double score_thresh, int64_t topk_candidates,
                     double nms_thresh, int64_t detections_per_img) {
  const int64_t levels = static_cast<int64_t>(cls_logits.size());
  DETBENCH_CHECK(levels >= 1 && levels <= kRetinaMaxLevels, kOp, "cls_logits must have 1 to ", kRetinaMaxLevels,
                 " levels, got ", levels);
  DETBENCH_CHECK(static_cast<int64_t>(box_deltas.size()) == levels, kOp, "box_deltas must have ", levels,
                 " levels (as cls_logits), got ", box_deltas.size());
  DETBENCH_CHECK(static_cast<int64_t>(anchors.size()) == levels, kOp, "anchors must have ", levels,
                 " levels (as cls_logits), got ", anchors.size());
  const at::Tensor& first = cls_logits[0];
  DETBENCH_CHECK(first.dim() == 3, kOp, "cls_logits[0] must have shape [B, N, C], got ", first.sym_sizes());
  DETBENCH_CHECK(is_float_dtype(first.scalar_type()), kOp,
                 "cls_logits must be float16, bfloat16, float32 or float64, got ", first.scalar_type());
  const c10::SymInt batch = first.sym_size(0);
  const c10::SymInt classes = first.sym_size(2);
  DETBENCH_CHECK(classes >= 1, kOp, "cls_logits must have at least one class, got shape ", first.sym_sizes());
  for (int64_t l = 0; l < levels; ++l) {
    const at::Tensor& logits = cls_logits[l];
    const at::Tensor& deltas = box_deltas[l];
    const at::Tensor& anc = anchors[l];
    DETBENCH_CHECK(logits.dim() == 3 && logits.sym_size(0) == batch && logits.sym_size(2) == classes, kOp,
                   "cls_logits[", l, "] must have shape [B, N, C] with B = ", batch, " and C = ", classes,
                   " (as cls_logits[0]), got ", logits.sym_sizes());
    DETBENCH_CHECK(logits.scalar_type() == first.scalar_type(), kOp, "cls_logits[", l,
                   "] must have the dtype of cls_logits[0] (", first.scalar_type(), "), got ", logits.scalar_type());
    DETBENCH_CHECK(logits.device() == first.device(), kOp, "cls_logits[", l,
                   "] must be on the device of cls_logits[0] (", first.device(), "), got ", logits.device());
    const c10::SymInt n = logits.sym_size(1);
    DETBENCH_CHECK(deltas.dim() == 3 && deltas.sym_size(0) == batch && deltas.sym_size(1) == n &&
                       deltas.sym_size(2) == 4,
                   kOp, "box_deltas[", l, "] must have shape [", batch, ", ", n, ", 4] (B and N of cls_logits[", l,
                   "]), got ", deltas.sym_sizes());
    DETBENCH_CHECK(deltas.scalar_type() == first.scalar_type(), kOp, "box_deltas[", l,
                   "] must have the dtype of cls_logits (", first.scalar_type(), "), got ", deltas.scalar_type());
    DETBENCH_CHECK(deltas.device() == first.device(), kOp, "box_deltas[", l, "] must be on the device of cls_logits (",
                   first.device(), "), got ", deltas.device());
    const bool shared = anc.dim() == 2 && anc.sym_size(0) == n && anc.sym_size(1) == 4;
    const bool per_image = anc.dim() == 3 && anc.sym_size(0) == batch && anc.sym_size(1) == n && anc.sym_size(2) == 4;
    DETBENCH_CHECK(shared || per_image, kOp, "anchors[", l, "] must have shape [", n, ", 4] or [", batch, ", ", n,
                   ", 4] (N of cls_logits[", l, "]), got ", anc.sym_sizes());
    DETBENCH_CHECK(is_float_dtype(anc.scalar_type()), kOp, "anchors[", l,
                   "] must be float16, bfloat16, float32 or float64, got ", anc.scalar_type());
    DETBENCH_CHECK(anc.device() == first.device(), kOp, "anchors[", l, "] must be on the device of cls_logits (",
                   first.device(), "), got ", anc.device());
  }
  DETBENCH_CHECK(image_sizes.dim() == 2 && image_sizes.sym_size(0) == batch && image_sizes.sym_size(1) == 2, kOp,
                 "image_sizes must have shape [B, 2] = [", batch, ", 2] (height, width per image), got ",
                 image_sizes.sym_sizes());
  DETBENCH_CHECK(at::isIntegralType(image_sizes.scalar_type(), /*includeBool=*/false), kOp,
                 "image_sizes must be an integer tensor, got ", image_sizes.scalar_type());
  DETBENCH_CHECK(image_sizes.device() == first.device(), kOp, "image_sizes must be on the device of cls_logits (",
                 first.device(), "), got ", image_sizes.device());
  DETBENCH_CHECK(!std::isnan(score_thresh), kOp, "score_thresh must not be NaN");
  DETBENCH_CHECK(!std::isnan(nms_thresh), kOp, "nms_thresh must not be NaN");
  DETBENCH_CHECK(topk_candidates >= 0, kOp, "topk_candidates must be >= 0, got ", topk_candidates);
  DETBENCH_CHECK(detections_per_img >= 0, kOp, "detections_per_img must be >= 0, got ", detections_per_img);
}

void retinanet_topk_check(const at::Tensor& logits, int64_t k) {
  DETBENCH_CHECK(logits.dim() == 2, kOp, "logits must have shape [B, m], got ", logits.sym_sizes());
  DETBENCH_CHECK(is_float_dtype(logits.scalar_type()), kOp,
                 "logits must be float16, bfloat16, float32 or float64, got ", logits.scalar_type());
  DETBENCH_CHECK(k >= 0, kOp, "k must be >= 0, got ", k);
}

void retinanet_nan_box_error(int64_t level, int64_t image, int64_t anchor) {
  TORCH_CHECK(false, "detbench.", kOp, ": the box decoded for image ", image, ", level ", level, ", anchor ", anchor,
              " is NaN (box_deltas[", level, "] or anchors[", level, "] has a NaN there)");
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_outputs(const at::Tensor& logits,
                                                                            int64_t detections_per_img) {
  const c10::SymInt batch = logits.sym_size(0);
  const c10::SymInt d(detections_per_img);
  const auto options = logits.options();
  return {at::empty_symint({batch, d, 4}, options), at::empty_symint({batch, d}, options),
          at::empty_symint({batch, d}, options.dtype(at::kLong)), at::empty_symint({batch}, options.dtype(at::kLong))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> retinanet_meta(
    at::TensorList cls_logits, at::TensorList box_deltas, at::TensorList anchors, const at::Tensor& image_sizes,
    double score_thresh, int64_t topk_candidates, double nms_thresh, int64_t detections_per_img) {
  retinanet_check(cls_logits, box_deltas, anchors, image_sizes, score_thresh, topk_candidates, nms_thresh,
                  detections_per_img);
  return allocate_outputs(cls_logits[0], detections_per_img);
}

std::tuple<at::Tensor, at::Tensor> topk_above_meta(const at::Tensor& logits, int64_t k, double /*score_thresh*/) {
  retinanet_topk_check(logits, k);
  const c10::SymInt rows = logits.sym_size(0);
  return {at::empty_symint({rows, c10::SymInt(k)}, logits.options()),
          at::empty_symint({rows, c10::SymInt(k)}, logits.options().dtype(at::kLong))};
}

std::tuple<at::Tensor, at::Tensor> call_segmented_nms_padded(const at::Tensor& boxes, const at::Tensor& scores,
                                                            const at::Tensor& offsets, double iou_threshold,
                                                            int64_t max_output) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("detbench::segmented_nms_padded", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&, double, int64_t,
                                                                       std::optional<double>)>();
  return op.call(boxes, scores, offsets, iou_threshold, max_output, std::nullopt);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> retinanet_postprocess_pipeline(
    at::TensorList cls_logits, at::TensorList box_deltas, at::TensorList anchors, const at::Tensor& image_sizes,
    double score_thresh, int64_t topk_candidates, double nms_thresh, int64_t detections_per_img,
    RetinaDecodeFn decode, RetinaTopkFn topk) {
  retinanet_check(cls_logits, box_deltas, anchors, image_sizes, score_thresh, topk_candidates, nms_thresh,
                  detections_per_img);
  const int64_t levels = static_cast<int64_t>(cls_logits.size());
  const int64_t batch = cls_logits[0].size(0);
  const int64_t classes = cls_logits[0].size(2);
  const int64_t K = topk_candidates;
  const int64_t D = detections_per_img;
  auto [out_boxes, out_scores, out_labels, out_counts] = allocate_outputs(cls_logits[0], D);
  if (batch == 0) {
    return {out_boxes, out_scores, out_labels, out_counts};
  }
  const auto dtype = cls_logits[0].scalar_type();
  const auto long_options = cls_logits[0].options().dtype(at::kLong);

  // 1. top-k of each level's logits, over all images at once.
  RetinaDecodeInputs in;
  in.batch = batch;
  in.classes = classes;
  in.candidates_per_level = K;
  in.score_thresh = score_thresh;
  in.image_sizes = image_sizes.to(at::kLong).contiguous();
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t n = cls_logits[l].size(1);
    const int64_t k = std::min(K, n * classes);
    const at::Tensor flat = cls_logits[l].reshape({batch, n * classes});
    auto [values, index] = topk != nullptr && score_thresh >= 0.0 ? topk(flat, k, score_thresh)
                                                                  : topk_nan_last(flat, k);
    in.topk_logits.push_back(values.contiguous());
    in.topk_index.push_back(index.contiguous());
    in.deltas.push_back(box_deltas[l].contiguous());
    in.anchors.push_back(anchors[l].to(dtype).contiguous());
  }
  // 2. scores, labels, boxes of every candidate slot.
  const RetinaCandidates cand = decode(in);
  if (D == 0 || cand.segment.numel() == 0 || cand.valid_slots == 0) {  // nothing can be kept: all padding
    out_boxes.zero_();
    out_scores.zero_();
    out_labels.fill_(-1);
    return {out_boxes, out_scores, out_labels, out_counts.zero_()};
  }
  // 3. contiguous segments of image x class, candidates in slot order inside each.
  const int64_t segments = batch * classes;
  auto [sorted_segment, perm] = at::sort(cand.segment, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor flat_boxes = cand.boxes.view({-1, 4});
  const at::Tensor flat_scores = cand.scores.view({-1});
  const at::Tensor offsets = at::searchsorted(sorted_segment, at::arange(segments + 1, long_options));
  // 4. class-aware NMS of every image at once.
  auto [kept, kept_counts] = call_segmented_nms_padded(flat_boxes.index_select(0, perm),
                                                       flat_scores.index_select(0, perm), offsets, nms_thresh, D);
  // 5. per image: the kept candidates of all classes by score, ties by slot; the first D.
  const at::Tensor kept_pos = kept.view({batch, classes * D});
  const at::Tensor valid = kept_pos.ge(0);
  const at::Tensor slot = perm.index_select(0, kept_pos.clamp_min(0).flatten()).view({batch, classes * D});
  const at::Tensor by_slot =
      std::get<1>(at::sort(at::where(valid, slot, std::numeric_limits<int64_t>::max()), /*stable=*/true, 1, false));
  const at::Tensor kept_scores = at::where(valid, flat_scores.index_select(0, slot.flatten()).view({batch, -1}),
                                           -std::numeric_limits<double>::infinity());
  const at::Tensor by_score =
      std::get<1>(at::sort(kept_scores.gather(1, by_slot), /*stable=*/true, 1, /*descending=*/true));
  const at::Tensor order = by_slot.gather(1, by_score).narrow(1, 0, D);
  const at::Tensor final_slot = slot.gather(1, order).flatten();
  const at::Tensor final_valid = valid.gather(1, order);
  out_boxes.copy_(at::where(final_valid.unsqueeze(-1), flat_boxes.index_select(0, final_slot).view({batch, D, 4}), 0));
  out_scores.copy_(at::where(final_valid, flat_scores.index_select(0, final_slot).view({batch, D}), 0));
  out_labels.copy_(at::where(final_valid, cand.labels.view({-1}).index_select(0, final_slot).view({batch, D}), -1));
  out_counts.copy_(valid.sum(1).clamp_max(D));
  return {out_boxes, out_scores, out_labels, out_counts};
}

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def(
      "retinanet_postprocess(Tensor[] cls_logits, Tensor[] box_deltas, Tensor[] anchors, Tensor image_sizes, "
      "float score_thresh=0.05, int topk_candidates=1000, float nms_thresh=0.5, int detections_per_img=300) "
      "-> (Tensor, Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  // Internal, for tests: the per-level top-k each device's pipeline uses (topk_above_cpu /
  // topk_above_cuda) on logits [B, m]: values [B, k] and int64 index [B, k], the top k elements
  // scoring > score_thresh by score descending, equal scores by index ascending, padded with
  // (-inf, 0).
  m.def("_retinanet_topk_above(Tensor logits, int k, float score_thresh) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("retinanet_postprocess", &retinanet_meta);
  m.impl("_retinanet_topk_above", &topk_above_meta);
}

}  // namespace detbench
