"""NMS: single-class `nms` and class-aware `batched_nms` (images x classes as groups).

NMS cost depends on the data more than on N: how many boxes crowd each object (density), how
many survive, ties. Inputs are (boxes, scores, idxs or None, iou_threshold); idxs is
image * classes + class, None for one image of one class (then `nms` is called).
"""
import torch

import ops
from harness import Impl, Suite
from reference import pure, tv
from suites._boxes import make_boxes
from suites._nms import compare_keep, make_scores, torchvision_deviation, torchvision_unsupported

BOXES_PER_OBJECT = {"clustered": 20, "dense": 200, "ties": 20, "degenerate": 20, "huge": 20}

# The sweep of record: one image, one class, every N and threshold.
AXES = {"n": (1000, 5000, 20000, 100000, 200000), "iou": (0.5, 0.7), "classes": (1,), "images": (1,),
        "content": ("clustered",)}
# Class-aware and multi-image points, content variants, adversarial sizes.
EXTRA = (
    [{"n": n, "iou": iou, "classes": 80, "images": im, "content": "clustered"}
     for n in (20000, 100000) for iou in (0.5, 0.7) for im in (1, 8)]
    + [{"n": n, "iou": 0.5, "classes": c, "images": 1, "content": content}
       for n in (5000, 20000) for c in (1, 80) for content in ("dense", "ties", "degenerate")]
    + [{"n": 5000, "iou": 0.5, "classes": 1, "images": 1, "content": "huge"}]
    + [{"n": n, "iou": 0.5, "classes": c, "images": 1, "content": "clustered"}
       for n in (0, 1, 63, 65, 4097) for c in (1, 80)]
)


def make_inputs(case, g):
    n, images, classes = case["n"], case["images"], case["classes"]
    per_image = [n // images + (i < n % images) for i in range(images)]
    content = case["content"]
    box_kind = "clustered" if content in ("dense", "ties") else content
    boxes = torch.cat([make_boxes(box_kind, m, case.dtype, g, max(1, m // BOXES_PER_OBJECT[content]))
                       for m in per_image])
    scores = make_scores(content, n, g)
    image = torch.repeat_interleave(torch.arange(images), torch.tensor(per_image))
    idxs = image * classes + torch.randint(0, classes, (n,), generator=g)
    device = case.device
    boxes, scores = boxes.to(case.dtype).to(device), scores.to(case.dtype).to(device)
    grouped = classes > 1 or images > 1
    return boxes, scores, idxs.to(device) if grouped else None, case["iou"]


def _dispatch(single, grouped):
    def run(boxes, scores, idxs, iou_threshold):
        if idxs is None:
            return single(boxes, scores, iou_threshold)
        return grouped(boxes, scores, idxs, iou_threshold)

    return run


def compare(got, expected, case, inputs):
    boxes, scores, idxs, threshold = inputs
    groups = idxs if idxs is not None else torch.zeros(len(scores), dtype=torch.int64, device=scores.device)
    return compare_keep(got, expected, boxes, scores, groups, threshold)


def bytes_moved(case):
    """Inputs read once (boxes, scores, idxs); the output is a small fraction. NMS is bound by
    its dependency chain, not bandwidth: % of peak is only indicative."""
    grouped = case["classes"] > 1 or case["images"] > 1
    return case["n"] * (5 * case.dtype.itemsize + (8 if grouped else 0))


SUITE = Suite(
    name="nms",
    description=__doc__,
    impls=[
        Impl("torchvision", _dispatch(tv.nms, tv.batched_nms), unsupported=torchvision_unsupported,
             known_deviation=lambda case, inputs: torchvision_deviation(case, grouped=inputs[2] is not None)),
        Impl("detbench", _dispatch(ops.nms, ops.batched_nms)),
        Impl("float64", _dispatch(pure.nms, pure.batched_nms), timed=False),
    ],
    reference="float64",
    baseline="torchvision",
    axes=AXES,
    extra_cases=EXTRA,
    dtypes=(torch.float32, torch.float16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    ci=lambda case: case["n"] <= 5000,
    include=lambda case: case.device == "cuda" or case["n"] <= 20000,  # the CPU sweep stops at 20k
)
