"""Matcher on given quality matrices (torchvision's Matcher looped over images vs detbench's
batched match_proposals): 8 images x 1-100 gt x 2,000 proposals, qualities quantized so that
equal values (ties in the argmax and in the low-quality rescue) are everywhere; fp32 and fp16.
"""
import torch

import ops
from harness import Impl, Suite
from reference import proposals as ref
from suites.match_boxes import compare

COUNTS = {1: [1, 0, 1, 1, 1, 1, 1, 1], 100: [100, 0, 37, 100, 1, 64, 100, 5]}


def make_inputs(case, g):
    iou = [(torch.randint(0, 41, (n, case["proposals"]), generator=g) / 40).to(case.dtype).to(case.device)
           for n in COUNTS[case["gt"]]]
    return iou, 0.7, 0.3, case["low_quality"]


SUITE = Suite(
    name="match_proposals",
    description=__doc__,
    impls=[Impl("torchvision", ref.tv_match_proposals), Impl("detbench", ops.match_proposals),
           Impl("pure", ref.pure_match_proposals, timed=False)],
    reference="pure",
    baseline="torchvision",
    axes={"gt": (1, 100), "proposals": (2000,), "low_quality": (True,)},
    extra_cases=[{"gt": 100, "proposals": 2000, "low_quality": False}, {"gt": 100, "proposals": 7, "low_quality": True}],
    dtypes=(torch.float32, torch.float16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=lambda case: sum(COUNTS[case["gt"]]) * case["proposals"] * case.dtype.itemsize + 8 * case["proposals"] * 8,
    ci=lambda case: True,
)
