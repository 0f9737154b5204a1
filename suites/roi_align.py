"""RoI Align (single level): Mask R-CNN box head (7x7) and mask head (14x14) shapes.

The box-head workloads pool from P2 of an 800 x 1344 image (256 x 200 x 336, spatial scale 1/4),
the mask head from 256 x 50 x 84 (scale 1/16), all aligned (Detectron2 / torchvision v2 heads),
with clustered proposals (suites._boxes.clustered_boxes). Axes: workload x layout (NCHW or
channels-last) x pass (forward, or forward + backward returning (output, input gradient)).
Small adversarial workloads (RoIs partly or wholly outside, under a pixel, zero-sized,
inverted, 3x the image with adaptive sampling, no RoIs, an image without RoIs, odd channel
counts) make the `ci` preset.

Implementations: torchvision (baseline; its roi_align kernel), detbench (ops.roi_align through
autograd: the deterministic backward during the harness's checks, which run with
torch.use_deterministic_algorithms on, and the atomic one when timed), detbench_atomic and
detbench_deterministic (the forward op, then the backward op with the backward chosen
explicitly; fwd+bwd cases only), float64 (the reference of record).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import ops
from harness import Impl, Suite
from ops.roi_align import _channels_last
from reference import roi_align as ref
from suites import _roi_align as ra


@dataclass(frozen=True)
class Workload:
    batch: int
    channels: int
    height: int
    width: int
    rois_per_image: int
    output: tuple[int, int]
    scale: float
    sampling: int
    aligned: bool
    boxes: str = "realistic"  # or an adversarial kind (suites._roi_align.adversarial_boxes)
    empty_images: tuple[int, ...] = ()


P2 = (256, 200, 336)
WORKLOADS = {
    "box_b2_r1000": Workload(2, *P2, 1000, (7, 7), 0.25, 2, True),
    "box_b2_r2000": Workload(2, *P2, 2000, (7, 7), 0.25, 2, True),
    "box_b8_r512": Workload(8, *P2, 512, (7, 7), 0.25, 2, True),
    "box_b2_r1000_s0": Workload(2, *P2, 1000, (7, 7), 0.25, 0, True),
    "mask_b2_r100": Workload(2, 256, 50, 84, 100, (14, 14), 1 / 16, 2, True),
    # adversarial and small (the ci preset)
    "adv_outside": Workload(2, 13, 23, 37, 40, (5, 7), 0.25, 2, False, "outside"),
    "adv_tiny": Workload(2, 16, 23, 37, 40, (7, 7), 0.25, 0, True, "tiny"),
    "adv_huge": Workload(2, 13, 23, 37, 10, (7, 7), 0.25, 0, False, "huge"),
    "adv_empty": Workload(2, 16, 23, 37, 0, (7, 7), 0.25, 2, True),
    "adv_batch_gap": Workload(3, 16, 23, 37, 30, (7, 7), 0.25, 2, True, empty_images=(1,)),
    "small": Workload(2, 16, 50, 84, 64, (7, 5), 0.25, 2, True),
}
MAIN = [w for w in WORKLOADS if not w.startswith(("adv", "small"))]
BACKWARD = ("box_b2_r1000", "mask_b2_r100")  # main workloads that also run fwd+bwd
EXTRA = [
    {"workload": w, "layout": layout, "pass": p}
    for w, layout, p in [
        ("adv_outside", "nchw", "fwd+bwd"), ("adv_tiny", "nhwc", "fwd+bwd"),
        ("adv_huge", "nchw", "fwd+bwd"), ("adv_huge", "nhwc", "fwd+bwd"),
        ("adv_empty", "nhwc", "fwd+bwd"), ("adv_batch_gap", "nchw", "fwd+bwd"),
        ("small", "nhwc", "fwd+bwd"), ("small", "nchw", "fwd+bwd"),
    ]
]


def image_hw(w: Workload) -> tuple[float, float]:
    return w.height / w.scale, w.width / w.scale


def make_inputs(case, g):
    w = WORKLOADS[case["workload"]]
    per_image = []
    for i in range(w.batch):
        n = 0 if i in w.empty_images else w.rois_per_image
        if w.boxes == "realistic":
            per_image.append(ra.realistic_boxes(n, g, image_hw(w)))
        else:
            per_image.append(ra.adversarial_boxes(w.boxes, n, g, image_hw(w)))
    rois = ra.rois_with_batch(per_image).to(case.dtype)
    x = ra.features((w.batch, w.channels, w.height, w.width), case, g)
    grad = ra.grad_output((len(rois), w.channels, *w.output), case, g)
    device = case.device
    return (x.to(device), rois.to(device), None if grad is None else grad.to(device), w.output, w.scale, w.sampling,
            w.aligned)


def _autograd(fn, float64=False):
    def call(x, rois, grad, output_size, scale, sampling, aligned):
        return ra.run(fn, x, grad, rois, output_size, scale, sampling, aligned, float64=float64)

    return call


def _explicit_backward(deterministic: bool):
    def call(x, rois, grad, output_size, scale, sampling, aligned):
        ph, pw = output_size
        out = torch.ops.detbench.roi_align(x, rois, scale, ph, pw, sampling, aligned)
        n, c, h, w = x.shape
        grad_x = torch.ops.detbench._roi_align_backward(grad, rois, scale, ph, pw, sampling, aligned, n, c, h, w,
                                                        _channels_last(x), deterministic)
        return out, grad_x

    return call


def compare(got, expected, case, inputs):
    return ra.compare(got, expected, case)


def bytes_moved(case):
    """Forward: features read once (1000 clustered RoIs per image cover most of P2), RoIs read,
    output written. Backward adds grad_output read and the input gradient written."""
    w = WORKLOADS[case["workload"]]
    item = case.dtype.itemsize
    k = w.rois_per_image * (w.batch - len(w.empty_images))
    feature = w.batch * w.channels * w.height * w.width * item
    output = k * w.channels * w.output[0] * w.output[1] * item
    total = feature + output + k * 5 * item
    return total + output + feature if case["pass"] == "fwd+bwd" else total


SUITE = Suite(
    name="roi_align",
    description=__doc__,
    impls=[
        Impl("torchvision", _autograd(ref.tv_roi_align), known_deviation=ra.torchvision_deviation,
             unsupported=ra.torchvision_unsupported),
        Impl("detbench", _autograd(ops.roi_align)),
        Impl("detbench_atomic", _explicit_backward(False), unsupported=ra.forward_only_same_kernel, timed=False),
        Impl("detbench_deterministic", _explicit_backward(True), unsupported=ra.forward_only_same_kernel),
        Impl("float64", _autograd(ref.roi_align, float64=True), timed=False),
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
