// detbench.match_proposals and detbench.match_boxes: torchvision's Matcher, batched.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

namespace detbench {

constexpr int64_t kBelowLowThreshold = -1;
constexpr int64_t kBetweenThresholds = -2;

// torch.max's order: NaN is larger than every number; the first of equal maxima wins (callers
// visit candidates in ascending index and replace only on "better").
template <typename T>
C10_HOST_DEVICE inline bool match_better(T candidate, T best) {
  return candidate > best || (candidate != candidate && best == best);
}

template <typename T>
C10_HOST_DEVICE inline T match_max(T a, T b) {
  return match_better(b, a) ? b : a;
}

// Matcher's decision for one prediction: its best value and gt, whether it is rescued by the
// low-quality rule (it reaches some gt's highest quality); thresholds already in T.
template <typename T>
C10_HOST_DEVICE inline int64_t match_decision(T best, int64_t best_gt, bool rescued, T high, T low) {
  if (rescued) {
    return best_gt;
  }
  if (best < low) {
    return kBelowLowThreshold;
  }
  if (best < high) {
    return kBetweenThresholds;
  }
  return best_gt;  // also where best is NaN: torchvision's comparisons are all false there
}

// Checks match_proposals' arguments (metadata only) and returns its uninitialized output:
// int64 [B, P] for iou [B, G, P], [P] for iou [G, P].
at::Tensor match_proposals_allocate(const at::Tensor& iou, const std::optional<at::Tensor>& gt_counts, double high,
                                    double low);

// Same for match_boxes: int64 [B, P] for gt_boxes [B, G, 4], [P] for gt_boxes [G, 4].
at::Tensor match_boxes_allocate(const at::Tensor& gt_boxes, const std::optional<at::Tensor>& gt_counts,
                                const at::Tensor& proposals, double high, double low);

// The value error for gt_counts (CPU always, CUDA in validation mode).
[[noreturn]] void match_bad_count_error(const char* op, int64_t image, int64_t count, int64_t g);

}  // namespace detbench
