"""Comparators: turn (output, expected) into a Comparison with error metrics and the worst elements.

Rules every comparator here follows:
- a NaN in the output never passes, wherever it is (outputs are poisoned with NaN before a run,
  so an element the kernel never wrote shows up as NaN);
- a NaN in the expected output is a broken reference, reported as a failure, not skipped;
- shapes and dtypes must match exactly before any value is looked at.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from harness.suite import Comparison

WORST_K = 5


@dataclass(frozen=True)
class Tolerance:
    """|got - expected| <= atol + rtol * |expected| passes (torch.allclose's rule)."""

    atol: float
    rtol: float


def tolerance_for(dtype: torch.dtype, table: Mapping[torch.dtype, Tolerance]) -> Tolerance:
    if dtype not in table:
        raise KeyError(f"no tolerance declared for {dtype}")
    return table[dtype]


def tensors_close(
    got: object,
    expected: torch.Tensor,
    tol: Tolerance,
    *,
    dtype: torch.dtype | None = None,
) -> Comparison:
    """Element-wise comparison in float64; `dtype` is the dtype `got` must have."""
    if not isinstance(got, torch.Tensor):
        return Comparison(False, f"expected a tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(expected.shape):
        return Comparison(False, f"shape {tuple(got.shape)} != expected {tuple(expected.shape)}")
    if dtype is not None and got.dtype != dtype:
        return Comparison(False, f"dtype {got.dtype} != expected {dtype}")
    # On got's device: the float64 passes over a GPU suite's 100M-element outputs take seconds on
    # the host and milliseconds on the GPU.
    exp = expected.detach().to(device=got.device, dtype=torch.float64)
    if torch.isnan(exp).any():
        return Comparison(False, f"the reference output has {int(torch.isnan(exp).sum())} NaN elements")
    if got.numel() == 0:
        return Comparison(True, max_abs_err=0.0, max_rel_err=0.0)
    out = got.detach().to(dtype=torch.float64)

    nan = torch.isnan(out)
    # Where the exact value overflows `dtype` (a float16 sum above 65504), its correctly rounded
    # result is that infinity.
    rounded = exp.to(dtype).to(torch.float64) if dtype is not None else exp
    same_inf = torch.isinf(rounded) & (out == rounded)
    err = torch.where(same_inf, torch.zeros_like(out), (out - exp).abs())
    score = err / (tol.atol + tol.rtol * exp.abs())
    # NaN never passes: a NaN output, or inf against an inf of the other sign (inf/inf), scores
    # +inf, so it is both a mismatch and among the worst elements.
    score = torch.where(torch.isnan(score), torch.full_like(score, float("inf")), score)
    bad = score > 1.0
    mismatches = int(bad.sum())

    finite_err = torch.where(nan, torch.zeros_like(err), err)
    max_abs = float("inf") if nan.any() else float(finite_err.max())
    significant = exp.abs() > tol.atol
    rel = finite_err[significant] / exp.abs()[significant]
    max_rel = float("inf") if nan.any() else (float(rel.max()) if rel.numel() else 0.0)

    worst = _worst(score, out, exp) if mismatches else ()
    reason = ""
    if mismatches:
        reason = f"{mismatches} of {out.numel()} elements outside atol={tol.atol:g} rtol={tol.rtol:g}"
        if nan.any():
            reason += f" ({int(nan.sum())} NaN)"
    return Comparison(mismatches == 0, reason, max_abs, max_rel, mismatches, worst)


def _worst(score: torch.Tensor, out: torch.Tensor, exp: torch.Tensor) -> tuple:
    k = min(WORST_K, score.numel())
    idx = torch.topk(score.flatten(), k).indices
    return tuple(
        (tuple(int(i) for i in torch.unravel_index(j, score.shape)), float(out.flatten()[j]), float(exp.flatten()[j]))
        for j in idx
    )


def format_worst(comparison: Comparison) -> str:
    """One line per worst element, for logs and failure messages."""
    return "\n".join(f"  at {idx}: got {g!r}, expected {e!r}" for idx, g, e in comparison.worst)
