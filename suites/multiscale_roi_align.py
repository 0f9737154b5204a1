"""The FPN pooler (torchvision.ops.MultiScaleRoIAlign): each RoI's level from the LevelMapper
(canonical scale 224, level 4, clamped to P2-P5), pooled 7x7 with sampling ratio 2 from that
level, forward and forward + backward, NCHW and NHWC.

Features: P2-P5 of an 800x1344 image (256 channels; 200x336 ... 25x42), 512 / 1,000 / 2,000
clustered RoIs per image (sizes 16-512 px, so every level gets RoIs), batch 2 (and 8, float32, on
the GPU). Boxes are float32 for detbench and the float64 reference (the level of a RoI is decided
in float32, as in a float32 or autocast model); torchvision requires boxes of the features' dtype,
so for float16/bfloat16 it gets them rounded, and its LevelMapper computes areas in that dtype
(float16 areas overflow past 256x256 px): a declared deviation there.
"""
import torch

import ops
from harness import Impl, Suite
from reference import pure, tv
from suites._boxes import IMAGE_HW, clustered_boxes
from suites.roi_align import CUDA_FMA_POSITIONS, compare_pair, make_features

CHANNELS = 256
NAMES = ("p2", "p3", "p4", "p5")
STRIDES = (4, 8, 16, 32)
SIZE, SAMPLING_RATIO = 7, 2


def make_inputs(case, g):
    n, c = case["images"], case.params.get("channels", CHANNELS)
    h, w = IMAGE_HW
    x = {name: make_features((n, c, -(-h // s), -(-w // s)), case.dtype, case.device, case["layout"], g)
         for name, s in zip(NAMES, STRIDES)}
    boxes = [clustered_boxes(case["rois"], g, objects=max(8, case["rois"] // 50)).to(case.device) for _ in range(n)]
    image_shapes = [IMAGE_HW] * n
    upstream = None
    if case["pass"] == "fwdbwd":
        upstream = torch.randn(n * case["rois"], c, SIZE, SIZE, generator=g).to(case.dtype).to(case.device)
    return x, boxes, image_shapes, upstream


def runner(fn, float64=False, boxes_in_dtype=False):
    def run(x, boxes, image_shapes, upstream):
        kw = {}
        dtype = next(iter(x.values())).dtype
        if float64:
            kw["positions_dtype"] = torch.float64 if dtype == torch.float64 else torch.float32
            x = {k: v.double() for k, v in x.items()}
        if boxes_in_dtype:
            boxes = [b.to(dtype) for b in boxes]
        if upstream is None:
            return fn(x, boxes, image_shapes, NAMES, SIZE, SAMPLING_RATIO, **kw)
        x = {k: v.detach().requires_grad_() for k, v in x.items()}
        out = fn(x, boxes, image_shapes, NAMES, SIZE, SAMPLING_RATIO, **kw)
        grads = torch.autograd.grad(out, [x[k] for k in NAMES], upstream.to(out.dtype))
        return out.detach(), tuple(grads)
    return run


def compare(got, expected, case, inputs):
    return compare_pair(got, expected, case.dtype)


def half_levels(case, inputs):
    if case.dtype in (torch.float16, torch.bfloat16):
        return (f"torchvision pools in {case.dtype_name} and maps levels from {case.dtype_name} box areas "
                "(float16 overflows past 256x256 px)")
    return CUDA_FMA_POSITIONS if case.device == "cuda" else None


def torchvision_unsupported(case):
    if case.dtype == torch.bfloat16:  # seen on the H200: "roi_align_forward_kernel" not implemented for 'BFloat16'
        return "torchvision's roi_align has no bfloat16 kernel (CPU or CUDA)"
    return None


def bytes_moved(case):
    n, c = case["images"], case.params.get("channels", CHANNELS)
    h, w = IMAGE_HW
    item = case.dtype.itemsize
    features = sum(n * c * (-(-h // s)) * (-(-w // s)) for s in STRIDES) * item
    k = n * case["rois"]
    out = k * c * SIZE * SIZE * item
    forward = features + out + k * 4 * 4
    return forward if case["pass"] == "fwd" else forward + out + features


SUITE = Suite(
    name="multiscale_roi_align",
    description=__doc__,
    impls=[
        # CUDA: checked as timed, unpoisoned (see roi_align's suite)
        Impl("torchvision", runner(tv.multiscale_roi_align, boxes_in_dtype=True), known_deviation=half_levels,
             unsupported=torchvision_unsupported, poison_devices=("cpu",)),
        Impl("detbench", runner(ops.multiscale_roi_align)),
        Impl("float64", runner(pure.multiscale_roi_align, float64=True), timed=False),
    ],
    reference="float64",
    baseline="torchvision",
    axes={"rois": (512, 1000, 2000), "images": (2, 8), "layout": ("nchw", "nhwc"), "pass": ("fwd", "fwdbwd")},
    extra_cases=[{"rois": 24, "images": 2, "layout": lay, "pass": p, "channels": 16}
                 for lay in ("nchw", "nhwc") for p in ("fwd", "fwdbwd")]
    + [{"rois": 0, "images": 2, "layout": "nchw", "pass": p, "channels": 16} for p in ("fwd", "fwdbwd")],
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    ci=lambda case: case.params.get("channels") == 16,
    include=lambda case: case.params.get("channels") == 16
    or (case.device == "cuda" and (case["images"] == 2 or case.dtype == torch.float32)),
)
