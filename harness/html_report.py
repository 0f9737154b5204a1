"""Self-contained HTML reports: one run (report.html), or two side by side (report-vs-<other>.html).

No per-suite code: the problem size on every plot is the case's bytes moved (`Suite.bytes_moved`,
the `bytes` column), which every suite declares. Plots are matplotlib PNGs embedded as base64;
tables are pandas' HTML. One file, no external resources: it can be mailed or attached to CI.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report import counts

REPORT_FILE = "report.html"
KEY = ["suite", "impl", "case_id", "dtype", "mode"]
_MARKERS = {"float32": "o", "float16": "s", "bfloat16": "^", "float64": "D"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.env td { text-align: left; } .fail { color: #b00; font-weight: bold; } .note { color: #666; font-size: 0.9em; }
img { max-width: 100%; }
"""


def _figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return '<img alt="plot" src="data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode() + '">'


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _env_table(env: dict[str, Any]) -> str:
    keys = ("run_id", "command", "timestamp", "commit", "gpu", "driver", "torch", "torch_cuda", "torchvision",
            "cpu", "cpu_threads", "host", "detbench_cuda_kernels", "peak_bandwidth_gbps", "options")
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(env[k]) if isinstance(env[k], (dict, list)) else str(env[k]))}</td></tr>"
                   for k in keys if k in env)
    return f'<table class="env">{rows}</table>'


def _timed(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["median_ms"].notna() & (df["median_ms"] > 0)]


def _suite_plots(suite_df: pd.DataFrame, baseline_impl: str | None) -> str:
    """Per mode: time, speedup over the baseline implementation, and % of peak bandwidth, each
    against bytes moved; colour = implementation, marker = dtype."""
    plt = _pyplot()
    timed = _timed(suite_df)
    timed = timed[pd.to_numeric(timed["bytes"], errors="coerce").fillna(0) > 0]
    parts = []
    for mode, rows in timed.groupby("mode", sort=False):
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        impls = list(dict.fromkeys(rows["impl"]))
        colours = {impl: f"C{i}" for i, impl in enumerate(impls)}
        panels = [("median_ms", "median time (ms)", True, impls),
                  ("speedup_vs_baseline", f"speedup over {baseline_impl or 'baseline'} (same run)", True,
                   [i for i in impls if i != baseline_impl]),
                  ("pct_peak_bw", "% of peak bandwidth", False, impls)]
        for ax, (column, title, log_y, shown) in zip(axes, panels):
            for impl in shown:
                mine = rows[rows["impl"] == impl]
                for dtype, points in mine.groupby("dtype"):
                    points = points[points[column].notna()]
                    if points.empty:
                        continue
                    ax.scatter(points["bytes"].astype(float), points[column], color=colours[impl],
                               marker=_MARKERS.get(dtype, "x"), alpha=0.8, label=f"{impl} {dtype}")
            ax.set_xscale("log")
            if log_y and ax.collections:
                ax.set_yscale("log")
            if column == "speedup_vs_baseline":
                ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
            ax.set_xlabel("bytes moved per call (problem size)")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            if ax.collections:
                ax.legend(fontsize=7)
        fig.suptitle(f"{suite_df['suite'].iloc[0]} — mode {mode or '-'}", y=1.03)
        parts.append(_figure_png(fig))
    skipped = len(_timed(suite_df)) - len(timed)
    if skipped:
        parts.append(f'<p class="note">{skipped} timed rows moving 0 bytes (empty inputs) are in the table, not the plots.</p>')
    return "".join(parts)


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return fmt.format(value)


def _suite_table(suite_df: pd.DataFrame) -> str:
    """One row per case x dtype x mode, per implementation: status, median, speedup, % peak."""
    rows = suite_df.copy()
    rows["cell"] = rows.apply(lambda r: " ".join(x for x in (
        r["status"], _fmt(r["median_ms"], "{:.4g} ms"), _fmt(r["speedup_vs_baseline"], "{:.2f}x"),
        _fmt(r["pct_peak_bw"], "{:.1f}% BW")) if x), axis=1)
    table = rows.pivot_table(index=["case_id", "dtype", "mode"], columns="impl", values="cell",
                             aggfunc="first", sort=False)
    return table.to_html(na_rep="", escape=True, border=0)


def _problems(df: pd.DataFrame) -> str:
    bad = df[~df["status"].isin(["pass", "reference"])].drop_duplicates(["suite", "impl", "case_id", "dtype", "device"])
    if bad.empty:
        return ""
    items = "".join(f'<li><span class="{"fail" if r["status"] in ("fail", "error") else ""}">{html.escape(r["status"])}</span> '
                    f'{html.escape(r["suite"])}/{html.escape(r["impl"])} {html.escape(r["case_id"])} {html.escape(r["dtype"])}: '
                    f'{html.escape(str(r["reason"] or ""))}</li>' for _, r in bad.iterrows())
    return f"<h2>Not passing</h2><ul>{items}</ul>"


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")


def _baseline_impl(suite_df: pd.DataFrame) -> str | None:
    found = suite_df.loc[suite_df["role"] == "baseline", "impl"]
    return found.iloc[0] if len(found) else None


def render_run(df: pd.DataFrame, env: dict[str, Any]) -> str:
    tally = ", ".join(f"{n} {s}" for s, n in sorted(counts(df).items()))
    body = [f"<h1>detbench run {html.escape(str(env.get('run_id', '')))}</h1>", _env_table(env),
            f"<p>Checks: {html.escape(tally)}. Problem size = bytes the case must move (the suite's "
            "<code>bytes_moved</code>); speedup = the suite's baseline implementation's median over this one's, "
            "same run, same mode; % of peak = GB/s over the run's measured copy bandwidth.</p>"]
    for suite, suite_df in df.groupby("suite", sort=False):
        body.append(f"<h2>{html.escape(suite)}</h2>")
        if len(_timed(suite_df)):
            body.append(_suite_plots(suite_df, _baseline_impl(suite_df)))
        body.append(_suite_table(suite_df))
    body.append(_problems(df))
    return _page(f"detbench {env.get('run_id', '')}", "".join(body))


def write_run(df: pd.DataFrame, env: dict[str, Any], run_dir: Path) -> Path:
    path = Path(run_dir) / REPORT_FILE
    path.write_text(render_run(df, env))
    return path


def joined(df: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """The two runs' rows on the same key; ratio = this run's median / the other's (< 1: faster)."""
    columns = KEY + ["role", "status", "median_ms", "speedup_vs_baseline", "bytes"]
    both = df[columns].merge(other[columns], on=KEY, how="outer", suffixes=("", "_other"))
    both["bytes"] = both["bytes"].fillna(both["bytes_other"])
    both["ratio"] = both["median_ms"] / both["median_ms_other"]
    both["speedup_ratio"] = both["speedup_vs_baseline"] / both["speedup_vs_baseline_other"]
    return both


def render_comparison(df: pd.DataFrame, env: dict[str, Any], other: pd.DataFrame, other_env: dict[str, Any],
                      other_name: str) -> str:
    plt = _pyplot()
    both = joined(df, other)
    this_name = str(env.get("run_id", "this run"))
    body = [f"<h1>{html.escape(this_name)} vs {html.escape(other_name)}</h1>",
            "<p>ratio = this run's median / the other's (below 1: this run is faster); speedup ratio = this "
            "run's speedup over the baseline implementation / the other's (above 1: better).</p>",
            "<table class='env'><tr><th></th><th>this run</th><th>other</th></tr>"]
    for key in ("run_id", "commit", "gpu", "cpu", "torch", "torchvision", "peak_bandwidth_gbps"):
        body.append(f"<tr><th>{key}</th><td>{html.escape(str(env.get(key)))}</td>"
                    f"<td>{html.escape(str(other_env.get(key)))}</td></tr>")
    body.append("</table>")
    for suite, rows in both.groupby("suite", sort=False):
        body.append(f"<h2>{html.escape(suite)}</h2>")
        plotted = rows[rows["ratio"].notna() & (pd.to_numeric(rows["bytes"], errors="coerce").fillna(0) > 0)]
        if len(plotted):
            fig, ax = plt.subplots(figsize=(8, 4))
            for i, (impl, points) in enumerate(plotted.groupby("impl", sort=False)):
                ax.scatter(points["bytes"].astype(float), points["ratio"], color=f"C{i}", label=impl, alpha=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
            ax.set_xlabel("bytes moved per call (problem size)")
            ax.set_ylabel("median: this run / other")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
            body.append(_figure_png(fig))
            geo = plotted.groupby("impl")["ratio"].apply(lambda r: math.exp(r.map(math.log).mean()))
            body.append("<p>Geometric mean of the ratios: " + ", ".join(
                f"{html.escape(impl)} {value:.3f}" for impl, value in geo.items()) + "</p>")
        shown = rows[KEY[2:] + ["impl", "status", "status_other", "median_ms", "median_ms_other", "ratio",
                               "speedup_vs_baseline", "speedup_vs_baseline_other", "speedup_ratio"]]
        body.append(shown.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0))
    return _page(f"{this_name} vs {other_name}", "".join(body))


def write_comparison(df: pd.DataFrame, env: dict[str, Any], other: pd.DataFrame, other_env: dict[str, Any],
                     run_dir: Path, other_name: str) -> Path:
    path = Path(run_dir) / f"report-vs-{other_name}.html"
    path.write_text(render_comparison(df, env, other, other_env, other_name))
    return path
