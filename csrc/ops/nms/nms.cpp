// Schemas, argument checks and Meta kernels of detbench.nms, batched_nms, segmented_nms and
// segmented_nms_padded. nms and batched_nms return as many indices as they keep, a size known
// only after running: their fake kernels are Python (ops/nms.py), which run these same checks
// through detbench._nms_check.
#include "ops/nms/nms.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

bool is_box_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble;
}

}  // namespace

void nms_check(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
               const at::Tensor* offsets, double iou_threshold, std::optional<int64_t> max_output_per_segment,
               std::optional<double> score_threshold) {
  DETBENCH_CHECK(boxes.dim() == 2 && boxes.sym_size(1) == 4, op, "boxes must have shape [N, 4], got ",
                 boxes.sym_sizes());
  DETBENCH_CHECK(is_box_dtype(boxes.scalar_type()), op, "boxes must be float16, bfloat16, float32 or float64, got ",
                 boxes.scalar_type());
  DETBENCH_CHECK(scores.dim() == 1 && scores.sym_size(0) == boxes.sym_size(0), op,
                 "scores must have shape [N] with N = ", boxes.sym_size(0), " (the number of boxes), got ",
                 scores.sym_sizes());
  DETBENCH_CHECK(scores.scalar_type() == boxes.scalar_type(), op, "scores must have the same dtype as boxes (",
                 boxes.scalar_type(), "), got ", scores.scalar_type());
  DETBENCH_CHECK(scores.device() == boxes.device(), op, "scores must be on the same device as boxes (",
                 boxes.device(), "), got ", scores.device());
  if (idxs != nullptr) {
    DETBENCH_CHECK(idxs->dim() == 1 && idxs->sym_size(0) == boxes.sym_size(0), op,
                   "idxs must have shape [N] with N = ", boxes.sym_size(0), " (the number of boxes), got ",
                   idxs->sym_sizes());
    DETBENCH_CHECK(at::isIntegralType(idxs->scalar_type(), /*includeBool=*/false), op,
                   "idxs must be an integer tensor, got ", idxs->scalar_type());
    DETBENCH_CHECK(idxs->device() == boxes.device(), op, "idxs must be on the same device as boxes (", boxes.device(),
                   "), got ", idxs->device());
  }
  if (offsets != nullptr) {
    DETBENCH_CHECK(offsets->dim() == 1 && offsets->sym_size(0) >= 1, op,
                   "segment_offsets must have shape [S + 1] (S >= 0 segments), got ", offsets->sym_sizes());
    DETBENCH_CHECK(offsets->scalar_type() == at::kLong, op, "segment_offsets must be int64, got ",
                   offsets->scalar_type());
    DETBENCH_CHECK(offsets->device() == boxes.device(), op, "segment_offsets must be on the same device as boxes (",
                   boxes.device(), "), got ", offsets->device());
  }
  DETBENCH_CHECK(!std::isnan(iou_threshold), op, "iou_threshold must not be NaN");
  if (max_output_per_segment.has_value()) {
    DETBENCH_CHECK(*max_output_per_segment >= 0, op, "max_output_per_segment must be >= 0, got ",
                   *max_output_per_segment);
  }
  if (score_threshold.has_value()) {
    DETBENCH_CHECK(!std::isnan(*score_threshold), op, "score_threshold must not be NaN");
  }
}

void nms_nonfinite_box_error(const char* op, int64_t index) {
  TORCH_CHECK(false, "detbench.", op, ": boxes has a non-finite coordinate (NaN or inf) at box ", index);
}

void nms_nan_score_error(const char* op, int64_t index) {
  TORCH_CHECK(false, "detbench.", op, ": scores has a NaN at box ", index);
}

void nms_check_offset_values(const char* op, const int64_t* offsets, int64_t count, int64_t n) {
  DETBENCH_CHECK(offsets[0] >= 0, op, "segment_offsets[0] must be >= 0, got ", offsets[0]);
  for (int64_t s = 1; s < count; ++s) {
    DETBENCH_CHECK(offsets[s] >= offsets[s - 1], op, "segment_offsets must be non-decreasing, got ", offsets[s - 1],
                   " then ", offsets[s], " at index ", s);
  }
  DETBENCH_CHECK(offsets[count - 1] <= n, op, "segment_offsets[-1] must be <= N = ", n,
                 " (the number of boxes), got ", offsets[count - 1]);
}

at::Tensor segmented_nms_allocate_mask(const at::Tensor& boxes) {
  return at::empty_symint({boxes.sym_size(0)}, boxes.options().dtype(at::kBool));
}

std::tuple<at::Tensor, at::Tensor> segmented_nms_allocate_padded(const at::Tensor& boxes, const at::Tensor& offsets,
                                                                int64_t max_output_per_segment) {
  const c10::SymInt segments = offsets.sym_size(0) - 1;
  const auto options = boxes.options().dtype(at::kLong);
  return {at::empty_symint({segments, c10::SymInt(max_output_per_segment)}, options),
          at::empty_symint({segments}, options)};
}

namespace {

at::Tensor segmented_nms_meta(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& segment_offsets,
                              double iou_threshold, std::optional<int64_t> max_output_per_segment,
                              std::optional<double> score_threshold) {
  nms_check("segmented_nms", boxes, scores, nullptr, &segment_offsets, iou_threshold, max_output_per_segment,
            score_threshold);
  return segmented_nms_allocate_mask(boxes);
}

std::tuple<at::Tensor, at::Tensor> segmented_nms_padded_meta(const at::Tensor& boxes, const at::Tensor& scores,
                                                             const at::Tensor& segment_offsets, double iou_threshold,
                                                             int64_t max_output_per_segment,
                                                             std::optional<double> score_threshold) {
  nms_check("segmented_nms_padded", boxes, scores, nullptr, &segment_offsets, iou_threshold, max_output_per_segment,
            score_threshold);
  return segmented_nms_allocate_padded(boxes, segment_offsets, max_output_per_segment);
}

// detbench._nms_check: the checks alone, for the Python fake kernels of nms and batched_nms.
void nms_check_op(c10::string_view op, const at::Tensor& boxes, const at::Tensor& scores,
                  const std::optional<at::Tensor>& idxs, double iou_threshold) {
  const std::string name(op);
  nms_check(name.c_str(), boxes, scores, idxs.has_value() ? &*idxs : nullptr, nullptr, iou_threshold, std::nullopt,
            std::nullopt);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "segmented_nms(Tensor boxes, Tensor scores, Tensor segment_offsets, float iou_threshold, "
      "int? max_output_per_segment=None, float? score_threshold=None) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "segmented_nms_padded(Tensor boxes, Tensor scores, Tensor segment_offsets, float iou_threshold, "
      "int max_output_per_segment, float? score_threshold=None) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def("_nms_check(str op, Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold) -> ()");
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("segmented_nms", &segmented_nms_meta);
  m.impl("segmented_nms_padded", &segmented_nms_padded_meta);
}

TORCH_LIBRARY_IMPL(detbench, CompositeImplicitAutograd, m) {
  m.impl("_nms_check", &nms_check_op);
}

}  // namespace detbench
