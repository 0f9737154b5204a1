"""`python -m harness profile`: one case of one implementation under Nsight Compute or Systems.

The process runs twice. The outer one picks the profiler, prints its exact command and runs it;
the profiler starts this same command again with DETBENCH_PROFILE_INNER=1 in its environment,
and that inner process runs the case:

    inputs (seeded as in every run) -> `warmup` calls (module load, allocator, autotuning)
    -> cold: L2 flushed -> cudaProfilerStart -> NVTX detbench@<suite>/<impl>/<case label>
    -> one call -> sync -> pop -> cudaProfilerStop

so `ncu --profile-from-start off` and `nsys profile --capture-range=cudaProfilerApi` see that
one call and nothing else. ncu records the NVTX ranges (`--nvtx`) but does not filter on them:
push/pop ranges belong to the thread that pushed them, and autograd launches a backward's CUDA
kernels from its own device thread, so `--nvtx-include` would drop every backward kernel of a
forward+backward case (seen on the H200: a fwd+bwd capture held only the forward's kernels).
Where the requested tool is missing the other one is used; where neither is, or on the CPU,
the case runs once without a profiler, and the message says so.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

INNER_ENV = "DETBENCH_PROFILE_INNER"
TOOLS = ("ncu", "nsys")
REPORT_SUFFIX = {"ncu": ".ncu-rep", "nsys": ".nsys-rep"}
PROFILE_FILE = "profile.json"


class ProfileError(Exception):
    """Bad usage: unknown suite, implementation, or a case that matches nothing or several."""


def find_case(suite, case: str, dtype: str | None, device: str):
    """The one case of `suite` on `device` named by `case`: its case_id, its label, or else a regex
    on the label; `dtype` narrows it; where only dtypes differ, the suite's first dtype is taken."""
    candidates = suite.cases(devices=[device])
    if dtype:
        candidates = [c for c in candidates if c.dtype_name == dtype]
    exact = [c for c in candidates if case in (c.case_id, c.label)]
    if not exact:
        try:
            rx = re.compile(case)
        except re.error as exc:
            raise ProfileError(f"--case {case!r} is no case_id and no valid regex: {exc}") from None
        exact = [c for c in candidates if rx.search(c.label)]
    if not exact:
        raise ProfileError(f"no case of {suite.name} on {device} matches {case!r}"
                           + (f" with dtype {dtype}" if dtype else ""))
    if len({c.case_id for c in exact}) > 1:
        shown = ", ".join(sorted({c.case_id for c in exact})[:6])
        raise ProfileError(f"--case {case!r} matches several cases of {suite.name}: {shown}; give the case_id")
    by_dtype = {c.dtype_name: c for c in exact}
    first = next(str(d).removeprefix("torch.") for d in suite.dtypes if str(d).removeprefix("torch.") in by_dtype)
    return by_dtype[first]


def profiler_command(tool: str, report_stem: Path, inner_argv: list[str], nvtx_available: bool,
                     tool_args: str = "", python: str | None = None) -> list[str]:
    """The exact command that profiles one call. ncu: `--clock-control none` leaves the GPU's
    clocks as they are (ncu locks them to base otherwise; we measure the card as we find it)."""
    harness = [python or sys.executable, "-m", "harness", *inner_argv]
    extra = shlex.split(tool_args)
    if tool == "ncu":
        nvtx = ["--nvtx"] if nvtx_available else []  # ranges recorded, not filtered on (module docstring)
        return ["ncu", "--profile-from-start", "off", "--clock-control", "none", "--target-processes", "all",
                *nvtx, *extra, "--force-overwrite", "--export", str(report_stem), *harness]
    if tool == "nsys":
        return ["nsys", "profile", "--capture-range=cudaProfilerApi", "--capture-range-end=stop",
                "--trace=cuda,nvtx,osrt", "--force-overwrite=true", *extra, "--output", str(report_stem), *harness]
    raise ValueError(f"unknown profiler {tool!r}")


def choose_tool(requested: str | None, which=shutil.which) -> tuple[str | None, str | None]:
    """(tool to run or None, a message for the user when the choice is not what was asked)."""
    if requested == "none":
        return None, None
    present = [t for t in TOOLS if which(t)]
    if requested is None:
        return (present[0], None) if present else (None, "neither ncu nor nsys is on PATH: running the case "
                                                          "once without a profiler")
    if requested in present:
        return requested, None
    other = [t for t in present if t != requested]
    if other:
        return other[0], f"{requested} is not installed (not on PATH): running under {other[0]} instead"
    return None, f"{requested} is not installed (not on PATH), nor is any other Nsight profiler: running the " \
                 "case once without a profiler"


def run_case(suite, impl, case, seed: int, warmup: int, mode: str, console: Console) -> dict[str, Any]:
    """The inner part: warm up, then exactly one call inside the capture range and its NVTX ranges."""
    import torch

    from harness import nvtx
    from harness.runner import case_seed
    from harness.timing import _l2_flush_buffer, _llc_flush_buffer

    inputs = suite.make_inputs(case, torch.Generator().manual_seed(case_seed(seed, case)))
    cuda = case.device == "cuda"
    for _ in range(warmup):
        impl.fn(*inputs)
    if cuda:
        torch.cuda.synchronize()
    if mode == "cold":
        (_l2_flush_buffer().zero_() if cuda else _llc_flush_buffer().add_(1))
    ranges = nvtx.nvtx_range(suite.name, impl.name, case.label, category=suite.name,
                             payload=suite.bytes_moved(case))
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.profiler.start()
        with ranges:
            start.record()
            impl.fn(*inputs)
            end.record()
            torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        elapsed_ms = start.elapsed_time(end)
    else:
        with ranges:
            t0 = time.perf_counter()
            impl.fn(*inputs)
            elapsed_ms = (time.perf_counter() - t0) * 1e3
    console.print(f"profiled one call of {suite.name}/{impl.name} {case.label}: {elapsed_ms:.4f} ms"
                  + (" (under the profiler: its overhead included)" if os.environ.get(INNER_ENV) else ""))
    return {"suite": suite.name, "impl": impl.name, "case_id": case.case_id, "dtype": case.dtype_name,
            "device": case.device, "label": case.label, "mode": mode, "warmup_calls": warmup,
            "bytes": suite.bytes_moved(case), "call_ms": elapsed_ms, "nvtx": nvtx.AVAILABLE,
            "nvtx_ranges": [nvtx.DOMAIN_NAME, suite.name, impl.name, case.label]}


def inner_arguments(argv: list[str], out_dir: Path) -> list[str]:
    """The profiled (inner) process's arguments: the outer ones, writing into the outer run folder."""
    from harness.cli import without_options

    return [*without_options(argv, "--out"), "--out", str(out_dir)]


def _update_record(out_dir: Path, fields: dict[str, Any]) -> None:
    path = out_dir / PROFILE_FILE
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(fields)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def _run_streaming(command: list[str], env: dict[str, str], console: Console) -> int:
    """Run the profiler, echoing its output; its exit code."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        console.print(line.rstrip("\n"), markup=False, highlight=False)
    return process.wait()


def main(args, argv: list[str], console: Console) -> int:
    """The `profile` command (outer or inner)."""
    import datetime as dt

    import torch

    from harness import environment, nvtx, registry

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        console.print("[bold red]error:[/] --device cuda, but torch sees no CUDA device")
        return 2
    try:
        suites = registry.all_suites()
        if args.suite not in suites:
            raise ProfileError(f"unknown suite {args.suite!r}; known: {sorted(suites)}")
        suite = suites[args.suite]
        if args.impl not in {i.name for i in suite.impls}:
            raise ProfileError(f"unknown implementation {args.impl!r} of {suite.name}; known: "
                               f"{[i.name for i in suite.impls]}")
        impl = suite.impl(args.impl)
        case = find_case(suite, args.case, args.dtype, device)
        if impl.skip_reason(case):
            raise ProfileError(f"{impl.name} cannot run {case.label}: {impl.skip_reason(case)}")
    except ProfileError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2

    if os.environ.get(INNER_ENV):
        record = run_case(suite, impl, case, args.seed, args.warmup, args.mode, console)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            _update_record(Path(args.out), record)
        return 0

    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-profile-{device}"
    out_dir = Path(args.out or Path("reports") / "runs" / run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment.capture()
    env.update(run_id=run_id, command="profile")
    (out_dir / "environment.json").write_text(json.dumps(env, indent=2, default=str) + "\n")
    stem = out_dir / f"profile-{suite.name}-{impl.name}"
    commands = {t: profiler_command(t, stem, inner_arguments(argv, out_dir), nvtx.AVAILABLE, args.tool_args)
                for t in TOOLS}
    shown = shlex.join(commands[args.tool if args.tool in commands else "ncu"])  # the command to print

    if device != "cuda":
        from harness.cli import without_options

        gpu_command = shlex.join(["python", "-m", "harness", *without_options(argv, "--out", "--device"),
                                  "--device", "cuda"])
        console.print(f"device {device}: ncu and nsys capture CUDA work, so the case runs once here without a "
                      f"profiler. On a GPU machine: {gpu_command}")
        _update_record(out_dir, {"tool": None, "command": None, **run_case(suite, impl, case, args.seed,
                                                                            args.warmup, args.mode, console)})
        console.print(f"profile record: {out_dir / PROFILE_FILE}")
        return 0

    tool, message = choose_tool(args.tool)
    if message:
        console.print(f"[yellow]{message}[/]")
    if not nvtx.AVAILABLE:
        console.print("[yellow]the nvtx package is not installed: no NVTX ranges, so ncu filters on the "
                      "cudaProfilerStart/Stop capture range alone[/]")
    if tool is None:
        console.print(f"profiler command, where one is installed: {shown}")
        _update_record(out_dir, {"tool": None, "command": shown,
                                 **run_case(suite, impl, case, args.seed, args.warmup, args.mode, console)})
        console.print(f"profile record: {out_dir / PROFILE_FILE}")
        return 0

    command = commands[tool]
    console.print(f"profiler command: {shlex.join(command)}")
    child_env = {**os.environ, INNER_ENV: "1"}
    code = _run_streaming(command, child_env, console)
    report = stem.with_suffix(REPORT_SUFFIX[tool])
    _update_record(out_dir, {"tool": tool, "command": shlex.join(command), "exit_code": code,
                             "report": str(report) if report.exists() else None})
    if code != 0 or not report.exists():
        console.print(f"[bold red]{tool} exited with {code}; report {'missing' if not report.exists() else report}[/]")
        return 1
    console.print(f"report: {report}  (open with {'ncu-ui' if tool == 'ncu' else 'nsys-ui'}; "
                  f"{'ncu --import ' + shlex.quote(str(report)) + ' --page details' if tool == 'ncu' else 'nsys stats ' + shlex.quote(str(report))})")
    return 0
