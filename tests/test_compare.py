import math

import pytest
import torch

from harness.compare import Tolerance, format_worst, tensors_close, tolerance_for

TOL = Tolerance(atol=1e-6, rtol=1e-5)


def test_equal_tensors_pass():
    x = torch.rand(10, 10, dtype=torch.float64)
    result = tensors_close(x.float(), x, TOL)
    assert result.passed and result.mismatches == 0 and result.max_abs_err < 1e-6


def test_nan_in_output_never_passes_even_with_huge_tolerance():
    x = torch.rand(4, 4, dtype=torch.float64)
    got = x.clone()
    got[1, 2] = math.nan
    result = tensors_close(got, x, Tolerance(atol=1e9, rtol=1e9))
    assert not result.passed
    assert result.mismatches == 1 and "1 NaN" in result.reason
    assert result.worst[0][0] == (1, 2)
    assert math.isnan(result.worst[0][1])


def test_nan_in_reference_is_a_failure():
    x = torch.zeros(3, dtype=torch.float64)
    ref = x.clone()
    ref[0] = math.nan
    result = tensors_close(x, ref, TOL)
    assert not result.passed and "reference" in result.reason


def test_poisoned_unwritten_element_is_caught():
    from harness.runner import poisoned_outputs

    expected = torch.rand(64, dtype=torch.float64)

    def forgetful_kernel():
        out = torch.empty(64, dtype=torch.float32)
        out[:63] = expected[:63].float()  # the last element is never written
        return out

    with poisoned_outputs():
        got = forgetful_kernel()
    result = tensors_close(got, expected, TOL)
    assert not result.passed and result.worst[0][0] == (63,)


def test_poison_restores_global_state():
    from harness.runner import poisoned_outputs

    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    with poisoned_outputs():
        assert torch.isnan(torch.empty(8)).all()
        assert (torch.empty(4, dtype=torch.int64) == torch.iinfo(torch.int64).max).all()
    assert (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory) == before


def test_tolerance_boundary():
    ref = torch.tensor([1.0], dtype=torch.float64)
    tol = Tolerance(atol=0.0, rtol=1e-3)
    assert tensors_close(ref + 0.9e-3, ref, tol).passed
    failed = tensors_close(ref + 1.1e-3, ref, tol)
    assert not failed.passed and failed.max_rel_err == pytest.approx(1.1e-3)


def test_worst_elements_are_ordered_and_formatted():
    ref = torch.zeros(2, 3, dtype=torch.float64)
    got = ref.clone()
    got[0, 1], got[1, 2] = 0.5, 2.0
    result = tensors_close(got, ref, TOL)
    assert [w[0] for w in result.worst[:2]] == [(1, 2), (0, 1)]
    assert "at (1, 2): got 2.0, expected 0.0" in format_worst(result)


def test_shape_and_dtype_checked_first():
    ref = torch.zeros(2, 3, dtype=torch.float64)
    assert "shape" in tensors_close(torch.zeros(3, 2), ref, TOL).reason
    assert "dtype" in tensors_close(torch.zeros(2, 3, dtype=torch.float16), ref, TOL, dtype=torch.float32).reason
    assert "tensor" in tensors_close([0.0], ref, TOL).reason


def test_matching_infinities_pass_and_mismatched_fail():
    ref = torch.tensor([math.inf, -math.inf, 1.0], dtype=torch.float64)
    assert tensors_close(ref.clone(), ref, TOL).passed
    assert not tensors_close(torch.tensor([math.inf, math.inf, 1.0], dtype=torch.float64), ref, TOL).passed


def test_empty_tensors_pass():
    assert tensors_close(torch.zeros(0, 5), torch.zeros(0, 5, dtype=torch.float64), TOL).passed


def test_tolerance_for_unknown_dtype():
    with pytest.raises(KeyError):
        tolerance_for(torch.float16, {torch.float32: TOL})


def test_overflow_to_the_dtype_infinity_passes_and_other_infinities_fail():
    """A float16 result whose exact value is beyond float16's range is correctly inf."""
    expected = torch.tensor([1e5, -1e6, 1.0], dtype=torch.float64)
    got = torch.tensor([float("inf"), float("-inf"), 1.0], dtype=torch.float16)
    assert tensors_close(got, expected, Tolerance(atol=0, rtol=1e-3), dtype=torch.float16).passed
    wrong_sign = torch.tensor([float("-inf"), float("-inf"), 1.0], dtype=torch.float16)
    assert not tensors_close(wrong_sign, expected, Tolerance(atol=0, rtol=1e-3), dtype=torch.float16).passed
    in_range = torch.tensor([1e4], dtype=torch.float64)  # representable: inf is wrong
    assert not tensors_close(torch.tensor([float("inf")], dtype=torch.float16), in_range, Tolerance(0, 1e-3),
                             dtype=torch.float16).passed
