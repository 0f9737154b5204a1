"""RoI Align (Mask R-CNN's box and mask heads): torchvision.ops.roi_align's semantics, forward
and forward + backward, NCHW and channels-last (NHWC) features.

Box head: 7x7, sampling ratio 2 (and 0, adaptive), aligned, on P2 of an 800x1344 image
(256 x 200 x 336, spatial scale 1/4), 512 / 1,000 / 2,000 RoIs per image, batch 2 and 8. Mask
head: 14x14 on P4 (256 x 50 x 84, scale 1/16), 200 RoIs. RoIs clustered around objects as a
detector's proposals are; the adversarial content adds RoIs partly and wholly outside the map,
tiny (< 1 feature pixel) and huge (3x the image) ones, and puts every RoI on image 0 (image 1 has
none); plus zero RoIs. Features: smooth (bilinearly upsampled noise, as real feature maps) plus
a little noise. fwdbwd returns (output, grad of the features) for a random upstream gradient.

Reference: float64 (reference.pure.roi_align: torchvision's sample positions, float64
interpolation, autograd). Baseline: torchvision, in the same memory format (it copies
channels-last input to NCHW itself).
"""
import math

import torch
import torch.nn.functional as F

import ops
from harness import Comparison, Impl, Suite, Tolerance, tensors_close
from reference import pure, tv
from suites._boxes import IMAGE_HW, clustered_boxes

CHANNELS = 256
# head -> (output size, sampling ratio, feature stride)
HEADS = {"box7_sr2": (7, 2, 4), "box7_sr0": (7, 0, 4), "mask14": (14, 2, 16)}

OUT_TOL = {torch.float32: Tolerance(atol=2e-6, rtol=1e-5), torch.float16: Tolerance(atol=2e-3, rtol=2e-3),
           torch.bfloat16: Tolerance(atol=1.6e-2, rtol=1.6e-2), torch.float64: Tolerance(atol=1e-12, rtol=1e-10)}
# gradients: a sum of many atomically added terms; atol relative to the largest gradient
GRAD_RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}


def feature_shape(case):
    stride = HEADS[case["head"]][2]
    h, w = IMAGE_HW
    return case["images"], case.params.get("channels", CHANNELS), math.ceil(h / stride), math.ceil(w / stride)


def make_features(shape, dtype, device, layout, g):
    n, c, h, w = shape
    coarse = torch.randn(n, c, max(1, h // 8), max(1, w // 8), generator=g)
    noise = torch.randn(1, 1, h, w, generator=g) * 0.05
    x = F.interpolate(coarse.to(device), size=(h, w), mode="bilinear", align_corners=False) + noise.to(device)
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x.contiguous()


def make_rois(case, g):
    """[K, 5] float32 rois in image coordinates."""
    images, per_image = case["images"], case["rois"]
    h, w = IMAGE_HW
    boxes = [clustered_boxes(per_image, g) for _ in range(images)]
    ids = [torch.full((per_image, 1), float(i)) for i in range(images)]
    if case.params.get("content", "clustered") == "adversarial":
        for b in boxes:
            m = b.shape[0]
            kind = torch.randint(0, 10, (m,), generator=g)
            shift = torch.tensor([w, h, w, h], dtype=torch.float32) * (torch.rand(m, 1, generator=g) - 0.5)
            b[kind == 0] += shift[kind == 0]                                 # partly outside
            b[kind == 1] += torch.tensor([2.0 * w, -1.5 * h, 2.0 * w, -1.5 * h])  # wholly outside
            tiny = kind == 2                                                 # < 1 feature pixel
            b[tiny, 2:] = b[tiny, :2] + torch.rand(int(tiny.sum()), 2, generator=g) * 2
            if m >= 4:                                                       # huge
                b[:2] = torch.tensor([[-w, -h, 2.0 * w, 2.0 * h], [-0.5 * w, 0.0, 1.5 * w, 3.0 * h]])
        ids = [torch.zeros_like(i) for i in ids]  # every RoI on image 0; the other images have none
    return torch.cat([torch.cat(ids), torch.cat(boxes)], dim=1)


def make_inputs(case, g):
    size, sampling_ratio, stride = HEADS[case["head"]]
    x = make_features(feature_shape(case), case.dtype, case.device, case["layout"], g)
    rois = make_rois(case, g).to(case.dtype).to(case.device)
    upstream = None
    if case["pass"] == "fwdbwd":
        upstream = torch.randn(rois.shape[0], x.shape[1], size, size, generator=g).to(case.dtype).to(case.device)
    return x, rois, size, 1.0 / stride, sampling_ratio, True, upstream


def runner(fn, float64=False):
    def run(x, rois, size, scale, sampling_ratio, aligned, upstream):
        kw = {}
        if float64:  # positions as the input's dtype rounds them, values in float64
            kw["positions_dtype"] = torch.float64 if x.dtype == torch.float64 else torch.float32
            x = x.double()
        if upstream is None:
            return fn(x, rois, size, scale, sampling_ratio, aligned, **kw)
        x = x.detach().requires_grad_()
        out = fn(x, rois, size, scale, sampling_ratio, aligned, **kw)
        (grad,) = torch.autograd.grad(out, x, upstream.to(out.dtype))
        return out.detach(), grad
    return run


def compare_pair(got, expected, dtype):
    """Output (and gradient) against the float64 reference."""
    if not isinstance(expected, tuple):
        return tensors_close(got, expected, OUT_TOL[dtype], dtype=dtype)
    if not isinstance(got, tuple) or len(got) != 2:
        return Comparison(False, f"expected (output, grad), got {type(got).__name__}")
    parts = [("output", tensors_close(got[0], expected[0], OUT_TOL[dtype], dtype=dtype))]
    g_exp = expected[1] if isinstance(expected[1], torch.Tensor) else torch.cat([e.flatten() for e in expected[1]])
    g_got = got[1] if isinstance(got[1], torch.Tensor) else torch.cat([e.flatten() for e in got[1]])
    scale = float(g_exp.abs().max()) if g_exp.numel() else 0.0
    rtol = GRAD_RTOL[dtype]
    parts.append(("grad", tensors_close(g_got, g_exp, Tolerance(max(rtol * 0.1 * scale, 1e-30), rtol), dtype=dtype)))
    worst = next((c for _, c in parts if not c.passed), parts[-1][1])
    return Comparison(all(c.passed for _, c in parts), "; ".join(f"{n}: {c.reason}" for n, c in parts if c.reason),
                      max(c.max_abs_err for _, c in parts), max(c.max_rel_err for _, c in parts),
                      sum(c.mismatches for _, c in parts), worst.worst)


def compare(got, expected, case, inputs):
    return compare_pair(got, expected, case.dtype)


# nvcc contracts a * b + c into one FMA by default, and torchvision's CUDA kernel writes its sample
# positions that way: they can differ by 1 ulp from its CPU kernel's op-by-op rounding (which the
# reference and detbench reproduce). At a position of ~200 feature pixels that is ~1.5e-5 px, so
# an output moves by up to that times the feature's slope: above float32's 1e-5 tolerance.
CUDA_FMA_POSITIONS = ("torchvision's CUDA kernel rounds sample positions through FMA contraction "
                      "(up to 1 ulp from its CPU kernel's, which the reference follows)")


def half_geometry(case, inputs):
    if case.dtype in (torch.float16, torch.bfloat16):
        return f"torchvision computes sample positions, weights and sums in {case.dtype_name}"
    return CUDA_FMA_POSITIONS if case.device == "cuda" else None


def torchvision_unsupported(case):
    if case.dtype == torch.bfloat16:  # seen on the H200: "roi_align_forward_kernel" not implemented for 'BFloat16'
        return "torchvision's roi_align has no bfloat16 kernel (CPU or CUDA)"
    return None


def bytes_moved(case):
    """Floor: read the feature pixels the RoIs cover (at most the whole maps) and the rois, write the
    output; backward also reads the upstream gradient and writes the whole input gradient."""
    size, _, _ = HEADS[case["head"]]
    n, c, h, w = feature_shape(case)
    item = case.dtype.itemsize
    k = case["images"] * case["rois"]
    out = k * c * size * size * item
    features = n * c * h * w * item
    forward = features + out + k * 5 * item
    if case["pass"] == "fwd":
        return forward
    return forward + out + features  # + read the upstream gradient, write the input gradient


SUITE = Suite(
    name="roi_align",
    description=__doc__,
    impls=[
        # CUDA: checked as timed, unpoisoned: under deterministic algorithms (what poisoning needs)
        # torchvision runs a Python roi_align instead of its kernel, which runs out of memory on the
        # adaptive grids of large RoIs (box7_sr0)
        Impl("torchvision", runner(tv.roi_align), known_deviation=half_geometry, poison_devices=("cpu",),
             unsupported=torchvision_unsupported),
        Impl("detbench", runner(ops.roi_align)),
        Impl("float64", runner(pure.roi_align, float64=True), timed=False),
    ],
    reference="float64",
    baseline="torchvision",
    axes={"head": ("box7_sr2",), "rois": (512, 1000, 2000), "images": (2, 8), "layout": ("nchw", "nhwc"),
          "pass": ("fwd", "fwdbwd")},
    extra_cases=[{"head": "box7_sr0", "rois": 1000, "images": 2, "layout": lay, "pass": p}
                 for lay in ("nchw", "nhwc") for p in ("fwd", "fwdbwd")]
    + [{"head": "mask14", "rois": 100, "images": 2, "layout": lay, "pass": p}
       for lay in ("nchw", "nhwc") for p in ("fwd", "fwdbwd")]
    + [{"head": h, "rois": 300, "images": 2, "layout": lay, "pass": p, "content": "adversarial"}
       for h in ("box7_sr2", "box7_sr0") for lay in ("nchw", "nhwc") for p in ("fwd", "fwdbwd")]
    + [{"head": "box7_sr2", "rois": 0, "images": 2, "layout": lay, "pass": p}
       for lay in ("nchw", "nhwc") for p in ("fwd", "fwdbwd")]
    # small: the ci cases (16 channels)
    + [{"head": h, "rois": 24, "images": 2, "layout": lay, "pass": p, "content": c, "channels": 16}
       for h in ("box7_sr2", "box7_sr0", "mask14") for lay in ("nchw", "nhwc") for p in ("fwd", "fwdbwd")
       for c in ("clustered", "adversarial")],
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    ci=lambda case: case.params.get("channels") == 16 or case["rois"] == 0,
    # The CPU: the small cases, zero RoIs and the CPU target (1,000 RoIs on 2 x 256 x 200 x 336,
    # float32); the full sweep is for the GPU.
    include=lambda case: case.device == "cuda" and (case["images"] == 2 or case.dtype == torch.float32)
    or case.params.get("channels") == 16 or case["rois"] == 0
    or (case["rois"] == 1000 and case["images"] == 2 and case.dtype == torch.float32 and "content" not in case.params
        and case["head"] == "box7_sr2"),
)
