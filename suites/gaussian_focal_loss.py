"""Gaussian focal loss (CenterNet's heatmap loss), forward and forward + backward.

Baseline: mmdet's formula in pure PyTorch in the input dtype, with autograd (what mmdet runs);
arbiter: the same formula in float64. Each implementation returns (loss,) or (loss, grad of
pred); the 'mean' reduction unless the case says otherwise. Bandwidth-bound: bytes_moved is
what one fused pass must read and write.
"""
import math

import torch

import ops
from harness import Comparison, Impl, Suite, Tolerance, tensors_close
from reference import gaussian_target as ref

SHAPES = ("16x80x128x128", "48x20x50")
PASSES = ("forward", "forward+backward")
CPU_TOO_SLOW = {"16x80x128x128"}
# Single points: the other reductions, avg_factor, a size that is no multiple of a 16-byte pack.
EXTRA = [{"shape": "48x20x50", "pass": "forward+backward", "reduction": r} for r in ("none", "sum", "mean_avg")]
EXTRA += [{"shape": "3x5x7", "pass": "forward+backward", "reduction": "mean"},
          {"shape": "3x5x7", "pass": "forward", "reduction": "none"}]

# Loss tolerance per dtype; gradients: rtol and an atol relative to the largest gradient, never
# below half types' smallest subnormal (a mean over 21M elements makes float16 gradients subnormal).
LOSS_TOL = {torch.float32: Tolerance(1e-6, 1e-5), torch.float16: Tolerance(1e-7, 1e-3),
            torch.bfloat16: Tolerance(1e-7, 8e-3)}
GRAD_RTOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
SUBNORMAL = {torch.float32: 0.0, torch.float16: 2.0**-24, torch.bfloat16: 0.0}


def _params(case):
    reduction = case.params.get("reduction", "mean")
    return ("mean", 1234.5) if reduction == "mean_avg" else (reduction, None)


def make_inputs(case, g):
    shape = tuple(int(d) for d in case["shape"].split("x"))
    # CenterNet's pred: a sigmoid clamped to [1e-4, 1 - 1e-4]; target: a Gaussian-like heatmap
    # with about 1% exact ones (the positives).
    pred = torch.sigmoid(torch.randn(shape, generator=g) * 2).clamp(1e-4, 1 - 1e-4)
    # kept below 1 in the dtype too (1 - 1e-4 rounds to 1 in float16 and bfloat16)
    pred = pred.to(case.dtype).clamp(max=1 - torch.finfo(case.dtype).eps / 2)
    target = torch.rand(shape, generator=g) ** 8
    target[torch.rand(shape, generator=g) < 0.01] = 1.0
    reduction, avg_factor = _params(case)
    return (pred.to(case.dtype).to(case.device), target.to(case.dtype).to(case.device),
            case["pass"] == "forward+backward", reduction, avg_factor)


def _runner(loss_fn, dtype=None):
    def run(pred, target, backward, reduction, avg_factor):
        if dtype is not None:
            pred, target = pred.to(dtype), target.to(dtype)
        if not backward:
            return (loss_fn(pred, target, reduction=reduction, avg_factor=avg_factor),)
        pred = pred.detach().requires_grad_()
        loss = loss_fn(pred, target, reduction=reduction, avg_factor=avg_factor)
        (grad,) = torch.autograd.grad(loss, pred, torch.ones_like(loss))
        return loss.detach(), grad
    return run


def compare(got, expected, case, inputs):
    if not isinstance(got, tuple) or len(got) != len(expected):
        return Comparison(False, f"expected a tuple of {len(expected)} tensors, got {type(got).__name__}")
    parts = [("loss", tensors_close(got[0], expected[0], LOSS_TOL[case.dtype], dtype=case.dtype))]
    if len(expected) == 2:
        scale = float(expected[1].abs().max()) if expected[1].numel() else 0.0
        rtol = GRAD_RTOL[case.dtype]
        tol = Tolerance(max(rtol * 0.1 * scale, SUBNORMAL[case.dtype]), rtol)
        parts.append(("grad", tensors_close(got[1], expected[1], tol, dtype=case.dtype)))
    worst = next((c for _, c in parts if not c.passed), parts[-1][1])
    reason = "; ".join(f"{name}: {c.reason}" for name, c in parts if c.reason)
    return Comparison(all(c.passed for _, c in parts), reason, max(c.max_abs_err for _, c in parts),
                      max(c.max_rel_err for _, c in parts), sum(c.mismatches for _, c in parts), worst.worst)


def half_precision_formula(case, inputs):
    if case.dtype in (torch.float16, torch.bfloat16):
        return (f"mmdet's formula evaluated in {case.dtype_name} arithmetic (pred + 1e-12 and 1 - pred "
                f"rounded to {case.dtype_name}); detbench computes in float32")
    return None


def bytes_moved(case):
    n = math.prod(int(d) for d in case["shape"].split("x"))
    reduction, _ = _params(case)
    forward = 3 if reduction == "none" else 2          # pred, target (, loss)
    backward = 4 if reduction == "none" else 3         # (grad,) pred, target, grad_pred
    return n * case.dtype.itemsize * (forward + (backward if case["pass"] == "forward+backward" else 0))


SUITE = Suite(
    name="gaussian_focal_loss",
    description=__doc__,
    impls=[
        Impl("pytorch", _runner(ref.gaussian_focal_loss), known_deviation=half_precision_formula),
        Impl("detbench", _runner(ops.gaussian_focal_loss)),
        Impl("float64", _runner(ref.gaussian_focal_loss, torch.float64), timed=False),
    ],
    reference="float64",
    baseline="pytorch",
    axes={"shape": SHAPES, "pass": PASSES},
    extra_cases=EXTRA,
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    include=lambda case: not (case.device == "cpu" and case["shape"] in CPU_TOO_SLOW),
    ci=lambda case: case["shape"] != "16x80x128x128",
)
