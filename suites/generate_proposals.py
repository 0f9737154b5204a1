"""RPN proposals (torchvision's RegionProposalNetwork decode + filter_proposals) for a batch:
Faster R-CNN R50-FPN at 800x1344 (5 levels, 3 ratios, 268,569 anchors per image), batch 1, 2 and
8, pre-NMS top-n 2,000 (training) / 1,000 (testing), post-NMS 1,000, NMS 0.7. Time it with
`--modes graph` too: detbench's path has no host sync; torchvision's loops over images with syncs.

The arbiter applies filter_proposals' steps per image and level with explicit tie rules and
float64 NMS; the comparator (suites/_proposals.py) checks each image's proposals and scores.
"""
import torch

import ops
from harness import Impl, Suite
from reference import proposals as ref
from suites._proposals import compare_proposals, rpn_inputs

LAYOUTS = {"fpn800x1344": (800, 1344), "small160x224": (160, 224)}


def make_inputs(case, g):
    h, w = LAYOUTS[case["layout"]]
    objectness, deltas, anchors, sizes, counts = rpn_inputs(case["batch"], h, w, case.dtype, g)
    tensors = (x.to(case.device) for x in (objectness, deltas, anchors, sizes))
    return (*tensors, counts, case["pre"], case["post"], 0.7, 1e-3, 0.0)


def compare(got, expected, case, inputs):
    return compare_proposals(got, expected, inputs, case.dtype)


def torchvision_unsupported(case):
    if case.device == "cpu" and case.dtype == torch.float16:
        return "torchvision has no float16 NMS on the CPU"
    return None


def torchvision_deviation(case, inputs):
    if case.device == "cuda" and case.dtype == torch.float16:
        return "torchvision's CUDA NMS computes IoU in float16"
    return None


def bytes_moved(case):
    h, w = LAYOUTS[case["layout"]]
    anchors = sum(-(-h // s) * -(-w // s) * 3 for s in (4, 8, 16, 32, 64))
    item = case.dtype.itemsize
    return case["batch"] * anchors * 5 * item + anchors * 4 * item + case["batch"] * case["post"] * 5 * item


SUITE = Suite(
    name="generate_proposals",
    description=__doc__,
    impls=[Impl("torchvision", ref.tv_generate_proposals, unsupported=torchvision_unsupported,
                known_deviation=torchvision_deviation),
           Impl("detbench", ops.generate_proposals),
           Impl("pure", ref.pure_generate_proposals, timed=False)],
    reference="pure",
    baseline="torchvision",
    axes={"layout": ("fpn800x1344",), "batch": (1, 2, 8), "pre": (2000, 1000), "post": (1000,)},
    extra_cases=[{"layout": "small160x224", "batch": 2, "pre": 300, "post": 100}],
    dtypes=(torch.float32, torch.float16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    ci=lambda case: case["layout"] == "small160x224",
)
