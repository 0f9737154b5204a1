"""Exhaustive float16/bfloat16 checks shared by the op tests: every bit pattern of a dtype, and a
per-element comparison within one unit in the last place of float64's result."""
import torch


def every_value(dtype: torch.dtype) -> torch.Tensor:
    """All 65,536 bit patterns of a 16-bit float dtype (NaNs and infinities included), in bit order."""
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)


def assert_within_one_ulp(what: str, got: torch.Tensor, want: torch.Tensor, *inputs: torch.Tensor) -> None:
    """got (a half dtype) within one ulp of want (float64) rounded to got's dtype, element by
    element, with no tolerance relative to the largest value; equal infinities pass, NaN fails. A
    failure prints the first five offending elements of each of `inputs`, got and want."""
    dtype = got.dtype
    ulp = torch.finfo(dtype).eps
    got, want = got.double().cpu(), want.to(dtype).double().cpu()
    err = torch.where(got == want, 0.0, (got - want).abs())
    bad = ~(err <= ulp * want.abs() + torch.finfo(dtype).tiny * ulp)
    assert not bad.any(), (what, int(bad.sum()), *(x.cpu()[bad][:5] for x in inputs), got[bad][:5], want[bad][:5])
