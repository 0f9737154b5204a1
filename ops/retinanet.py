"""RetinaNet detection post-processing: torchvision's RetinaNet.postprocess_detections, batched
over images and FPN levels, with a fixed-size output and no host sync.

Semantics (torchvision's, per image)
------------------------------------
For each level: scores = sigmoid(cls_logits) flattened over (anchor, class), in the logits'
dtype; candidates = scores > score_thresh; the top min(topk_candidates, #candidates) by score;
anchor = index // C, label = index % C; boxes = BoxCoder(weights=(1, 1, 1, 1)).decode_single
(deltas, anchors) (dw, dh clamped at log(1000 / 16)), then clip_boxes_to_image. Then, over all
levels: class-aware NMS (torchvision.ops.batched_nms, IoU > nms_thresh suppresses), keep the
first detections_per_img by descending score.

Every step is computed as torchvision computes it in the logits' dtype (each operation rounded
to the dtype, no fused multiply-add), so boxes and scores equal torchvision's up to the last-bit
differences of exp between implementations. NMS is detbench's (``ops.segmented_nms_padded``):
IoU in float32 (float64 for float64), with no coordinate-offset trick — torchvision's
batched_nms offsets boxes by label * (max coordinate + 1), which overflows float16 (and rounds
in bfloat16) for 80 classes at 1344 px, so in half precision torchvision's own result is wrong.

Ties: equal scores rank by candidate order (level, then top-k rank); within a level's top-k,
equal scores rank by index (the lowest indices win a tie at the k-th score), on the CPU and on
CUDA. (torchvision's torch.topk leaves that choice unspecified.)

Inputs
------
cls_logits[l]: [B, N_l, C]; box_deltas[l]: [B, N_l, 4] (dx, dy, dw, dh); anchors[l]: [N_l, 4]
(shared by the images) or [B, N_l, 4], xyxy. 1 to 8 levels. cls_logits and box_deltas share one
dtype (float16, bfloat16, float32, float64); anchors may have any of these dtypes and are cast
to it (as torchvision's decode_single does). image_sizes: [B, 2] integer tensor of (height,
width), or a list of B (height, width) pairs (converted with a host-to-device copy: pass a
tensor when capturing a CUDA graph).

Output (``retinanet_postprocess``)
----------------------------------
(boxes [B, D, 4], scores [B, D], labels [B, D] int64, counts [B] int64) with D =
detections_per_img: row b holds image b's counts[b] detections by descending score, then
padding (box 0, score 0, label -1). ``retinanet_postprocess_list`` returns torchvision's format,
a list of {"boxes", "scores", "labels"} per image (one sync, for the counts).

Errors
------
RuntimeError naming the argument: a different number of levels in the three lists, more than 8
levels, a level whose shape disagrees with the others (B, N_l, C, the 4 box coordinates), dtypes
or devices that differ, image_sizes not [B, 2] integers, NaN thresholds, negative
topk_candidates or detections_per_img. Values (README, "Input validation policy"): a candidate
scoring above score_thresh whose decoded box is NaN (a NaN in box_deltas or anchors) raises on
the CPU, naming image, level and anchor; on CUDA it is never kept and suppresses nothing, and
validation mode raises the CPU's error. NaN logits score NaN and are never candidates (as in
torchvision); infinite deltas are clipped to the image (as in torchvision).

Syncs and memory
----------------
``retinanet_postprocess``: no host sync on CUDA, CUDA-graph capturable (with image_sizes as a
device tensor). Intermediates are O(B * L * topk_candidates + B * C * detections_per_img): the
top-k of each level, the candidates' boxes, and the NMS output [B * C, D]. On CUDA one pass per
level (batched over the images) compacts the logits whose score passes score_thresh into a
buffer of max(4096, k) entries per image; an image with more takes a radix select over its
logits (a few more passes), decided on the device; nothing of size N_l * C is written. k above
16,384 (8,192 for float64) falls back to torch.topk (ties at the k-th score then unspecified).
On the CPU one vectorized scan per image and level keeps the logits that score above
score_thresh (at or above the least such logit, found once by bisection), with their index (16
bytes each: up to N_l * C of them when every logit is above the threshold), and selects the
top-k by logit; only those k get a score.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ops._library import require_kernels


def _image_sizes_tensor(image_sizes, device) -> torch.Tensor:
    if isinstance(image_sizes, torch.Tensor):
        return image_sizes
    return torch.tensor([[int(h), int(w)] for h, w in image_sizes], dtype=torch.int64, device=device).reshape(-1, 2)


def retinanet_postprocess(
    cls_logits: Sequence[torch.Tensor],
    box_deltas: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    image_sizes: torch.Tensor | Sequence[tuple[int, int]],
    score_thresh: float = 0.05,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.5,
    detections_per_img: int = 300,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RetinaNet post-processing of a batch, fixed-size output: (boxes [B, D, 4], scores [B, D],
    labels [B, D], counts [B]). See the module docstring."""
    cls_logits, box_deltas, anchors = list(cls_logits), list(box_deltas), list(anchors)
    require_kernels("retinanet_postprocess", *cls_logits, *box_deltas, *anchors)
    device = cls_logits[0].device if cls_logits else torch.device("cpu")
    sizes = _image_sizes_tensor(image_sizes, device)
    return torch.ops.detbench.retinanet_postprocess(
        cls_logits, box_deltas, anchors, sizes, float(score_thresh), int(topk_candidates), float(nms_thresh),
        int(detections_per_img),
    )


def retinanet_postprocess_list(
    cls_logits: Sequence[torch.Tensor],
    box_deltas: Sequence[torch.Tensor],
    anchors: Sequence[torch.Tensor],
    image_sizes: torch.Tensor | Sequence[tuple[int, int]],
    score_thresh: float = 0.05,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.5,
    detections_per_img: int = 300,
) -> list[dict[str, torch.Tensor]]:
    """retinanet_postprocess in torchvision's output format: per image a dict of "boxes" [n, 4],
    "scores" [n], "labels" [n]. Syncs once (for the counts)."""
    boxes, scores, labels, counts = retinanet_postprocess(
        cls_logits, box_deltas, anchors, image_sizes, score_thresh, topk_candidates, nms_thresh, detections_per_img
    )
    return [
        {"boxes": boxes[b, :n], "scores": scores[b, :n], "labels": labels[b, :n]}
        for b, n in enumerate(counts.tolist())
    ]
