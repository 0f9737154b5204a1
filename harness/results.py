"""Result rows: the schema, the crash-safe sink, and the run folder's files.

A run folder (`reports/runs/<run_id>/` by default) holds
- environment.json   written first: the environment record and the run's options
- results.jsonl      one JSON row per line, appended and fsync'ed as each row finishes,
                     so a crash or Ctrl-C loses no finished row
- results.csv (+ results.parquet when pyarrow is installed) and summary.md
                     written at the end, and again by `python -m harness report RUN`
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

# One row per suite x implementation x case x dtype x device x mode (mode "" in correctness runs).
COLUMNS = [
    "suite", "impl", "role", "case_id", "params", "dtype", "device", "layout", "mode",
    "status", "reason", "max_abs_err", "max_rel_err", "mismatches", "worst", "details",
    "median_ms", "min_ms", "p95_ms", "p99_ms", "iqr_ms", "noise_rel", "samples", "stop_reason",
    "bytes", "gbps", "pct_peak_bw", "speedup_vs_baseline", "peak_mem_bytes",
    "commit", "run_id", "timestamp",
]
# Correctness verdicts. `ambiguous`: differs from the reference only where a tie decides, and
# valid on its own terms; `xfail`: a disagreement the suite declares as a known deviation of that
# implementation (shown with its reason); `reference`: the implementation of record itself.
STATUSES = ("pass", "fail", "ambiguous", "xfail", "error", "skipped", "reference")
FAILING = ("fail", "error")

ENVIRONMENT_FILE = "environment.json"
ROWS_FILE = "results.jsonl"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class ResultSink:
    """Appends rows to results.jsonl, one fsync'ed line each."""

    def __init__(self, run_dir: Path, environment: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / ENVIRONMENT_FILE).write_text(json.dumps(environment, indent=2, default=str) + "\n")
        self._file = open(self.run_dir / ROWS_FILE, "a", encoding="utf-8")
        self.rows: list[dict[str, Any]] = []

    def append(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"row has columns outside the schema: {sorted(unknown)}")
        full = {column: row.get(column) for column in COLUMNS}
        self._file.write(json.dumps({k: _jsonable(v) for k, v in full.items()}, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows.append(full)

    def close(self) -> None:
        self._file.close()


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """results.jsonl's rows as written (works on a crashed run: a last line cut off mid-write is
    skipped)."""
    records = []
    with open(Path(run_dir) / ROWS_FILE, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def keep_records(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Replaces results.jsonl by `records` (written whole, then renamed over it: a crash leaves
    the old file or the new one)."""
    path = Path(run_dir) / ROWS_FILE
    partial = path.with_suffix(".jsonl.partial")
    with open(partial, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def load_rows(run_dir: Path) -> pd.DataFrame:
    """The run's rows as a DataFrame, read back from results.jsonl (works on a crashed run)."""
    return frame(read_records(run_dir))


def frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=COLUMNS)
    for column in ("max_abs_err", "max_rel_err", "median_ms", "min_ms", "p95_ms", "p99_ms", "iqr_ms",
                   "noise_rel", "gbps", "pct_peak_bw", "speedup_vs_baseline"):
        df[column] = pd.to_numeric(df[column].replace({"inf": math.inf, "-inf": -math.inf}), errors="coerce")
    return df


def load_environment(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / ENVIRONMENT_FILE).read_text())


def write_tables(df: pd.DataFrame, run_dir: Path) -> list[Path]:
    """results.csv, and results.parquet where pyarrow is installed."""
    run_dir = Path(run_dir)
    written = [run_dir / "results.csv"]
    df.to_csv(written[0], index=False)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return written
    df.to_parquet(run_dir / "results.parquet", index=False)
    written.append(run_dir / "results.parquet")
    return written
