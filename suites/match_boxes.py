"""Proposal matching: torchvision's box_iou + Matcher per image (RPN anchors, ROI heads'
proposals) against detbench's fused match_boxes, which never builds the G x P IoU matrix.

8 images x 1-100 gt (one image with none) x 268,569 anchors (RPN targets) or 2,000 proposals
(box head, IoU 0.5 / 0.5 without the low-quality rule). The arbiter is a batched pure-PyTorch
Matcher on torchvision's float32 IoU: matches must be identical.
"""
import torch

import ops
from harness import Comparison, Impl, Suite
from reference import proposals as ref
from suites._boxes import clustered_boxes
from suites._proposals import rpn_inputs

SETTINGS = {"rpn": (0.7, 0.3, True), "roi": (0.5, 0.5, False)}


def gt_counts(case):
    top = case["gt"]
    return [top, 0, max(1, top // 2), top, 1, top, max(1, top // 3), top][: case["images"]]


def make_inputs(case, g):
    high, low, allow = SETTINGS[case["matcher"]]
    if case["proposals"] == "anchors":
        proposals = rpn_inputs(1, 800, 1344, torch.float32, g)[2]
    else:
        proposals = clustered_boxes(int(case["proposals"]), g, 100)
    gts = []
    for n in gt_counts(case):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([1200.0, 700.0])
        gts.append(torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 300 + 8], 1).to(case.dtype).to(case.device))
    return gts, proposals.to(case.dtype).to(case.device), high, low, allow


def compare(got, expected, case, inputs):
    if not isinstance(got, torch.Tensor) or got.dtype != torch.int64 or got.shape != expected.shape:
        return Comparison(False, f"expected int64 {tuple(expected.shape)}, got {getattr(got, 'dtype', type(got))} "
                          f"{tuple(getattr(got, 'shape', ()))}")
    bad = (got.cpu() != expected.cpu())
    if not bad.any():
        return Comparison(True, mismatches=0, details={"matched": int((expected >= 0).sum())})
    idx = bad.nonzero()[:5]
    worst = tuple((tuple(i.tolist()), float(got[tuple(i)]), float(expected[tuple(i)])) for i in idx)
    return Comparison(False, f"{int(bad.sum())} matches differ", mismatches=int(bad.sum()), worst=worst)


def bytes_moved(case):
    p = 268569 if case["proposals"] == "anchors" else int(case["proposals"])
    return case["images"] * (p * 8 + sum(gt_counts(case)) * 16) + p * 16


SUITE = Suite(
    name="match_boxes",
    description=__doc__,
    impls=[Impl("torchvision", ref.tv_match_boxes), Impl("detbench", ops.match_boxes),
           Impl("pure", ref.pure_match_boxes, timed=False)],
    reference="pure",
    baseline="torchvision",
    axes={"images": (8,), "gt": (1, 100), "proposals": ("anchors", "2000"), "matcher": ("rpn",)},
    extra_cases=[{"images": 8, "gt": 100, "proposals": "2000", "matcher": "roi"},
                 {"images": 2, "gt": 100, "proposals": "anchors", "matcher": "rpn"},
                 {"images": 3, "gt": 5, "proposals": "257", "matcher": "rpn"}],
    dtypes=(torch.float32,),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    # the CPU sweep skips 8 images x all anchors (torchvision needs ~1 GB and minutes there)
    include=lambda case: case.device == "cuda" or not (case["images"] == 8 and case["proposals"] == "anchors"),
    ci=lambda case: case["proposals"] != "anchors",
)
