"""Non-maximum suppression: torchvision's nms and batched_nms, and segmented NMS, the core both
reduce to (many independent groups of boxes in one call, CUDA-graph capturable).

Shared semantics
----------------
Boxes are (x1, y1, x2, y2); the IoU is torchvision's (no +1, areas (x2 - x1) * (y2 - y1) not
clamped), computed in float32 for float16/bfloat16/float32 inputs and in float64 for float64,
and compared with the threshold as a real number (a float32 IoU equal to float32(0.3), which is
above 0.3, counts as above 0.3: torchvision's CPU kernel compares so); where the union is <= 0
the IoU is 0 (detbench.box_iou's rule, the same formula shared in C++). Boxes are ranked by descending score, equal scores by
ascending index (a stable order; -0.0 and +0.0 are equal). Greedy: walking the boxes in rank
order, a box is kept unless its IoU with an already kept box is > iou_threshold (strictly).

Errors
------
Wrong shapes, dtypes (boxes and scores must share one of float16, bfloat16, float32, float64;
idxs must be an integer tensor; segment_offsets int64), devices, a NaN iou_threshold or
score_threshold, or a negative max_output_per_segment raise RuntimeError naming the argument,
e.g. ``detbench.nms: scores must have shape [N] with N = 5 (the number of boxes), got [4]``.

Values (see README, "Input validation policy"):

- CPU: a box with a NaN or infinite coordinate, or a NaN score, raises naming the box
  (``detbench.nms: boxes has a non-finite coordinate (NaN or inf) at box 17``,
  ``scores has a NaN at box 3``); so do bad segment_offsets (``segment_offsets[0] must be >= 0``,
  ``must be non-decreasing``, ``segment_offsets[-1] must be <= N``). Infinite scores are fine.
- CUDA, by default (no sync): such a box is never kept and suppresses nothing, as if it were
  not there. Segment offsets are clamped to [0, N] and made non-decreasing (each raised to the
  largest offset before it), so a segment whose end is before its start is empty and segments
  never overlap or reach outside the boxes.
- CUDA in validation mode (``ops.set_validation(True)`` or ``DETBENCH_VALIDATE=1``): checked,
  with a sync, raising the CPU's errors.

Memory
------
No N x N (or N x N / 64) suppression mask is ever built. CUDA: O(N) extra device memory (sort
keys and values, the boxes in rank order, the kept list, flags) plus a fixed ~40 KiB of scratch;
when the average segment holds at most 1024 boxes (e.g. RPN's images x levels, or ``nms`` of at
most 1024 boxes), the segments of at most 1024 boxes are resolved from their whole bitmask:
128 more bytes per box (1024 bits per row).
Peak extra memory of a call, float32, measured on an H200 (torch.cuda.max_memory_allocated, the
output included): N = 20k 1.05 MiB, 100k 5.1 MiB, 200k 10.1 MiB, i.e. ~53 bytes per box
(torchvision's mask alone is N^2 / 8 bytes: 5 GB at 200k). CPU: O(N) too.

Syncs
-----
``segmented_nms`` and ``segmented_nms_padded`` never synchronize with the host on CUDA (outside
validation mode) and can be captured in a CUDA graph. ``nms`` and ``batched_nms`` synchronize
once, to learn how many boxes they keep (the output's length).
"""
from __future__ import annotations

import torch

from ops._library import require_kernels


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, exactly torchvision.ops.nms.

    Args:
        boxes: [N, 4] boxes (x1, y1, x2, y2): float16, bfloat16, float32 or float64.
        scores: [N], the same dtype and device.
        iou_threshold: a box is removed when its IoU with a kept, higher-ranked box is > this.

    Returns:
        int64 [K]: the kept boxes' indices, by rank (descending score, ties by ascending index).

    Equal scores are ordered by index here, where torchvision's order for them is unspecified.
    CUDA: one sync, for K. Peak extra device memory ~53 bytes per box (float32, measured on an
    H200: N = 20k 1.05 MiB, 100k 5.1 MiB, 200k 10.1 MiB; see NOTES.md, "## nms").
    """
    require_kernels("nms", boxes, scores)
    return torch.ops.detbench.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS, exactly torchvision.ops.batched_nms: boxes with different ``idxs`` never
    suppress each other.

    Args:
        boxes: [N, 4]; scores: [N] (as in nms).
        idxs: [N] integer class (or image, or level) of each box, any values.
        iou_threshold: as in nms.

    Returns:
        int64 [K]: all kept indices, by descending score, ties by ascending index.

    No coordinate-offset trick (which loses precision for large coordinates) and no loop over
    classes: the boxes are sorted by (class, rank) on the device, each class a contiguous
    segment, and the segmented kernel runs over all classes at once. CUDA: one sync, for K.
    """
    require_kernels("batched_nms", boxes, scores, idxs)
    return torch.ops.detbench.batched_nms(boxes, scores, idxs, float(iou_threshold))


def segmented_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    segment_offsets: torch.Tensor,
    iou_threshold: float,
    max_output_per_segment: int | None = None,
    score_threshold: float | None = None,
) -> torch.Tensor:
    """Independent greedy NMS over contiguous segments of boxes, in one call.

    Args:
        boxes: [N, 4]; scores: [N] (as in nms). Not pre-sorted.
        segment_offsets: int64 [S + 1]: segment s is boxes[offsets[s]:offsets[s + 1]]. Boxes
            outside every segment are never kept.
        iou_threshold: as in nms.
        max_output_per_segment: keep at most this many boxes per segment (the first in rank
            order); None: no limit.
        score_threshold: if given, boxes with score <= score_threshold are dropped first.

    Returns:
        bool [N]: whether each box is kept.

    CUDA: no host sync, capturable in a CUDA graph.
    """
    require_kernels("segmented_nms", boxes, scores, segment_offsets)
    return torch.ops.detbench.segmented_nms(
        boxes,
        scores,
        segment_offsets,
        float(iou_threshold),
        None if max_output_per_segment is None else int(max_output_per_segment),
        None if score_threshold is None else float(score_threshold),
    )


def segmented_nms_padded(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    segment_offsets: torch.Tensor,
    iou_threshold: float,
    max_output_per_segment: int,
    score_threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """segmented_nms with a fixed-size output: the kept indices of each segment.

    Args: as segmented_nms; max_output_per_segment (M) is required.

    Returns:
        (indices, counts): indices int64 [S, M], row s the global indices of segment s's kept
        boxes in rank order, padded with -1; counts int64 [S], how many each kept (<= M).

    CUDA: no host sync, capturable in a CUDA graph.
    """
    require_kernels("segmented_nms_padded", boxes, scores, segment_offsets)
    return torch.ops.detbench.segmented_nms_padded(
        boxes,
        scores,
        segment_offsets,
        float(iou_threshold),
        int(max_output_per_segment),
        None if score_threshold is None else float(score_threshold),
    )


# nms and batched_nms return as many indices as they keep: their fake (meta) kernels say so with
# an unbacked size, after running the C++ argument checks.
@torch.library.register_fake("detbench::nms")
def _nms_fake(boxes, scores, iou_threshold):
    torch.ops.detbench._nms_check("nms", boxes, scores, None, iou_threshold)
    k = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((k,), dtype=torch.int64)


@torch.library.register_fake("detbench::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    torch.ops.detbench._nms_check("batched_nms", boxes, scores, idxs, iou_threshold)
    k = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((k,), dtype=torch.int64)
