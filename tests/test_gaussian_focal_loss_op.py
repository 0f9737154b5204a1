"""Correctness of ops.gaussian_focal_loss: values and gradients against mmdet's formula in
float64 (reference.gaussian_target.gaussian_focal_loss) for every reduction, dtype and weird
shape; gradcheck; bad input; torch.compile and opcheck; CUDA determinism."""
import pytest
import torch

import ops
from half_values import assert_within_one_ulp, every_value
from reference import gaussian_target as ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}
SHAPES = [(0,), (1,), (3, 5, 7), (48, 20, 50), (2, 3, 33, 17)]


def make(shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.sigmoid(torch.randn(shape, generator=g) * 2).clamp(1e-4, 1 - 1e-4)
    # kept below 1 in the dtype too (1 - 1e-4 rounds to 1 in float16 and bfloat16)
    pred = pred.to(dtype).clamp(max=1 - torch.finfo(dtype).eps / 2)
    target = torch.rand(shape, generator=g) ** 8
    target[torch.rand(shape, generator=g) < 0.05] = 1.0
    return pred.to(dtype).to(device), target.to(dtype).to(device)


def assert_close(got, expected, rtol, what):
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    if not got.numel():
        return
    scale = expected.abs().max().item() if expected.numel() else 0.0
    atol = max(rtol * 0.1 * scale, 2.0**-24)
    err = (got - expected).abs()
    bad = ~(err <= atol + rtol * expected.abs())  # NaN fails
    if bad.any():
        idx = torch.topk(torch.where(torch.isnan(err), torch.inf, err).flatten(), min(5, err.numel())).indices
        lines = [f"  at {j.item()}: got {got.flatten()[j].item()!r}, expected {expected.flatten()[j].item()!r}"
                 for j in idx]
        raise AssertionError(f"{what}: {int(bad.sum())} elements off (atol {atol:.3g}, rtol {rtol})\n" + "\n".join(lines))


def both(fn, pred, target, reduction, **kw):
    p = pred.detach().requires_grad_()
    loss = fn(p, target, reduction=reduction, **kw)
    (grad,) = torch.autograd.grad(loss, p, torch.ones_like(loss)) if p.numel() else (torch.zeros_like(p),)
    return loss.detach(), grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "mean_avg"])
def test_matches_float64_formula(device, dtype, shape, reduction, avg=None):
    pred, target = make(shape, dtype, device, seed=len(shape))
    kw = {"avg_factor": 37.5} if reduction == "mean_avg" else {}
    reduction = "mean" if reduction == "mean_avg" else reduction
    loss, grad = both(ops.gaussian_focal_loss, pred, target, reduction, **kw)
    assert loss.dtype == dtype and grad.dtype == dtype
    exp_loss, exp_grad = both(ref.gaussian_focal_loss, pred.double(), target.double(), reduction, **kw)
    if reduction == "mean" and not kw and pred.numel() == 0:
        assert torch.isnan(loss)
        return
    assert_close(loss, exp_loss, RTOL[dtype], "loss")
    assert_close(grad, exp_grad, 10 * RTOL[dtype], "grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("params", [dict(alpha=3.0, gamma=2.5), dict(alpha=1.5, gamma=4.0, pos_weight=2.0,
                                                                     neg_weight=0.25), dict(alpha=2.0, gamma=0.0)])
def test_other_exponents_and_weights(device, params):
    pred, target = make((4, 9, 31), torch.float32, device, seed=3)
    for reduction in ("mean", "none"):
        loss, grad = both(ops.gaussian_focal_loss, pred, target, reduction, **params)
        exp_loss, exp_grad = both(ref.gaussian_focal_loss, pred.double(), target.double(), reduction, **params)
        assert_close(loss, exp_loss, 1e-5, "loss")
        assert_close(grad, exp_grad, 1e-4, "grad")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("params", [dict(), dict(alpha=0.5), dict(alpha=0.0), dict(gamma=0.0), dict(alpha=3.0)],
                         ids=str)
def test_edges_of_the_domain_give_mmdets_values_and_nans(device, params):
    # pred at and beyond [0, 1] (and NaN) against every kind of target: where mmdet's formula
    # multiplies an infinite or NaN term by zero, the result is NaN, and detbench's must be too;
    # elsewhere the values agree. float64 throughout; the tolerance is mmdet's own rounding of
    # 1 - pred + eps (relative 1e-4 of log(1 + 1e-12)), which detbench evaluates as log1p.
    preds = torch.tensor([0.0, 1.0, 1e-300, 0.5, 1 - 1e-16, -1e-3, 1 + 1e-3, float("nan")], dtype=torch.float64)
    targets = torch.tensor([0.0, 0.25, 1.0, 1.5, float("nan")], dtype=torch.float64)
    pred, target = (x.flatten().to(device) for x in torch.meshgrid(preds, targets, indexing="ij"))
    loss, grad = both(ops.gaussian_focal_loss, pred, target, "none", **params)
    exp_loss, exp_grad = both(ref.gaussian_focal_loss, pred, target, "none", **params)
    for what, got, expected in (("loss", loss, exp_loss), ("grad", grad, exp_grad)):
        got, expected = got.cpu(), expected.cpu()
        nan_differs = torch.isnan(got) != torch.isnan(expected)
        assert not nan_differs.any(), (what, pred.cpu()[nan_differs], target.cpu()[nan_differs],
                                       got[nan_differs], expected[nan_differs])
        finite = ~torch.isnan(expected)
        torch.testing.assert_close(got[finite], expected[finite], rtol=1e-3, atol=1e-300)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_every_half_value_in_the_domain_per_element(device, dtype):
    # Every representable pred in [0, 1] against a positive target and negatives near 0, 1/2 and 1,
    # per element ('none'), with no tolerance relative to the largest value: the loss and the
    # gradient within one unit in the last place of float64's result rounded to the dtype (the
    # GPU's half path takes the hardware log and a series near 1; the CPU logf and log1p).
    pred = every_value(dtype)
    # pred in {0} and [2^-24, 1]: below 2^-24 (bfloat16 only) float64's 1 - pred + eps keeps too few
    # digits of eps - pred, and the reference gradient there (3 p^2 - 2 p eps, nearly equal terms
    # at p ~ eps) is off by ~1 % (seen at p = 6.6e-13)
    pred = pred[torch.isfinite(pred) & ((pred == 0) | (pred >= 2.0**-24)) & (pred <= 1)]
    targets = torch.tensor([1.0, 0.0, 1e-3, 0.5, 0.999], dtype=dtype)
    pred, target = (x.flatten().to(device) for x in torch.meshgrid(pred, targets, indexing="ij"))
    loss, grad = both(ops.gaussian_focal_loss, pred, target, "none")
    exp_loss, exp_grad = both(ref.gaussian_focal_loss, pred.double(), target.double(), "none")
    assert_within_one_ulp("loss", loss, exp_loss, pred, target)
    assert_within_one_ulp("grad", grad, exp_grad, pred, target)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction,factors", [("mean", (0.37, 1024.0)), ("sum", (0.37, 2.0**-10))], ids=str)
def test_upstream_gradient_scales_every_element(device, dtype, reduction, factors):
    # A reduced loss's upstream gradient (a loss scaler's power of two, or any factor) multiplies
    # each element's gradient; the CUDA backward folds it into the weights. Factors keep float16
    # gradients (up to ~1e4 per element for 'sum') finite.
    pred, target = make((4, 8, 33), dtype, device, seed=12)
    p = pred.detach().requires_grad_()
    loss = ops.gaussian_focal_loss(p, target, reduction=reduction)
    _, unit = both(ref.gaussian_focal_loss, pred.double(), target.double(), reduction)
    for factor in factors:
        (got,) = torch.autograd.grad(loss, p, torch.tensor(factor, dtype=dtype, device=device), retain_graph=True)
        assert_close(got, unit * factor, 10 * RTOL[dtype], f"grad x {factor}")


def test_gradcheck_float64():
    pred, target = make((3, 4, 5), torch.float64, "cpu", seed=4)
    for reduction in ("mean", "sum", "none"):
        fn = lambda p: ops.gaussian_focal_loss(p, target, reduction=reduction)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (pred.clone().requires_grad_(),))


def test_non_contiguous_inputs():
    pred, target = make((6, 10), torch.float32, "cpu", seed=5)
    loss = ops.gaussian_focal_loss(pred.t(), target.t(), reduction="none")
    assert_close(loss, ref.gaussian_focal_loss(pred.t().double(), target.t().double(), reduction="none"), 1e-5, "loss")


def test_errors():
    pred, target = make((4, 5), torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="target must have the same dtype as pred"):
        ops.gaussian_focal_loss(pred, target.double())
    with pytest.raises(RuntimeError, match="target must have the same shape as pred"):
        ops.gaussian_focal_loss(pred, target[:3])
    with pytest.raises(RuntimeError, match="pred must be float16, bfloat16, float32 or float64"):
        ops.gaussian_focal_loss(pred.int(), target.int())
    with pytest.raises(RuntimeError, match="reduction must be 'none', 'mean' or 'sum', got 'max'"):
        ops.gaussian_focal_loss(pred, target, reduction="max")
    with pytest.raises(RuntimeError, match="avg_factor can not be used with reduction='sum'"):
        ops.gaussian_focal_loss(pred, target, reduction="sum", avg_factor=2.0)
    with pytest.raises(RuntimeError, match="alpha and gamma must be finite"):
        ops.gaussian_focal_loss(pred, target, alpha=float("nan"))
    with pytest.raises(RuntimeError, match="pos_weight and neg_weight must be finite"):
        ops.gaussian_focal_loss(pred, target, pos_weight=float("inf"))
    with pytest.raises(RuntimeError, match="target requires grad"):
        ops.gaussian_focal_loss(pred, target.clone().requires_grad_())
    with pytest.raises(RuntimeError, match="target must be on the same device as pred"):
        torch.ops.detbench.gaussian_focal_loss(pred.to("meta"), target)


def test_compile_fullgraph_forward_and_backward():
    pred, target = make((4, 3, 16, 16), torch.float32, "cpu", seed=6)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss_fn(p, t):
        return ops.gaussian_focal_loss(p, t, avg_factor=10.0) * 2

    p = pred.clone().requires_grad_()
    loss_fn(p, target).backward()
    expected_loss, expected_grad = both(ops.gaussian_focal_loss, pred, target, "mean", avg_factor=10.0)
    assert torch.allclose(p.grad, 2 * expected_grad)


def test_opcheck():
    pred, target = make((4, 5, 6), torch.float32, "cpu", seed=7)
    p = pred.clone().requires_grad_()
    for reduction, avg in (("mean", None), ("sum", None), ("none", None), ("mean", 3.0)):
        torch.library.opcheck(torch.ops.detbench.gaussian_focal_loss.default,
                              (p, target, 2.0, 4.0, 1.0, 1.0, reduction, avg))
    grad = torch.tensor(1.5)
    torch.library.opcheck(torch.ops.detbench.gaussian_focal_loss_backward.default,
                          (grad, pred, target, 2.0, 4.0, 1.0, 1.0, "mean", None))


def test_cpu_sum_does_not_depend_on_thread_count():
    pred, target = make((40, 20, 50), torch.float32, "cpu", seed=8)
    threads = torch.get_num_threads()
    first = ops.gaussian_focal_loss(pred, target, reduction="sum")
    torch.set_num_threads(1)
    try:
        assert torch.equal(ops.gaussian_focal_loss(pred, target, reduction="sum"), first)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_deterministic_and_agrees_with_cpu(dtype):
    pred, target = make((16, 80, 64, 64), dtype, "cuda", seed=9)
    first = both(ops.gaussian_focal_loss, pred, target, "mean")
    for _ in range(3):
        again = both(ops.gaussian_focal_loss, pred, target, "mean")
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    cpu = both(ops.gaussian_focal_loss, pred.cpu(), target.cpu(), "mean")
    assert_close(first[0], cpu[0], RTOL[dtype], "loss cuda vs cpu")
    assert_close(first[1], cpu[1], 10 * RTOL[dtype], "grad cuda vs cpu")


@pytest.mark.cuda
def test_cuda_misaligned_views():
    pred, target = make((1001,), torch.float16, "cuda", seed=10)
    p, t = pred[1:999], target[3:1001]  # storage offsets that are no multiple of 16 bytes
    for reduction in ("none", "sum"):
        got = both(ops.gaussian_focal_loss, p, t, reduction)
        exp = both(ref.gaussian_focal_loss, p.double(), t.double(), reduction)
        assert_close(got[0], exp[0], 2e-3, "loss")
        assert_close(got[1], exp[1], 2e-2, "grad")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cuda_many_grid_stride_steps(dtype, reduction):
    # The kernels' grid is capped at the blocks resident at once (at most 8 of 256 threads per SM),
    # a thread moving 16 bytes per tensor per step: at least 3.3 grid-wide steps (and a partial
    # last pack) whatever the step shape.
    step = torch.cuda.get_device_properties(0).multi_processor_count * 8 * 256 * (16 // dtype.itemsize)
    pred, target = make((int(3.3 * step) + 5,), dtype, "cuda", seed=11)
    got = both(ops.gaussian_focal_loss, pred, target, reduction)
    exp = both(ref.gaussian_focal_loss, pred.double(), target.double(), reduction)
    if torch.isinf(exp[0].to(dtype)).any():  # a float16 'sum' of 7M losses: its rounding is inf
        assert torch.equal(got[0], exp[0].to(dtype)), (got[0], exp[0])
    else:
        assert_close(got[0], exp[0], RTOL[dtype], "loss")
    assert_close(got[1], exp[1], 10 * RTOL[dtype], "grad")
