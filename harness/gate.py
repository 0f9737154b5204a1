"""The regression gate: a run against the committed baseline of its device, with a confirm step.

Keyed by suite x impl x case_id x dtype x mode. A key fails the gate when
- correctness: the run's check failed or errored;
- missing: the baseline has it and the run does not, was skipped, or was not timed;
- regression: it got slower by more than the threshold, confirmed by an interleaved re-measure;
- improvement (only with `fail_on_improvement`): the same, faster, so the baseline stays tight.

What is compared. A candidate's **speedup over the suite's baseline implementation, measured
in the same run**: machine-to-machine and job-to-job drift (clocks, neighbours, thermal) moves
both implementations together and cancels in the ratio. Absolute medians gate rows that have no
speedup only when the machine matches (same GPU model; for the CPU the same model, thread count,
clock and torch). On every machine they corroborate speedup changes: a speedup change counts
only if the candidate's own median, the machine's shift divided out, moved the same way beyond
its threshold (which holds the scatter: how differently this machine treats different code);
otherwise it is `drift` (the baseline implementation moved), which never fails. One baseline
recording in which torchvision's call ran 2x its neighbours' time would otherwise fail every
other machine's gate on that key.

Threshold, per key: max(rel_floor, k x combined relative noise). A speedup's noise is the two
implementations' sample noise (1.4826 MAD / median) added in quadrature; the run's and the
baseline's are combined the same way. Sample spread, not the standard error of the median, on
purpose: run-to-run shifts are larger than the error of a median within a run. Differences
smaller than `abs_floor_ms` of the candidate's time are never flagged (microsecond cases, where
launch and dispatcher overhead jitter more than any relative threshold).

Baseline drift. The suites' baseline implementations (torchvision, ...) did not change between the
baseline and the run: they are the control group. Their median run/baseline ratio is the machine's *shift*
(a slower host, a loaded one): absolute medians are compared after dividing it out (a speedup
cancels it by itself). How their ratios scatter from case to case around it (1.4826 MAD of the
logs) is the *scatter*: how differently this machine, job and load treat different kinds of
work. It is added to every key's noise: on the baseline's own quiet machine it is a few percent
and the gate stays tight; on a CI host of the same CPU model with other neighbours it widens the
threshold by what that host demonstrably does to unchanged code, instead of failing on it.

Confirm step: every suspect is re-measured here and now, interleaved: for `confirm_rounds`
rounds the baseline implementation and the candidate are timed back to back (order alternating),
giving one speedup per round; their median and spread are judged again with the same threshold.
A suspect that does not survive is reported as `noise` and passes. On the CPU a survivor is
measured again in `fresh_rounds` fresh processes, each timing every survivor once (order
alternating), and judged on the process most favourable to the candidate: on the 2-core CI VM
one memory-bound call measured 0.79-0.88 ms in some processes and 1.26-1.30 ms in others (6
processes, same binary and inputs), steady within each, so a process can hold a slowdown that is
only its memory placement; code that got slower is slower in every process. A suspect that fresh
processes cannot measure keeps the in-process verdict.
"""
from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
from rich.console import Console
from rich.table import Table

from harness.environment import REPO_ROOT
from harness.results import FAILING

BASELINE_DIR = Path(REPO_ROOT) / "reports" / "baselines"
GATE_FILE = "gate.md"
GATE_TABLE = "gate.csv"
KEY = ["suite", "impl", "case_id", "dtype", "mode"]
BASELINE_COLUMNS = KEY + ["role", "status", "median_ms", "noise_rel", "samples", "speedup_vs_baseline"]
# Differences below this many ms of the candidate's time are never flagged (default per device).
ABS_FLOOR_MS = {"cpu": 0.02, "cuda": 0.001}
FAILING_VERDICTS = ("correctness", "missing", "regression")
MAX_CONFIRMED = 24  # suspects re-measured per gate; more than that is not noise
MIN_SCATTER_CONTROLS = 8  # baseline-implementation rows needed before their scatter is trusted


@dataclass(frozen=True)
class Thresholds:
    rel_floor: float = 0.10
    k: float = 3.0
    abs_floor_ms: float | None = None  # None: ABS_FLOOR_MS of the run's device

    def threshold(self, noise: float) -> float:
        noise = noise if math.isfinite(noise) else 0.0
        return max(self.rel_floor, self.k * noise)

    def floor_ms(self, device: str) -> float:
        return self.abs_floor_ms if self.abs_floor_ms is not None else ABS_FLOOR_MS.get(device, 0.0)


# ---------------------------------------------------------------------------------------------
# Device keys and baseline files


def device_key(environment: dict[str, Any], device: str) -> str:
    """`cpu` for CPU runs; for CUDA the GPU model, e.g. 'NVIDIA H200' -> 'h200',
    'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA GeForce RTX 4090' -> 'rtx4090'."""
    if device == "cpu":
        return "cpu"
    name = environment.get("gpu") or "gpu"
    words = [w for w in re.split(r"[\s\-_]+", name) if w and w.lower() not in ("nvidia", "geforce", "tesla")]
    if not words:
        return "gpu"
    key = words[0] + (words[1] if len(words) > 1 and words[0].isalpha() and words[1][:1].isdigit() else "")
    return re.sub(r"[^a-z0-9]", "", key.lower()) or "gpu"


def baseline_paths(key_or_path: str | Path) -> tuple[Path, Path]:
    """(rows CSV, environment JSON) for a device key ('h200') or a path with or without suffix."""
    text = str(key_or_path)
    stem = Path(text) if ("/" in text or text.endswith((".csv", ".json"))) else BASELINE_DIR / text
    stem = stem.with_suffix("") if stem.suffix in (".csv", ".json") else stem
    return stem.with_suffix(".csv"), stem.with_suffix(".json")


def write_baseline(df: pd.DataFrame, environment: dict[str, Any], key_or_path: str | Path,
                   regenerate: str, parts: list[dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """A baseline: the rows (small, sorted, rounded CSV: diffs read well in git) and a JSON with
    the run's environment record, its selection (what the gate re-runs) and the command (a merged
    baseline: every part's command, and the parts)."""
    csv_path, json_path = baseline_paths(key_or_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows = df[BASELINE_COLUMNS].copy()
    rows["median_ms"] = rows["median_ms"].map(lambda v: float(f"{v:.4g}") if pd.notna(v) else v)
    rows["speedup_vs_baseline"] = rows["speedup_vs_baseline"].map(lambda v: float(f"{v:.4g}") if pd.notna(v) else v)
    rows["noise_rel"] = rows["noise_rel"].map(lambda v: round(v, 4) if pd.notna(v) and math.isfinite(v) else None)
    rows["samples"] = rows["samples"].astype("Int64")
    rows = rows.sort_values(KEY, kind="stable")
    rows.to_csv(csv_path, index=False)
    meta = {"device_key": Path(csv_path).stem, "regenerate": regenerate, "rows": len(rows),
            "environment": environment}
    if parts is not None:
        meta["regenerate"] = "; ".join(part["regenerate"] for part in parts)
        meta["parts"] = parts
    json_path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return csv_path, json_path


# What must agree between a baseline and a run merged into it: one baseline is one selection
# measured one way (the gate re-runs it with these options).
MERGE_OPTIONS = ("devices", "preset", "modes", "seed", "rule", "impls", "filter", "threads")


def merge_baseline(df: pd.DataFrame, environment: dict[str, Any], key_or_path: str | Path,
                   regenerate: str) -> tuple[Path, Path]:
    """Replaces the baseline's rows of the run's suites by the run's (the others stay): a baseline
    too long to measure in one go (the H200's, under a 10-minute limit per job) is measured suite
    group by suite group. Each part's environment record and command are kept in `parts`; the
    environment's selection becomes the union of the suites."""
    old, meta = read_baseline(key_or_path)
    old_options = (meta.get("environment") or {}).get("options") or {}
    new_options = environment.get("options") or {}
    differ = [k for k in MERGE_OPTIONS if old_options.get(k) != new_options.get(k)]
    if differ:
        raise ValueError("the run was measured differently from the baseline (" + ", ".join(
            f"{k}: {new_options.get(k)!r} vs {old_options.get(k)!r}" for k in differ) + "): update it whole instead")
    # One machine per baseline: the gate compares a run's absolute medians with all its rows at once.
    old_env, device = meta.get("environment") or {}, (new_options.get("devices") or ["cpu"])[0]
    if not same_machine(environment, old_env, device):
        raise ValueError("the run was measured on another machine than the baseline (" + ", ".join(
            f"{k}: {environment.get(k)!r} vs {old_env.get(k)!r}" for k in machine_keys(device)
            if environment.get(k) != old_env.get(k)) + "): update it whole instead")
    suites = sorted(set(df["suite"]))
    rows = pd.concat([old[~old["suite"].isin(suites)], df[BASELINE_COLUMNS]], ignore_index=True)
    parts = meta.get("parts") or [{"suites": sorted(set(old["suite"])), "regenerate": meta.get("regenerate"),
                                   "environment": meta.get("environment")}]
    parts = [{**part, "suites": [x for x in part["suites"] if x not in suites]} for part in parts]
    parts = [part for part in parts if part["suites"]] + [
        {"suites": suites, "regenerate": regenerate, "environment": environment}]
    merged_env = {**environment, "options": {**new_options, "suites": sorted(set(rows["suite"]))}}
    return write_baseline(rows, merged_env, key_or_path, regenerate, parts)


def read_baseline(key_or_path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    csv_path, json_path = baseline_paths(key_or_path)
    if not csv_path.exists():
        raise FileNotFoundError(str(csv_path))
    df = pd.read_csv(csv_path, dtype={"mode": str, "case_id": str}, keep_default_na=False,
                     na_values={c: [""] for c in ("median_ms", "noise_rel", "samples", "speedup_vs_baseline")})
    for column in ("median_ms", "noise_rel", "speedup_vs_baseline"):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    meta = json.loads(json_path.read_text()) if json_path.exists() else {"environment": {}}
    return df, meta


# What must match for absolute CPU medians to compare: the CPU (name, then family, model, stepping
# and last-level cache, which a virtual machine's name may hide), the torch threads and clock,
# and torch itself: detbench's CPU ops call ATen too, and a torch upgrade moves them (torch 2.11
# against 2.15 on one host: retinanet_postprocess +10 to +97 %).
CPU_MACHINE_KEYS = ("cpu", "cpu_model", "cpu_threads", "cpu_clock", "torch")


def machine_keys(device: str) -> tuple[str, ...]:
    """The environment keys that name the machine, the device's name first."""
    return ("gpu",) if device == "cuda" else CPU_MACHINE_KEYS


def same_machine(a: dict[str, Any], b: dict[str, Any], device: str) -> bool:
    """Whether absolute times of the two environments compare: the device named and all
    machine_keys equal (the GPU model; the CPU, its threads, clock and torch)."""
    keys = machine_keys(device)
    return bool(a.get(keys[0])) and all(a.get(k) == b.get(k) for k in keys)


# ---------------------------------------------------------------------------------------------
# Comparison


def _label(row) -> str:
    return f"{row['case_id']},dtype={row['dtype']},device={row.get('device', '')}"


def restrict(baseline: pd.DataFrame, selection: dict[str, Any], device: str) -> pd.DataFrame:
    """The baseline rows the run was asked to cover: same suites, implementations, modes and
    --filter as the run (judged on the baseline's own columns, so a case deleted from a suite
    still shows up as missing)."""
    rows = baseline
    if selection.get("suites"):
        rows = rows[rows["suite"].isin(selection["suites"])]
    if selection.get("impls"):
        rows = rows[rows["impl"].isin(selection["impls"])]
    if selection.get("modes"):
        rows = rows[rows["mode"].isin(list(selection["modes"]) + [""])]
    if selection.get("filter"):
        rx = re.compile(selection["filter"])
        labels = rows.apply(lambda r: f"{r['case_id']},dtype={r['dtype']},device={device}", axis=1)
        rows = rows[labels.map(lambda s: bool(rx.search(s)))] if len(rows) else rows
    return rows


def _index(df: pd.DataFrame) -> dict[tuple, dict]:
    return {tuple(r[k] for k in KEY): r for r in df.to_dict("records")}


def _num(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def _hypot(*values: float) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return math.sqrt(sum(v * v for v in finite)) if finite else math.nan


def _speedup_noise(rows: dict[tuple, dict], row: dict, baseline_impl: str | None) -> float:
    """Relative noise of a row's speedup: its own and its baseline implementation's, in quadrature."""
    own = _num(row.get("noise_rel"))
    if baseline_impl is None:
        return own
    other = rows.get((row["suite"], baseline_impl, row["case_id"], row["dtype"], row["mode"]))
    return _hypot(own, _num(other.get("noise_rel")) if other else math.nan)


def baseline_drift(run: pd.DataFrame, baseline: pd.DataFrame) -> tuple[float, float]:
    """(shift, scatter) of the baseline implementations' run/baseline medians (see the module
    docstring): their median ratio, and the case-to-case spread around it. (1, 0) with fewer than
    MIN_SCATTER_CONTROLS of their rows timed in both."""
    run_rows, base_rows = _index(run), _index(baseline)
    base_impl = {**_baseline_impls(baseline), **_baseline_impls(run)}
    logs = []
    for key, b in base_rows.items():
        r = run_rows.get(key)
        if r is None or base_impl.get(key[0]) != key[1]:
            continue
        b_med, r_med = _num(b["median_ms"]), _num(r["median_ms"])
        if math.isfinite(b_med) and math.isfinite(r_med) and b_med > 0 and r_med > 0:
            logs.append(math.log(r_med / b_med))
    if len(logs) < MIN_SCATTER_CONTROLS:
        return 1.0, 0.0
    center = statistics.median(logs)
    return math.exp(center), math.expm1(1.4826 * statistics.median(abs(x - center) for x in logs))


def _baseline_impls(df: pd.DataFrame) -> dict[str, str]:
    """suite -> the implementation in role 'baseline'."""
    found = df[df["role"] == "baseline"].drop_duplicates("suite")
    return dict(zip(found["suite"], found["impl"]))


@dataclass
class Verdict:
    suite: str
    impl: str
    case_id: str
    dtype: str
    mode: str
    role: str
    verdict: str  # ok | correctness | missing | regression | improvement | noise | new | drift | not compared
    metric: str = ""  # speedup | median_ms
    base: float = math.nan
    run: float = math.nan
    change: float = math.nan  # > 0: slower (time ratio - 1)
    threshold: float = math.nan
    noise: float = math.nan  # combined: run, baseline and baseline-drift scatter in quadrature
    base_noise: float = math.nan
    excess_ms: float = math.nan  # the candidate's extra time in the run's units (negative: faster)
    median_ratio: float = math.nan  # run / baseline median
    base_ms: float = math.nan  # the candidate's own medians and their combined noise: they must
    run_ms: float = math.nan   # corroborate a speedup change (the machine's shift divided out)
    own_noise: float = math.nan
    base_own_noise: float = math.nan
    scatter: float = 0.0  # the run's baseline-drift scatter, part of both noises
    shift: float = 1.0  # the run's baseline-drift shift, divided out of absolute median comparisons
    confirmed: str = ""
    note: str = ""

    @property
    def key(self) -> tuple:
        return (self.suite, self.impl, self.case_id, self.dtype, self.mode)


def _judge(v: Verdict, thresholds: Thresholds, floor_ms: float) -> str:
    """'slower', 'faster' or 'ok' for a change with its noise and absolute excess."""
    v.threshold = thresholds.threshold(v.noise)
    small = math.isfinite(v.excess_ms) and abs(v.excess_ms) < floor_ms
    if v.change > v.threshold and not small:
        return "slower"
    if v.change < 1 / (1 + v.threshold) - 1 and not small:
        return "faster"
    return "ok"


def compare(run: pd.DataFrame, run_env: dict[str, Any], baseline: pd.DataFrame, base_env: dict[str, Any],
            device: str, thresholds: Thresholds = Thresholds()) -> list[Verdict]:
    """One verdict per key of the baseline and of the run. Suspects come back as 'regression' /
    'improvement' with confirmed='' until `confirm` re-measures them."""
    floor_ms = thresholds.floor_ms(device)
    machine = same_machine(run_env, base_env, device)
    shift, scatter = baseline_drift(run, baseline)
    run_rows, base_rows = _index(run), _index(baseline)
    base_impl = {**_baseline_impls(baseline), **_baseline_impls(run)}
    verdicts: list[Verdict] = []
    for key in sorted(set(base_rows) | set(run_rows), key=lambda k: tuple(map(str, k))):
        b, r = base_rows.get(key), run_rows.get(key)
        v = Verdict(*key, role=(r or b)["role"], verdict="ok", scatter=scatter, shift=shift)
        verdicts.append(v)
        if r is not None and r["status"] in FAILING:
            v.verdict, v.note = "correctness", f"{r['status']}: {r.get('reason') or ''}"
            continue
        if b is None:
            v.verdict, v.note = "new", "not in the baseline"
            continue
        if r is None:
            v.verdict, v.note = "missing", "in the baseline, not in the run"
            continue
        if r["status"] == "skipped" and b["status"] != "skipped":
            v.verdict, v.note = "missing", f"skipped: {r.get('reason') or ''}"
            continue
        b_med, r_med = _num(b["median_ms"]), _num(r["median_ms"])
        if math.isfinite(b_med) and not math.isfinite(r_med):
            v.verdict, v.note = "missing", f"not timed: {r.get('stop_reason') or r['status']}"
            continue
        if not (math.isfinite(b_med) and math.isfinite(r_med)):
            continue  # untimed in both (reference, correctness-only rows): the status was the check
        v.median_ratio = r_med / b_med
        v.base_ms, v.run_ms = b_med, r_med
        v.base_own_noise = _num(b.get("noise_rel"))
        v.own_noise = _hypot(_num(r.get("noise_rel")), v.base_own_noise, scatter)
        b_sp, r_sp = _num(b["speedup_vs_baseline"]), _num(r["speedup_vs_baseline"])
        bimpl = base_impl.get(v.suite)
        if v.role == "candidate" and math.isfinite(b_sp) and math.isfinite(r_sp) and b_sp > 0 and r_sp > 0:
            v.metric, v.base, v.run = "speedup", b_sp, r_sp
            v.change = b_sp / r_sp - 1
            v.base_noise = _speedup_noise(base_rows, b, bimpl)
            v.noise = _hypot(_speedup_noise(run_rows, r, bimpl), v.base_noise, scatter)
            v.excess_ms = r_med * (1 - r_sp / b_sp)
        elif machine:
            v.metric, v.base, v.run = "median_ms", b_med, r_med
            v.change = r_med / (b_med * shift) - 1
            v.base_noise = _num(b.get("noise_rel"))
            v.noise = _hypot(_num(r.get("noise_rel")), v.base_noise, scatter)
            v.excess_ms = r_med - b_med * shift
        else:
            if v.role == "candidate":
                v.verdict, v.note = "not compared", "no speedup to compare and a different machine"
            continue
        direction = _judge(v, thresholds, floor_ms)
        if direction == "ok":
            continue
        if v.role != "candidate" and v.metric == "median_ms" and bimpl is not None:
            # The baseline implementation (torchvision) itself: the machine or library moved, not us.
            v.verdict, v.note = "drift", f"the baseline implementation got {'slower' if direction == 'slower' else 'faster'}"
            continue
        if not _corroborated(v, thresholds, direction):
            v.verdict = "drift"
            v.note = (f"speedup {_pct(-v.change / (1 + v.change))} but the candidate's own median moved "
                      f"{_pct(v.median_ratio / v.shift - 1)} (over the shift): the baseline implementation moved")
            continue
        v.verdict = "regression" if direction == "slower" else "improvement"
    return verdicts


def _corroborated(v: Verdict, thresholds: Thresholds, direction: str) -> bool:
    """A speedup change counts only when the candidate's own median (over the machine's shift)
    moved the same way beyond its threshold; otherwise the baseline implementation moved (on a
    loaded CPU, torchvision's multi-threaded calls swing several-fold while ours stay put)."""
    if v.metric != "speedup":
        return True
    change, threshold = v.run_ms / (v.base_ms * v.shift) - 1, thresholds.threshold(v.own_noise)
    return change > threshold if direction == "slower" else change < 1 / (1 + threshold) - 1


# ---------------------------------------------------------------------------------------------
# Confirm: interleaved re-measure of the suspects


# One re-measure job: (suite, implementations in timing order, case_id, dtype, mode).
Job = tuple[str, list[str], str, str, str]


@dataclass
class Remeasure:
    """What `confirm` needs from the engine: `measure(suite, impl, case_id, dtype, mode)` ->
    median ms of a fresh measurement here and now (None: cannot be measured here); `fresh(jobs)`,
    where given, times each job's implementations once in a new process ({impl: ms or None} per job)."""

    measure: Callable[[str, str, str, str, str], float | None]
    rounds: int = 5
    budget_s: float = 180.0  # wall time for all re-measures; suspects left over stay failing
    fresh: Callable[[list[Job]], list[dict[str, float | None]]] | None = None
    fresh_rounds: int = 5


def confirm(verdicts: list[Verdict], base_impls: dict[str, str], remeasure: Remeasure | None,
            thresholds: Thresholds, device: str, console: Console | None = None,
            fail_on_improvement: bool = False) -> None:
    """Re-measure the suspects that would fail the gate, interleaved, and keep only those that
    stay beyond the threshold; the rest become 'noise'. Regressions go first, largest change
    first: the re-measure slots and budget go to what can fail, not to improvements (a baseline older
    than the code shows dozens of those). Improvements that cannot fail are not re-measured."""
    failing_kinds = ("regression", "improvement") if fail_on_improvement else ("regression",)
    for v in verdicts:
        if v.verdict == "improvement" and not fail_on_improvement:
            v.confirmed = "not re-measured (improvements do not fail this gate)"
    suspects = [v for v in verdicts if v.verdict in failing_kinds]
    suspects.sort(key=lambda v: (v.verdict != "regression", -abs(v.change)))
    floor_ms = thresholds.floor_ms(device)
    started = time.perf_counter()
    for i, v in enumerate(suspects):
        if remeasure is None:
            v.confirmed = "not re-measured"
            continue
        if i >= MAX_CONFIRMED:
            v.confirmed = f"not re-measured (more than {MAX_CONFIRMED} suspects)"
            continue
        if time.perf_counter() - started > remeasure.budget_s:
            v.confirmed = f"not re-measured (re-measure budget of {remeasure.budget_s:.0f} s spent)"
            continue
        if console:
            console.print(f"gate: re-measuring {v.suite}/{v.impl} {v.case_id} {v.dtype} {v.mode} "
                          f"({remeasure.rounds} interleaved rounds)")
        values: list[float] = []
        cand_ms: list[float] = []
        bimpl = base_impls.get(v.suite) if v.metric == "speedup" else None
        for round_ in range(remeasure.rounds):
            times = {}
            for name in _pair_order(v, bimpl, round_):
                times[name] = remeasure.measure(v.suite, name, v.case_id, v.dtype, v.mode)
            if any(t is None or not t > 0 for t in times.values()):
                break
            cand_ms.append(times[v.impl])
            values.append(times[bimpl] / times[v.impl] if bimpl else times[v.impl])
        if len(values) < 2:
            v.confirmed = "could not re-measure here"
            continue
        _rejudge(v, values, cand_ms, thresholds, floor_ms, "re-measured", "the interleaved re-measure")
    if remeasure is not None and remeasure.fresh is not None:
        _fresh_opinion([v for v in suspects if v.verdict in failing_kinds and v.confirmed.startswith("re-measured")],
                       base_impls, remeasure, thresholds, floor_ms, console)


def _pair_order(v: Verdict, bimpl: str | None, round_: int) -> list[str]:
    order = [bimpl, v.impl] if round_ % 2 == 0 else [v.impl, bimpl]
    return [name for name in order if name is not None]


def _rejudge(v: Verdict, values: list[float], cand_ms: list[float], thresholds: Thresholds, floor_ms: float,
             label: str, by: str, pick: Callable[[list[float]], float] = statistics.median) -> None:
    """Judge suspect `v` again on `pick` of re-measured `values` (speedups, or the candidate's ms) and
    the candidate's times; not beyond the threshold (or not corroborated): `noise`."""
    again = pick(values)
    spread = _relative_spread(values)
    v.run = again
    v.change = (v.base / again - 1) if v.metric == "speedup" else (again / (v.base * v.shift) - 1)
    v.noise = _hypot(spread, v.base_noise, v.scatter)
    median_cand = statistics.median(cand_ms) if pick is statistics.median else cand_ms[values.index(again)]
    v.excess_ms = median_cand * (1 - again / v.base) if v.metric == "speedup" else again - v.base * v.shift
    if v.metric == "speedup":
        v.run_ms, v.median_ratio = median_cand, median_cand / v.base_ms
        v.own_noise = _hypot(_relative_spread(cand_ms), v.base_own_noise, v.scatter)
    direction = _judge(v, thresholds, floor_ms)
    v.confirmed = f"{label} x{len(values)}: {_fmt_metric(v.metric, again)} (spread {spread:.1%})"
    expected = "slower" if v.verdict == "regression" else "faster"
    if direction != expected or not _corroborated(v, thresholds, direction):
        v.verdict, v.note = "noise", f"not confirmed by {by}"


def _fresh_opinion(survivors: list[Verdict], base_impls: dict[str, str], remeasure: Remeasure,
                   thresholds: Thresholds, floor_ms: float, console: Console | None) -> None:
    """The survivors of the in-process re-measure, timed again in fresh processes and judged on those."""
    if not survivors:
        return
    if console:
        console.print(f"gate: re-measuring {len(survivors)} suspect(s) in {remeasure.fresh_rounds} fresh processes")
    pairs = [base_impls.get(v.suite) if v.metric == "speedup" else None for v in survivors]
    values: list[list[float]] = [[] for _ in survivors]
    cand_ms: list[list[float]] = [[] for _ in survivors]
    for round_ in range(remeasure.fresh_rounds):
        jobs = [(v.suite, _pair_order(v, b, round_), v.case_id, v.dtype, v.mode) for v, b in zip(survivors, pairs)]
        for i, (v, bimpl, times) in enumerate(zip(survivors, pairs, remeasure.fresh(jobs))):
            if any(times.get(name) is None or not times[name] > 0 for name in _pair_order(v, bimpl, 0)):
                continue
            cand_ms[i].append(times[v.impl])
            values[i].append(times[bimpl] / times[v.impl] if bimpl else times[v.impl])
    for v, vals, cands in zip(survivors, values, cand_ms):
        if len(vals) < 2:
            v.confirmed += "; fresh processes could not re-measure it"
            continue
        # the process most favourable to the candidate: the largest speedup or the least time
        # against a regression, the reverse against an improvement
        kinder = (max if v.metric == "speedup" else min) if v.verdict == "regression" else \
            (min if v.metric == "speedup" else max)
        first = v.confirmed
        _rejudge(v, vals, cands, thresholds, floor_ms, "in fresh processes", "fresh processes", pick=kinder)
        v.confirmed = f"{first}; {v.confirmed} (the kindest of {len(vals)})"


def _relative_spread(values: list[float]) -> float:
    median = statistics.median(values)
    return 1.4826 * statistics.median(abs(x - median) for x in values) / median if median > 0 else math.inf


def failing(verdicts: Iterable[Verdict], fail_on_improvement: bool = False) -> list[Verdict]:
    bad = FAILING_VERDICTS + (("improvement",) if fail_on_improvement else ())
    return [v for v in verdicts if v.verdict in bad]


# ---------------------------------------------------------------------------------------------
# Output


def _fmt_metric(metric: str, value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.3g}x" if metric == "speedup" else f"{value:.4g} ms"


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:+.1%}"


_COLUMNS = ["verdict", "suite", "impl", "case", "dtype", "mode", "metric", "baseline", "run", "change",
            "threshold", "excess ms", "median run/base", "note"]


def _cells(v: Verdict) -> list[str]:
    note = "; ".join(x for x in (v.note, v.confirmed) if x)
    return [v.verdict, v.suite, v.impl, v.case_id, v.dtype, v.mode or "-", v.metric or "-",
            _fmt_metric(v.metric, v.base), _fmt_metric(v.metric, v.run), _pct(v.change),
            "-" if not math.isfinite(v.threshold) else f"{v.threshold:.1%}",
            "-" if not math.isfinite(v.excess_ms) else f"{v.excess_ms:+.4f}",
            "-" if not math.isfinite(v.median_ratio) else f"{v.median_ratio:.3f}", note]


def tally(verdicts: Iterable[Verdict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in verdicts:
        out[v.verdict] = out.get(v.verdict, 0) + 1
    return dict(sorted(out.items()))


@dataclass
class GateResult:
    verdicts: list[Verdict]
    passed: bool
    baseline: str
    run_dir: Path
    thresholds: Thresholds
    notes: list[str] = field(default_factory=list)
    fail_on_improvement: bool = False

    def flagged(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.verdict not in ("ok",)]


def rich_table(result: GateResult) -> Table:
    title = f"gate {'PASSED' if result.passed else 'FAILED'}: {result.run_dir} vs {result.baseline}"
    table = Table(title=title, title_style="bold green" if result.passed else "bold red")
    for header in _COLUMNS:
        table.add_column(header, justify="right" if header in ("baseline", "run", "change", "threshold", "excess ms",
                                                               "median run/base") else "left")
    bad = {v.key for v in failing(result.verdicts, result.fail_on_improvement)}
    styles = {"improvement": "cyan", "noise": "dim", "new": "yellow", "drift": "yellow", "not compared": "dim"}
    for v in sorted(result.flagged(), key=lambda v: v.key in bad):  # failures last: a log's tail shows them
        table.add_row(*_cells(v), style="bold red" if v.key in bad else styles.get(v.verdict))
    return table


def markdown(result: GateResult) -> str:
    t = result.thresholds
    lines = [f"# Regression gate: {'PASSED' if result.passed else 'FAILED'}", "",
             f"- run: `{result.run_dir}`", f"- baseline: `{result.baseline}`",
             f"- threshold: max({t.rel_floor:.0%}, {t.k:g} x combined noise); absolute floor "
             f"{'per device' if t.abs_floor_ms is None else f'{t.abs_floor_ms} ms'}",
             "- verdicts: " + ", ".join(f"{n} {k}" for k, n in tally(result.verdicts).items())]
    lines += [f"- {note}" for note in result.notes]
    flagged = result.flagged()
    lines += ["", "## Flagged" if flagged else "Nothing flagged: every key is within its threshold.", ""]
    if flagged:
        lines.append("| " + " | ".join(_COLUMNS) + " |")
        lines.append("|" + "|".join("---" for _ in _COLUMNS) + "|")
        lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(v)) + " |" for v in flagged]
    return "\n".join(lines) + "\n"


def verdict_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([vars(v) for v in verdicts])


def write(result: GateResult) -> Path:
    path = Path(result.run_dir) / GATE_FILE
    path.write_text(markdown(result))
    verdict_frame(result.verdicts).to_csv(Path(result.run_dir) / GATE_TABLE, index=False)
    return path


def engine_remeasure(device: str, seed: int, rule, rounds: int) -> Remeasure:
    """Re-measures through the suites of this checkout, on this machine: the same inputs as the
    run (same seed), the same mode, the given stopping rule."""
    import torch

    from harness import registry
    from harness.runner import case_seed
    from harness.timing import measure

    suites = registry.all_suites()
    cached: dict[tuple, tuple | None] = {}  # one case's inputs at a time

    def inputs_for(suite, case_id: str, dtype: str):
        key = (suite.name, case_id, dtype)
        if key not in cached:
            cached.clear()
            case = next((c for c in suite.cases(devices=[device]) if c.case_id == case_id and c.dtype_name == dtype), None)
            cached[key] = None if case is None else suite.make_inputs(
                case, torch.Generator().manual_seed(case_seed(seed, case)))
        return cached[key]

    def measure_one(suite_name: str, impl_name: str, case_id: str, dtype: str, mode: str) -> float | None:
        suite = suites.get(suite_name)
        if suite is None or impl_name not in {i.name for i in suite.impls}:
            return None
        inputs = inputs_for(suite, case_id, dtype)
        if inputs is None:
            return None
        impl = suite.impl(impl_name)
        try:
            return measure(lambda: impl.fn(*inputs), device, mode or "cold", rule).median_ms
        except Exception:  # noqa: BLE001 - a failure to re-measure leaves the suspect standing
            return None

    return Remeasure(measure_one, rounds)


def fresh_process_remeasure(device: str, seed: int, rule_fields: dict[str, Any], threads: int | None,
                            timeout_s: float = 120.0) -> Callable[[list[Job]], list[dict[str, float | None]]]:
    """`Remeasure.fresh`: one `python -m harness.remeasure` process per call, timing every job's
    implementations once (in the job's order) through this checkout's suites, with the run's seed,
    stopping rule and thread count. A process that fails or times out measures nothing."""
    def run(jobs: list[Job]) -> list[dict[str, float | None]]:
        spec = {"device": device, "seed": seed, "rule": rule_fields, "threads": threads, "jobs": jobs}
        try:
            done = subprocess.run([sys.executable, "-m", "harness.remeasure"], input=json.dumps(spec), text=True,
                                  capture_output=True, timeout=timeout_s, cwd=REPO_ROOT)
            times = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            times = None
        return times if isinstance(times, list) and len(times) == len(jobs) else [{} for _ in jobs]
    return run
