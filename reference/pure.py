"""Pure-PyTorch references computed in float64: slow, simple, and the arbiter of correctness."""
import numpy
import torch


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes, [..., N, 4] x [..., M, 4] -> [..., N, M], in float64.

    torchvision's formula (no +1 in areas). Where the union is 0 (two zero-area boxes)
    the IoU is defined as 0, as detbench defines it; torchvision returns NaN there.
    Returns float64; callers cast to the dtype they compare in.
    """
    a = boxes1.to(torch.float64)
    b = boxes2.to(torch.float64)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union == 0, torch.zeros_like(inter), inter / union)


def rank_order(scores: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """NMS rank: descending score, equal scores by ascending index; with `groups`, grouped by
    ascending group first (each group's boxes contiguous, in rank order)."""
    order = torch.sort(scores.to(torch.float64), descending=True, stable=True).indices
    if groups is not None:
        order = order[torch.sort(groups[order], stable=True).indices]
    return order


GREEDY_BLOCK = 512  # ranked boxes resolved together on the host (a 512 x 512 bool matrix)
COLUMNS_PER_CHUNK = 1 << 15  # bounds a block-vs-later IoU at 512 x 32,768 float64


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy class-aware NMS in float64: boxes of different `idxs` never suppress each other.

    Walks the boxes in rank order (descending score, ties by index); each kept box removes the
    later boxes of its group whose IoU with it is > iou_threshold (a NaN IoU suppresses
    nothing). Returns the kept indices sorted by descending score, ties by ascending index
    (torchvision's order).

    The walk goes a block of GREEDY_BLOCK ranked boxes at a time, which decides exactly as one
    box at a time does: the block's boxes that no earlier kept box suppressed are resolved among
    themselves in rank order (on the host, over their IoU matrix), then the block's kept boxes
    suppress the later boxes still alive, all at once. Rounds: N / GREEDY_BLOCK, not one per kept
    box (100,000 boxes, 80 classes: seconds instead of half a minute on an H200)."""
    order = rank_order(scores)
    ranked = boxes[order].to(torch.float64)
    groups = idxs[order]
    n = len(order)
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    kept = [torch.empty(0, dtype=torch.int64, device=boxes.device)]
    for start in range(0, n, GREEDY_BLOCK):
        stop = min(start + GREEDY_BLOCK, n)
        alive = start + (~suppressed[start:stop]).nonzero().flatten()
        overlaps = _suppresses(ranked, groups, alive, alive, iou_threshold).cpu().numpy()
        keep = numpy.ones(len(alive), dtype=bool)
        for i in range(len(alive)):
            if keep[i]:
                keep[i + 1:] &= ~overlaps[i, i + 1:]
        block_kept = alive[torch.from_numpy(keep).to(boxes.device)]
        kept.append(block_kept)
        later = stop + (~suppressed[stop:]).nonzero().flatten()
        for columns in later.split(COLUMNS_PER_CHUNK):
            suppressed[columns] = _suppresses(ranked, groups, block_kept, columns, iou_threshold).any(dim=0)
    return order[torch.cat(kept)]


def _suppresses(ranked, groups, rows, columns, iou_threshold) -> torch.Tensor:
    """[rows, columns] bool: box `row` suppresses box `column` if it is kept first."""
    iou = box_iou(ranked[rows], ranked[columns])
    return (iou > iou_threshold) & (groups[rows][:, None] == groups[columns][None, :])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS in float64 with torchvision's semantics (see batched_nms)."""
    return batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), iou_threshold)


def segmented_nms_padded(boxes: torch.Tensor, scores: torch.Tensor, segment_offsets: torch.Tensor,
                         iou_threshold: float, max_output_per_segment: int,
                         score_threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent greedy NMS in each segment offsets[s]..offsets[s+1]-1 (float64): boxes scoring
    <= score_threshold dropped first, at most max_output_per_segment kept per segment. Returns
    (indices [S, max_output_per_segment] of global box indices in rank order, padded with -1;
    counts [S])."""
    return pad_segments(batched_nms_in_segments(boxes, scores, segment_offsets, iou_threshold, score_threshold,
                                                batched_nms), segment_offsets, max_output_per_segment)


def batched_nms_in_segments(boxes, scores, segment_offsets, iou_threshold, score_threshold, batched_nms_fn):
    """Segment ids as classes, the score threshold applied first: any batched NMS then solves
    every segment at once. Returns the kept global indices sorted by segment, then rank."""
    n = len(scores)
    segment = torch.bucketize(torch.arange(n, device=scores.device), segment_offsets[1:], right=True)
    candidates = torch.arange(n, device=scores.device)
    if score_threshold is not None:
        candidates = candidates[scores > score_threshold]
    kept = candidates[batched_nms_fn(boxes[candidates], scores[candidates], segment[candidates], iou_threshold)]
    return kept[torch.sort(segment[kept], stable=True).indices]


def pad_segments(kept: torch.Tensor, segment_offsets: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept indices grouped by segment -> ([S, width] padded with -1, counts [S]), the first
    `width` of each segment."""
    segments = len(segment_offsets) - 1
    segment = torch.bucketize(kept, segment_offsets[1:], right=True)
    counts = torch.bincount(segment, minlength=segments)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(kept), device=kept.device) - starts[segment]
    padded = torch.full((segments, width), -1, dtype=torch.int64, device=kept.device)
    fits = slot < width
    padded[segment[fits], slot[fits]] = kept[fits]
    return padded, counts.clamp(max=width)
