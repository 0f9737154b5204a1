"""Sigmoid focal loss: RetinaNet R50-FPN classification loss at 800x1344, ~120k anchors per image
x 80 classes, sparse positives (~0.1 % of the elements), forward and forward+backward, each
reduction.

Inputs: logits ~ N(-4, 2) (mostly confident negatives, as a trained head's), one-hot targets with
0.1 % ones, for the 'none' backward a random upstream gradient. The reference is float64 in a
stable form (reference.retinanet); torchvision's 1 - p_t cancels for easy examples (p_t near 1),
which costs it ~1e-4 relative accuracy in float32: a known deviation, shown as xfail where it
shows. fp16 gradients of a mean over 19-77 M elements are ~1e-9, below float16's normal range:
they are compared with an absolute tolerance of float16's subnormal spacing (6e-8).
"""
import torch

import ops
from harness import Comparison, Impl, Suite, Tolerance, tensors_close
from reference import retinanet as ref

ANCHORS_PER_IMAGE = 120_000
CLASSES = 80
POSITIVE_FRACTION = 1e-3

# |got - expected| <= atol + rtol |expected|, against float64.
LOSS_TOL = {
    torch.float32: Tolerance(atol=1e-12, rtol=2e-5),
    torch.float16: Tolerance(atol=6e-8, rtol=2e-3),
    torch.bfloat16: Tolerance(atol=1e-30, rtol=1.6e-2),
}
GRAD_TOL = LOSS_TOL


def make_inputs(case, g):
    n = case["images"] * case["anchors"]
    logits = torch.randn(n, CLASSES, generator=g) * 2 - 4
    targets = (torch.rand(n, CLASSES, generator=g) < POSITIVE_FRACTION).float()
    with_grad = case["pass"] == "fwdbwd"
    upstream = None
    if with_grad and case["reduction"] == "none":
        upstream = torch.randn(n, CLASSES, generator=g).to(case.dtype).to(case.device)
    x = logits.to(case.dtype).to(case.device).requires_grad_(with_grad)
    return x, targets.to(case.dtype).to(case.device), case["reduction"], upstream


def _runner(loss_fn):
    def run(x, targets, reduction, upstream):
        loss = loss_fn(x, targets, 0.25, 2, reduction)
        if not x.requires_grad:
            return loss
        grad = torch.ones_like(loss) if upstream is None else upstream
        (dx,) = torch.autograd.grad(loss, x, grad)
        return loss.detach(), dx

    return run


def reference(x, targets, reduction, upstream):
    if not x.requires_grad:
        return ref.sigmoid_focal_loss_f64(x.detach(), targets, 0.25, 2, reduction)
    return ref.sigmoid_focal_loss_f64_with_grad(x, targets, 0.25, 2, reduction, upstream)


def compare(got, expected, case, inputs):
    if not isinstance(expected, tuple):
        return tensors_close(got, expected, LOSS_TOL[case.dtype], dtype=case.dtype)
    if not isinstance(got, tuple) or len(got) != 2:
        return Comparison(False, f"expected (loss, grad), got {type(got).__name__}")
    loss = tensors_close(got[0], expected[0], LOSS_TOL[case.dtype], dtype=case.dtype)
    grad = tensors_close(got[1], expected[1], GRAD_TOL[case.dtype], dtype=case.dtype)
    worse = loss if not loss.passed else grad
    return Comparison(
        loss.passed and grad.passed,
        "; ".join(f"{name}: {c.reason}" for name, c in (("loss", loss), ("grad", grad)) if c.reason),
        max(loss.max_abs_err, grad.max_abs_err), max(loss.max_rel_err, grad.max_rel_err),
        loss.mismatches + grad.mismatches, worse.worst,
    )


def torchvision_deviation(case, inputs):
    return "1 - p_t computed by subtraction cancels for easy examples (relative error ~1e-4 in float32)"


def bytes_moved(case):
    n = case["images"] * case["anchors"] * CLASSES
    item = case.dtype.itemsize
    none = case["reduction"] == "none"
    forward = n * item * (3 if none else 2)  # read logits, targets (+ write the loss)
    if case["pass"] == "fwd":
        return forward
    return forward + n * item * (4 if none else 3)  # read logits, targets (+ grad), write dx


SUITE = Suite(
    name="sigmoid_focal_loss",
    description=__doc__,
    impls=[
        Impl("torchvision", _runner(ref.sigmoid_focal_loss_tv), known_deviation=torchvision_deviation),
        Impl("detbench", _runner(ops.sigmoid_focal_loss)),
        Impl("float64", reference, timed=False),
    ],
    reference="float64",
    baseline="torchvision",
    axes={"images": (2, 8), "anchors": (ANCHORS_PER_IMAGE,), "pass": ("fwd", "fwdbwd"),
          "reduction": ("none", "mean", "sum")},
    extra_cases=[{"images": 1, "anchors": 1001, "pass": p, "reduction": r}  # small: the ci cases
                 for p in ("fwd", "fwdbwd") for r in ("none", "mean", "sum")],
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    ci=lambda case: case["anchors"] < ANCHORS_PER_IMAGE,
    # Batch 8 (77 M elements, the benchmark target) in float32 only, on the GPU only: the 2-core CPU
    # takes torchvision seconds per call there, and each batch-8 case costs seconds of input
    # generation and float64 comparison on the host.
    include=lambda case: case["images"] <= 2 or (case.device == "cuda" and case.dtype == torch.float32),
)
