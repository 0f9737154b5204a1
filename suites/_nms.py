"""What the NMS-family suites share: score generators and the semantic keep-set comparator.

Comparator (`compare_keep`): NMS output is decided by orderings, so index equality alone would
fail correct kernels on ties. The rule:
- equal to the reference (same indices, same order): pass;
- otherwise, if the instance has no two equal scores and no IoU within EPS of the
  threshold between a reference-kept box and a later box of its group, the answer is unique:
  fail;
- otherwise check the greedy invariants on the candidate's own output — kept boxes in
  non-increasing score order; no two kept boxes of a group with IoU > threshold; every other
  box of the group has IoU > threshold with a kept box scoring at least as high — and report
  `ambiguous` when they hold, `fail` when not.
Kept / missing / extra counts go to the row's `details` either way.
"""
from __future__ import annotations

import torch

from harness import Comparison
from reference import pure

EPS = 1e-6
ROWS_PER_CHUNK = 256  # kept boxes per IoU chunk: bounds the comparator's memory at 256 x N


def make_scores(content: str, n: int, g: torch.Generator) -> torch.Tensor:
    """Distinct scores spread uniformly over (0, 1) (float32 keeps them distinct up to millions;
    float16 cannot); with content 'ties', drawn from 16 values so most scores tie exactly."""
    if content == "ties":
        return torch.randint(0, 16, (n,), generator=g).float() / 16
    return (torch.randperm(n, generator=g).float() + 0.5) / n


def _iou_rows(boxes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return pure.box_iou(boxes[rows], boxes)


def _has_score_ties(scores: torch.Tensor) -> bool:
    """Any two equal scores: they decide the order inside a group and the output's order across
    groups alike."""
    return len(torch.unique(scores)) < len(scores)


def _near_threshold(boxes, scores, groups, kept, threshold) -> bool:
    """Whether a kept box has an IoU within EPS of the threshold with a box of its group that
    ranks after it: there, float32 and float64 can decide differently."""
    for chunk in kept.split(ROWS_PER_CHUNK):
        iou = _iou_rows(boxes, chunk)
        later = (scores[None, :] <= scores[chunk][:, None]) & (groups[None, :] == groups[chunk][:, None])
        later[torch.arange(len(chunk)), chunk] = False
        if (((iou - threshold).abs() <= EPS) & later).any():
            return True
    return False


def _invariant_violation(boxes, scores, groups, kept, threshold) -> str | None:
    n = len(scores)
    if len(kept) > 1 and (scores[kept][1:] > scores[kept][:-1]).any():
        return "kept boxes are not in non-increasing score order"
    is_kept = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    is_kept[kept] = True
    explained = is_kept.clone()
    for chunk in kept.split(ROWS_PER_CHUNK):
        iou = _iou_rows(boxes, chunk)
        same = groups[None, :] == groups[chunk][:, None]
        not_higher = scores[None, :] <= scores[chunk][:, None]
        clash = (iou > threshold + EPS) & same & is_kept[None, :]
        clash[torch.arange(len(chunk)), chunk] = False
        if clash.any():
            return "two kept boxes of a group overlap with IoU > threshold"
        explained |= ((iou > threshold - EPS) & same & not_higher).any(dim=0)
    if not explained.all():
        return f"{int((~explained).sum())} dropped boxes are not suppressed by any kept box"
    return None


def compare_keep(got, expected, boxes, scores, groups, threshold) -> Comparison:
    """Kept indices `got` against the reference's `expected` (both in rank order)."""
    if not isinstance(got, torch.Tensor) or got.dtype != torch.int64 or got.dim() != 1:
        return Comparison(False, f"expected a 1-D int64 tensor of indices, got {_describe(got)}")
    got = got.to(boxes.device)
    expected = expected.to(boxes.device)
    n = len(scores)
    if len(got) and (got.min() < 0 or got.max() >= n):
        return Comparison(False, f"indices out of range [0, {n})")
    if len(torch.unique(got)) != len(got):
        return Comparison(False, "repeated indices")
    in_got = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    in_got[got] = True
    in_exp = torch.zeros_like(in_got)
    in_exp[expected] = True
    missing, extra = (in_exp & ~in_got).nonzero().flatten(), (in_got & ~in_exp).nonzero().flatten()
    details = {"kept": len(got), "expected": len(expected), "missing": len(missing), "extra": len(extra)}
    if torch.equal(got, expected):
        return Comparison(True, details=details, mismatches=0)
    worst = tuple(((int(j),), 0.0, 1.0) for j in missing[:3]) + tuple(((int(j),), 1.0, 0.0) for j in extra[:2])
    mismatches = len(missing) + len(extra) or len(got)  # same set, other order: count every position
    scores, boxes = scores.to(torch.float64), boxes.to(torch.float64)
    ties = _has_score_ties(scores)
    if not ties and not _near_threshold(boxes, scores, groups, expected, threshold):
        return Comparison(False, "differs from the reference where the answer is unique "
                          "(no score tie, no IoU at the threshold)", mismatches=mismatches, worst=worst, details=details)
    violation = _invariant_violation(boxes, scores, groups, got, threshold)
    if violation:
        return Comparison(False, f"greedy invariant broken: {violation}", mismatches=mismatches, worst=worst,
                          details=details)
    why = "score ties" if ties else "IoUs within 1e-6 of the threshold"
    return Comparison(True, f"differs from the reference only where {why} decide; greedy invariants hold",
                      mismatches=mismatches, worst=worst, ambiguous=True, details=details)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def torchvision_unsupported(case) -> str | None:
    if case.device == "cpu" and case.dtype == torch.float16:
        return "torchvision has no float16 NMS on the CPU"
    return None


def torchvision_deviation(case, grouped: bool) -> str | None:
    """torchvision's known disagreements with exact greedy NMS, seen on the H200 (torchvision
    0.26): its CUDA kernel computes IoU in the input precision (float16), and its batched_nms
    either offsets coordinates by class (up to 5,000 boxes on CUDA), losing float32 precision,
    or loops over classes with its CUDA kernel, which disagreed with the float64 answer on 2
    float32 cases of that path (cause not established)."""
    reasons = []
    if case.device == "cuda" and case.dtype == torch.float16:
        reasons.append("torchvision's CUDA NMS computes IoU in float16")
    if case.device == "cuda" and grouped:
        reasons.append("torchvision's CUDA batched_nms (coordinate offsets / per-class CUDA loop)")
    return "; ".join(reasons) or None
