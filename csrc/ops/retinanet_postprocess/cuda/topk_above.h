// The CUDA per-level top-k of detbench.retinanet_postprocess (topk_above.cu).
#pragma once

#include <cstdint>
#include <tuple>

#include <ATen/core/Tensor.h>

namespace detbench {

// topk_above_cpu's contract on the device, with no host sync: flat_logits [B, m]; returns values
// [B, k] (the logits) and index [B, k] int64 of the top k elements whose score (sigmoid in the
// dtype) is > score_thresh and whose logit is above the CPU's bound, ranked by score descending,
// equal scores by index ascending; the rest padded with (-inf, 0). k above the sort capacity
// (16,384; 8,192 for float64), rows of 2^31 elements or more, or more than 65,535 rows: at::topk.
std::tuple<at::Tensor, at::Tensor> topk_above_cuda(const at::Tensor& flat_logits, int64_t k, double score_thresh);

}  // namespace detbench
