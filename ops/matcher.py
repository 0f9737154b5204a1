"""Matching predictions to ground truth: torchvision's Matcher, batched over images, and fused
with the IoU.

Semantics (per image, exactly torchvision.models.detection._utils.Matcher)
--------------------------------------------------------------------------
For each prediction p: its best quality q and gt g = argmax over the image's gts (the first of
equal maxima; NaN counts as the largest, as torch.max). Result: -1 (BELOW_LOW_THRESHOLD) when
q < low, -2 (BETWEEN_THRESHOLDS) when low <= q < high, else g. With allow_low_quality_matches,
every prediction whose quality with some gt equals that gt's highest quality over all
predictions (ties included; also where that highest quality is 0) gets its best gt g back,
whatever q is. Thresholds are compared in the quality's dtype (torchvision compares a float16
matrix with the thresholds rounded to float16).

**Images with zero gt** (torchvision raises ValueError): every prediction is -1, below the low
threshold: a background image. Zero predictions: an empty result.

match_boxes computes the quality as box IoU (float32 for float16/bfloat16/float32 boxes, float64
for float64; torchvision's box_iou formula, the same bits: detbench.box_iou's rule gives 0 where
torchvision would divide 0 by 0) without building the G x P matrix: pass 1 computes every gt's
highest IoU, pass 2 every prediction's best gt and whether it reaches a gt's highest IoU. Peak
extra memory: B x G floats.

Batches: gt rows [B, G, ...] padded to the largest image's count, with gt_counts [B] (int) saying
how many rows of each image are real (rows past the count are ignored, whatever they hold); or a
list of per-image tensors, padded here (one host-side step, no sync for CPU-built counts).

Errors
------
RuntimeError naming the argument: wrong shapes, dtypes, devices; gt_counts for unbatched input;
NaN thresholds or low > high (torchvision asserts low <= high). Values:

- gt_counts outside [0, G]: CPU raises (``gt_counts[1] must be in [0, G = 5], got 7``); CUDA
  clamps to [0, G] without a sync; validation mode raises the CPU's error on CUDA.
- match_boxes with a non-finite coordinate (in a real gt row or a proposal): CPU raises naming
  the box; CUDA leaves that box's matches unspecified (nothing else changes, never out of
  bounds); validation mode raises.
- match_proposals with NaN qualities: torch.max's rule (NaN wins the argmax; a NaN best
  quality is neither below nor between the thresholds, so the argmax is returned), as torchvision.

No host sync on CUDA (outside validation mode); CUDA-graph capturable.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ops._library import require_kernels

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def _pad(tensors: Sequence[torch.Tensor], trailing: tuple[int, ...], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image [G_i, *trailing] tensors -> ([B, max G_i, *trailing], counts [B]). The rows past
    an image's count are left unwritten: the kernels read only the first counts[b] rows (the
    harness's poisoned allocations check it), and zero-filling them cost a third of a CPU match
    of 8 x 100 x 2,000."""
    if len(tensors) == 0:
        raise ValueError(f"detbench: {name} must not be an empty list")
    first = tensors[0]
    g = max(t.shape[0] for t in tensors)
    padded = first.new_empty((len(tensors), g, *trailing))
    for i, t in enumerate(tensors):
        if tuple(t.shape[1:]) != trailing:
            raise ValueError(f"detbench: {name}[{i}] must have shape [G, {', '.join(map(str, trailing))}], "
                             f"got {list(t.shape)}")
        padded[i, : t.shape[0]] = t
    counts = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64).to(first.device)
    return padded, counts


def match_proposals(iou, high: float, low: float, allow_low_quality_matches: bool = False,
                    gt_counts: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision's Matcher(high, low, allow_low_quality_matches) on quality matrices.

    Args:
        iou: [G, P] (one image, as Matcher takes it), [B, G, P] (with gt_counts: the real rows
            per image), or a list of per-image [G_i, P] tensors (the same P).
        high, low: thresholds (low <= high).
        allow_low_quality_matches: torchvision's low-quality rescue, ties included.
        gt_counts: int [B] on iou's device, for [B, G, P] input; None: all G rows are real.

    Returns:
        int64 [P] for [G, P] input, else [B, P]: gt index, -1 below low, -2 between.
    """
    if isinstance(iou, (list, tuple)):
        p = iou[0].shape[1] if len(iou) and iou[0].dim() == 2 else None
        iou, gt_counts = _pad(list(iou), (p,), "iou")
    require_kernels("match_proposals", iou)
    return torch.ops.detbench.match_proposals(iou, gt_counts, float(high), float(low), bool(allow_low_quality_matches))


def match_boxes(gt_boxes, proposals: torch.Tensor, high: float, low: float, allow_low_quality_matches: bool = False,
                gt_counts: torch.Tensor | None = None) -> torch.Tensor:
    """Matcher(high, low, allow_low_quality_matches)(box_iou(gt_boxes, proposals)), fused.

    Args:
        gt_boxes: [G, 4] (one image), [B, G, 4] with gt_counts, or a list of per-image [G_i, 4].
        proposals: [P, 4] (shared by every image, e.g. anchors) or [B, P, 4]; gt_boxes' dtype.
        high, low, allow_low_quality_matches: as match_proposals.
        gt_counts: int [B], the real gt rows per image (None: all).

    Returns:
        int64 [P] for [G, 4] gt_boxes, else [B, P].
    """
    if isinstance(gt_boxes, (list, tuple)):
        gt_boxes, gt_counts = _pad(list(gt_boxes), (4,), "gt_boxes")
    require_kernels("match_boxes", gt_boxes, proposals)
    return torch.ops.detbench.match_boxes(gt_boxes, gt_counts, proposals, float(high), float(low),
                                          bool(allow_low_quality_matches))
