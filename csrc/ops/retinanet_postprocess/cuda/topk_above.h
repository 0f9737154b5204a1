// The CUDA top-k of detbench.retinanet_postprocess (cuda/topk_above_kernel.cu), a RetinaTopkFn.
#pragma once

#include "ops/retinanet_postprocess/retinanet_postprocess.h"

namespace detbench {

// The top k_l = min(K, N_l * C) of the elements scoring > score_thresh of every (image, level),
// by descending logit, equal logits by ascending index, padded with logit -inf and index 0. No
// host sync. float64 logits, K > 4096 or a level of 2^31 elements or more per image take
// retinanet_topk_sorted (at::topk) instead.
RetinaTopk retinanet_topk_above_cuda(at::TensorList flat_logits, int64_t K, double score_thresh);

}  // namespace detbench
