"""Timing: CUDA events or CPU clocks, cold/hot/graph modes, and an nvbench-style stopping rule.

Clocks: CUDA events on the GPU. On the CPU, wall time (perf_counter) when torch runs several
threads; with one thread (`--threads 1`, the CPU gate's setting) the thread's own CPU time
(CLOCK_THREAD_CPUTIME_ID), which leaves out the time the process spends preempted by other
processes: on a loaded CI host a call longer than a time slice would otherwise be charged for
its neighbours' work. See `cpu_clock`.

Modes
- cold:  the L2 (GPU) or last-level cache (CPU) is flushed before every sample, so each call
         reads its inputs from memory, as it would inside a model.
- hot:   calls back to back on the same inputs (caches warm).
- graph: CUDA only; GRAPH_CALLS calls captured in one CUDA graph and replayed, the time per call
         is a replay's time / GRAPH_CALLS. Removes launch overhead for launch-bound ops.

Stopping rule (per implementation x case x mode): keep sampling until at least `min_samples`
samples and `min_time_s` of measured time were taken *and* the relative noise is at most
`max_noise`; stop anyway at `max_samples` or after `timeout_s` of wall time, recording why.
Noise is the robust relative spread 1.4826 * MAD / median (the standard deviation for normal
data, insensitive to the rare outliers that a preempted sample produces).
"""
from __future__ import annotations

import math
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

MODES = ("cold", "hot", "graph")
GRAPH_CALLS = 10
BATCH = 10  # samples taken between two checks of the stopping rule (one device sync per batch)
# Before each batch the GPU is held (nvbench's blocking kernel) while the host queues the
# batch: ~1 ms at first, longer where queuing took longer, up to MAX_HOLD_S (see _measure_cuda).
HOLD_S = 1e-3
MAX_HOLD_S = 0.02
SLEEP_CYCLES_PER_S = 2e9  # torch.cuda._sleep spins GPU clock cycles; ~2 GHz (a slower clock holds longer)


@dataclass(frozen=True)
class StoppingRule:
    min_samples: int = 10
    max_samples: int = 2000
    min_time_s: float = 0.02
    max_noise: float = 0.02
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if not (1 <= self.min_samples <= self.max_samples):
            raise ValueError("need 1 <= min_samples <= max_samples")
        if self.min_time_s < 0 or self.max_noise <= 0 or self.timeout_s <= 0:
            raise ValueError("min_time_s must be >= 0, max_noise and timeout_s > 0")

    def verdict(self, samples_ms: list[float], wall_s: float) -> str | None:
        """Why to stop now ('converged', 'max_samples', 'timeout'), or None to keep sampling."""
        n = len(samples_ms)
        if n >= self.max_samples:
            return "max_samples"
        if n >= self.min_samples and sum(samples_ms) / 1e3 >= self.min_time_s:
            if relative_noise(samples_ms) <= self.max_noise:
                return "converged"
        if wall_s >= self.timeout_s and n >= 1:
            return "timeout"
        return None


QUICK_RULE = StoppingRule(min_samples=3, max_samples=50, min_time_s=0.0, max_noise=1.0, timeout_s=1.0)


def relative_noise(samples: list[float]) -> float:
    if len(samples) < 2:
        return math.inf
    median = statistics.median(samples)
    if median <= 0:
        return math.inf
    return 1.4826 * statistics.median(abs(s - median) for s in samples) / median


@dataclass(frozen=True)
class Stats:
    median_ms: float
    min_ms: float
    p95_ms: float
    p99_ms: float
    iqr_ms: float
    noise_rel: float
    samples: int
    stop_reason: str

    @staticmethod
    def of(samples_ms: list[float], stop_reason: str) -> "Stats":
        t = torch.tensor(samples_ms, dtype=torch.float64)
        q = torch.quantile(t, torch.tensor([0.25, 0.5, 0.75, 0.95, 0.99], dtype=torch.float64)).tolist()
        return Stats(
            median_ms=q[1],
            min_ms=float(t.min()),
            p95_ms=q[3],
            p99_ms=q[4],
            iqr_ms=q[2] - q[0],
            noise_rel=relative_noise(samples_ms),
            samples=len(samples_ms),
            stop_reason=stop_reason,
        )


class ModeUnavailable(Exception):
    """The mode cannot run here (graph mode on CPU, an op that cannot be captured, ...)."""


def measure(
    fn: Callable[[], object],
    device: str,
    mode: str,
    rule: StoppingRule,
    call_range: ContextManager = nullcontext(),
) -> Stats:
    """Time `fn()` on `device` in `mode` until `rule` says stop. `call_range` (the NVTX range)
    wraps each timed call but not the cache flush, so profilers filtering on it see only the
    op's kernels; it opens before the start event so its own cost stays out of the sample."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    if device == "cuda":
        return _measure_cuda(fn, mode, rule, call_range)
    if mode == "graph":
        raise ModeUnavailable("graph mode needs CUDA")
    return _measure_cpu(fn, mode, rule, call_range)


def _measure_cuda(fn, mode, rule, call_range) -> Stats:
    flush = _l2_flush_buffer() if mode == "cold" else None
    per_call = GRAPH_CALLS if mode == "graph" else 1
    if mode == "graph":
        fn = _graph_replayer(fn)
    fn()  # warm-up: module load, allocator, autotuning stay out of the samples
    torch.cuda.synchronize()
    samples: list[float] = []
    hold_s = HOLD_S
    start_wall = time.perf_counter()
    while True:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(BATCH)]
        # Hold the GPU while the host queues the batch: otherwise a call whose host work (launches,
        # autograd, Python) outlasts its GPU work is timed with the GPU waiting on the host
        # between the events.
        torch.cuda._sleep(int(hold_s * SLEEP_CYCLES_PER_S))
        held = torch.cuda.Event()
        held.record()
        queue_start = time.perf_counter()
        for i, (start, end) in enumerate(events):
            if flush is not None:
                flush.zero_()
            with call_range:
                start.record()
                fn()
                end.record()
            if i == 0:
                # The hold already over after one call: the call waits for the GPU (it syncs, or
                # its host work alone outlasts the hold). A longer hold cannot help such a call.
                waits_for_gpu = held.query()
        queued_s = time.perf_counter() - queue_start
        torch.cuda.synchronize()
        if queued_s > hold_s and not waits_for_gpu and hold_s < MAX_HOLD_S:
            # The GPU may have run dry before the host had queued the batch: drop the batch and
            # hold longer. A call whose host time exceeds MAX_HOLD_S / BATCH is host-bound and is
            # timed as it runs.
            hold_s = min(MAX_HOLD_S, 1.5 * queued_s)
            continue
        samples += [start.elapsed_time(end) / per_call for start, end in events]
        verdict = rule.verdict(samples, time.perf_counter() - start_wall)
        if verdict:
            return Stats.of(samples, verdict)


def _graph_replayer(fn) -> Callable[[], None]:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up off the default stream, as capture requires
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(GRAPH_CALLS):
                fn()
    except Exception as exc:  # ops that sync with the host cannot be captured
        torch.cuda.synchronize()
        raise ModeUnavailable(f"not capturable in a CUDA graph: {_first_line(exc)}") from exc
    return graph.replay


def cpu_clock() -> tuple[str, Callable[[], float]]:
    """(name, seconds) of the clock CPU samples use: this thread's CPU time when torch runs one
    thread (all the work is on this thread, and time preempted is not counted), else wall time."""
    if torch.get_num_threads() == 1:
        return "thread_cpu", time.thread_time
    return "wall", time.perf_counter


def _measure_cpu(fn, mode, rule, call_range) -> Stats:
    flush = _llc_flush_buffer() if mode == "cold" else None
    clock = cpu_clock()[1]
    fn()
    samples: list[float] = []
    start_wall = time.perf_counter()
    while True:
        for _ in range(BATCH):
            if flush is not None:
                flush.add_(1)
            with call_range:
                t0 = clock()
                fn()
                samples.append((clock() - t0) * 1e3)
        verdict = rule.verdict(samples, time.perf_counter() - start_wall)
        if verdict:
            return Stats.of(samples, verdict)


_flush_buffers: dict[str, torch.Tensor] = {}


def _l2_flush_buffer() -> torch.Tensor:
    """Twice the L2 size: zeroing it evicts everything the op under test could find cached."""
    if "cuda" not in _flush_buffers:
        l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
        _flush_buffers["cuda"] = torch.empty(2 * max(l2, 1 << 20), dtype=torch.uint8, device="cuda")
    return _flush_buffers["cuda"]


def _llc_flush_buffer() -> torch.Tensor:
    """Twice the last-level cache (read from sysfs; 32 MiB when unknown), touched before each sample."""
    if "cpu" not in _flush_buffers:
        _flush_buffers["cpu"] = torch.zeros(2 * _llc_bytes() // 4, dtype=torch.int32)
    return _flush_buffers["cpu"]


def _llc_bytes() -> int:
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    for entry in os.listdir(base) if os.path.isdir(base) else ():
        try:
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        best = max(best, int(text.rstrip("KMG")) * scale)
    return best or 32 << 20


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def measure_peak_bandwidth(device: str) -> float:
    """Copy bandwidth in GB/s (bytes read + bytes written over time): the ceiling that
    % of peak is reported against. 1 GiB copied on CUDA, 256 MiB on CPU; median of 10."""
    nbytes = (1 << 30) if device == "cuda" else (256 << 20)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    rule = StoppingRule(min_samples=10, max_samples=10, min_time_s=0.0, max_noise=1.0, timeout_s=30.0)
    stats = measure(lambda: dst.copy_(src), device, "hot", rule)
    return 2 * nbytes / (stats.median_ms * 1e-3) / 1e9
