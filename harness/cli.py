"""`python -m harness`: bench, correctness, gate, list, report, profile."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
detbench: correctness diffs and timing sweeps of detection ops against their references.

  python -m harness correctness --suite box_iou            check every implementation (no timing)
  python -m harness bench --suite box_iou --device cuda    check, then time, and write a report
  python -m harness list                                   suites, implementations, case counts
  python -m harness gate --device cpu                      a fresh run against reports/baselines/cpu.csv
  python -m harness report reports/runs/<run> [--vs <run>]  rebuild a run's tables, summary and HTML report
  python -m harness profile --suite box_iou --case shape=100x200000,content=clustered --impl detbench
                                                           one case under ncu/nsys, capturing only its call

Every run writes reports/runs/<run>/ (or --out): environment.json, results.jsonl (streamed, one
row per implementation x case x mode), results.csv/.parquet, summary.md and report.html.
Exit status: 0 all checks pass, 1 a check failed or errored, 2 bad usage.
"""


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _default(gate: bool, own: str) -> str:
    """The help text's default: a gate run takes unset options from the baseline's record."""
    return "(default: the baseline's)" if gate else f"(default: {own})"


def _selection_args(parser: argparse.ArgumentParser, gate: bool = False) -> None:
    """What to run. For `gate`, unset options default to the baseline's recorded selection."""
    select = parser.add_argument_group("what to run")
    select.add_argument("--suite", type=_csv, action="extend", metavar="NAMES",
                        help="suite(s) to run, comma-separated or repeated "
                             + ("(default: the baseline's; all with --update-baseline)" if gate else "(default: all)"))
    select.add_argument("--impl", type=_csv, action="extend", metavar="NAMES",
                        help="implementation(s) to report " + _default(gate, "all")
                             + "; the reference still runs to check them, and speedups need the baseline")
    select.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="device to run on (default: cuda when a GPU is visible, else cpu)")
    select.add_argument("--filter", metavar="REGEX",
                        help="only cases whose label matches, e.g. 'shape=100x200000' or 'dtype=float16' "
                             "(label: case_id,dtype=...,device=...)" + (" " + _default(gate, "") if gate else ""))
    select.add_argument("--preset", choices=["full", "ci"], default=None if gate else "full",
                        help="'ci' keeps each suite's reduced CI case set " + _default(gate, "full"))
    select.add_argument("--seed", type=int, default=None if gate else 0, help="input seed " + _default(gate, "0"))
    select.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch's CPU threads for the run " + _default(gate, "torch's")
                             + "; 1 keeps CPU timings stable on a loaded machine (no thread barriers)")
    select.add_argument("--out", type=Path, metavar="DIR",
                        help="run folder (default: reports/runs/<timestamp>-<command>-<device>)")


def _timing_args(parser: argparse.ArgumentParser, gate: bool = False) -> None:
    default = (lambda value: None) if gate else (lambda value: value)
    timing = parser.add_argument_group("timing (stopping rule per implementation x case x mode)")
    timing.add_argument("--modes", type=_csv, default=default(["cold"]), metavar="MODES",
                        help="comma-separated of cold (caches flushed before each sample), hot "
                             "(back to back), graph (CUDA-graph replay) " + _default(gate, "cold"))
    timing.add_argument("--min-samples", type=int, default=default(10), metavar="N",
                        help="least samples before stopping " + _default(gate, "10"))
    timing.add_argument("--max-samples", type=int, default=default(2000), metavar="N",
                        help="stop at this many samples " + _default(gate, "2000"))
    timing.add_argument("--min-time", type=float, default=default(0.02), metavar="SECONDS",
                        help="least measured time before stopping " + _default(gate, "0.02"))
    timing.add_argument("--max-noise", type=float, default=default(0.02), metavar="FRACTION",
                        help="stop once the relative noise (1.4826*MAD/median) is at most this " + _default(gate, "0.02"))
    timing.add_argument("--timeout", type=float, default=default(5.0), metavar="SECONDS",
                        help="stop sampling one measurement after this wall time " + _default(gate, "5"))


def _gate_args(parser: argparse.ArgumentParser) -> None:
    gate = parser.add_argument_group("gate")
    gate.add_argument("--run", type=Path, metavar="RUN_DIR", help="judge this finished bench run instead of a fresh one")
    gate.add_argument("--baseline", metavar="KEY_OR_PATH",
                      help="baseline to compare with: a device key (h200, cpu) or a path "
                           "(default: reports/baselines/<device key of the run>.csv)")
    gate.add_argument("--update-baseline", action="store_true",
                      help="write the run as the baseline (with its environment record) instead of judging it")
    gate.add_argument("--merge", action="store_true",
                      help="with --update-baseline: replace only the run's suites in the existing baseline "
                           "(a baseline measured suite group by suite group; the run measured as the baseline: "
                           "same devices, preset, modes, seed, rule, implementations, filter, threads)")
    gate.add_argument("--fail-on-improvement", action="store_true",
                      help="also fail on confirmed improvements beyond the threshold (keeps the baseline tight)")
    gate.add_argument("--rel-floor", type=float, default=0.10, metavar="FRACTION",
                      help="least relative change that can fail (default 0.10)")
    gate.add_argument("--k", type=float, default=3.0,
                      help="threshold = max(rel-floor, k x combined relative noise) (default 3)")
    gate.add_argument("--abs-floor-ms", type=float, default=None, metavar="MS",
                      help="changes smaller than this many ms of the candidate's time never fail "
                           "(default: 0.001 on cuda, 0.02 on cpu)")
    gate.add_argument("--confirm-rounds", type=int, default=5, metavar="N",
                      help="interleaved re-measure rounds before a suspect fails (default 5)")
    gate.add_argument("--no-confirm", action="store_true", help="fail on suspects without re-measuring them")


def _profile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", required=True, help="the suite")
    parser.add_argument("--case", required=True, metavar="CASE",
                        help="the case: its case_id (e.g. 'shape=100x200000,content=clustered'), its full label, "
                             "or a regex on the label that matches one case")
    parser.add_argument("--impl", required=True, help="the implementation")
    parser.add_argument("--dtype", help="the dtype, when the case exists in several (default: the suite's first)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--mode", choices=["cold", "hot"], default="cold",
                        help="cold: the L2 is flushed before the captured call (default); hot: not")
    parser.add_argument("--tool", choices=["ncu", "nsys", "none"], default=None,
                        help="profiler (default: ncu if installed, else nsys, else none)")
    parser.add_argument("--tool-args", default="", metavar="ARGS",
                        help="extra arguments for the profiler, e.g. '--set full' or '--section SpeedOfLight'")
    parser.add_argument("--warmup", type=int, default=3, help="calls before the capture (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where the profile goes (default: reports/runs/<timestamp>-profile-<device>)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = commands.add_parser("bench", help="check, then time every implementation",
                                description="Check every implementation against the reference, then time it.")
    _selection_args(bench)
    _timing_args(bench)
    correctness = commands.add_parser("correctness", help="check every implementation, no timing",
                                      description="Check every implementation against the reference of record.")
    _selection_args(correctness)
    for runs in (bench, correctness):
        runs.add_argument("--resume", type=Path, metavar="RUN_DIR",
                          help="finish an interrupted run in its own folder, with its own selection and "
                               "stopping rule: cases with every row written are kept, the rest run")
    gate = commands.add_parser("gate", help="regression gate: a run against reports/baselines/<device>",
                               description=GATE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _selection_args(gate, gate=True)
    _timing_args(gate, gate=True)
    _gate_args(gate)
    commands.add_parser("list", help="list suites, implementations and case counts")
    report = commands.add_parser("report", help="rebuild a run's CSV, summary.md and report.html; --vs: two runs",
                                 description="Rebuild a run's results.csv, summary.md and report.html from its "
                                             "results.jsonl; with --vs, also report-vs-<other>.html: the two "
                                             "runs side by side with per-case ratios.")
    report.add_argument("run", type=Path, metavar="RUN_DIR")
    report.add_argument("--vs", type=Path, metavar="OTHER_RUN_DIR", help="a second run to compare with")
    profile = commands.add_parser("profile", help="run one case under ncu or nsys, capturing only its call",
                                  description=PROFILE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _profile_args(profile)
    return parser


GATE_DESCRIPTION = """\
Compare a bench run (fresh, or --run DIR) with reports/baselines/<device key>.csv, keyed by
suite x implementation x case x dtype x mode. Fails (exit 1) on a correctness failure, a key of
the baseline missing from the run, or a confirmed slowdown beyond max(rel-floor, k x noise) of a
candidate's speedup over the suite's baseline implementation measured in the same run
(absolute medians where the run has no speedup and the machine matches). Suspects are re-measured
interleaved before they fail. Writes gate.md and gate.csv into the run folder.

  python -m harness gate --device cpu                   fresh run of the baseline's selection
  python -m harness gate --run reports/runs/<run>       judge a finished bench run
  python -m harness gate --device cpu --preset ci --modes hot --threads 1 --min-samples 20 --max-noise 0.05 --timeout 0.5 --update-baseline
                                                        (re)write the CPU baseline as committed: each
                                                        baseline's .json records its command (regenerate)
"""

PROFILE_DESCRIPTION = """\
Run exactly one case of one implementation: warm-up calls outside the capture, then one call
between cudaProfilerStart/Stop inside its NVTX ranges (detbench@<suite>/<impl>/<case label>),
under ncu or nsys. Prints the profiler command, runs it when the tool is installed, and saves the
report (and profile.json) in the run folder.
"""


def _stdout() -> Console:
    """Tables go to stdout; when it is a file or a pipe (CI logs), wide enough not to wrap."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=220)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    import torch

    threads = torch.get_num_threads()  # commands may set their own; a caller's setting is restored
    try:
        if args.command == "list":
            return _list(_stdout())
        if args.command == "report":
            return _report(args.run, args.vs, _stdout())
        if args.command == "gate":
            return _gate(args, sys.argv[1:] if argv is None else argv, console)
        if args.command == "profile":
            from harness import profile

            return profile.main(args, sys.argv[1:] if argv is None else argv, console)
        return _run(args, console)
    except UsageError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: the rows finished so far are in the run folder")
        return 130
    finally:
        torch.set_num_threads(threads)


class UsageError(Exception):
    pass


def _use_threads(threads: int | None) -> None:
    """torch's CPU threads for the rest of the command (None: leave them); main() restores the
    caller's setting."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _device(requested: str | None) -> str:
    import torch

    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA device")
    return device


def _execute(command: str, console: Console, *, suites: list[str] | None, impls: list[str] | None,
             device: str, case_filter: str | None, preset: str, seed: int, out: Path | None,
             modes: list[str], rule_fields: dict[str, Any] | None, threads: int | None = None,
             run_label: str | None = None, resumed: dict[str, Any] | None = None):
    """One bench or correctness run into a run folder; returns (out_dir, rows DataFrame, environment).
    `resumed`: the environment record of the interrupted run in `out`, finished there."""
    from harness import registry, report, results
    from harness.runner import RunOptions, Runner
    from harness.suite import select_cases
    from harness.timing import StoppingRule

    try:
        chosen = registry.select_suites(suites)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    known_impls = {i.name for s in chosen for i in s.impls}
    if impls and set(impls) - known_impls:
        raise UsageError(f"unknown implementation(s) {sorted(set(impls) - known_impls)}; known: {sorted(known_impls)}")

    cases = {}
    for suite in chosen:
        selected = select_cases(suite.cases(devices=[device]), case_filter)
        cases[suite.name] = [c for c in selected if preset == "full" or suite.ci(c)]
    if not any(cases.values()):
        raise UsageError(f"no case matches (device={device}, filter={case_filter!r}, preset={preset})")

    if resumed:
        run_id = resumed["run_id"]
    else:
        run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{run_label or command}-{device}"
    out_dir = out or Path("reports") / "runs" / run_id
    if not resumed and (out_dir / results.ROWS_FILE).exists():
        raise UsageError(f"{out_dir} already holds a run's {results.ROWS_FILE}; choose another --out, or "
                         f"--resume it")
    try:
        rule = StoppingRule(**rule_fields) if command == "bench" and rule_fields else StoppingRule()
        options = RunOptions(command=command, out_dir=out_dir, run_id=run_id, devices=[device], impls=impls,
                             modes=modes, rule=rule, seed=seed, preset=preset, case_filter=case_filter,
                             threads=threads)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    _use_threads(threads)

    console.print(f"detbench {command}: {sum(map(len, cases.values()))} cases on {device} -> {out_dir}")
    runner = Runner(chosen, cases, options, console, resumed=resumed)
    df = env = None
    try:
        runner.run()
    finally:
        # Also after a crash or Ctrl-C: the finished rows are in results.jsonl; render them.
        if (out_dir / results.ROWS_FILE).exists():
            df = results.load_rows(out_dir)
            env = results.load_environment(out_dir)
            results.write_tables(df, out_dir)
            report.write_summary(df, env, out_dir)
            _write_html(df, env, out_dir, console)
    return out_dir, df, env


def _write_html(df, env, out_dir: Path, console: Console) -> Path | None:
    """report.html beside the tables; a plotting failure never costs the run its other files."""
    from harness import html_report

    try:
        return html_report.write_run(df, env, out_dir)
    except Exception as exc:  # noqa: BLE001
        console.print(f"[yellow]warning:[/] report.html not written: {type(exc).__name__}: {exc}")
        return None


def _rule_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {"min_samples": args.min_samples, "max_samples": args.max_samples, "min_time_s": args.min_time,
            "max_noise": args.max_noise, "timeout_s": args.timeout}


def _resumed_run(args: argparse.Namespace, console: Console):
    """`--resume RUN_DIR`: the run's environment record, after the checks that it can be resumed."""
    from harness import results

    if args.out:
        raise UsageError("--resume continues the run in its own folder; drop --out")
    if not (args.resume / results.ENVIRONMENT_FILE).exists() or not (args.resume / results.ROWS_FILE).exists():
        raise UsageError(f"--resume {args.resume}: no {results.ENVIRONMENT_FILE} and {results.ROWS_FILE} there "
                         f"(not a run folder)")
    env = results.load_environment(args.resume)
    if env.get("command") != args.command:
        raise UsageError(f"--resume {args.resume}: a {env.get('command')} run; resume it with "
                         f"`python -m harness {env.get('command')} --resume`")
    console.print(f"resuming {args.resume} with the run's own selection and stopping rule (the command "
                  f"line's are not used): {env['options']}")
    return env


def _run(args: argparse.Namespace, console: Console) -> int:
    from harness import report, results

    resumed = _resumed_run(args, console) if args.resume else None
    if resumed:  # the run's own selection and stopping rule
        o = resumed["options"]
        selection = dict(suites=o["suites"], impls=o["impls"], device=o["devices"][0], case_filter=o["filter"],
                         preset=o["preset"], seed=o["seed"], out=args.resume, modes=o["modes"], threads=o["threads"],
                         rule_fields=o["rule"] if args.command == "bench" else None)
    else:
        selection = dict(suites=args.suite, impls=args.impl, device=_device(args.device), case_filter=args.filter,
                         preset=args.preset, seed=args.seed, out=args.out, modes=getattr(args, "modes", ["cold"]),
                         threads=args.threads, rule_fields=_rule_fields(args) if args.command == "bench" else None)
    out_dir, df, _ = _execute(args.command, console, resumed=resumed, **selection)
    report.print_summary(df, f"{args.command} {out_dir.name}", _stdout())
    console.print(f"report: {out_dir / report.SUMMARY_FILE}")
    return EXIT_FAILED if df["status"].isin(results.FAILING).any() else EXIT_OK


def _gate(args: argparse.Namespace, argv: list[str], console: Console) -> int:
    import shlex

    from harness import gate, results

    if args.merge and not args.update_baseline:
        raise UsageError("--merge goes with --update-baseline")
    thresholds = gate.Thresholds(rel_floor=args.rel_floor, k=args.k, abs_floor_ms=args.abs_floor_ms)
    if args.run:
        if not (args.run / results.ROWS_FILE).exists():
            raise UsageError(f"{args.run} has no {results.ROWS_FILE}")
        run_dir, df, env = args.run, results.load_rows(args.run), results.load_environment(args.run)
        if env.get("command") != "bench":
            raise UsageError(f"{args.run} is a {env.get('command')} run; the gate needs a bench run (timings)")
        devices = (env.get("options") or {}).get("devices") or sorted(set(df["device"].dropna()))
        device = devices[0] if devices else "cpu"
        _use_threads((env.get("options") or {}).get("threads"))  # the re-measure runs as the run did
    else:
        device = _device(args.device)
        key = args.baseline or gate.device_key({"gpu": _gpu_name(device)}, device)
        recorded = {}
        try:
            recorded = gate.read_baseline(key)[1].get("environment", {}).get("options", {})
        except FileNotFoundError:
            if not args.update_baseline:
                raise UsageError(f"no baseline {gate.baseline_paths(key)[0]}: write one with "
                                 f"`python -m harness gate --device {device} --update-baseline [selection]`") from None
        rule = {**(recorded.get("rule") or {}),
                **{k: v for k, v in _rule_fields(args).items() if v is not None}}
        run_dir, df, env = _execute(
            # A new baseline covers every suite unless told otherwise; a check repeats the baseline's.
            "bench", console, suites=args.suite or (None if args.update_baseline else recorded.get("suites")),
            impls=args.impl or recorded.get("impls"),
            device=device, case_filter=args.filter if args.filter is not None else recorded.get("filter"),
            preset=args.preset or recorded.get("preset") or "full",
            seed=args.seed if args.seed is not None else recorded.get("seed", 0), out=args.out,
            modes=args.modes or recorded.get("modes") or ["cold"], rule_fields=rule,
            threads=args.threads if args.threads is not None else recorded.get("threads"), run_label="gate")
    key = args.baseline or gate.device_key(env, device)
    if args.update_baseline:
        broken = df[df["status"].isin(results.FAILING)]
        if len(broken):
            console.print(f"[bold red]not writing a baseline[/]: {len(broken)} rows fail their checks (see "
                          f"{run_dir / 'summary.md'})")
            return EXIT_FAILED
        regenerate = (_bench_gate_command(env, args.merge) if args.run else
                      "python -m harness " + " ".join(shlex.quote(a) for a in without_options(argv, "--out", "--baseline", "--run")))
        if args.merge:
            try:
                paths = gate.merge_baseline(df, env, key, regenerate)
            except FileNotFoundError:
                raise UsageError(f"--merge: no baseline {gate.baseline_paths(key)[0]} to merge into") from None
            except ValueError as e:
                raise UsageError(f"--merge: {e}") from None
            console.print(f"baseline updated: {paths[0]} (the {len(df)} rows of {', '.join(sorted(set(df['suite'])))} "
                          f"replaced), {paths[1]}")
            return EXIT_OK
        paths = gate.write_baseline(df, env, key, regenerate)
        console.print(f"baseline written: {paths[0]} ({len(df)} rows), {paths[1]}")
        return EXIT_OK
    try:
        baseline, meta = gate.read_baseline(key)
    except FileNotFoundError:
        raise UsageError(f"no baseline {gate.baseline_paths(key)[0]} for this run") from None
    base_env = meta.get("environment", {})
    selection = env.get("options") or {}
    notes = []
    expected = gate.restrict(baseline, selection, device)
    if (selection.get("preset") or "full") != ((base_env.get("options") or {}).get("preset") or "full"):
        ran = set(zip(df["suite"], df["case_id"], df["dtype"]))
        expected = expected[[k in ran for k in zip(expected["suite"], expected["case_id"], expected["dtype"])]]
        notes.append(f"the run's preset differs from the baseline's: only cases the run selected are expected")
    if not gate.same_machine(env, base_env, device):
        notes.append("different machine from the baseline's: rows without a speedup are not compared; "
                     "speedup changes still need our own median (over the shift) to agree")
    verdicts = gate.compare(df, env, expected, base_env, device, thresholds)
    shift, scatter = gate.baseline_drift(df, expected)
    notes.append(f"baseline drift: the unchanged baseline implementations ran {shift:.3g}x their baseline times "
                 f"(divided out of absolute comparisons), scattering {scatter:.1%} case by case (part of every "
                 "key's noise)")
    if not args.no_confirm:
        here = device == "cpu" or _gpu_name(device) is not None
        remeasure = None
        if here:
            from harness.timing import StoppingRule

            rule = StoppingRule(**{**(selection.get("rule") or {}),
                                   "timeout_s": min(1.0, (selection.get("rule") or {}).get("timeout_s", 1.0))})
            remeasure = gate.engine_remeasure(device, selection.get("seed", 0), rule, args.confirm_rounds)
            if device == "cpu":  # a CPU process's memory placement can hold a slowdown (gate.py's docstring)
                import dataclasses

                remeasure.fresh = gate.fresh_process_remeasure(device, selection.get("seed", 0),
                                                               dataclasses.asdict(rule), selection.get("threads"))
        else:
            notes.append(f"no {device} device here: suspects were not re-measured")
        gate.confirm(verdicts, {**gate._baseline_impls(baseline), **gate._baseline_impls(df)}, remeasure,
                     thresholds, device, console, args.fail_on_improvement)
    bad = gate.failing(verdicts, args.fail_on_improvement)
    result = gate.GateResult(verdicts, passed=not bad, baseline=str(gate.baseline_paths(key)[0]), run_dir=Path(run_dir),
                             thresholds=thresholds, notes=notes, fail_on_improvement=args.fail_on_improvement)
    path = gate.write(result)
    out = _stdout()
    if result.flagged():
        out.print(gate.rich_table(result))
    tally = ", ".join(f"{n} {k}" for k, n in gate.tally(verdicts).items())
    out.print(f"gate {'passed' if result.passed else 'FAILED'}: {tally}", style="bold green" if result.passed else "bold red")
    console.print(f"gate report: {path}")
    return EXIT_OK if result.passed else EXIT_FAILED


_RULE_OPTIONS = {"min_samples": "--min-samples", "max_samples": "--max-samples", "min_time_s": "--min-time",
                 "max_noise": "--max-noise", "timeout_s": "--timeout"}


def _bench_gate_command(env: dict[str, Any], merge: bool) -> str:
    """The gate command that measures what a finished run measured (a baseline written from
    `--run DIR` records how to measure it afresh, not the path it was read from); `merge`: into
    the baseline's other suites, as the run was."""
    import shlex

    options = env.get("options") or {}
    words = ["python -m harness gate --update-baseline" + (" --merge" if merge else ""),
             f"--device {(options.get('devices') or ['cpu'])[0]}"]
    listed = {"--suite": options.get("suites"), "--impl": options.get("impls"), "--modes": options.get("modes")}
    words += [f"{flag} {','.join(values)}" for flag, values in listed.items() if values]
    words += [f"--preset {options.get('preset') or 'full'}", f"--seed {options.get('seed', 0)}"]
    if options.get("filter"):
        words.append(f"--filter {shlex.quote(options['filter'])}")
    if options.get("threads"):
        words.append(f"--threads {options['threads']}")
    words += [f"{_RULE_OPTIONS[k]} {v:g}" for k, v in (options.get("rule") or {}).items() if k in _RULE_OPTIONS]
    return " ".join(words)


def without_options(argv: list[str], *options: str) -> list[str]:
    """argv less `options` and their values (`--option VALUE` or `--option=VALUE`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in options:
            skip = True
        elif not arg.startswith(tuple(o + "=" for o in options)):
            kept.append(arg)
    return kept


def _gpu_name(device: str) -> str | None:
    import torch

    if device != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.cuda.current_device())


def _list(out: Console) -> int:
    from rich.table import Table

    from harness import registry

    table = Table(title="suites")
    for header in ("suite", "reference", "baseline", "implementations", "cases (all devices)", "ci cases"):
        table.add_column(header)
    for suite in registry.all_suites().values():
        cases = suite.cases()
        table.add_row(suite.name, suite.reference, suite.baseline, ", ".join(i.name for i in suite.impls),
                      str(len(cases)), str(sum(map(suite.ci, cases))))
    out.print(table)
    return EXIT_OK


def _report(run_dir: Path, other: Path | None, out: Console) -> int:
    from harness import html_report, report, results

    for folder in (run_dir, other):
        if folder is not None and not (folder / results.ROWS_FILE).exists():
            raise UsageError(f"{folder} has no {results.ROWS_FILE}")
    df = results.load_rows(run_dir)
    env = results.load_environment(run_dir)
    results.write_tables(df, run_dir)
    path = report.write_summary(df, env, run_dir)
    report.print_summary(df, str(run_dir), out)
    out.print(f"report: {path}")
    html = _write_html(df, env, run_dir, Console(stderr=True))
    if html:
        out.print(f"html: {html}")
    if other is not None:
        versus = html_report.write_comparison(df, env, results.load_rows(other), results.load_environment(other),
                                              run_dir, other_name=other.name)
        out.print(f"comparison: {versus}")
    return EXIT_FAILED if df["status"].isin(results.FAILING).any() else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
