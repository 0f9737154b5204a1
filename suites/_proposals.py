"""What the proposal-family suites and tests share: RPN head outputs for an FPN layout, and the
proposal comparator.

Comparator (`compare_proposals`): per image, the kept (box, score) list against the reference's:
- same count, and equal in order (scores within 1e-6 relative, boxes within the dtype's
  tolerance): pass;
- equal once both are sorted by (score, box) (only the order of equal scores differs): pass;
- otherwise, if the image's inputs have a tie that the reference's rules decide differently
  from another valid implementation (two equal logits at a level's top-k cut, or equal scores
  among the candidates): `ambiguous`, with the counts; else fail with the worst rows.
"""
from __future__ import annotations

import torch

from harness import Comparison
from reference import proposals as ref

FPN_STRIDES = (4, 8, 16, 32, 64)
FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
RATIOS = (0.5, 1.0, 2.0)
BOX_TOL = {torch.float32: (1e-3, 1e-5), torch.float64: (1e-9, 1e-12), torch.float16: (1.0, 2e-3),
           torch.bfloat16: (8.0, 1.6e-2)}


def fpn_layout(height: int, width: int, levels: int = 5):
    """Feature sizes, strides and per-level anchor counts of an FPN over a padded image."""
    feature_sizes = [(-(-height // s), -(-width // s)) for s in FPN_STRIDES[:levels]]
    strides = [(height // h, width // w) for h, w in feature_sizes]
    counts = [h * w * len(RATIOS) for h, w in feature_sizes]
    return feature_sizes, strides, counts


def rpn_inputs(batch: int, height: int, width: int, dtype: torch.dtype, g: torch.Generator, levels: int = 5):
    """(objectness [B, A], deltas [B, A, 4], anchors [A, 4], image_sizes [B, 2], counts per level)
    on the CPU: logits N(0, 2), deltas N(0, 0.5), each image a little smaller than the padding."""
    import ops

    feature_sizes, strides, counts = fpn_layout(height, width, levels)
    cells = ops.cell_anchors(FPN_SIZES[:levels], RATIOS)
    anchors = ref.pure_grid_anchors(feature_sizes, strides, cells).to(dtype)
    a = anchors.shape[0]
    objectness = (torch.randn(batch, a, generator=g) * 2).to(dtype)
    deltas = (torch.randn(batch, a, 4, generator=g) * 0.5).to(dtype)
    shrink = torch.randint(0, 64, (batch, 2), generator=g)
    image_sizes = torch.tensor([height, width]) - shrink
    return objectness, deltas, anchors, image_sizes.long(), counts


def as_lists(out):
    """(boxes [B, post, 4], scores [B, post], counts [B]) or (list, list) -> (list, list)."""
    if isinstance(out, tuple) and len(out) == 3:
        boxes, scores, counts = out
        n = counts.tolist()
        return [boxes[b, : n[b]] for b in range(len(n))], [scores[b, : n[b]] for b in range(len(n))]
    return list(out[0]), list(out[1])


def _sorted(boxes, scores):
    key = torch.cat([scores[:, None].double(), boxes.double()], 1).cpu()
    order = sorted(range(len(key)), key=lambda i: tuple(key[i].tolist()))
    return boxes[order], scores[order]


def _close(a, b, atol, rtol):
    return bool(((a.double() - b.double()).abs() <= atol + rtol * b.double().abs()).all())


def _image_has_ties(inputs, b, pre) -> bool:
    objectness, _, _, _, counts = inputs[:5]
    start = 0
    for n in counts:
        row = objectness[b, start : start + n].float()
        start += n
        if n > pre:
            top = torch.topk(row, pre + 1).values
            if top[-1] == top[-2]:
                return True
    return False


def compare_proposals(got, expected, inputs, dtype) -> Comparison:
    pre = inputs[5] if len(inputs) > 5 else 1000
    atol, rtol = BOX_TOL[dtype]
    try:
        got_boxes, got_scores = as_lists(got)
    except Exception as e:  # noqa: BLE001 - a malformed output is a failure, with the reason
        return Comparison(False, f"malformed output: {e}")
    exp_boxes, exp_scores = as_lists(expected)
    if len(got_boxes) != len(exp_boxes):
        return Comparison(False, f"{len(got_boxes)} images != expected {len(exp_boxes)}")
    details = {"images": len(exp_boxes), "exact": 0, "reordered": 0, "ambiguous": 0, "failed": 0}
    worst, reasons = [], []
    for b, (gb, gs, eb, es) in enumerate(zip(got_boxes, got_scores, exp_boxes, exp_scores)):
        gb, gs, eb, es = gb.cpu(), gs.cpu(), eb.cpu(), es.cpu()
        if torch.isnan(gb).any() or torch.isnan(gs).any():
            details["failed"] += 1
            reasons.append(f"image {b}: NaN in the output")
            continue
        if len(gb) == len(eb) and _close(gs, es, 0, 1e-6) and _close(gb, eb, atol, rtol):
            details["exact"] += 1
            continue
        if len(gb) == len(eb):
            (sgb, sgs), (seb, ses) = _sorted(gb, gs), _sorted(eb, es)
            if _close(sgs, ses, 0, 1e-6) and _close(sgb, seb, atol, rtol):
                details["reordered"] += 1
                continue
        if _image_has_ties(inputs, b, pre) or len(torch.unique(es)) < len(es) or len(torch.unique(gs)) < len(gs):
            details["ambiguous"] += 1
            continue
        details["failed"] += 1
        n = min(len(gb), len(eb))
        diff = (gb[:n].double() - eb[:n].double()).abs().amax(1) if n else torch.zeros(0)
        i = int(diff.argmax()) if n else 0
        reasons.append(f"image {b}: {len(gb)} proposals vs {len(eb)}")
        if n:
            worst.append(((b, i), float(gs[i]), float(es[i])))
    if details["failed"]:
        return Comparison(False, "; ".join(reasons[:3]), mismatches=details["failed"], worst=tuple(worst[:5]),
                          details=details)
    if details["ambiguous"]:
        return Comparison(True, f"{details['ambiguous']} images differ only where ties decide", ambiguous=True,
                          details=details)
    return Comparison(True, details=details)
