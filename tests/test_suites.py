"""Every registered suite, as `python -m harness correctness --preset ci` would run it: every
implementation must pass (or be a declared known deviation) on every ci case, on the CPU and,
where present, on CUDA."""
import pandas as pd
import pytest
import torch
from rich.console import Console

from harness import registry
from harness.runner import RunOptions, Runner, case_seed

SUITES = registry.all_suites()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(SUITES))
def test_ci_cases_pass(name, device, tmp_path):
    suite = SUITES[name]
    cases = [c for c in suite.cases(devices=[device]) if suite.ci(c)]
    assert cases, f"suite {name} has no ci case on {device}"
    options = RunOptions(command="correctness", out_dir=tmp_path, run_id="test", devices=[device])
    df = pd.DataFrame(Runner([suite], {name: cases}, options, Console(quiet=True)).run())
    bad = df[df["status"].isin(["fail", "error"])]
    assert bad.empty, "\n" + bad[["impl", "case_id", "dtype", "status", "reason", "worst"]].to_string()
    ours = df[df["role"] == "candidate"]
    assert ours["status"].isin(["pass", "ambiguous"]).all(), ours[ours["status"] != "pass"][["impl", "case_id", "status", "reason"]]


@pytest.mark.parametrize("name", sorted(SUITES))
def test_inputs_are_deterministic_and_on_the_device(name):
    suite = SUITES[name]
    case = next(c for c in suite.cases(devices=["cpu"]) if suite.ci(c))
    first = suite.make_inputs(case, torch.Generator().manual_seed(case_seed(0, case)))
    again = suite.make_inputs(case, torch.Generator().manual_seed(case_seed(0, case)))
    for a, b in zip(first, again):
        if isinstance(a, torch.Tensor):
            assert a.device.type == "cpu" and torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(SUITES))
def test_bytes_moved_is_positive_for_nonempty_cases(name):
    suite = SUITES[name]
    for case in suite.cases(devices=["cpu"]):
        assert suite.bytes_moved(case) >= 0
