"""The engine: expand suites into cases, check every implementation, time it, stream the rows.

For each case: make the inputs (seeded), run the reference of record, then every implementation
with its outputs poisoned and compare; in `bench` runs, time each implementation in each mode,
the baseline first so every row carries its speedup the moment it is written.
"""
from __future__ import annotations

import json
import warnings
import zlib
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness import environment, nvtx, results
from harness.suite import Case, Comparison, Impl, Suite
from harness.timing import MODES, ModeUnavailable, StoppingRule, measure, measure_peak_bandwidth


@dataclass(frozen=True)
class RunOptions:
    command: str  # "bench" (check + time) or "correctness" (check only)
    out_dir: Path
    run_id: str
    devices: Sequence[str] = ("cpu",)
    impls: Sequence[str] | None = None  # None: all
    modes: Sequence[str] = ("cold",)
    rule: StoppingRule = field(default_factory=StoppingRule)
    seed: int = 0
    preset: str = "full"  # recorded for the gate, which re-runs a baseline's selection
    case_filter: str | None = None
    threads: int | None = None  # torch's CPU threads during the run (None: torch's default); recorded

    def __post_init__(self) -> None:
        if self.command not in ("bench", "correctness"):
            raise ValueError(f"unknown command {self.command!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown modes {bad}; choose from {MODES}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Every tensor allocated inside (by torch or by our C++ kernels through at::empty) starts
    filled with NaN (integers: their maximum), so an element a kernel forgets to write cannot
    pass a comparison. Uses torch's deterministic mode with fill_uninitialized_memory."""
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
            yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = was_filling
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)


def case_seed(seed: int, case: Case) -> int:
    """The same inputs for a case on every run and every device."""
    return (seed * 1_000_003 + zlib.crc32(f"{case.case_id},{case.dtype_name}".encode())) % (2**63)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class Runner:
    """Runs the cases into options.out_dir. `resumed`: the environment record of an interrupted run
    in that folder (`--resume`): its cases with every row written are skipped, the rows of a case
    cut off midway are dropped and the case runs again, and new rows are appended."""

    def __init__(self, suites: Sequence[Suite], cases: dict[str, list[Case]], options: RunOptions,
                 console: Console, resumed: dict[str, Any] | None = None) -> None:
        self.suites = suites
        self.cases = cases
        self.options = options
        self.console = console
        self.resumed = resumed
        self.peak_gbps: dict[str, float] = {}

    def _impls(self, suite: Suite) -> list[Impl]:
        """Selected implementations, baseline first (its median is needed for every speedup)."""
        chosen = [i for i in suite.impls if self.options.impls is None or i.name in self.options.impls]
        return sorted(chosen, key=lambda impl: impl.name != suite.baseline)

    def _rows_per_case(self, suite: Suite) -> int:
        return len(self._impls(suite)) * (len(self.options.modes) if self.options.command == "bench" else 1)

    def _finished_cases(self) -> set[tuple]:
        """Resuming: the cases whose rows are all in results.jsonl; the other rows are dropped."""
        expected = {_case_key(s.name, c): self._rows_per_case(s) for s in self.suites for c in self.cases[s.name]}
        records = results.read_records(self.options.out_dir)
        written = Counter(_record_key(r) for r in records)
        finished = {key for key, count in written.items() if expected.get(key) == count}
        results.keep_records(self.options.out_dir, [r for r in records if _record_key(r) in finished])
        return finished

    def run(self) -> list[dict[str, Any]]:
        opts = self.options
        finished: set[tuple] = set()
        if self.resumed is None:
            env = environment.capture()
            env["run_id"] = opts.run_id
            env["command"] = opts.command
            env["options"] = {"devices": list(opts.devices), "impls": opts.impls, "modes": list(opts.modes),
                              "rule": vars(opts.rule), "seed": opts.seed, "suites": [s.name for s in self.suites],
                              "preset": opts.preset, "filter": opts.case_filter, "threads": opts.threads}
            if opts.command == "bench":
                for device in opts.devices:
                    self.peak_gbps[device] = measure_peak_bandwidth(device)
                env["peak_bandwidth_gbps"] = {d: round(v, 1) for d, v in self.peak_gbps.items()}
        else:  # the run's own record and peak bandwidth; where and when each part ran is appended
            finished = self._finished_cases()
            now = environment.capture()
            env = {**self.resumed, "resumed": [*self.resumed.get("resumed", []), {
                **{k: now.get(k) for k in ("timestamp", "commit", "host", "gpu", "driver")},
                "cases_already_finished": len(finished)}]}
            self.peak_gbps = {d: float(v) for d, v in (env.get("peak_bandwidth_gbps") or {}).items()}
        self.environment = env
        self._sink = results.ResultSink(opts.out_dir, env)
        total = sum(len(self.cases[s.name]) * len(self._impls(s)) for s in self.suites)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=self.console, transient=True)
        try:
            with progress:
                task = progress.add_task(opts.command, total=total)
                for suite in self.suites:
                    with nvtx.nvtx_range(suite.name, category=suite.name):
                        for case in self.cases[suite.name]:
                            if _case_key(suite.name, case) not in finished:
                                progress.update(task, description=f"{suite.name} {case.label}")
                                self._run_case(suite, case)
                            progress.advance(task, len(self._impls(suite)))
        finally:
            self._sink.close()
        return self._sink.rows

    def _run_case(self, suite: Suite, case: Case) -> None:
        generator = torch.Generator().manual_seed(case_seed(self.options.seed, case))
        base = {"suite": suite.name, "case_id": case.case_id, "params": json.dumps(dict(case.params)),
                "dtype": case.dtype_name, "device": case.device, "layout": str(case.params.get("layout", "")),
                "commit": self.environment["commit"], "run_id": self.options.run_id}
        impls = self._impls(suite)
        try:
            inputs = suite.make_inputs(case, generator)
            reference = suite.impl(suite.reference)
            expected = self._call(reference, inputs, case.device, case.device in reference.poison_devices)[0]
            reference_error = None
        except Exception as exc:  # the case cannot be checked; every row says why
            inputs, expected, reference_error = None, None, _error_text(exc)

        checks = {}
        for impl in impls:
            checks[impl.name] = self._check(suite, impl, case, inputs, expected, reference_error)
            if self.options.command == "correctness":
                self._emit(base, impl, suite, checks[impl.name], mode="")
        del expected
        if self.options.command == "correctness":
            return
        baseline_ms: dict[str, float] = {}
        for impl in impls:
            for mode in self.options.modes:
                timing = self._time(suite, impl, case, inputs, mode, checks[impl.name]["status"])
                if impl.name == suite.baseline and timing.get("median_ms"):
                    baseline_ms[mode] = timing["median_ms"]
                if timing.get("median_ms") and mode in baseline_ms:
                    timing["speedup_vs_baseline"] = baseline_ms[mode] / timing["median_ms"]
                self._emit(base, impl, suite, {**checks[impl.name], **timing}, mode=mode)

    def _emit(self, base: dict, impl: Impl, suite: Suite, fields: dict, mode: str) -> None:
        role = "reference" if impl.name == suite.reference else "baseline" if impl.name == suite.baseline else "candidate"
        self._sink.append({**base, **fields, "impl": impl.name, "role": role, "mode": mode,
                           "timestamp": _now()})

    def _call(self, impl: Impl, inputs: tuple, device: str, poison: bool) -> tuple[Any, int | None]:
        """One call, its outputs poisoned if asked; returns the output and the device memory it took
        at peak (CUDA)."""
        with poisoned_outputs() if poison else nullcontext():
            if device != "cuda":
                return impl.fn(*inputs), None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = impl.fn(*inputs)
            torch.cuda.synchronize()
            return out, torch.cuda.max_memory_allocated() - before

    def _check(self, suite: Suite, impl: Impl, case: Case, inputs, expected, reference_error) -> dict:
        skip = impl.skip_reason(case)
        if skip:
            return {"status": "skipped", "reason": skip}
        if reference_error is not None:
            return {"status": "error", "reason": f"inputs or reference failed: {reference_error}"}
        if impl.name == suite.reference:
            return {"status": "reference", "reason": "reference of record"}
        try:
            poison = case.device in impl.poison_devices
            out, peak = self._call(impl, inputs, case.device, poison)
            comparison = suite.compare(out, expected, case, inputs)
            del out
            if comparison.passed and poison:
                as_timed, peak = self._check_as_timed(suite, impl, case, inputs, expected)
                comparison = as_timed or comparison
        except Exception as exc:
            _sync_quietly(case.device)
            return {"status": "error", "reason": _error_text(exc)}
        fields = {"max_abs_err": comparison.max_abs_err, "max_rel_err": comparison.max_rel_err,
                  "mismatches": comparison.mismatches, "peak_mem_bytes": peak,
                  "worst": json.dumps([[list(i), g, e] for i, g, e in comparison.worst]),
                  "details": json.dumps(dict(comparison.details)) if comparison.details else None}
        return {**fields, **_verdict(impl, case, inputs, comparison)}

    def _check_as_timed(self, suite: Suite, impl: Impl, case: Case, inputs,
                        expected) -> tuple[Comparison | None, int | None]:
        """The poisoned call runs with deterministic algorithms on (what poisoning needs), and some
        ops then take another code path (torchvision's roi_align on CUDA runs its Python version;
        backwards drop atomics). So a passing implementation is checked once more as it is timed:
        the comparison of that call when it fails, else None; and that call's peak memory (the
        timed configuration's, not the poisoned call's)."""
        out, peak = self._call(impl, inputs, case.device, poison=False)
        as_timed = suite.compare(out, expected, case, inputs)
        if as_timed.passed:
            return None, peak
        mode = "on" if torch.are_deterministic_algorithms_enabled() else "off"
        return replace(as_timed, reason=f"as timed (deterministic algorithms {mode}, outputs not "
                                      f"poisoned): {as_timed.reason}"), peak

    def _time(self, suite: Suite, impl: Impl, case: Case, inputs, mode: str, status: str) -> dict:
        if status in ("skipped", "error") or inputs is None:
            return {"stop_reason": f"not timed: check {status}"}
        if not impl.timed:
            return {"stop_reason": "not timed: correctness only"}
        nbytes = suite.bytes_moved(case)
        call = nvtx.nvtx_range(impl.name, case.label, category=suite.name, payload=nbytes)
        try:
            stats = measure(lambda: impl.fn(*inputs), case.device, mode, self.options.rule, call)
        except ModeUnavailable as exc:
            return {"stop_reason": f"not timed: {exc}"}
        except Exception as exc:
            _sync_quietly(case.device)
            return {"stop_reason": f"not timed: {_error_text(exc)}"}
        gbps = nbytes / (stats.median_ms * 1e-3) / 1e9 if stats.median_ms > 0 else None
        peak = self.peak_gbps.get(case.device)
        return {**vars(stats), "bytes": nbytes, "gbps": gbps,
                "pct_peak_bw": 100 * gbps / peak if gbps and peak else None}


def _case_key(suite: str, case: Case) -> tuple:
    """A case's identity in result rows (what --resume matches written rows on)."""
    return (suite, case.case_id, case.dtype_name, case.device)


def _record_key(record: dict[str, Any]) -> tuple:
    return (record["suite"], record["case_id"], record["dtype"], record["device"])


def _verdict(impl: Impl, case: Case, inputs: tuple, comparison: Comparison) -> dict:
    if comparison.passed:
        return {"status": "ambiguous" if comparison.ambiguous else "pass", "reason": comparison.reason}
    deviation = impl.known_deviation(case, inputs) if impl.known_deviation else None
    if deviation:
        return {"status": "xfail", "reason": f"known deviation: {deviation}; {comparison.reason}"}
    return {"status": "fail", "reason": comparison.reason}


def _sync_quietly(device: str) -> None:
    try:
        _sync(device)
    except Exception:  # the error was already recorded for the row
        pass


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

