"""ops.sigmoid_focal_loss on CPU and CUDA: loss and gradient against the float64 reference on odd
shapes, every dtype, reduction, alpha and gamma; large logits; soft and out-of-range targets;
torchvision where it is accurate; every argument error; torch.compile, opcheck, CUDA graphs."""
import math

import pytest
import torch
import torchvision

import ops
from half_values import assert_within_one_ulp, every_value
from harness import Tolerance, tensors_close
from harness.compare import format_worst
from reference import retinanet as ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(0,), (1,), (7,), (5, 7), (1001, 80), (3, 5, 33)]  # empty, 1, not a multiple of a 16-byte pack
TOL = {
    torch.float64: Tolerance(atol=1e-300, rtol=1e-12),
    torch.float32: Tolerance(atol=1e-30, rtol=2e-5),
    torch.float16: Tolerance(atol=6e-8, rtol=2e-3),  # 6e-8: float16's subnormal spacing
    torch.bfloat16: Tolerance(atol=1e-30, rtol=1.6e-2),
}


def make(shape, seed, dtype=torch.float32, device="cpu", scale=4.0, positive=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale - 1
    t = (torch.rand(shape, generator=g) < positive).float()
    return x.to(dtype).to(device), t.to(dtype).to(device)


def check_close(got, expected, dtype, what):
    c = tensors_close(got, expected, TOL[dtype], dtype=dtype)
    assert c.passed, f"{what}: {c.reason}\n{format_worst(c)}"


def loss_and_grad(fn, x, t, alpha, gamma, reduction, upstream=None):
    xr = x.detach().clone().requires_grad_(True)
    loss = fn(xr, t, alpha, gamma, reduction)
    grad = torch.ones_like(loss) if upstream is None else upstream
    (dx,) = torch.autograd.grad(loss, xr, grad)
    return loss.detach(), dx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_float64(device, dtype, shape, reduction):
    x, t = make(shape, seed=1, dtype=dtype, device=device)
    upstream = None
    if reduction == "none":
        upstream = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype).to(device)
    loss, dx = loss_and_grad(ops.sigmoid_focal_loss, x, t, 0.25, 2, reduction, upstream)
    want_loss, want_dx = ref.sigmoid_focal_loss_f64_with_grad(x, t, 0.25, 2, reduction, upstream)
    assert loss.device == x.device and dx.device == x.device
    if reduction == "mean" and x.numel() == 0:
        assert loss.dtype == dtype and math.isnan(loss.item())
    else:
        check_close(loss, want_loss, dtype, "loss")
    check_close(dx, want_dx, dtype, "grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("alpha", [0.25, 0.0, 1.0, -1.0, -0.5])
@pytest.mark.parametrize("gamma", [2.0, 0.0, 0.5, 1.0, 1.5, 3.0])
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_alpha_gamma(device, dtype, alpha, gamma, reduction):
    x, t = make((257, 9), seed=3, dtype=dtype, device=device)
    loss, dx = loss_and_grad(ops.sigmoid_focal_loss, x, t, alpha, gamma, reduction)
    want_loss, want_dx = ref.sigmoid_focal_loss_f64_with_grad(x, t, alpha, gamma, reduction)
    check_close(loss, want_loss, dtype, "loss")
    check_close(dx, want_dx, dtype, "grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gamma", [2.0, 0.5, 1.0])
def test_large_logits_are_finite_and_accurate(device, dtype, gamma):
    # 2e38: 2 ce overflows float there (a NaN gradient until the products were reordered)
    big = [20.0, 50.0, 100.0, 200.0, 1e4, 2e38] if dtype != torch.float16 else [8.0, 12.0, 16.0, 20.0, 6e4]
    values = torch.tensor([v * s for v in big for s in (1, -1)])
    x = values.repeat_interleave(2).to(dtype).to(device)
    t = torch.tensor([0.0, 1.0]).repeat(len(values)).to(dtype).to(device)
    loss, dx = loss_and_grad(ops.sigmoid_focal_loss, x, t, 0.25, gamma, "none")
    want_loss, want_dx = ref.sigmoid_focal_loss_f64_with_grad(x, t, 0.25, gamma, "none")
    assert torch.isfinite(loss).all() and torch.isfinite(dx).all(), (loss, dx)
    check_close(loss, want_loss, dtype, "loss")
    check_close(dx, want_dx, dtype, "grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("gamma", [2.0, 0.5])
def test_every_half_logit_per_element(device, dtype, gamma):
    # Every finite float16/bfloat16 logit against targets 0, 1 and 1/4, per element ('none'), with no
    # tolerance relative to the largest value: the loss and the gradient within one unit in the last
    # place of float64's result rounded to the dtype (the GPU's half path takes the hardware exp, log
    # and reciprocal and a series for log1p near 0; the CPU its vectorized float exp and log1p).
    x = every_value(dtype)
    x = x[torch.isfinite(x)]
    targets = torch.tensor([0.0, 1.0, 0.25], dtype=dtype)
    x, t = (v.flatten().to(device) for v in torch.meshgrid(x, targets, indexing="ij"))
    loss, dx = loss_and_grad(ops.sigmoid_focal_loss, x, t, 0.25, gamma, "none")
    want_loss, want_dx = ref.sigmoid_focal_loss_f64_with_grad(x, t, 0.25, gamma, "none")
    assert_within_one_ulp("loss", loss, want_loss, x, t)
    assert_within_one_ulp("grad", dx, want_dx, x, t)


@pytest.mark.parametrize("device", DEVICES)
def test_soft_and_out_of_range_targets(device):
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(500, generator=g) * 5).to(device)
    t = (torch.rand(500, generator=g) * 3 - 1).to(device)  # in [-1, 2]
    for gamma in (2.0, 3.0):  # integer gamma: (1 - p_t)^gamma is defined for 1 - p_t < 0
        loss, dx = loss_and_grad(ops.sigmoid_focal_loss, x, t, 0.25, gamma, "none")
        want_loss, want_dx = ref.sigmoid_focal_loss_f64_with_grad(x, t, 0.25, gamma, "none")
        # For soft targets ce = max(x, 0) - x t + log1p(e), p - t and 1 - p_t cancel in float32
        # (the terms are ~|x|, the result can be ~1e-8): the error is absolute, ~|x| ulp.
        for got, want, what in ((loss, want_loss, "loss"), (dx, want_dx, "grad")):
            c = tensors_close(got, want, Tolerance(atol=1e-6, rtol=1e-4), dtype=torch.float32)
            assert c.passed, f"{what}: {c.reason}\n{format_worst(c)}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_with_float_targets(device, dtype):
    x, t = make((33, 80), seed=5, dtype=dtype, device=device)
    t = t.float()
    for reduction in ("none", "mean"):
        loss, dx = loss_and_grad(ops.sigmoid_focal_loss, x, t, 0.25, 2, reduction)
        assert loss.dtype == torch.float32 and dx.dtype == dtype
        assert loss.dtype == torchvision.ops.sigmoid_focal_loss(x, t, reduction=reduction).dtype
        want_loss, want_dx = ref.sigmoid_focal_loss_f64_with_grad(x, t, 0.25, 2, reduction)
        check_close(loss, want_loss, torch.float32, "loss")
        check_close(dx, want_dx, dtype, "grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_matches_torchvision_where_it_is_accurate(device, reduction):
    x, t = make((300, 80), seed=6, device=device, scale=1.5)  # |x| small: no cancellation in torchvision
    got = loss_and_grad(ops.sigmoid_focal_loss, x, t, 0.25, 2, reduction)
    want = loss_and_grad(torchvision.ops.sigmoid_focal_loss, x, t, 0.25, 2, reduction)
    for a, b, what in zip(got, want, ("loss", "grad")):
        c = tensors_close(a, b, Tolerance(atol=1e-7, rtol=1e-4), dtype=torch.float32)
        assert c.passed, f"{what}: {c.reason}\n{format_worst(c)}"


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_offset_views(device):
    x, t = make((64, 81), seed=7, device=device)
    for xs, ts in ((x[:, 1:], t[:, 1:]), (x.t(), t.t()), (x.flatten()[3:], t.flatten()[3:])):
        for reduction in ("none", "sum"):
            loss, dx = loss_and_grad(ops.sigmoid_focal_loss, xs, ts, 0.25, 2, reduction)
            want_loss, want_dx = ref.sigmoid_focal_loss_f64_with_grad(xs, ts, 0.25, 2, reduction)
            check_close(loss, want_loss, torch.float32, "loss")
            check_close(dx, want_dx, torch.float32, "grad")


@pytest.mark.parametrize("device", DEVICES)
def test_reduced_loss_is_deterministic(device):
    x, t = make((4097, 80), seed=8, device=device)
    first = ops.sigmoid_focal_loss(x, t, reduction="sum")
    assert all(torch.equal(first, ops.sigmoid_focal_loss(x, t, reduction="sum")) for _ in range(3))


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    x = torch.empty(0, 80, device=device)
    assert ops.sigmoid_focal_loss(x, x, reduction="none").shape == (0, 80)
    assert ops.sigmoid_focal_loss(x, x, reduction="sum").item() == 0.0
    assert math.isnan(ops.sigmoid_focal_loss(x, x, reduction="mean").item())


def test_argument_errors():
    x, t = make((4, 5), seed=9)
    prefix = r"^detbench.sigmoid_focal_loss: "
    with pytest.raises(RuntimeError, match=prefix + r"targets must have the shape of inputs \(\[4, 5\]\), got \[4, 4\]"):
        ops.sigmoid_focal_loss(x, t[:, :4])
    with pytest.raises(RuntimeError, match=prefix + r"targets must have the dtype of inputs \(Float\).*got Half"):
        ops.sigmoid_focal_loss(x, t.half())
    with pytest.raises(RuntimeError, match=prefix + r"targets must have the dtype of inputs \(Half\).*got Double"):
        ops.sigmoid_focal_loss(x.half(), t.double())
    with pytest.raises(RuntimeError, match=prefix + r"inputs must be float16, bfloat16, float32 or float64, got Long"):
        ops.sigmoid_focal_loss(x.long(), t.long())
    with pytest.raises(RuntimeError, match=prefix + r"reduction must be 'none', 'mean' or 'sum', got 'max'"):
        ops.sigmoid_focal_loss(x, t, reduction="max")
    with pytest.raises(RuntimeError, match=prefix + r"alpha must be in \[0, 1\], or negative .*got 1.5"):
        ops.sigmoid_focal_loss(x, t, alpha=1.5)
    with pytest.raises(RuntimeError, match=prefix + r"alpha must be in \[0, 1\].*got nan"):
        ops.sigmoid_focal_loss(x, t, alpha=float("nan"))
    with pytest.raises(RuntimeError, match=prefix + r"gamma must be finite and >= 0, got -1"):
        ops.sigmoid_focal_loss(x, t, gamma=-1)
    with pytest.raises(RuntimeError, match=prefix + r"targets must not require grad"):
        ops.sigmoid_focal_loss(x, t.clone().requires_grad_(True))
    loss = torch.empty(4, 5)
    with pytest.raises(RuntimeError, match=prefix + r"grad must be a 0-dim tensor for a reduced loss, got shape \[4, 5\]"):
        torch.ops.detbench.sigmoid_focal_loss_backward(loss, x, t, 0.25, 2.0, "sum")
    with pytest.raises(RuntimeError, match=prefix + r"grad must have the shape of inputs \(\[4, 5\]\), got \[5\]"):
        torch.ops.detbench.sigmoid_focal_loss_backward(torch.empty(5), x, t, 0.25, 2.0, "none")
    with pytest.raises(RuntimeError, match=prefix + r"grad must have the loss's dtype \(Float\), got Double"):
        torch.ops.detbench.sigmoid_focal_loss_backward(loss.double(), x, t, 0.25, 2.0, "none")


@pytest.mark.cuda
def test_device_mismatch_errors():
    x, t = make((4, 5), seed=10)
    with pytest.raises(RuntimeError, match=r"^detbench.sigmoid_focal_loss: targets must be on the same device as inputs"):
        ops.sigmoid_focal_loss(x.cuda(), t)
    with pytest.raises(RuntimeError, match=r"^detbench.sigmoid_focal_loss: grad must be on the same device as inputs"):
        torch.ops.detbench.sigmoid_focal_loss_backward(torch.ones(()), x.cuda(), t.cuda(), 0.25, 2.0, "sum")


def test_opcheck():
    x, t = make((33, 7), seed=11)
    for reduction in ("none", "mean", "sum"):
        torch.library.opcheck(torch.ops.detbench.sigmoid_focal_loss.default,
                              (x.clone().requires_grad_(True), t, 0.25, 2.0, reduction))
    torch.library.opcheck(torch.ops.detbench.sigmoid_focal_loss_backward.default, (torch.ones(()), x, t, 0.25, 2.0, "mean"))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_forward_and_backward(dynamic):
    def f(x, t):
        return ops.sigmoid_focal_loss(x, t, 0.25, 2, "mean") + ops.sigmoid_focal_loss(x, t, -1, 1.5, "none").sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for n in (40, 70):
        x, t = make((n, 9), seed=12 + n)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        got, want = compiled(xa, t), f(xb, t)
        got.backward()
        want.backward()
        assert torch.equal(got, want) and torch.equal(xa.grad, xb.grad)


@pytest.mark.cuda
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_cuda_graph_capture_forward_backward(reduction):
    x, t = make((1000, 80), seed=13, device="cuda")
    xr = x.clone().requires_grad_(True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the capture
        loss = ops.sigmoid_focal_loss(xr, t, 0.25, 2, reduction)
        torch.autograd.grad(loss, xr, torch.ones_like(loss))
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = ops.sigmoid_focal_loss(xr, t, 0.25, 2, reduction)
        (dx,) = torch.autograd.grad(loss, xr, torch.ones_like(loss))
    new_x, new_t = make((1000, 80), seed=14)
    with torch.no_grad():
        xr.copy_(new_x)
    t.copy_(new_t)
    graph.replay()
    torch.cuda.synchronize()
    want_loss, want_dx = ref.sigmoid_focal_loss_f64_with_grad(new_x, new_t, 0.25, 2, reduction)
    check_close(loss, want_loss, torch.float32, "loss")
    check_close(dx, want_dx, torch.float32, "grad")
