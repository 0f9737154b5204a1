"""NVTX ranges in the `detbench` domain, nested suite > implementation > case.

    detbench@box_iou / detbench / shape=100x200000,content=clustered,dtype=float32,device=cuda

The suite range spans the suite's whole run; the implementation and case ranges are pushed
around each timed call only (not around the cache flushes or the correctness checks), so
`ncu --nvtx --nvtx-include "detbench@box_iou/detbench/"` profiles every kernel our box_iou
launches in a timed call, and nothing of the references or of the flushes. Push/pop ranges
belong to the pushing thread: the kernels of an autograd backward, which PyTorch launches from
its own device thread, fall outside them (`profile` therefore captures on the profiler API range).
The category of every range is the suite's name; the case range carries the case's bytes moved
(`Suite.bytes_moved`) as its int64 payload, so Nsight shows it beside the range. Without the
`nvtx` package installed the ranges are no-ops (the environment record says so).
"""
from __future__ import annotations

import time
try:
    import nvtx as _nvtx
except ImportError:  # ranges become no-ops; environment.py records that nvtx is missing
    _nvtx = None

DOMAIN_NAME = "detbench"
AVAILABLE = _nvtx is not None
_domain = _nvtx.get_domain(DOMAIN_NAME) if _nvtx else None


class nvtx_range:
    """Nested push/pop ranges, outermost first, as one reusable context manager; the event
    attributes are built once, not per call."""

    __slots__ = ("_attributes",)

    def __init__(self, *messages: str, category: str, payload: int | None = None) -> None:
        """`payload` goes on the innermost range only."""
        last = len(messages) - 1
        self._attributes = [_domain.get_event_attributes(message=m, category=category,
                                                         payload=payload if i == last else None)
                            for i, m in enumerate(messages)] if _domain else []

    def __enter__(self) -> None:
        for attributes in self._attributes:
            _domain.push_range(attributes)

    def __exit__(self, *exc) -> None:
        for _ in self._attributes:
            _domain.pop_range()


def overhead_ns(calls: int = 100_000) -> float:
    """What annotating one timed call costs with no profiler attached, in nanoseconds: the
    implementation and case ranges pushed and popped (the README quotes it)."""
    annotation = nvtx_range("impl", "case", category="overhead")
    start = time.perf_counter_ns()
    for _ in range(calls):
        with annotation:
            pass
    return (time.perf_counter_ns() - start) / calls
