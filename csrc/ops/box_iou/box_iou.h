// detbench.box_iou(Tensor boxes1, Tensor boxes2) -> Tensor: pieces shared by its kernels.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace detbench {

// Checks the arguments of box_iou (shapes, devices, dtypes: metadata only, never a sync) and
// returns its uninitialized output: [N, M] or [B, N, M], float64 for float64 inputs and
// float32 otherwise. Written with symbolic sizes, so it is also the op's Meta kernel.
at::Tensor box_iou_allocate_output(const at::Tensor& boxes1, const at::Tensor& boxes2);

// Raises box_iou's error for a non-finite coordinate in `arg` ("boxes1" or "boxes2"), whose
// box `index` (counted over the leading dimensions flattened) is the offending one.
[[noreturn]] void box_iou_nonfinite_error(const char* arg, const at::Tensor& boxes, int64_t index);

}  // namespace detbench
