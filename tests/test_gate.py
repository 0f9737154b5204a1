"""The regression gate: verdict logic on planted numbers, the confirm step, baseline files, and
end to end through the CLI on toy suites with real work: an A/A pair passes, a deliberately
slowed implementation fails (and so do a missing implementation and a wrong one).

The end-to-end tests must hold on a noisy 2-core CI machine: the toy implementations do the same
kind of work (memory-bound elementwise passes) in amounts 3:1, so load from neighbours moves both
together and the speedup stays put, and the planted slowdown (the candidate doing 6x the work) is
far beyond any threshold the noise can produce.
"""
import json
import math

import pandas as pd
import pytest
import torch

from harness import Impl, Suite, Tolerance, cli, gate, registry, runner, tensors_close

# ---------------------------------------------------------------------------------------------
# Planted numbers


def _row(impl, median, speedup=None, role="candidate", noise=0.01, status="pass", case="n=1", mode="cold", **kw):
    return {"suite": "s", "impl": impl, "role": role, "case_id": case, "dtype": "float32", "mode": mode,
            "status": status, "median_ms": median, "noise_rel": noise, "samples": 50,
            "speedup_vs_baseline": speedup, "device": "cpu", "reason": kw.get("reason"),
            "stop_reason": kw.get("stop_reason", "converged")}


def _frame(*rows):
    return pd.DataFrame(list(rows))


def _pair(base_ms, cand_ms, **kw):
    return [_row("tv", base_ms, 1.0, role="baseline"), _row("ours", cand_ms, base_ms / cand_ms, **kw)]


ENV_A = {"cpu": "Xeon", "cpu_threads": 2}
ENV_B = {"cpu": "EPYC", "cpu_threads": 2}


def _verdicts(run_rows, base_rows, run_env=ENV_A, base_env=ENV_A, **thresholds):
    verdicts = gate.compare(_frame(*run_rows), run_env, _frame(*base_rows), base_env, "cpu",
                            gate.Thresholds(**thresholds))
    return {(v.impl, v.case_id): v for v in verdicts}


def test_same_speedup_passes_and_slower_speedup_is_a_suspect():
    v = _verdicts(_pair(10.0, 1.0), _pair(10.0, 1.0))[("ours", "n=1")]
    assert v.verdict == "ok" and v.metric == "speedup" and v.change == pytest.approx(0.0)
    v = _verdicts(_pair(10.0, 1.5), _pair(10.0, 1.0))[("ours", "n=1")]
    assert v.verdict == "regression" and v.change == pytest.approx(0.5)
    assert v.excess_ms == pytest.approx(0.5)  # the candidate's extra time in the run's units


def test_machine_drift_cancels_in_the_speedup():
    # Everything 40 % slower on another machine: same speedup, nothing flagged; torchvision's own
    # median is not compared there (no 'drift' row for it).
    verdicts = _verdicts(_pair(14.0, 1.4), _pair(10.0, 1.0), run_env=ENV_B)
    assert all(v.verdict == "ok" for v in verdicts.values())
    assert verdicts[("tv", "n=1")].metric == ""
    # Same machine: the ratio is shown, and the baseline implementation's move is only 'drift'.
    verdicts = _verdicts(_pair(14.0, 1.4), _pair(10.0, 1.0))
    assert verdicts[("ours", "n=1")].verdict == "ok" and verdicts[("ours", "n=1")].median_ratio == pytest.approx(1.4)
    assert verdicts[("tv", "n=1")].verdict == "drift"


def test_threshold_is_the_larger_of_the_floor_and_k_noise():
    # 15 % slower: beyond the 10 % floor with quiet samples, within 3 x noise with noisy ones.
    quiet = _verdicts(_pair(10.0, 1.15), _pair(10.0, 1.0))[("ours", "n=1")]
    assert quiet.verdict == "regression" and quiet.threshold == pytest.approx(0.10)
    noisy_run = [_row("tv", 10.0, 1.0, role="baseline", noise=0.05), _row("ours", 1.15, 10 / 1.15, noise=0.05)]
    noisy = _verdicts(noisy_run, _pair(10.0, 1.0))[("ours", "n=1")]
    assert noisy.verdict == "ok"
    assert noisy.threshold == pytest.approx(3 * math.sqrt(0.05**2 + 0.05**2 + 0.01**2 + 0.01**2))


def test_absolute_floor_ignores_microsecond_changes():
    # 2x slower, but by 5 us of a 5 us call: under the CPU floor of 20 us.
    assert _verdicts(_pair(0.1, 0.010), _pair(0.1, 0.005))[("ours", "n=1")].verdict == "ok"
    assert _verdicts(_pair(0.1, 0.010), _pair(0.1, 0.005), abs_floor_ms=0.001)[("ours", "n=1")].verdict == "regression"


def test_improvement_is_reported_symmetrically():
    v = _verdicts(_pair(10.0, 0.5), _pair(10.0, 1.0))[("ours", "n=1")]
    assert v.verdict == "improvement" and v.change == pytest.approx(-0.5)
    assert not gate.failing([v]) and gate.failing([v], fail_on_improvement=True)


def test_missing_failing_skipped_untimed_and_new():
    base = _pair(10.0, 1.0) + [_row("gone", 1.0, 10.0), _row("ours", 1.0, 10.0, case="n=2"),
                               _row("tv", 10.0, 1.0, role="baseline", case="n=2"), _row("ours", 2.0, 5.0, case="n=3"),
                               _row("tv", 10.0, 1.0, role="baseline", case="n=3")]
    run = (_pair(10.0, 1.0)
           + [_row("ours", None, None, case="n=2", status="skipped", reason="no cpu kernel"),
              _row("tv", 10.0, 1.0, role="baseline", case="n=2"),
              _row("ours", 2.0, 5.0, case="n=3", status="fail", reason="3 elements differ"),
              _row("tv", 10.0, 1.0, role="baseline", case="n=3"),
              _row("brand_new", 1.0, 10.0)])
    verdicts = _verdicts(run, base)
    assert verdicts[("gone", "n=1")].verdict == "missing"
    assert verdicts[("ours", "n=2")].verdict == "missing" and "no cpu kernel" in verdicts[("ours", "n=2")].note
    assert verdicts[("ours", "n=3")].verdict == "correctness" and "3 elements" in verdicts[("ours", "n=3")].note
    assert verdicts[("brand_new", "n=1")].verdict == "new"
    untimed = _verdicts([_pair(10.0, 1.0)[0], _row("ours", None, None, stop_reason="not timed: boom")],
                        _pair(10.0, 1.0))[("ours", "n=1")]
    assert untimed.verdict == "missing" and "boom" in untimed.note
    assert {v.verdict for v in gate.failing(verdicts.values())} == {"missing", "correctness"}


def test_without_a_speedup_absolute_medians_gate_only_on_the_same_machine():
    alone = [_row("ours", 2.0, None)]
    assert _verdicts(alone, [_row("ours", 1.0, None)])[("ours", "n=1")].verdict == "regression"
    other = _verdicts(alone, [_row("ours", 1.0, None)], run_env=ENV_B)[("ours", "n=1")]
    assert other.verdict == "not compared"
    # The same name is not the same machine: family/model/cache, threads, clock and torch count.
    base_env = {**ENV_A, "cpu_model": "family 25 model 17 stepping 1, L3 32768K", "cpu_clock": "thread_cpu",
                "torch": "2.15.0"}
    for key, value in (("cpu_model", "family 25 model 1 stepping 1, L3 32768K"), ("cpu_threads", 1),
                       ("cpu_clock", "wall"), ("torch", "2.11.0")):
        run_env = {**base_env, key: value}
        assert not gate.same_machine(run_env, base_env, "cpu")
        assert _verdicts(alone, [_row("ours", 1.0, None)], run_env=run_env, base_env=base_env)[
            ("ours", "n=1")].verdict == "not compared"
    assert gate.same_machine(dict(base_env), base_env, "cpu")


class _Scripted:
    """A Remeasure.measure that returns planted medians, recording the order of the calls."""

    def __init__(self, times):
        self.times, self.calls = times, []

    def __call__(self, suite, impl, case_id, dtype, mode):
        self.calls.append(impl)
        return self.times[impl]


def test_confirm_keeps_real_regressions_and_clears_noise():
    verdicts = list(_verdicts(_pair(10.0, 1.5), _pair(10.0, 1.0)).values())
    still_slow = _Scripted({"tv": 10.0, "ours": 1.5})
    gate.confirm(verdicts, {"s": "tv"}, gate.Remeasure(still_slow, rounds=4), gate.Thresholds(), "cpu")
    ours = next(v for v in verdicts if v.impl == "ours")
    assert ours.verdict == "regression" and "re-measured x4" in ours.confirmed
    assert still_slow.calls == ["tv", "ours", "ours", "tv"] * 2  # interleaved, order alternating

    verdicts = list(_verdicts(_pair(10.0, 1.5), _pair(10.0, 1.0)).values())
    back_to_normal = _Scripted({"tv": 10.0, "ours": 1.02})
    gate.confirm(verdicts, {"s": "tv"}, gate.Remeasure(back_to_normal, rounds=3), gate.Thresholds(), "cpu")
    ours = next(v for v in verdicts if v.impl == "ours")
    assert ours.verdict == "noise" and not gate.failing(verdicts)


def test_confirm_spends_its_slots_on_regressions_not_improvements():
    # A host faster than the baseline's: more improvements than re-measure slots, and one
    # regression of a smaller change. The regression is re-measured (and clears); the improvements,
    # which cannot fail this gate, are not.
    n = gate.MAX_CONFIRMED + 5
    run = [r for i in range(n) for r in _pair(10.0, 0.5, case=f"fast={i}")] + _pair(10.0, 1.3, case="slow")
    base = [r for i in range(n) for r in _pair(10.0, 1.0, case=f"fast={i}")] + _pair(10.0, 1.0, case="slow")
    verdicts = list(_verdicts(run, base).values())
    measured = _Scripted({"tv": 10.0, "ours": 1.0})
    gate.confirm(verdicts, {"s": "tv"}, gate.Remeasure(measured, rounds=3), gate.Thresholds(), "cpu")
    slow = next(v for v in verdicts if v.impl == "ours" and v.case_id == "slow")
    assert slow.verdict == "noise" and "re-measured x3" in slow.confirmed
    assert len(measured.calls) == 2 * 3  # only the regression
    fast = [v for v in verdicts if v.impl == "ours" and v.case_id != "slow"]
    assert all(v.verdict == "improvement" and "do not fail" in v.confirmed for v in fast)
    assert not gate.failing(verdicts)
    # With --fail-on-improvement they are suspects too, after the regression.
    verdicts = list(_verdicts(run, base).values())
    measured = _Scripted({"tv": 10.0, "ours": 1.0})
    gate.confirm(verdicts, {"s": "tv"}, gate.Remeasure(measured, rounds=3), gate.Thresholds(), "cpu",
                 fail_on_improvement=True)
    assert len(measured.calls) == 2 * 3 * gate.MAX_CONFIRMED
    assert next(v for v in verdicts if v.case_id == "slow" and v.impl == "ours").verdict == "noise"


def test_confirm_that_cannot_measure_leaves_the_suspect_failing():
    verdicts = list(_verdicts(_pair(10.0, 1.5), _pair(10.0, 1.0)).values())
    gate.confirm(verdicts, {"s": "tv"}, gate.Remeasure(lambda *key: None, rounds=3), gate.Thresholds(), "cpu")
    ours = next(v for v in verdicts if v.impl == "ours")
    assert ours.verdict == "regression" and ours.confirmed == "could not re-measure here"


def test_fresh_processes_judge_what_survives_the_in_process_re_measure():
    """A slowdown held by some processes (their memory placement) clears when one fresh process is
    fast; a real one, slow in every process, stays; fresh processes that cannot measure leave the
    in-process verdict."""
    def fresh(per_process):
        calls = []
        def run(jobs):
            times = per_process[len(calls) % len(per_process)]
            calls.append(jobs)
            return [{name: times[name] for name in impls} for _, impls, *_ in jobs]
        return run, calls

    slow, fast = {"tv": 10.0, "ours": 1.5}, {"tv": 10.0, "ours": 1.0}
    for per_process, verdict in (([slow, fast, slow], "noise"), ([slow, slow, slow], "regression")):
        verdicts = list(_verdicts(_pair(10.0, 1.5), _pair(10.0, 1.0)).values())
        run, calls = fresh(per_process)
        remeasure = gate.Remeasure(_Scripted({"tv": 10.0, "ours": 1.5}), rounds=3, fresh=run, fresh_rounds=3)
        gate.confirm(verdicts, {"s": "tv"}, remeasure, gate.Thresholds(), "cpu")
        ours = next(v for v in verdicts if v.impl == "ours")
        assert ours.verdict == verdict and "re-measured x3" in ours.confirmed and "in fresh processes x3" in ours.confirmed
        assert [jobs[0][1] for jobs in calls] == [["tv", "ours"], ["ours", "tv"], ["tv", "ours"]]  # one job per process
    verdicts = list(_verdicts(_pair(10.0, 1.5), _pair(10.0, 1.0)).values())
    remeasure = gate.Remeasure(_Scripted({"tv": 10.0, "ours": 1.5}), rounds=3, fresh=lambda jobs: [{} for _ in jobs])
    gate.confirm(verdicts, {"s": "tv"}, remeasure, gate.Thresholds(), "cpu")
    ours = next(v for v in verdicts if v.impl == "ours")
    assert ours.verdict == "regression" and ours.confirmed.endswith("fresh processes could not re-measure it")


def test_fresh_process_remeasure_times_a_real_suite_case():
    run = gate.fresh_process_remeasure("cpu", 0, {"min_samples": 3, "max_samples": 5, "min_time_s": 0.0,
                                                  "max_noise": 1.0, "timeout_s": 1.0}, threads=1)
    case_id = "shape=7x33,content=clustered"
    (times, unknown) = run([("box_iou", ["torchvision", "detbench"], case_id, "float32", "hot"),
                            ("box_iou", ["detbench"], "shape=nope", "float32", "hot")])
    assert set(times) == {"torchvision", "detbench"} and all(t > 0 for t in times.values())
    assert unknown == {"detbench": None}


def test_device_keys():
    assert gate.device_key({"gpu": "NVIDIA H200"}, "cuda") == "h200"
    assert gate.device_key({"gpu": "NVIDIA H100 80GB HBM3"}, "cuda") == "h100"
    assert gate.device_key({"gpu": "NVIDIA A100-SXM4-80GB"}, "cuda") == "a100"
    assert gate.device_key({"gpu": "NVIDIA GeForce RTX 4090"}, "cuda") == "rtx4090"
    assert gate.device_key({"gpu": "NVIDIA H200"}, "cpu") == "cpu"


def test_baseline_round_trip_is_small_and_sorted(tmp_path):
    df = _frame(*reversed(_pair(10.123456, 1.0)), _row("ref", None, None, role="reference", status="reference", mode=""))
    csv_path, json_path = gate.write_baseline(df, {"cpu": "Xeon", "options": {"preset": "ci"}}, tmp_path / "cpu", "cmd")
    text = csv_path.read_text()
    assert text.splitlines()[0] == ",".join(gate.BASELINE_COLUMNS)
    assert "10.12," in text and "10.123456" not in text
    back, meta = gate.read_baseline(tmp_path / "cpu")
    assert list(back["impl"]) == ["ours", "ref", "tv"]
    assert back.loc[back.impl == "ref", "mode"].iloc[0] == "" and math.isnan(back.loc[back.impl == "ref", "median_ms"].iloc[0])
    assert meta["environment"]["options"]["preset"] == "ci" and meta["regenerate"] == "cmd"


# ---------------------------------------------------------------------------------------------
# End to end through the CLI

# Elements per input. CPU: small enough to stay on one thread (torch splits elementwise work
# over threads above 32k elements, and a 2-core machine shared with other jobs then preempts one
# thread per call) and to fit a scheduler time slice: calls of 20-100 us, so the median is an
# unpreempted call. CUDA: 16 MiB, ~10 us per pass on an H200.
N = {"cpu": 1 << 14, "cuda": 1 << 22}


SCALE, STEPS = 1.0001, 6


def _recurrence(x):
    """The baseline: y <- y * SCALE + 0.5, STEPS times (2 x STEPS elementwise passes)."""
    for _ in range(STEPS):
        x = x * SCALE + 0.5
    return x


def toy(candidate_passes=2, *, candidate=True, wrong=False, device="cpu", name="toy"):
    """The candidate computes the same recurrence folded, x * SCALE^STEPS + offset, in
    `candidate_passes` x 2 elementwise passes (1: 6x fewer than the baseline; the default 2: 3x
    fewer; planted 12: 2x more) -- or, planted, a wrong answer."""
    offset = 0.5 * sum(SCALE**i for i in range(STEPS))

    def folded(x):
        for _ in range(candidate_passes - 1):
            x = x * 1.0 + 0.0
        return x * SCALE**STEPS + offset + (1.0 if wrong else 0.0)

    impls = [Impl("float64", lambda x: _recurrence(x.double()), timed=False), Impl("baseline", _recurrence)]
    if candidate:
        impls.append(Impl("ours", folded))
    return Suite(
        name=name, impls=impls, reference="float64", baseline="baseline",
        axes={"n": (N[device],)}, dtypes=(torch.float32,), devices=(device,),
        make_inputs=lambda case, g: (torch.rand(case["n"], generator=g).to(case.device),),
        compare=lambda got, exp, case, inputs: tensors_close(got, exp, Tolerance(1e-5, 1e-5), dtype=case.dtype),
        bytes_moved=lambda case: 8 * case["n"],
    )


@pytest.fixture
def suites(monkeypatch):
    """Swap the registry's suites: suites(toy(...)) installs them for the next CLI call. The
    copy-bandwidth probe (% of peak, not gated) is stubbed: it costs seconds per run here."""
    monkeypatch.setattr(runner, "measure_peak_bandwidth", lambda device: 10.0)

    def install(*chosen):
        monkeypatch.setattr(registry, "all_suites", lambda: {s.name: s for s in chosen})

    return install


# hot: a cold sample's cache flush (2x the last-level cache) costs more than the call itself here.
RULE = ["--modes", "hot", "--min-samples", "20", "--max-samples", "500", "--min-time", "0.02", "--max-noise", "0.03",
        "--timeout", "1"]


def _baseline(tmp_path, device="cpu"):
    base = tmp_path / "baselines" / device
    assert cli.main(["gate", "--device", device, "--update-baseline", "--baseline", str(base),
                     "--out", str(tmp_path / "base"), *RULE]) == 0
    return base


def _gate(tmp_path, base, name, *extra, device="cpu"):
    out = tmp_path / name
    code = cli.main(["gate", "--device", device, "--baseline", str(base), "--out", str(out), *extra])
    return code, out


def _table(out):
    return pd.read_csv(out / gate.GATE_TABLE, dtype={"confirmed": str, "note": str}).fillna({"confirmed": "", "note": ""})


def _check_a_b(tmp_path, suites, device):
    suites(toy(device=device))
    base = _baseline(tmp_path, device)
    meta = json.loads(base.with_suffix(".json").read_text())
    assert meta["environment"]["options"]["rule"]["timeout_s"] == 1.0 and "--update-baseline" in meta["regenerate"]

    code, out = _gate(tmp_path, base, "aa", device=device)  # A/A: the same code, run again
    assert code == 0, (out / gate.GATE_FILE).read_text()
    assert "PASSED" in (out / gate.GATE_FILE).read_text() and (out / "report.html").exists()

    suites(toy(candidate_passes=12, device=device))  # planted: 6x the candidate's work
    code, out = _gate(tmp_path, base, "slowed", device=device)
    text = (out / gate.GATE_FILE).read_text()
    assert code == 1, text
    row = _table(out).set_index("impl").loc["ours"]
    assert row["verdict"] == "regression" and row["change"] > 1.0 and "re-measured" in row["confirmed"]
    assert "FAILED" in text and "regression" in text

    suites(toy(candidate_passes=12, device=device))  # the same run judged again with --run, no re-measure
    assert cli.main(["gate", "--run", str(out), "--baseline", str(base), "--no-confirm"]) == 1


def test_gate_a_a_passes_and_a_slowed_implementation_fails(tmp_path, suites):
    _check_a_b(tmp_path, suites, "cpu")


@pytest.mark.cuda
def test_gate_a_a_passes_and_a_slowed_implementation_fails_cuda(tmp_path, suites):
    _check_a_b(tmp_path, suites, "cuda")


def test_gate_fails_on_a_missing_implementation_and_a_wrong_one(tmp_path, suites):
    suites(toy())
    base = _baseline(tmp_path)
    suites(toy(candidate=False))
    code, out = _gate(tmp_path, base, "missing")
    assert code == 1 and _table(out).set_index("impl").loc["ours", "verdict"] == "missing"
    suites(toy(wrong=True))
    code, out = _gate(tmp_path, base, "wrong")
    assert code == 1 and _table(out).set_index("impl").loc["ours", "verdict"] == "correctness"


def test_improvements_are_reported_and_fail_only_when_asked(tmp_path, suites):
    suites(toy(candidate_passes=12))
    base = _baseline(tmp_path)
    suites(toy(candidate_passes=1))
    code, out = _gate(tmp_path, base, "faster")
    assert code == 0 and _table(out).set_index("impl").loc["ours", "verdict"] == "improvement"
    assert cli.main(["gate", "--run", str(out), "--baseline", str(base), "--fail-on-improvement"]) == 1


def test_gate_without_a_baseline_is_a_usage_error(tmp_path, suites):
    suites(toy())
    assert _gate(tmp_path, tmp_path / "nowhere" / "cpu", "x")[0] == 2


def test_a_baseline_is_not_written_from_a_failing_run(tmp_path, suites):
    suites(toy(wrong=True))
    assert cli.main(["gate", "--device", "cpu", "--update-baseline", "--baseline", str(tmp_path / "b"),
                     "--out", str(tmp_path / "run"), *RULE]) == 1
    assert not (tmp_path / "b.csv").exists()


def test_committed_cpu_baseline_covers_every_suite_of_the_ci_preset():
    """reports/baselines/cpu.* is what CI gates against: it must hold every suite of the ci set
    and have been made with the ci preset (regenerate it with its recorded command when a suite is
    added)."""
    rows, meta = gate.read_baseline("cpu")
    options = meta["environment"]["options"]
    assert options["preset"] == "ci" and options["devices"] == ["cpu"]
    assert set(registry.all_suites()) <= set(rows["suite"]), meta["regenerate"]
    assert not rows["status"].isin(["fail", "error"]).any()


def test_a_speedup_change_needs_the_candidates_own_median_to_agree():
    # torchvision 3x slower today, ours unchanged: the speedup tripled, but nothing of ours moved.
    v = _verdicts(_pair(30.0, 1.0), _pair(10.0, 1.0))[("ours", "n=1")]
    assert v.verdict == "drift" and "baseline implementation moved" in v.note
    # torchvision 2x faster today, ours unchanged: the speedup halved -- not a regression of ours.
    assert _verdicts(_pair(5.0, 1.0), _pair(10.0, 1.0))[("ours", "n=1")].verdict == "drift"
    # Ours 2x slower, torchvision unchanged: both signals agree.
    assert _verdicts(_pair(10.0, 2.0), _pair(10.0, 1.0))[("ours", "n=1")].verdict == "regression"
    # On another machine too: one baseline recording of torchvision at twice its usual time must
    # not fail every other machine's gate on that key; ours 2x slower still fails.
    assert _verdicts(_pair(5.0, 1.0), _pair(10.0, 1.0), run_env=ENV_B)[("ours", "n=1")].verdict == "drift"
    assert _verdicts(_pair(10.0, 2.0), _pair(10.0, 1.0), run_env=ENV_B)[("ours", "n=1")].verdict == "regression"


def test_reference_scatter_widens_the_threshold_by_what_the_host_does_to_unchanged_code():
    # Twelve cases; on this host torchvision's medians scatter +-30 % case by case around a
    # uniform shift. A 35 % speedup drop of ours is within what the host does to unchanged code;
    # a 3x slowdown is not.
    def rows(factors, ours_slowdown):
        out = []
        for i, f in enumerate(factors):
            base = 10.0 * f
            cand = 1.0 * (ours_slowdown if i == 0 else 1.0) * f
            out += [_row("tv", base, 1.0, role="baseline", case=f"n={i}"),
                    _row("ours", cand, base / cand, case=f"n={i}")]
        return out

    quiet = [1.0] * 12
    loud = [1.6, 1.0, 1.3, 0.7, 1.0, 1.3, 0.7, 1.0, 1.3, 0.7, 1.3, 0.7]
    assert gate.baseline_drift(_frame(*rows(quiet, 1.0)), _frame(*rows(quiet, 1.0))) == (1.0, 0.0)
    assert gate.baseline_drift(_frame(*rows(loud, 1.0)), _frame(*rows(quiet, 1.0)))[1] > 0.2
    # Speedup alone decides (another machine): the scatter is the only thing between noise and a failure.
    on_loud = _verdicts(rows(loud, 1.35), rows(quiet, 1.0), run_env=ENV_B)[("ours", "n=0")]
    assert on_loud.verdict == "ok" and on_loud.threshold > 0.35
    assert _verdicts(rows(quiet, 1.35), rows(quiet, 1.0), run_env=ENV_B)[("ours", "n=0")].verdict == "regression"
    assert _verdicts(rows(loud, 3.0), rows(quiet, 1.0), run_env=ENV_B)[("ours", "n=0")].verdict == "regression"


def test_a_baseline_measured_suite_by_suite_merges_into_one(tmp_path, suites):
    # Two suites measured in two runs (as the H200 baseline is, under a 10-minute limit per job):
    # the second part replaces only its own suite's rows, and the gate then covers both.
    first, second = toy(name="first"), toy(name="second")
    suites(first, second)
    base = tmp_path / "baselines" / "cpu"
    common = ["--device", "cpu", "--baseline", str(base), *RULE]
    assert cli.main(["gate", "--update-baseline", "--suite", "first", "--out", str(tmp_path / "p1"), *common]) == 0
    assert cli.main(["gate", "--update-baseline", "--merge", "--suite", "second",
                     "--out", str(tmp_path / "p2"), *common]) == 0
    rows, meta = gate.read_baseline(base)
    assert set(rows["suite"]) == {"first", "second"} and len(rows) == 6
    assert [part["suites"] for part in meta["parts"]] == [["first"], ["second"]]
    assert meta["environment"]["options"]["suites"] == ["first", "second"]
    # Measured again, the first part replaces its own rows and stays one part.
    assert cli.main(["gate", "--update-baseline", "--merge", "--suite", "first",
                     "--out", str(tmp_path / "p3"), *common]) == 0
    rows, meta = gate.read_baseline(base)
    assert len(rows) == 6 and [part["suites"] for part in meta["parts"]] == [["second"], ["first"]]
    code, out = _gate(tmp_path, base, "aa")  # the gate re-runs the union
    assert code == 0, (out / gate.GATE_FILE).read_text()
    assert set(_table(out)["suite"]) == {"first", "second"}
    # Measured another way (a different stopping rule): refused, the baseline untouched.
    assert cli.main(["gate", "--update-baseline", "--merge", "--suite", "second", "--out", str(tmp_path / "p4"),
                     *common, "--min-samples", "25"]) == 2
    assert gate.read_baseline(base)[1]["parts"] == meta["parts"]
    assert cli.main(["gate", "--merge", "--device", "cpu", "--baseline", str(base)]) == 2
    # Measured on another CPU model: refused too (its medians would sit beside the other machine's).
    meta_path = base.with_suffix(".json")
    recorded = json.loads(meta_path.read_text())
    recorded["environment"]["cpu_model"] = "family 25 model 17 stepping 1, L3 32768K (another machine)"
    meta_path.write_text(json.dumps(recorded))
    assert cli.main(["gate", "--update-baseline", "--merge", "--suite", "second",
                     "--out", str(tmp_path / "p5"), *common]) == 2
    assert gate.read_baseline(base)[1]["parts"] == meta["parts"]


def test_a_uniformly_slower_machine_is_divided_out_of_absolute_medians():
    # Everything 2x slower (a loaded host): rows without a speedup compare after the shift the
    # reference implementations show; a further 2x of ours alone is still a regression.
    def rows(shift, ours_alone=1.0):
        out = []
        for i in range(10):
            out += [_row("tv", 10.0 * shift, 1.0, role="baseline", case=f"n={i}"),
                    _row("ours", 1.0 * shift * (ours_alone if i == 0 else 1.0), None, case=f"n={i}")]
        return out

    assert gate.baseline_drift(_frame(*rows(2.0)), _frame(*rows(1.0))) == (pytest.approx(2.0), pytest.approx(0.0))
    assert all(v.verdict == "ok" for v in _verdicts(rows(2.0), rows(1.0)).values())
    slowed = _verdicts(rows(2.0, ours_alone=2.0), rows(1.0))[("ours", "n=0")]
    assert slowed.verdict == "regression" and slowed.metric == "median_ms" and slowed.change == pytest.approx(1.0)


def test_a_baseline_written_from_a_run_records_the_command_that_measures_it_afresh():
    from harness.cli import _bench_gate_command

    env = {"options": {"devices": ["cuda"], "suites": ["box_iou", "nms"], "impls": None, "modes": ["cold"],
                       "preset": "full", "seed": 0, "filter": "n=1000", "threads": None,
                       "rule": {"min_samples": 10, "max_samples": 2000, "min_time_s": 0.01, "max_noise": 0.02,
                                "timeout_s": 1.0}}}
    assert _bench_gate_command(env, merge=False) == (
        "python -m harness gate --update-baseline --device cuda --suite box_iou,nms --modes cold --preset full "
        "--seed 0 --filter n=1000 --min-samples 10 --max-samples 2000 --min-time 0.01 --max-noise 0.02 --timeout 1")
    # merged into a baseline of other suites: re-running the command must not drop them
    assert _bench_gate_command(env, merge=True).startswith("python -m harness gate --update-baseline --merge --device")
