"""Summaries of a run's DataFrame: a rich table for the terminal and summary.md for the folder."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from harness.results import FAILING

SUMMARY_FILE = "summary.md"

# (column, header, formatter)
_SHOWN = [
    ("suite", "suite", str),
    ("impl", "impl", str),
    ("case_id", "case", str),
    ("dtype", "dtype", str),
    ("device", "device", str),
    ("mode", "mode", str),
    ("status", "status", str),
    ("median_ms", "median ms", lambda v: _num(v, "{:.4g}")),
    ("noise_rel", "noise", lambda v: _num(v, "{:.1%}")),
    ("samples", "n", lambda v: _num(v, "{:.0f}")),
    ("speedup_vs_baseline", "speedup", lambda v: _num(v, "{:.2f}x")),
    ("gbps", "GB/s", lambda v: _num(v, "{:.1f}")),
    ("pct_peak_bw", "% peak BW", lambda v: _num(v, "{:.1f}")),
    ("max_abs_err", "max abs err", lambda v: _num(v, "{:.2e}")),
    ("peak_mem_bytes", "peak MiB", lambda v: _num(v, "{:.1f}") if v is None or v != v else f"{v / 2**20:.1f}"),
]


def _num(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _cells(df: pd.DataFrame) -> list[list[str]]:
    return [[fmt(row[col]) for col, _, fmt in _SHOWN] for _, row in df.iterrows()]


def counts(df: pd.DataFrame) -> dict[str, int]:
    """Status counts over implementation x case checks (a check is counted once, not per mode)."""
    checks = df.drop_duplicates(["suite", "impl", "case_id", "dtype", "device"])
    return {status: int(n) for status, n in checks["status"].value_counts().items()}


def rich_table(df: pd.DataFrame, title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for _, header, _ in _SHOWN:
        table.add_column(header, justify="left" if header in ("suite", "impl", "case", "status") else "right")
    styles = {"pass": "green", "fail": "bold red", "error": "bold red", "ambiguous": "cyan", "xfail": "yellow",
              "skipped": "dim"}
    for cells in _cells(df):
        status = cells[[c for c, _, _ in _SHOWN].index("status")]
        table.add_row(*cells, style=styles.get(status))
    return table


def markdown(df: pd.DataFrame, environment: dict[str, Any]) -> str:
    """summary.md: environment, status counts, the results table, then every non-pass with its
    reason and worst elements."""
    env_keys = ("timestamp", "commit", "gpu", "driver", "torch", "torch_cuda", "torchvision", "cpu",
                "detbench_cuda_kernels", "peak_bandwidth_gbps")
    lines = ["# detbench run " + str(environment.get("run_id", "")), ""]
    lines += [f"- {k}: {environment.get(k)}" for k in env_keys if k in environment]
    lines += ["", "Checks: " + ", ".join(f"{n} {s}" for s, n in sorted(counts(df).items())), ""]
    headers = [h for _, h, _ in _SHOWN]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(cells) + " |" for cells in _cells(df)]
    problems = df[~df["status"].isin(["pass", "reference"])].drop_duplicates(
        ["suite", "impl", "case_id", "dtype", "device"])
    if len(problems):
        lines += ["", "## Not passing", ""]
        for _, row in problems.iterrows():
            details = f" ({row['details']})" if isinstance(row["details"], str) else ""
            lines.append(f"- **{row['status']}** {row['suite']}/{row['impl']} {row['case_id']} "
                         f"{row['dtype']} {row['device']}: {row['reason']}{details}")
            worst = row["worst"] if isinstance(row["worst"], str) else "[]"  # NaN where unchecked
            for idx, got, exp in json.loads(worst):
                lines.append(f"  - at {tuple(idx)}: got {got}, expected {exp}")
    return "\n".join(lines) + "\n"


def write_summary(df: pd.DataFrame, environment: dict[str, Any], run_dir: Path) -> Path:
    path = Path(run_dir) / SUMMARY_FILE
    path.write_text(markdown(df, environment))
    return path


def print_summary(df: pd.DataFrame, title: str, console: Console) -> None:
    console.print(rich_table(df, title))
    tally = counts(df)
    failing = sum(tally.get(s, 0) for s in FAILING)
    console.print("checks: " + ", ".join(f"{n} {s}" for s, n in sorted(tally.items())),
                  style="bold red" if failing else "bold green")
