import math
import time

import pytest
import torch

from harness.timing import QUICK_RULE, ModeUnavailable, Stats, StoppingRule, cpu_clock, measure, relative_noise

RULE = StoppingRule(min_samples=5, max_samples=100, min_time_s=0.001, max_noise=0.05, timeout_s=2.0)


def test_stops_only_after_min_samples_and_min_time():
    steady = [1.0] * 4
    assert RULE.verdict(steady, wall_s=0.0) is None  # 4 < min_samples
    assert RULE.verdict(steady + [1.0], wall_s=0.0) == "converged"
    slow_rule = StoppingRule(min_samples=5, min_time_s=1.0, max_noise=0.05)
    assert slow_rule.verdict([1.0] * 5, wall_s=0.0) is None  # 5 ms measured < 1 s


def test_noisy_samples_keep_sampling_until_timeout_or_cap():
    noisy = [1.0, 3.0] * 10
    assert relative_noise(noisy) > RULE.max_noise
    assert RULE.verdict(noisy, wall_s=0.1) is None
    assert RULE.verdict(noisy, wall_s=2.5) == "timeout"
    assert RULE.verdict(noisy * 5, wall_s=0.1) == "max_samples"


def test_relative_noise_is_robust_to_one_outlier():
    samples = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 50.0]
    assert relative_noise(samples) < 0.03
    assert relative_noise([2.0]) == math.inf


def test_stats_quantiles():
    stats = Stats.of([float(i) for i in range(1, 101)], "converged")
    assert stats.median_ms == pytest.approx(50.5)
    assert stats.min_ms == 1.0
    assert stats.p95_ms == pytest.approx(95.05)
    assert stats.iqr_ms == pytest.approx(49.5)
    assert stats.samples == 100 and stats.stop_reason == "converged"


def test_invalid_rule_rejected():
    with pytest.raises(ValueError):
        StoppingRule(min_samples=0)
    with pytest.raises(ValueError):
        StoppingRule(max_noise=0)


@pytest.mark.parametrize("mode", ["cold", "hot"])
def test_cpu_measure_times_the_call(mode):
    def busy():
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass

    stats = measure(busy, "cpu", mode, RULE)
    assert 1.9 <= stats.median_ms < 4.0
    assert stats.samples >= RULE.min_samples
    assert stats.stop_reason in ("converged", "timeout", "max_samples")


def test_cpu_measure_opens_the_range_around_each_call():
    entered = []

    class Range:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            pass

    stats = measure(lambda: None, "cpu", "hot", QUICK_RULE, Range())
    assert len(entered) == stats.samples  # every timed call, not the warm-up


def test_graph_mode_needs_cuda():
    with pytest.raises(ModeUnavailable):
        measure(lambda: None, "cpu", "graph", QUICK_RULE)


def test_unknown_mode():
    with pytest.raises(ValueError):
        measure(lambda: None, "cpu", "warm", QUICK_RULE)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["cold", "hot", "graph"])
def test_cuda_measure_modes(mode):
    x = torch.randn(1 << 22, device="cuda")
    stats = measure(lambda: x * 2, "cuda", mode, QUICK_RULE)
    assert 0 < stats.median_ms < 10


@pytest.mark.cuda
def test_cuda_graph_mode_reports_uncapturable_ops():
    x = torch.randn(100, device="cuda")
    with pytest.raises(ModeUnavailable, match="not capturable"):
        measure(lambda: float(x.sum()), "cuda", "graph", QUICK_RULE)  # .item() syncs


@pytest.mark.cuda
def test_cuda_samples_leave_out_host_time_that_the_hold_covers():
    # 0.3 ms of host work before a ~us kernel: a batch takes ~3 ms to queue, longer than the first
    # 1 ms hold, so without a longer hold the later samples would include the GPU waiting on the
    # host (~0.3 ms each); a host-bound call (3 ms each, 30 ms a batch) is timed as it runs.
    x = torch.ones(1 << 10, device="cuda")  # no RNG: a graph test before may have captured its offset

    def host_then_kernel(host_s):
        def call():
            end = time.perf_counter() + host_s
            while time.perf_counter() < end:
                pass
            x.add_(1)
        return call

    def kernel_then_sync():
        x.add_(1)
        torch.cuda.synchronize()

    rule = StoppingRule(min_samples=20, max_samples=40, min_time_s=0.0, max_noise=1.0, timeout_s=5.0)
    assert measure(host_then_kernel(3e-4), "cuda", "hot", rule).median_ms < 0.1
    assert measure(host_then_kernel(3e-3), "cuda", "hot", rule).median_ms > 1.0
    assert measure(kernel_then_sync, "cuda", "hot", rule).median_ms < 0.1  # no hold growth, no gap


def test_one_thread_cpu_samples_count_only_the_threads_own_cpu_time():
    # A call that spends 5 ms off the CPU (as a preempted one does on a loaded host) and a little
    # on it: with one torch thread the sample is the CPU time, with several it is wall time.
    def off_cpu():
        time.sleep(0.005)
        torch.ones(1000).sum()

    previous = torch.get_num_threads()
    rule = StoppingRule(min_samples=5, max_samples=5, min_time_s=0.0, max_noise=1.0, timeout_s=5.0)
    try:
        torch.set_num_threads(1)
        assert cpu_clock()[0] == "thread_cpu"
        assert measure(off_cpu, "cpu", "hot", rule).median_ms < 2.0
        torch.set_num_threads(2)
        assert cpu_clock()[0] == "wall"
        assert measure(off_cpu, "cpu", "hot", rule).median_ms >= 5.0
    finally:
        torch.set_num_threads(previous)
