"""RPN proposal generation: torchvision's RegionProposalNetwork.filter_proposals (and the decode
before it) for a whole batch, with no loop over images or levels and no host sync.

Semantics
---------
Per image and per level (levels = consecutive anchor ranges, num_anchors_per_level):

1. the min(pre_nms_top_n, level size) anchors with the highest objectness logits (torch.topk;
   NaN counts as the highest; equal logits: the lower anchor index first — torchvision leaves
   that choice to topk);
2. decode (BoxCoder weights (1, 1, 1, 1), clip log(1000 / 16), detbench.decode_boxes' rules),
   score = sigmoid(logit), clip to the image (0 <= x <= width, 0 <= y <= height), drop boxes with
   a side < min_size, drop scores < score_thresh (torchvision keeps >=); every step in the input
   dtype as torchvision's eager ops round it (float16 stays float16);
3. NMS (IoU > nms_thresh suppresses) within the level (detbench.segmented_nms_padded, exact);
4. of all levels' kept boxes, the post_nms_top_n with the highest scores, in descending score.

Equal scores rank by (level, then descending logit, then ascending anchor index), in NMS and in
the final order; torchvision's order there is unspecified (its topk and sort are not stable).
NaN objectness: selected by top-k as torch.topk does, then dropped (NaN fails the score test).
NaN or infinite deltas: the box is dropped by the size test as in torchvision (a box with a
non-finite coordinate after clipping is dropped too, which torchvision only does for NaN).

Shapes and dtypes
-----------------
objectness [B, A] (torchvision's [B * A, 1] is reshaped here), deltas [B, A, 4] of the same
dtype (float16, bfloat16, float32, float64), anchors [A, 4] (the same for every image, as
AnchorGenerator makes them) or [B, A, 4], any float dtype (converted to the deltas' dtype, as
torchvision does). image_sizes: int [B, 2] (height, width) on the device, or a list of
(height, width) (copied to the device: not capturable). Empty levels are allowed.

Outputs: ``(boxes [B, post, 4], scores [B, post], counts [B])`` in the objectness' dtype; row b's
first counts[b] entries are its proposals by descending score, the rest zeros. With
``ragged=True``: ``(list of [counts[b], 4], list of [counts[b]])``, torchvision's return value
(one sync, for the counts).

Errors: RuntimeError naming the argument for wrong shapes, dtypes or devices, level counts not
summing to A (``detbench.generate_proposals: num_anchors_per_level must sum to A = 268569 ...``),
negative level counts or top-n, NaN thresholds, more than 16 levels. No data value is an error.

CUDA: no host sync (ragged=False, image_sizes a tensor): CUDA-graph capturable. Launches: one
stable sort per level, one gather/decode kernel, the segmented NMS, one merge kernel.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ops._library import require_kernels


def generate_proposals(objectness: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor, image_sizes,
                       num_anchors_per_level: Sequence[int], pre_nms_top_n: int = 1000, post_nms_top_n: int = 1000,
                       nms_thresh: float = 0.7, min_size: float = 1e-3, score_thresh: float = 0.0,
                       ragged: bool = False):
    """RPN proposals for a batch; see the module docstring for the exact semantics."""
    if deltas.dim() == 3 and objectness.dim() != 2 and objectness.numel() == deltas.shape[0] * deltas.shape[1]:
        objectness = objectness.reshape(deltas.shape[0], deltas.shape[1])
    if not isinstance(image_sizes, torch.Tensor):
        image_sizes = torch.tensor([[int(h), int(w)] for h, w in image_sizes], dtype=torch.int64).reshape(-1, 2)
        image_sizes = image_sizes.to(objectness.device)
    require_kernels("generate_proposals", objectness, deltas, anchors, image_sizes)
    boxes, scores, counts = torch.ops.detbench.generate_proposals(
        objectness, deltas, anchors, image_sizes, [int(n) for n in num_anchors_per_level], int(pre_nms_top_n),
        int(post_nms_top_n), float(nms_thresh), float(min_size), float(score_thresh))
    if not ragged:
        return boxes, scores, counts
    n = counts.tolist()
    return [boxes[b, : n[b]] for b in range(len(n))], [scores[b, : n[b]] for b in range(len(n))]
