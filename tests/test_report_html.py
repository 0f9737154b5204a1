"""report.html and report-vs-<other>.html: self-contained (plots inline as base64 PNG), the
environment first, a section per suite with time / speedup / % of peak against bytes moved."""
import base64
import re

import pytest
import torch

from harness import Impl, Suite, Tolerance, cli, html_report, registry, results, runner, tensors_close


def _suite(name, factor=1):
    def slow(x):
        return x * 2 + 0 * x.sum()

    def fast(x):
        return x * 2 if factor == 1 else (x * 2).clone() + 0 * x

    return Suite(
        name=name,
        impls=[Impl("float64", lambda x: x.double() * 2, timed=False), Impl("base", slow), Impl("ours", fast)],
        reference="float64", baseline="base",
        axes={"n": (0, 1000, 100_000)}, dtypes=(torch.float32, torch.float16), devices=("cpu",),
        make_inputs=lambda case, g: (torch.rand(case["n"], generator=g).to(case.dtype),),
        compare=lambda got, exp, case, inputs: tensors_close(got, exp, Tolerance(1e-3, 1e-3), dtype=case.dtype),
        bytes_moved=lambda case: 2 * case["n"] * case.dtype.itemsize,
    )


@pytest.fixture
def two_suites(monkeypatch):
    monkeypatch.setattr(runner, "measure_peak_bandwidth", lambda device: 10.0)  # seconds per run here
    monkeypatch.setattr(registry, "all_suites", lambda: {"alpha": _suite("alpha"), "beta": _suite("beta", 2)})


QUICK = ["--min-samples", "3", "--max-samples", "20", "--min-time", "0", "--timeout", "0.2"]


def _pngs(text):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_bench_run_gets_a_self_contained_report(tmp_path, two_suites):
    out = tmp_path / "run"
    assert cli.main(["bench", "--device", "cpu", "--out", str(out), *QUICK]) == 0
    text = (out / html_report.REPORT_FILE).read_text()
    env = results.load_environment(out)
    # environment at the top, before the first suite
    assert text.index(env["run_id"]) < text.index(env["torch"]) < text.index("<h2>alpha</h2>") < text.index("<h2>beta</h2>")
    pngs = _pngs(text)
    assert len(pngs) == 2 and all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 5000 for p in pngs)
    assert "http" not in text.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert "timed rows moving 0 bytes" in text  # n=0 is in the table, not on a log axis
    assert text.count("<td>pass ") >= 4 and "x " in text and "% BW" in text


def test_correctness_run_renders_tables_without_plots(tmp_path, two_suites):
    out = tmp_path / "check"
    assert cli.main(["correctness", "--device", "cpu", "--suite", "alpha", "--out", str(out)]) == 0
    text = (out / html_report.REPORT_FILE).read_text()
    assert not _pngs(text) and "<h2>alpha</h2>" in text and "<td>pass</td>" in text


def test_report_command_side_by_side(tmp_path, two_suites, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert cli.main(["bench", "--device", "cpu", "--suite", "alpha", "--out", str(out), *QUICK]) == 0
    (a / html_report.REPORT_FILE).unlink()
    assert cli.main(["report", str(a), "--vs", str(b)]) == 0
    assert (a / html_report.REPORT_FILE).exists()  # rebuilt
    text = (a / "report-vs-b.html").read_text()
    assert len(_pngs(text)) == 1 and "Geometric mean of the ratios" in text
    joined = html_report.joined(results.load_rows(a), results.load_rows(b))
    timed = joined[joined["median_ms"].notna()]
    assert len(timed) == 2 * 3 * 2  # impls x sizes x dtypes, each with the other run's median
    assert (timed["ratio"] == timed["median_ms"] / timed["median_ms_other"]).all()
    assert cli.main(["report", str(a), "--vs", str(tmp_path / "nowhere")]) == 2
