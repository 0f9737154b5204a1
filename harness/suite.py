"""The declarative model a suite file fills in: implementations, a case sweep, inputs, a comparator.

A suite knows everything about one op (shapes, data, tolerances, bytes moved); the engine knows
nothing about any op. Adding an op means kernels plus one file under `suites/` defining `SUITE`.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

ParamValue = str | int | float | bool


@dataclass(frozen=True)
class Case:
    """One point of a suite's sweep: axis values plus dtype and device."""

    suite: str
    params: Mapping[str, ParamValue]
    dtype: torch.dtype
    device: str

    @property
    def case_id(self) -> str:
        """Stable, human-readable key of the axis values, e.g. `shape=100x1000,content=clustered`.

        dtype and device are separate columns, so they are not part of it."""
        return ",".join(f"{k}={v}" for k, v in self.params.items())

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def label(self) -> str:
        """case_id with dtype and device: the innermost NVTX range name and the progress label."""
        return f"{self.case_id},dtype={self.dtype_name},device={self.device}"

    def __getitem__(self, axis: str) -> ParamValue:
        return self.params[axis]


@dataclass(frozen=True)
class Impl:
    """One implementation of the op under test.

    `known_deviation(case, inputs)` returns a reason when this implementation is known to disagree
    with the reference on these inputs (e.g. torchvision returning NaN for 0/0): a disagreement
    there is reported as `xfail` with the reason and the worst elements, never as `pass`.
    `unsupported(case)` returns why this implementation cannot run a case at all (e.g. a dtype a
    library lacks on one device): the case is `skipped` for it with that reason.
    `timed=False` keeps an implementation out of timing (a slow float64 arbiter).
    `poison_devices`: where its check runs with poisoned outputs. Poisoning needs torch's
    deterministic mode, and some libraries take another code path there (torchvision's CUDA
    roi_align falls back to a Python version that runs out of memory on adaptive sampling grids
    of large RoIs); elsewhere the check calls it as it is timed, unpoisoned.
    """

    name: str
    fn: Callable[..., Any]
    devices: tuple[str, ...] = ("cpu", "cuda")
    known_deviation: Callable[[Case, tuple], str | None] | None = None
    unsupported: Callable[[Case], str | None] | None = None
    timed: bool = True
    poison_devices: tuple[str, ...] = ("cpu", "cuda")

    def skip_reason(self, case: Case) -> str | None:
        if case.device not in self.devices:
            return f"{self.name} has no {case.device} implementation"
        return self.unsupported(case) if self.unsupported else None


@dataclass(frozen=True)
class Comparison:
    """What a comparator found. `worst` lists the worst elements as (index, got, expected).

    `ambiguous`: the output differs from the reference only where the answer is decided by a
    tie (equal scores, an IoU at the threshold), and it is a valid answer on its own terms; the
    case is reported as `ambiguous`, not `pass` and not `fail`. `details`: comparator-specific
    counts for the report (e.g. NMS's kept / missing / extra)."""

    passed: bool
    reason: str = ""
    max_abs_err: float = float("nan")
    max_rel_err: float = float("nan")
    mismatches: int = 0
    worst: tuple[tuple[Any, float, float], ...] = ()
    ambiguous: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Suite:
    """A declarative benchmark + correctness suite for one op.

    - `impls`: every implementation to compare, ours and the references.
    - `reference`: the implementation of record for correctness (its output is the expected one).
    - `baseline`: the implementation speedups are measured against (in the same run).
    - `axes`: swept as a cross product; `extra_cases`: single points added to the sweep
      (adversarial shapes that would be wasteful to cross with every other axis).
    - `make_inputs(case, generator) -> tuple`: the positional arguments, on `case.device`;
      seeded by the engine so a case's inputs are the same on every run.
    - `compare(output, expected, case, inputs) -> Comparison`.
    - `bytes_moved(case) -> int`: the fewest bytes one call must read + write (for GB/s).
    - `ci(case) -> bool`: the reduced case set for `--preset ci`.
    - `include(case) -> bool`: drops points from the sweep (e.g. sizes too slow for the CPU).
    """

    name: str
    impls: Sequence[Impl]
    reference: str
    baseline: str
    axes: Mapping[str, Sequence[ParamValue]]
    make_inputs: Callable[[Case, torch.Generator], tuple]
    compare: Callable[[Any, Any, Case, tuple], Comparison]
    bytes_moved: Callable[[Case], int]
    dtypes: Sequence[torch.dtype] = (torch.float32,)
    devices: Sequence[str] = ("cpu", "cuda")
    extra_cases: Sequence[Mapping[str, ParamValue]] = ()
    ci: Callable[[Case], bool] = field(default=lambda case: True)
    include: Callable[[Case], bool] = field(default=lambda case: True)
    description: str = ""

    def __post_init__(self) -> None:
        names = [impl.name for impl in self.impls]
        if len(set(names)) != len(names):
            raise ValueError(f"suite {self.name}: implementation names repeat: {names}")
        for role in ("reference", "baseline"):
            if getattr(self, role) not in names:
                raise ValueError(f"suite {self.name}: {role} {getattr(self, role)!r} is not one of {names}")

    def impl(self, name: str) -> Impl:
        return next(impl for impl in self.impls if impl.name == name)

    def cases(self, devices: Iterable[str] | None = None) -> list[Case]:
        """Every case of the sweep, axes product first, then the extra cases; each x dtype x device."""
        keys = list(self.axes)
        points = [dict(zip(keys, values)) for values in itertools.product(*self.axes.values())]
        points += [dict(p) for p in self.extra_cases]
        wanted = [d for d in self.devices if devices is None or d in devices]
        cases = [Case(self.name, point, dtype, device) for device in wanted for point in points for dtype in self.dtypes]
        return [case for case in cases if self.include(case)]


def select_cases(cases: Iterable[Case], pattern: str | None) -> list[Case]:
    """Cases whose label matches the regular expression `pattern` (all when None)."""
    if not pattern:
        return list(cases)
    rx = re.compile(pattern)
    return [case for case in cases if rx.search(case.label)]
