"""`python -m harness`: bench, correctness, list, report."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """\
detbench: correctness diffs and timing sweeps of detection ops against their references.

  python -m harness correctness --suite box_iou            check every implementation (no timing)
  python -m harness bench --suite box_iou --device cuda    check, then time, and write a report
  python -m harness list                                   suites, implementations, case counts
  python -m harness report reports/runs/<run>              rebuild a run's CSV/summary from its rows

Every run writes reports/runs/<run>/ (or --out): environment.json, results.jsonl (streamed, one
row per implementation x case x mode), results.csv/.parquet and summary.md.
Exit status: 0 all checks pass, 1 a check failed or errored, 2 bad usage.
"""


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run_args = argparse.ArgumentParser(add_help=False)
    select = run_args.add_argument_group("what to run")
    select.add_argument("--suite", type=_csv, action="extend", metavar="NAMES",
                        help="suite(s) to run, comma-separated or repeated (default: all)")
    select.add_argument("--impl", type=_csv, action="extend", metavar="NAMES",
                        help="implementation(s) to report (default: all); the reference still "
                             "runs to check them, and speedups need the baseline")
    select.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="device to run on (default: cuda when a GPU is visible, else cpu)")
    select.add_argument("--filter", metavar="REGEX",
                        help="only cases whose label matches, e.g. 'shape=100x200000' or 'dtype=float16' "
                             "(label: case_id,dtype=...,device=...)")
    select.add_argument("--preset", choices=["full", "ci"], default="full",
                        help="'ci' keeps each suite's reduced CI case set (default: full)")
    select.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    select.add_argument("--out", type=Path, metavar="DIR",
                        help="run folder (default: reports/runs/<timestamp>-<command>)")

    bench_args = argparse.ArgumentParser(add_help=False)
    timing = bench_args.add_argument_group("timing (stopping rule per implementation x case x mode)")
    timing.add_argument("--modes", type=_csv, default=["cold"], metavar="MODES",
                        help="comma-separated of cold (caches flushed before each sample), hot "
                             "(back to back), graph (CUDA-graph replay) (default: cold)")
    timing.add_argument("--min-samples", type=int, default=10)
    timing.add_argument("--max-samples", type=int, default=2000)
    timing.add_argument("--min-time", type=float, default=0.02, metavar="SECONDS",
                        help="least measured time before stopping (default 0.02)")
    timing.add_argument("--max-noise", type=float, default=0.02, metavar="FRACTION",
                        help="stop once the relative noise (1.4826*MAD/median) is at most this (default 0.02)")
    timing.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="stop sampling one measurement after this wall time (default 5)")

    commands.add_parser("bench", parents=[run_args, bench_args], help="check, then time every implementation",
                        description="Check every implementation against the reference, then time it.")
    commands.add_parser("correctness", parents=[run_args], help="check every implementation, no timing",
                        description="Check every implementation against the reference of record.")
    commands.add_parser("list", help="list suites, implementations and case counts")
    report = commands.add_parser("report", help="rebuild a run's CSV and summary.md from its results.jsonl")
    report.add_argument("run", type=Path, metavar="RUN_DIR")
    return parser


def _stdout() -> Console:
    """Tables go to stdout; when it is a file or a pipe (CI logs), wide enough not to wrap."""
    probe = Console()
    return probe if probe.is_terminal else Console(width=220)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        if args.command == "list":
            return _list(_stdout())
        if args.command == "report":
            return _report(args.run, _stdout())
        return _run(args, console)
    except UsageError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]: the rows finished so far are in the run folder")
        return 130


class UsageError(Exception):
    pass


def _run(args: argparse.Namespace, console: Console) -> int:
    import torch

    from harness import registry, report, results
    from harness.runner import RunOptions, Runner, any_failing
    from harness.suite import select_cases
    from harness.timing import StoppingRule

    try:
        suites = registry.select_suites(args.suite)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but torch sees no CUDA device")
    known_impls = {i.name for s in suites for i in s.impls}
    if args.impl and set(args.impl) - known_impls:
        raise UsageError(f"unknown implementation(s) {sorted(set(args.impl) - known_impls)}; known: {sorted(known_impls)}")

    cases = {}
    for suite in suites:
        chosen = select_cases(suite.cases(devices=[device]), args.filter)
        cases[suite.name] = [c for c in chosen if args.preset == "full" or suite.ci(c)]
    if not any(cases.values()):
        raise UsageError(f"no case matches (device={device}, filter={args.filter!r}, preset={args.preset})")

    run_id = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{args.command}-{device}"
    out_dir = args.out or Path("reports") / "runs" / run_id
    try:
        rule = StoppingRule(min_samples=args.min_samples, max_samples=args.max_samples, min_time_s=args.min_time,
                            max_noise=args.max_noise, timeout_s=args.timeout) if args.command == "bench" else StoppingRule()
        options = RunOptions(command=args.command, out_dir=out_dir, run_id=run_id, devices=[device],
                             impls=args.impl, modes=getattr(args, "modes", ["cold"]), rule=rule, seed=args.seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    console.print(f"detbench {args.command}: {sum(map(len, cases.values()))} cases on {device} -> {out_dir}")
    runner = Runner(suites, cases, options, console)
    try:
        rows = runner.run()
    finally:
        # Also after a crash or Ctrl-C: the finished rows are in results.jsonl; render them.
        if (out_dir / results.ROWS_FILE).exists():
            df = results.load_rows(out_dir)
            env = results.load_environment(out_dir)
            results.write_tables(df, out_dir)
            report.write_summary(df, env, out_dir)
    report.print_summary(df, f"{args.command} {run_id}", _stdout())
    console.print(f"report: {out_dir / report.SUMMARY_FILE}")
    return EXIT_FAILED if any_failing(rows) else EXIT_OK


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


def _report(run_dir: Path, out: Console) -> int:
    from harness import report, results

    if not (run_dir / results.ROWS_FILE).exists():
        raise UsageError(f"{run_dir} has no {results.ROWS_FILE}")
    df = results.load_rows(run_dir)
    results.write_tables(df, run_dir)
    path = report.write_summary(df, results.load_environment(run_dir), run_dir)
    report.print_summary(df, str(run_dir), out)
    out.print(f"report: {path}")
    return EXIT_FAILED if df["status"].isin(results.FAILING).any() else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
