"""The engine end to end on a toy suite (y = 2x), with implementations that fail on purpose."""
import json

import pandas as pd
import pytest
import torch

from harness import Impl, Suite, Tolerance, cli, registry, results, tensors_close
from harness.runner import RunOptions, Runner
from harness.timing import QUICK_RULE


def good(x):
    return x * 2


def off_by_one_element(x):
    y = x * 2
    y[3] += 1.0
    return y


def returns_nan(x):
    return torch.full_like(x, float("nan"))


def raises(x):
    raise RuntimeError("kernel exploded")


def forgets_last_element(x):
    y = torch.empty_like(x)
    y[:-1] = x[:-1] * 2
    return y


def interrupts(x):
    raise KeyboardInterrupt


def toy_suite(*impls, name="toy", devices=("cpu",)):
    return Suite(
        name=name,
        impls=[Impl("float64", lambda x: x.double() * 2, timed=False), Impl("baseline", good), *impls],
        reference="float64",
        baseline="baseline",
        axes={"n": (5, 40)},
        make_inputs=lambda case, g: (torch.rand(case["n"], generator=g).to(case.dtype).to(case.device),),
        compare=lambda got, exp, case, inputs: tensors_close(got, exp, Tolerance(1e-6, 1e-6), dtype=case.dtype),
        bytes_moved=lambda case: 8 * case["n"],
        devices=devices,
        ci=lambda case: case["n"] == 5,
    )


def run(suite, tmp_path, command="correctness", **opts):
    options = RunOptions(command=command, out_dir=tmp_path, run_id="test", rule=QUICK_RULE, **opts)
    from rich.console import Console

    return pd.DataFrame(Runner([suite], {suite.name: suite.cases()}, options, Console(quiet=True)).run())


def test_statuses(tmp_path):
    suite = toy_suite(Impl("good", good), Impl("off", off_by_one_element), Impl("nan", returns_nan),
                      Impl("raises", raises), Impl("forgets", forgets_last_element),
                      Impl("gpu_only", good, devices=("cuda",)))
    df = run(suite, tmp_path)
    status = df.groupby("impl")["status"].agg(set).to_dict()
    assert status == {"float64": {"reference"}, "baseline": {"pass"}, "good": {"pass"}, "off": {"fail"},
                      "nan": {"fail"}, "raises": {"error"}, "forgets": {"fail"}, "gpu_only": {"skipped"}}
    forgot = df[(df.impl == "forgets") & (df.case_id == "n=40")].iloc[0]
    assert forgot["mismatches"] == 1 and json.loads(forgot["worst"])[0][0] == [39]
    assert "kernel exploded" in df[df.impl == "raises"]["reason"].iloc[0]
    assert (df["mode"] == "").all()


def right_only_when_deterministic(x):
    """A kernel whose deterministic variant is right and whose default (timed) variant is not."""
    return x * 2 if torch.are_deterministic_algorithms_enabled() else x * 3


def test_the_timed_code_path_is_checked_too(tmp_path):
    # The poisoned check runs with deterministic algorithms on; what is timed runs without.
    df = run(toy_suite(Impl("path", right_only_when_deterministic)), tmp_path)
    rows = df[df.impl == "path"]
    assert set(rows["status"]) == {"fail"}
    assert rows["reason"].str.contains("as timed (deterministic algorithms off", regex=False).all()
    assert not torch.are_deterministic_algorithms_enabled()


def raises_when_deterministic(x):
    if torch.are_deterministic_algorithms_enabled():
        raise RuntimeError("another code path under deterministic algorithms")
    return good(x)


def test_poison_devices_opt_out_checks_as_timed(tmp_path):
    # An implementation whose deterministic-mode path breaks is checked unpoisoned where it opts out.
    suite = toy_suite(Impl("poisoned", raises_when_deterministic),
                      Impl("opted_out", raises_when_deterministic, poison_devices=()))
    df = run(suite, tmp_path)
    assert set(df[df.impl == "poisoned"]["status"]) == {"error"}
    assert set(df[df.impl == "opted_out"]["status"]) == {"pass"}


def scratch_only_when_timed(x):
    """Default path with a 64 MiB temporary; the deterministic path has none."""
    if not torch.are_deterministic_algorithms_enabled():
        torch.empty(64 << 20, dtype=torch.uint8, device=x.device).zero_()
    return good(x)


@pytest.mark.cuda
def test_peak_memory_is_the_timed_calls(tmp_path):
    # The poisoned check runs the deterministic path; the row's peak memory is the as-timed call's.
    df = run(toy_suite(Impl("scratch", scratch_only_when_timed), devices=("cuda",)), tmp_path)
    rows = df[df.impl == "scratch"]
    assert set(rows["status"]) == {"pass"} and (rows["peak_mem_bytes"] >= 64 << 20).all()


def test_known_deviation_is_xfail_but_only_when_it_fails(tmp_path):
    suite = toy_suite(Impl("off", off_by_one_element, known_deviation=lambda case, inputs: "documented"),
                      Impl("good", good, known_deviation=lambda case, inputs: "documented"))
    df = run(suite, tmp_path)
    assert set(df[df.impl == "off"]["status"]) == {"xfail"}
    assert "documented" in df[df.impl == "off"]["reason"].iloc[0]
    assert set(df[df.impl == "good"]["status"]) == {"pass"}


def test_ambiguous_comparisons_are_their_own_status(tmp_path):
    from harness import Comparison

    suite = toy_suite(Impl("good", good))
    tie_decided = Comparison(True, "decided by a tie", ambiguous=True, details={"kept": 3, "missing": 1, "extra": 1})
    suite = Suite(**{**suite.__dict__, "compare": lambda got, exp, case, inputs: tie_decided})
    df = run(suite, tmp_path)
    row = df[df.impl == "good"].iloc[0]
    assert row["status"] == "ambiguous" and row["reason"] == "decided by a tie"
    assert json.loads(row["details"]) == {"kept": 3, "missing": 1, "extra": 1}
    assert not results.load_rows(tmp_path)["status"].isin(results.FAILING).any()


def test_bench_rows_carry_timing_and_speedup(tmp_path):
    df = run(toy_suite(Impl("good", good)), tmp_path, command="bench", modes=("cold", "hot"))
    timed = df[df.impl.isin(["baseline", "good"])]
    assert len(timed) == 2 * 2 * 2  # impls x cases x modes
    assert (timed["median_ms"] > 0).all() and (timed["samples"] >= QUICK_RULE.min_samples).all()
    assert (timed["speedup_vs_baseline"] > 0).all()
    assert (timed["bytes"] == timed["case_id"].map({"n=5": 40, "n=40": 320})).all()
    reference = df[df.impl == "float64"]
    assert reference["median_ms"].isna().all() and (reference["stop_reason"] == "not timed: correctness only").all()


def test_every_row_is_streamed_to_jsonl(tmp_path):
    df = run(toy_suite(Impl("good", good)), tmp_path)
    assert len(results.load_rows(tmp_path)) == len(df) == 3 * 2


def test_crash_keeps_finished_rows(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(toy_suite(Impl("good", good), Impl("zz_interrupts", interrupts)), tmp_path)
    rows = results.load_rows(tmp_path)
    # float64, baseline and good were written for the first case before the interrupt
    assert set(rows["impl"]) == {"float64", "baseline", "good"} and len(rows) == 3


def test_inputs_are_reproducible_and_differ_between_cases():
    from harness.runner import case_seed

    suite = toy_suite()
    small, large = suite.cases()

    def inputs(case, seed=0):
        return suite.make_inputs(case, torch.Generator().manual_seed(case_seed(seed, case)))[0]

    assert torch.equal(inputs(large), inputs(large))
    assert not torch.equal(inputs(large), inputs(large, seed=1))
    assert case_seed(0, small) != case_seed(0, large)


@pytest.fixture
def toy_registry(monkeypatch):
    suites = {"toy": toy_suite(Impl("good", good)), "broken": toy_suite(Impl("off", off_by_one_element), name="broken")}
    monkeypatch.setattr(registry, "all_suites", lambda: suites)


def test_cli_exit_codes(tmp_path, toy_registry, capsys):
    assert cli.main(["correctness", "--suite", "toy", "--device", "cpu", "--out", str(tmp_path / "ok")]) == 0
    assert cli.main(["correctness", "--suite", "broken", "--device", "cpu", "--out", str(tmp_path / "bad")]) == 1
    assert cli.main(["correctness", "--suite", "nope", "--out", str(tmp_path / "x")]) == 2
    assert cli.main(["correctness", "--suite", "toy", "--impl", "nope", "--out", str(tmp_path / "x")]) == 2
    assert cli.main(["correctness", "--suite", "toy", "--filter", "n=999", "--out", str(tmp_path / "x")]) == 2
    assert cli.main(["bench", "--suite", "toy", "--modes", "warm", "--out", str(tmp_path / "x")]) == 2
    assert (tmp_path / "bad" / "summary.md").read_text().count("**fail**") == 2


def test_cli_bench_writes_the_run_folder(tmp_path, toy_registry):
    out = tmp_path / "run"
    code = cli.main(["bench", "--suite", "toy", "--device", "cpu", "--preset", "ci", "--min-samples", "3",
                     "--max-samples", "20", "--out", str(out)])
    assert code == 0
    for name in ("environment.json", "results.jsonl", "results.csv", "summary.md"):
        assert (out / name).exists(), name
    df = pd.read_csv(out / "results.csv")
    assert set(df["case_id"]) == {"n=5"}  # the ci preset
    env = json.loads((out / "environment.json").read_text())
    assert env["peak_bandwidth_gbps"]["cpu"] > 0 and env["torch"] == torch.__version__
    assert env["cpu_model"]  # what the gate's same-machine test needs beyond the CPU's name
    assert cli.main(["report", str(out)]) == 0


def test_cli_resume_finishes_an_interrupted_run(tmp_path, toy_registry):
    full, cut = tmp_path / "full", tmp_path / "cut"
    args = ["bench", "--suite", "toy", "--device", "cpu", "--min-samples", "3", "--max-samples", "20"]
    assert cli.main([*args, "--out", str(full)]) == 0
    assert cli.main([*args, "--out", str(cut), "--seed", "0", "--timeout", "0.5"]) == 0
    records = results.read_records(cut)
    # a crash midway through the second case: its first row written, half of the next cut off
    lines = (cut / results.ROWS_FILE).read_text().splitlines()
    (cut / results.ROWS_FILE).write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    first_case = {r["case_id"] for r in records[:3]}
    assert len(first_case) == 1 and records[3]["case_id"] not in first_case

    assert cli.main(["bench", "--resume", str(cut)]) == 0
    again = results.read_records(cut)
    key = ["suite", "impl", "case_id", "dtype", "mode"]
    assert sorted(tuple(r[k] for k in key) for r in again) == sorted(tuple(r[k] for k in key) for r in
                                                                    results.read_records(full))
    assert again[:3] == records[:3]  # the finished case kept as it was, the cut one ran again
    env = json.loads((cut / "environment.json").read_text())
    assert env["options"]["rule"]["timeout_s"] == 0.5  # the run's own stopping rule
    assert env["resumed"][0]["cases_already_finished"] == 1
    assert (cut / "summary.md").exists()
    # nothing left to do: a second resume writes no row
    assert cli.main(["bench", "--resume", str(cut)]) == 0 and results.read_records(cut) == again


def test_cli_resume_errors(tmp_path, toy_registry):
    run = tmp_path / "run"
    assert cli.main(["correctness", "--suite", "toy", "--device", "cpu", "--out", str(run)]) == 0
    assert cli.main(["bench", "--resume", str(run)]) == 2  # a correctness run
    assert cli.main(["correctness", "--resume", str(run), "--out", str(tmp_path / "x")]) == 2
    assert cli.main(["correctness", "--resume", str(tmp_path / "nothing")]) == 2
    assert cli.main(["correctness", "--suite", "toy", "--device", "cpu", "--out", str(run)]) == 2  # not over it
    assert cli.main(["correctness", "--resume", str(run)]) == 0


def test_cli_help_and_list(capsys, toy_registry):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "python -m harness bench" in capsys.readouterr().out
    assert cli.main(["list"]) == 0
