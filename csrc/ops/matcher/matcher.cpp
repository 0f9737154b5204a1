// Schemas, argument checks and Meta kernels of detbench.match_proposals and match_boxes.
#include "ops/matcher/matcher.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "detbench.h"

namespace detbench {

namespace {

bool is_float_dtype(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

void check_thresholds(const char* op, double high, double low) {
  DETBENCH_CHECK(!std::isnan(high) && !std::isnan(low), op, "high and low must not be NaN, got high = ", high,
                 ", low = ", low);
  DETBENCH_CHECK(low <= high, op, "low must be <= high, got low = ", low, ", high = ", high);
}

void check_counts(const char* op, const std::optional<at::Tensor>& gt_counts, int64_t dim, const c10::SymInt& batch,
                  const at::Device& device) {
  if (!gt_counts.has_value()) {
    return;
  }
  DETBENCH_CHECK(dim == 3, op, "gt_counts is only for batched inputs (a leading batch dimension)");
  DETBENCH_CHECK(gt_counts->dim() == 1 && gt_counts->sym_size(0) == batch, op, "gt_counts must have shape [B] with B = ",
                 batch, ", got ", gt_counts->sym_sizes());
  DETBENCH_CHECK(at::isIntegralType(gt_counts->scalar_type(), /*includeBool=*/false), op,
                 "gt_counts must be an integer tensor, got ", gt_counts->scalar_type());
  DETBENCH_CHECK(gt_counts->device() == device, op, "gt_counts must be on the same device (", device, "), got ",
                 gt_counts->device());
}

}  // namespace

at::Tensor match_proposals_allocate(const at::Tensor& iou, const std::optional<at::Tensor>& gt_counts, double high,
                                    double low) {
  constexpr const char* op = "match_proposals";
  DETBENCH_CHECK(iou.dim() == 2 || iou.dim() == 3, op, "iou must have shape [G, P] or [B, G, P], got ", iou.sym_sizes());
  DETBENCH_CHECK(is_float_dtype(iou.scalar_type()), op, "iou must be float16, bfloat16, float32 or float64, got ",
                 iou.scalar_type());
  check_counts(op, gt_counts, iou.dim(), iou.sym_size(0), iou.device());
  check_thresholds(op, high, low);
  if (iou.dim() == 3) {
    return at::empty_symint({iou.sym_size(0), iou.sym_size(2)}, iou.options().dtype(at::kLong));
  }
  return at::empty_symint({iou.sym_size(1)}, iou.options().dtype(at::kLong));
}

at::Tensor match_boxes_allocate(const at::Tensor& gt_boxes, const std::optional<at::Tensor>& gt_counts,
                                const at::Tensor& proposals, double high, double low) {
  constexpr const char* op = "match_boxes";
  DETBENCH_CHECK((gt_boxes.dim() == 2 || gt_boxes.dim() == 3) && gt_boxes.sym_size(-1) == 4, op,
                 "gt_boxes must have shape [G, 4] or [B, G, 4], got ", gt_boxes.sym_sizes());
  DETBENCH_CHECK(is_float_dtype(gt_boxes.scalar_type()), op,
                 "gt_boxes must be float16, bfloat16, float32 or float64, got ", gt_boxes.scalar_type());
  DETBENCH_CHECK((proposals.dim() == 2 || proposals.dim() == gt_boxes.dim()) && proposals.sym_size(-1) == 4, op,
                 "proposals must have shape [P, 4]", gt_boxes.dim() == 3 ? " or [B, P, 4]" : "", ", got ",
                 proposals.sym_sizes());
  if (proposals.dim() == 3) {
    DETBENCH_CHECK(proposals.sym_size(0) == gt_boxes.sym_size(0), op, "proposals must have batch size ",
                   gt_boxes.sym_size(0), " (as gt_boxes), got shape ", proposals.sym_sizes());
  }
  DETBENCH_CHECK(proposals.scalar_type() == gt_boxes.scalar_type(), op, "proposals must have the dtype of gt_boxes (",
                 gt_boxes.scalar_type(), "), got ", proposals.scalar_type());
  DETBENCH_CHECK(proposals.device() == gt_boxes.device(), op, "proposals must be on the device of gt_boxes (",
                 gt_boxes.device(), "), got ", proposals.device());
  check_counts(op, gt_counts, gt_boxes.dim(), gt_boxes.sym_size(0), gt_boxes.device());
  check_thresholds(op, high, low);
  if (gt_boxes.dim() == 3) {
    return at::empty_symint({gt_boxes.sym_size(0), proposals.sym_size(-2)}, gt_boxes.options().dtype(at::kLong));
  }
  return at::empty_symint({proposals.sym_size(-2)}, gt_boxes.options().dtype(at::kLong));
}

void match_bad_count_error(const char* op, int64_t image, int64_t count, int64_t g) {
  TORCH_CHECK(false, "detbench.", op, ": gt_counts[", image, "] must be in [0, G = ", g, "], got ", count);
}

namespace {

at::Tensor match_proposals_meta(const at::Tensor& iou, const std::optional<at::Tensor>& gt_counts, double high,
                                double low, bool allow_low_quality_matches) {
  return match_proposals_allocate(iou, gt_counts, high, low);
}

at::Tensor match_boxes_meta(const at::Tensor& gt_boxes, const std::optional<at::Tensor>& gt_counts,
                            const at::Tensor& proposals, double high, double low, bool allow_low_quality_matches) {
  return match_boxes_allocate(gt_boxes, gt_counts, proposals, high, low);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(detbench, m) {
  m.def(
      "match_proposals(Tensor iou, Tensor? gt_counts, float high, float low, bool allow_low_quality_matches) "
      "-> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "match_boxes(Tensor gt_boxes, Tensor? gt_counts, Tensor proposals, float high, float low, "
      "bool allow_low_quality_matches) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(detbench, Meta, m) {
  m.impl("match_proposals", &match_proposals_meta);
  m.impl("match_boxes", &match_boxes_meta);
}

}  // namespace detbench
