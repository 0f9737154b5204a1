// detbench.nms, batched_nms, segmented_nms and segmented_nms_padded: pieces shared by their
// schemas, Meta kernels and CPU/CUDA kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>

#include <ATen/core/Tensor.h>

namespace detbench {

// Checks the arguments of one of the NMS ops (op: "nms", "batched_nms", "segmented_nms" or
// "segmented_nms_padded", the name in its error messages): shapes, dtypes, devices and the
// scalar arguments, metadata only, never a sync. Written with symbolic sizes, so that the Meta
// kernels and the Python fake kernels (through detbench._nms_check) run it too.
//   idxs: batched_nms's class ids, else nullptr; offsets: the segmented ops' segment_offsets,
//   else nullptr; max_output_per_segment / score_threshold: the segmented ops' (nullopt: none).
void nms_check(const char* op, const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
               const at::Tensor* offsets, double iou_threshold, std::optional<int64_t> max_output_per_segment,
               std::optional<double> score_threshold);

// The IoU threshold in T, the type IoUs are computed in: the largest T <= iou_threshold. For an
// IoU x of type T, x > nms_threshold<T>(t) iff x > t as real numbers (torchvision's CPU kernel,
// which compares in double), also where t has no exact T (0.3 is between two floats).
template <typename T>
T nms_threshold(double iou_threshold) {
  T t = static_cast<T>(iou_threshold);
  if (static_cast<double>(t) > iou_threshold) {
    t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  }
  return t;
}

// The value errors (CPU always, CUDA in validation mode), with the CPU's message.
[[noreturn]] void nms_nonfinite_box_error(const char* op, int64_t index);
[[noreturn]] void nms_nan_score_error(const char* op, int64_t index);

// Checks segment_offsets' values (offsets[0] >= 0, non-decreasing, offsets[S] <= n), given on
// the host; raises naming the first bad one.
void nms_check_offset_values(const char* op, const int64_t* offsets, int64_t count, int64_t n);

// Outputs of the segmented ops, allocated (uninitialized) after nms_check: the keep mask [N] bool,
// and the padded indices [S, max_output_per_segment] int64 with the counts [S] int64.
at::Tensor segmented_nms_allocate_mask(const at::Tensor& boxes);
std::tuple<at::Tensor, at::Tensor> segmented_nms_allocate_padded(const at::Tensor& boxes, const at::Tensor& offsets,
                                                                int64_t max_output_per_segment);

}  // namespace detbench
