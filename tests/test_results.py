import json

import pytest

from harness import report, results


def _row(**fields):
    row = {"suite": "s", "impl": "i", "case_id": "n=1", "dtype": "float32", "device": "cpu",
           "mode": "cold", "status": "pass", "median_ms": 1.5, "worst": "[]"}
    row.update(fields)
    return row


def test_rows_are_on_disk_as_soon_as_appended(tmp_path):
    sink = results.ResultSink(tmp_path, {"run_id": "r"})
    sink.append(_row())
    # Read back while the sink is still open: a crash now would lose nothing.
    lines = (tmp_path / results.ROWS_FILE).read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["median_ms"] == 1.5
    sink.append(_row(impl="j", status="fail", max_abs_err=float("inf")))
    assert len((tmp_path / results.ROWS_FILE).read_text().splitlines()) == 2
    sink.close()
    assert json.loads((tmp_path / results.ENVIRONMENT_FILE).read_text()) == {"run_id": "r"}


def test_rows_outside_the_schema_are_rejected(tmp_path):
    sink = results.ResultSink(tmp_path, {})
    with pytest.raises(KeyError, match="outside the schema"):
        sink.append(_row(speed="fast"))
    sink.close()


def test_load_rows_survives_a_line_cut_by_a_crash(tmp_path):
    sink = results.ResultSink(tmp_path, {})
    sink.append(_row(max_abs_err=float("inf")))
    sink.close()
    with open(tmp_path / results.ROWS_FILE, "a") as f:
        f.write('{"suite": "s", "impl": "half-writ')
    df = results.load_rows(tmp_path)
    assert len(df) == 1
    assert list(df.columns) == results.COLUMNS
    assert df["max_abs_err"].iloc[0] == float("inf")


def test_tables_and_summary_are_written(tmp_path):
    sink = results.ResultSink(tmp_path, {"run_id": "r"})
    sink.append(_row())
    sink.append(_row(impl="bad", status="fail", reason="1 of 4 elements outside",
                     worst=json.dumps([[[0, 3], 0.5, 0.25]])))
    sink.append(_row(impl="gpu_only", status="skipped", reason="no cpu implementation", worst=None))
    sink.close()
    df = results.load_rows(tmp_path)
    written = results.write_tables(df, tmp_path)
    assert (tmp_path / "results.csv").exists() and written[0].name == "results.csv"
    text = report.write_summary(df, {"run_id": "r", "commit": "abc"}, tmp_path).read_text()
    assert "| s | bad | n=1 |" in text
    assert "**fail** s/bad" in text and "at (0, 3): got 0.5, expected 0.25" in text
    assert "**skipped** s/gpu_only n=1 float32 cpu: no cpu implementation" in text
    assert report.counts(df) == {"pass": 1, "fail": 1, "skipped": 1}
