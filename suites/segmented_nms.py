"""Segmented NMS: many independent NMS problems in one launch sequence, padded output + counts.

RPN post-processing (images x FPN levels, 1,000 boxes each) and the box head (images x classes).
Inputs are (boxes, scores, segment_offsets, iou_threshold, max_output_per_segment,
score_threshold); the output is (indices [S, max_output] padded with -1, counts [S]). Time it
with `--modes graph` too: detbench's path never syncs with the host, so it captures in a CUDA
graph; torchvision's batched_nms does not.
"""
import torch

import ops
from harness import Comparison, Impl, Suite
from reference import pure, tv
from suites._boxes import make_boxes
from suites._nms import compare_keep, make_scores, torchvision_deviation, torchvision_unsupported

# (images, segments per image, boxes per segment): RPN over 5 FPN levels; the box head's
# per-class NMS over 80 classes.
LAYOUTS = {"rpn": (8, 5, 1000), "rpn1": (1, 5, 1000), "boxhead": (2, 80, 100)}


def make_inputs(case, g):
    images, per_image, size = LAYOUTS[case["layout"]]
    segments = images * per_image
    boxes = torch.cat([make_boxes("clustered", size, case.dtype, g, max(1, size // 20)) for _ in range(segments)])
    scores = make_scores(case["content"], segments * size, g).to(case.dtype)
    offsets = torch.arange(0, segments * size + 1, size, dtype=torch.int64)
    score_threshold = case["score_threshold"] if case["score_threshold"] >= 0 else None
    return (boxes.to(case.device), scores.to(case.device), offsets.to(case.device), case["iou"],
            case["max_output"], score_threshold)


def compare(got, expected, case, inputs):
    boxes, scores, offsets, threshold, width, score_threshold = inputs
    if not (isinstance(got, tuple) and len(got) == 2):
        return Comparison(False, f"expected (indices, counts), got {type(got).__name__}")
    indices, counts = (t.to(boxes.device) for t in got)
    exp_indices, exp_counts = expected
    segments = len(offsets) - 1
    if tuple(indices.shape) != (segments, width) or tuple(counts.shape) != (segments,):
        return Comparison(False, f"shapes {tuple(indices.shape)}, {tuple(counts.shape)} != ({segments}, {width}), ({segments},)")
    slots = torch.arange(width, device=boxes.device)[None, :]
    if not torch.equal(indices >= 0, slots < counts[:, None]):
        return Comparison(False, "counts disagree with the padding: indices must be >= 0 before counts[s], -1 after")
    total = {"kept": 0, "expected": 0, "missing": 0, "extra": 0}
    verdicts = []
    for s in range(segments):
        lo, hi = int(offsets[s]), int(offsets[s + 1])
        members = torch.arange(lo, hi, device=boxes.device)
        if score_threshold is not None:
            members = members[scores[members] > score_threshold]
        local = torch.full((len(scores),), -1, dtype=torch.int64, device=boxes.device)
        local[members] = torch.arange(len(members), device=boxes.device)
        got_s, exp_s = indices[s, : counts[s]], exp_indices[s, : exp_counts[s]]
        if (got_s < 0).any() or (got_s >= len(scores)).any() or (local[got_s.clamp(0, len(scores) - 1)] < 0).any():
            return Comparison(False, f"segment {s}: kept a box outside the segment or at/below the score threshold")
        truncated = len(exp_s) == width
        verdict = compare_keep(local[got_s], local[exp_s], boxes[members], scores[members],
                               torch.zeros(len(members), dtype=torch.int64, device=boxes.device), threshold)
        if truncated and not verdict.passed:
            verdict = Comparison(False, "differs in a segment cut at max_output_per_segment", details=verdict.details)
        for key in total:
            total[key] += verdict.details.get(key, 0)
        verdicts.append((s, verdict))
    failed = [(s, v) for s, v in verdicts if not v.passed]
    if failed:
        s, v = failed[0]
        return Comparison(False, f"{len(failed)} of {segments} segments fail; segment {s}: {v.reason}",
                          mismatches=sum(v.mismatches for _, v in failed), details=total)
    ambiguous = [s for s, v in verdicts if v.ambiguous]
    if ambiguous:
        return Comparison(True, f"{len(ambiguous)} segments differ only where ties decide", ambiguous=True,
                          details=total)
    return Comparison(True, details=total)


def bytes_moved(case):
    images, per_image, size = LAYOUTS[case["layout"]]
    n, segments = images * per_image * size, images * per_image
    return n * 5 * case.dtype.itemsize + segments * (case["max_output"] + 1) * 8


SUITE = Suite(
    name="segmented_nms",
    description=__doc__,
    impls=[
        Impl("torchvision", tv.segmented_nms_padded, unsupported=torchvision_unsupported,
             known_deviation=lambda case, inputs: torchvision_deviation(case, grouped=True)),  # segments as classes
        Impl("detbench", ops.segmented_nms_padded),
        Impl("float64", pure.segmented_nms_padded, timed=False),
    ],
    reference="float64",
    baseline="torchvision",
    axes={"layout": ("rpn", "rpn1", "boxhead"), "iou": (0.7,), "max_output": (1000,), "score_threshold": (-1.0,),
          "content": ("clustered",)},
    extra_cases=[
        {"layout": "rpn", "iou": 0.7, "max_output": 100, "score_threshold": 0.3, "content": "clustered"},
        {"layout": "boxhead", "iou": 0.5, "max_output": 100, "score_threshold": 0.05, "content": "ties"},
    ],
    dtypes=(torch.float32, torch.float16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    ci=lambda case: case["layout"] != "rpn",
)
