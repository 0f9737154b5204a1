"""Shared by the RoI Align suites: RoI generators, feature maps, the forward(+backward) runner,
tolerances, the (output, gradient) comparator and torchvision's declared deviations.

A case's `pass` axis is `fwd` (the implementation returns the pooled output) or `fwd+bwd` (one
call runs the forward and the backward of a fixed random grad_output and returns (output,
input gradient)); the harness times whatever the call does.
"""
from __future__ import annotations

import torch

from harness import Comparison, Tolerance, tensors_close, tolerance_for
from suites._boxes import IMAGE_HW, clustered_boxes

PASSES = ("fwd", "fwd+bwd")
LAYOUTS = ("nchw", "nhwc")

# Against the float64 reference (which computes sample positions in float32, as the kernels do).
# Forward: float32 rounding of a few products and sums; float16/bfloat16: one rounding of the
# output. Backward: atomic adds in any order, plus (float16/bfloat16) one rounding of the gradient.
FWD_TOL = {
    torch.float32: Tolerance(atol=1e-5, rtol=1e-5),
    torch.float16: Tolerance(atol=1e-3, rtol=1e-3),
    torch.bfloat16: Tolerance(atol=8e-3, rtol=8e-3),
}
BWD_TOL = {
    torch.float32: Tolerance(atol=1e-4, rtol=1e-4),
    torch.float16: Tolerance(atol=2e-3, rtol=2e-3),
    torch.bfloat16: Tolerance(atol=1.6e-2, rtol=1.6e-2),
}


def realistic_boxes(n: int, g: torch.Generator, image_hw=IMAGE_HW) -> torch.Tensor:
    """[n, 4] proposals clustered around objects (suites._boxes.clustered_boxes), rescaled from
    the 800 x 1344 image to image_hw."""
    boxes = clustered_boxes(n, g)
    sy, sx = image_hw[0] / IMAGE_HW[0], image_hw[1] / IMAGE_HW[1]
    return boxes * torch.tensor([sx, sy, sx, sy])


def adversarial_boxes(kind: str, n: int, g: torch.Generator, image_hw) -> torch.Tensor:
    """[n, 4] boxes of one adversarial kind on an image of image_hw (height, width):
    outside: partly or wholly outside the image (negative, beyond the far edge);
    tiny: under one pixel, zero-sized and inverted;
    huge: up to 3x the image, around it."""
    h, w = image_hw
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    if kind == "outside":
        c = (torch.rand(n, 2, generator=g) * 2.2 - 0.6) * scale[:2]
        size = (torch.rand(n, 2, generator=g) * 0.5 + 0.05) * scale[:2]
        return torch.cat([c - size / 2, c + size / 2], 1)
    if kind == "tiny":
        xy = torch.rand(n, 2, generator=g) * scale[:2]
        size = torch.rand(n, 2, generator=g) * 1.0
        size[: n // 4] = 0                               # zero-sized
        boxes = torch.cat([xy, xy + size], 1)
        flip = torch.rand(n, generator=g) < 0.2          # inverted
        boxes[flip] = boxes[flip][:, [2, 3, 0, 1]]
        return boxes
    if kind == "huge":
        c = torch.rand(n, 2, generator=g) * scale[:2]
        size = (torch.rand(n, 2, generator=g) * 2 + 1) * scale[:2]
        return torch.cat([c - size / 2, c + size / 2], 1)
    raise ValueError(f"unknown adversarial kind {kind!r}")


def rois_with_batch(per_image: list[torch.Tensor]) -> torch.Tensor:
    """[K, 5] rois (batch index first) from per-image [Ki, 4] boxes."""
    if not per_image:
        return torch.zeros(0, 5)
    return torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(per_image)])


def features(shape, case, g: torch.Generator) -> torch.Tensor:
    """randn features of `shape` in the case's dtype and layout (channels-last for nhwc), CPU."""
    x = torch.randn(*shape, generator=g).to(case.dtype)
    return x.contiguous(memory_format=torch.channels_last) if case["layout"] == "nhwc" else x


def grad_output(shape, case, g: torch.Generator) -> torch.Tensor | None:
    """A fixed random grad_output for fwd+bwd cases, None for fwd."""
    return torch.randn(*shape, generator=g).to(case.dtype) if case["pass"] == "fwd+bwd" else None


def run(fn, inputs, grad, *args, float64: bool = False, **kwargs):
    """fn(inputs, *args, **kwargs) where `inputs` is a tensor or a list of tensors; with a
    grad_output, also the backward: returns (output, input gradient(s)). float64: the inputs are
    differentiated as float64 copies (the reference's gradient is not rounded to their dtype)."""
    single = isinstance(inputs, torch.Tensor)
    xs = [inputs] if single else list(inputs)
    if grad is None:
        return fn(inputs, *args, **kwargs)
    leaves = [(x.double() if float64 else x).detach().requires_grad_() for x in xs]
    with torch.enable_grad():
        out = fn(leaves[0] if single else leaves, *args, **kwargs)
        grads = torch.autograd.grad(out, leaves, grad.to(out.dtype))
    return out.detach(), grads[0] if single else list(grads)


def compare(got, expected, case) -> Comparison:
    """Forward: the output. fwd+bwd: the output and every input gradient, each within its
    tolerance; the worst elements' indices start with 0 (output) or 1 + level (gradient)."""
    if case["pass"] == "fwd":
        return tensors_close(got, expected, tolerance_for(case.dtype, FWD_TOL), dtype=case.dtype)
    if not (isinstance(got, tuple) and len(got) == 2):
        return Comparison(False, f"expected (output, gradient), got {type(got).__name__}")
    out, grads = got
    exp_out, exp_grads = expected
    grads = [grads] if isinstance(grads, torch.Tensor) else list(grads)
    exp_grads = [exp_grads] if isinstance(exp_grads, torch.Tensor) else list(exp_grads)
    if len(grads) != len(exp_grads):
        return Comparison(False, f"{len(grads)} gradients, expected {len(exp_grads)}")
    parts = [("output", tensors_close(out, exp_out, tolerance_for(case.dtype, FWD_TOL), dtype=case.dtype))]
    for i, (g_, e_) in enumerate(zip(grads, exp_grads)):
        name = "grad" if len(grads) == 1 else f"grad[{i}]"
        parts.append((name, tensors_close(g_, e_, tolerance_for(case.dtype, BWD_TOL), dtype=case.dtype)))
    worst = tuple(((p, *idx), g_, e_) for p, (_, c) in enumerate(parts) for idx, g_, e_ in c.worst)
    return Comparison(
        passed=all(c.passed for _, c in parts),
        reason="; ".join(f"{name}: {c.reason}" for name, c in parts if not c.passed),
        max_abs_err=max(c.max_abs_err for _, c in parts),
        max_rel_err=max(c.max_rel_err for _, c in parts),
        mismatches=sum(c.mismatches for _, c in parts),
        worst=tuple(sorted(worst, key=lambda w: -abs(w[1] - w[2]) if w[1] == w[1] else float("-inf")))[:5],
    )


def torchvision_deviation(case, inputs) -> str | None:
    """torchvision's kernels and detbench's (and the reference's) round differently."""
    if case.dtype == torch.float16:
        return "torchvision's float16 kernel computes sample positions, weights and sums in float16"
    if case.device == "cuda":
        return ("torchvision's CUDA kernel contracts coordinate arithmetic into FMAs (sample positions an ulp "
                "away) and, in the backward, adds with atomics in float32")
    return None


def torchvision_unsupported(case) -> str | None:
    if case.dtype == torch.bfloat16:
        return "torchvision's roi_align has no bfloat16 kernel (CPU or CUDA)"
    return None


def forward_only_same_kernel(case) -> str | None:
    if case["pass"] == "fwd":
        return "forward: the same kernel as detbench (only the backward differs)"
    return None
