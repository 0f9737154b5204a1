"""Multi-scale RoI Align (the FPN pooler): torchvision's MultiScaleRoIAlign against
ops.multiscale_roi_align, which maps every box to its level and pools from all levels in one
launch.

Features P2-P5 of an 800 x 1344 image (strides 4-32, 256 channels), clustered proposals
(16-512 px, so every level is used), box head 7x7 and mask head 14x14, sampling ratio 2.
Axes and implementations as suites/roi_align.py; gradients are one per level. Small pyramids
(8 channels) with realistic and adversarial boxes (outside, under a pixel, inverted: negative
area, no level, zeros; 3x the image with adaptive sampling) make the `ci` preset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import ops
from harness import Impl, Suite
from ops.roi_align import _channels_last, infer_scales, level_range
from reference import roi_align as ref
from suites import _roi_align as ra
from suites._boxes import IMAGE_HW

NAMES = ("0", "1", "2", "3")
STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class Workload:
    batch: int
    channels: int
    rois_per_image: int
    output: tuple[int, int]
    sampling: int
    boxes: str = "realistic"  # or "adversarial": a third each outside, tiny, huge


WORKLOADS = {
    "fpn_box_b2_r1000": Workload(2, 256, 1000, (7, 7), 2),
    "fpn_box_b8_r512": Workload(8, 256, 512, (7, 7), 2),
    "fpn_mask_b2_r100": Workload(2, 256, 100, (14, 14), 2),
    "fpn_small": Workload(2, 8, 16, (7, 7), 2),
    "fpn_adv": Workload(2, 8, 12, (7, 7), 0, "adversarial"),
}
MAIN = ["fpn_box_b2_r1000", "fpn_box_b8_r512", "fpn_mask_b2_r100"]
BACKWARD = ("fpn_box_b2_r1000",)
EXTRA = [{"workload": w, "layout": layout, "pass": "fwd+bwd"} for w in ("fpn_small", "fpn_adv")
         for layout in ra.LAYOUTS]


def level_shapes():
    h, w = IMAGE_HW
    return [(h // s, w // s) for s in STRIDES]


def make_inputs(case, g):
    wl = WORKLOADS[case["workload"]]
    boxes = []
    for _ in range(wl.batch):
        if wl.boxes == "realistic":
            boxes.append(ra.realistic_boxes(wl.rois_per_image, g))
        else:
            third = wl.rois_per_image // 3
            boxes.append(torch.cat([ra.adversarial_boxes(kind, third, g, IMAGE_HW)
                                    for kind in ("outside", "tiny", "huge")]))
    levels = [ra.features((wl.batch, wl.channels, h, w), case, g) for h, w in level_shapes()]
    k = wl.rois_per_image * wl.batch
    grad = ra.grad_output((k, wl.channels, *wl.output), case, g)
    device = case.device
    return ([x.to(device) for x in levels], [b.to(case.dtype).to(device) for b in boxes],
            [IMAGE_HW] * wl.batch, None if grad is None else grad.to(device), wl.output, wl.sampling)


def _as_dict(levels):
    return dict(zip(NAMES, levels))


def _autograd(fn, float64=False):
    def pool(levels, boxes, image_shapes, output_size, sampling):
        return fn(_as_dict(levels), boxes, image_shapes, list(NAMES), output_size, sampling)

    def call(levels, boxes, image_shapes, grad, output_size, sampling):
        return ra.run(pool, levels, grad, boxes, image_shapes, output_size, sampling, float64=float64)

    return call


def _explicit_backward(deterministic: bool):
    def call(levels, boxes, image_shapes, grad, output_size, sampling):
        scales = infer_scales(levels, image_shapes)
        k_min, k_max = level_range(scales)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        ph, pw = output_size
        args = (scales, ph, pw, sampling, False, k_min, k_max, 224.0, 4.0)
        out = torch.ops.detbench.multiscale_roi_align(levels, rois, *args)
        n, c = levels[0].shape[:2]
        grads = torch.ops.detbench._multiscale_roi_align_backward(
            grad, rois, *args, n, c, [x.shape[2] for x in levels], [x.shape[3] for x in levels],
            _channels_last(levels[0]), deterministic)
        return out, list(grads)

    return call


def compare(got, expected, case, inputs):
    return ra.compare(got, expected, case)


def bytes_moved(case):
    """Forward: every level read once, boxes read, output written; backward adds grad_output
    read and every level's gradient written."""
    wl = WORKLOADS[case["workload"]]
    item = case.dtype.itemsize
    k = wl.rois_per_image * wl.batch
    features = sum(wl.batch * wl.channels * h * w for h, w in level_shapes()) * item
    output = k * wl.channels * wl.output[0] * wl.output[1] * item
    total = features + output + k * 4 * item
    return total + output + features if case["pass"] == "fwd+bwd" else total


SUITE = Suite(
    name="multiscale_roi_align",
    description=__doc__,
    impls=[
        Impl("torchvision", _autograd(ref.tv_multiscale_roi_align), known_deviation=ra.torchvision_deviation,
             unsupported=ra.torchvision_unsupported),
        Impl("detbench", _autograd(ops.multiscale_roi_align)),
        Impl("detbench_atomic", _explicit_backward(False), unsupported=ra.forward_only_same_kernel, timed=False),
        Impl("detbench_deterministic", _explicit_backward(True), unsupported=ra.forward_only_same_kernel),
        Impl("float64", _autograd(ref.multiscale_roi_align, float64=True), timed=False),
    ],
    reference="float64",
    baseline="torchvision",
    axes={"workload": MAIN, "layout": ra.LAYOUTS, "pass": ra.PASSES},
    extra_cases=EXTRA,
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    include=lambda case: case["pass"] == "fwd" or case["workload"] in BACKWARD or case["workload"] not in MAIN,
    ci=lambda case: case["workload"] not in MAIN,
)
