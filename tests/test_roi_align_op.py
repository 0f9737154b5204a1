"""Correctness of ops.roi_align and ops.multiscale_roi_align: against torchvision and the float64
reference (reference.pure) for every dtype, both memory formats, adaptive and fixed sampling,
aligned or not, weird shapes and adversarial RoIs; gradients; bad input and validation mode;
torch.compile + opcheck; on CUDA the deterministic backward (5 runs bit-identical)."""
import contextlib

import pytest
import torch
import torchvision

import ops
from ops.roi_align import setup_scales
from reference import pure

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
OUT_TOL = {torch.float32: (2e-6, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2),
           torch.float64: (1e-12, 1e-10)}
GRAD_RTOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-10}


def make(n, c, h, w, k, dtype, device, seed=0, layout="nchw", extent=None, adversarial=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g)
    ext = extent or (4 * w, 4 * h)  # image coordinates for spatial_scale 1/4
    xy = torch.rand(k, 2, generator=g) * torch.tensor(ext)
    wh = torch.exp(torch.empty(k, 2).uniform_(0, 4, generator=g))
    boxes = torch.cat([xy, xy + wh], 1)
    if adversarial and k >= 8:
        boxes[0] = torch.tensor([-50.0, -50.0, -10.0, -20.0])               # wholly outside (above-left)
        boxes[1] = torch.tensor([ext[0] + 10.0, 5.0, ext[0] + 90.0, 25.0])   # wholly outside (right)
        boxes[2] = torch.tensor([-20.0, -20.0, 30.0, 30.0])                  # partly outside
        boxes[3] = torch.tensor([10.0, 10.0, 10.5, 10.3])                    # tiny
        boxes[4] = torch.tensor([-2.0 * ext[0], -ext[1], 3.0 * ext[0], 2.0 * ext[1]])  # huge
        boxes[5] = torch.tensor([40.0, 40.0, 30.0, 35.0])                    # inverted
        boxes[6] = torch.tensor([7.0, 7.0, 7.0, 7.0])                        # a point
    idx = torch.randint(0, n, (k, 1), generator=g).float()
    if adversarial:
        idx.zero_()  # images 1.. get no RoI
    rois = torch.cat([idx, boxes], 1)
    x = x.to(dtype).to(device)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, rois.to(dtype).to(device)


def close(got, expected, atol, rtol, what):
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    err = (got - expected).abs()
    bad = ~(err <= atol + rtol * expected.abs())  # NaN fails
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.numel()} off; worst {err.max().item():.3g} at "
                           f"{torch.nonzero(bad)[:3].tolist()}")


def torchvision_atol(features):
    """Output tolerance against torchvision in float32. On CUDA its sample positions go through FMA
    contraction: up to 1 ulp of the largest coordinate (< 128 feature px here) off its CPU kernel's
    (which detbench follows), times the feature's slope (<= 2 max|x|)."""
    if features[0].device.type == "cpu":
        return 2e-6
    position_ulp = torch.finfo(torch.float32).eps * 64
    return 2 * max(f.abs().max().item() for f in features) * position_ulp


def forward_backward(fn, x, rois, upstream, *args, **kw):
    x = x.detach().requires_grad_()
    out = fn(x, rois, *args, **kw)
    (grad,) = torch.autograd.grad(out, x, upstream.to(out.dtype))
    return out.detach(), grad


def float64_expected(x, rois, upstream, *args):
    pos = torch.float64 if x.dtype == torch.float64 else torch.float32
    return forward_backward(lambda a, r, *ar: pure.roi_align(a, r, *ar, positions_dtype=pos), x.double(), rois,
                            upstream, *args)


def check_against_float64(x, rois, size, scale, sr, aligned, dtype, seed=1):
    out_shape = (rois.shape[0], x.shape[1]) + ((size, size) if isinstance(size, int) else tuple(size))
    upstream = torch.randn(out_shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
    out, grad = forward_backward(ops.roi_align, x, rois, upstream, size, scale, sr, aligned)
    exp_out, exp_grad = float64_expected(x, rois, upstream, size, scale, sr, aligned)
    assert out.dtype == dtype and grad.dtype == dtype
    atol, rtol = OUT_TOL[dtype]
    close(out, exp_out, atol, rtol, "output")
    scale_g = exp_grad.abs().max().item() if exp_grad.numel() else 0.0
    close(grad, exp_grad, GRAD_RTOL[dtype] * 0.1 * scale_g, GRAD_RTOL[dtype], "grad")
    return out, grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("sr,aligned", [(2, True), (0, True), (0, False), (1, False), (3, True)])
def test_matches_float64(device, dtype, layout, sr, aligned):
    x, rois = make(2, 8, 21, 30, 40, dtype, device, seed=sr + 10 * aligned, layout=layout, adversarial=True)
    out, grad = check_against_float64(x, rois, (7, 5), 0.25, sr, aligned, dtype)
    if layout == "nhwc":
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (1, 3, 1, 17, 5), (3, 5, 13, 1, 9), (2, 33, 9, 11, 70),
                                   (1, 7, 5, 6, 0), (2, 0, 5, 6, 4), (1, 24, 40, 40, 3)], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_weird_shapes(device, shape, layout):
    n, c, h, w, k = shape
    x, rois = make(n, c, h, w, k, torch.float32, device, seed=k, layout=layout)
    check_against_float64(x, rois, 3, 0.25, 0, True, torch.float32)
    check_against_float64(x, rois, (1, 4), 0.25, 2, False, torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_output_larger_than_a_backward_chunk(device, dtype, layout):
    """Pooled sizes past the CUDA backward's chunks of bins (32 rows; 32 columns, 16 in float64)."""
    x, rois = make(2, 5, 30, 44, 6, dtype, device, seed=3, layout=layout)
    check_against_float64(x, rois, (40, 36), 0.5, 2, True, dtype)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("sr,aligned", [(2, True), (0, False), (0, True), (-1, False)])
def test_cpu_matches_torchvision(layout, sr, aligned):
    x, rois = make(2, 16, 30, 40, 60, torch.float32, "cpu", seed=3, layout=layout, adversarial=True)
    rois = rois[7:] if aligned and sr <= 0 else rois  # torchvision's CPU kernel fails on inverted boxes there
    upstream = torch.randn(rois.shape[0], 16, 7, 7)
    got = forward_backward(ops.roi_align, x, rois, upstream, 7, 0.25, sr, aligned)
    exp = forward_backward(torchvision.ops.roi_align, x.contiguous(), rois, upstream, 7, 0.25, sr, aligned)
    close(got[0], exp[0], 1e-7, 1e-6, "output")
    close(got[1], exp[1], 1e-6, 1e-5, "grad")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_cuda_matches_torchvision_and_cpu(dtype, layout):
    x, rois = make(2, 64, 50, 84, 300, dtype, "cuda", seed=4, layout=layout, extent=(1344, 800))
    upstream = torch.randn(300, 64, 7, 7, device="cuda")
    got = forward_backward(ops.roi_align, x, rois, upstream, 7, 0.0625, 2, True)
    if dtype == torch.float32:
        exp = forward_backward(torchvision.ops.roi_align, x, rois, upstream, 7, 0.0625, 2, True)
        close(got[0], exp[0], torchvision_atol([x]), 1e-5, "output vs torchvision")
        close(got[1], exp[1], 1e-4 * exp[1].abs().max().item(), 1e-4, "grad vs torchvision")
    cpu = forward_backward(ops.roi_align, x.cpu(), rois.cpu(), upstream.cpu(), 7, 0.0625, 2, True)
    atol, rtol = OUT_TOL[dtype]
    close(got[0], cpu[0], atol, rtol, "output vs cpu")
    close(got[1], cpu[1], GRAD_RTOL[dtype] * 0.1 * cpu[1].abs().max().item(), GRAD_RTOL[dtype], "grad vs cpu")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_both_nchw_walks(dtype):
    """NCHW features take the direct walk for a few RoIs and the NHWC-copy walk (staged NCHW output
    and gradient, 16-byte vector atomics) for many: both against float64, and the same RoIs give
    the same outputs either way."""
    x, rois = make(1, 24, 64, 64, 400, dtype, "cuda", seed=5, adversarial=True)
    few = rois[:10]  # 10 x 24 x 49 outputs: under a quarter of the 98k feature elements
    out_few, grad_few = check_against_float64(x, few, 7, 0.25, 2, True, dtype)
    out_many, _ = check_against_float64(x, rois, 7, 0.25, 2, True, dtype)
    atol, rtol = OUT_TOL[dtype]
    close(out_many[:10], out_few, atol, rtol, "many-RoI walk vs few-RoI walk")
    assert grad_few.is_contiguous() and out_many.is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_nhwc_equals_nchw(device, dtype):
    x, rois = make(2, 32, 25, 31, 50, dtype, device, seed=5)
    a = ops.roi_align(x, rois, 7, 0.25, 2, True)
    b = ops.roi_align(x.contiguous(memory_format=torch.channels_last), rois, 7, 0.25, 2, True)
    assert b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, rtol=1e-6 if dtype == torch.float32 else 1e-3, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_list_boxes_and_other_strides(device):
    x, rois = make(3, 8, 20, 20, 30, torch.float32, device, seed=6)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(3)]
    order = torch.cat([torch.nonzero(rois[:, 0] == i).flatten() for i in range(3)])
    a = ops.roi_align(x, boxes, 4, 0.25, 2, True)
    b = ops.roi_align(x, rois[order], 4, 0.25, 2, True)
    assert torch.equal(a, b)
    # a transposed view (neither NCHW nor channels-last) is copied
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert torch.equal(ops.roi_align(xt, rois, 4, 0.25, 2, True), ops.roi_align(x, rois, 4, 0.25, 2, True))
    # float32 rois for a float16 input give what float16 rois do where float16 holds them exactly
    xh = x.half()
    r16 = rois.half()
    assert torch.equal(ops.roi_align(xh, r16.float(), 4, 0.25, 2, True), ops.roi_align(xh, r16, 4, 0.25, 2, True))


def test_gradcheck_float64():
    x, rois = make(2, 3, 7, 9, 6, torch.float64, "cpu", seed=7)
    for sr, aligned in ((2, True), (0, False)):
        fn = lambda a: ops.roi_align(a, rois, 3, 0.5, sr, aligned)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(),))
        assert torch.autograd.gradcheck(fn, (x.contiguous(memory_format=torch.channels_last).requires_grad_(),))


def test_cpu_backward_does_not_depend_on_thread_count():
    x, rois = make(2, 32, 30, 30, 200, torch.float32, "cpu", seed=8)
    up = torch.randn(200, 32, 7, 7)
    threads = torch.get_num_threads()
    for layout in ("nchw", "nhwc"):
        xi = x if layout == "nchw" else x.contiguous(memory_format=torch.channels_last)
        first = forward_backward(ops.roi_align, xi, rois, up, 7, 0.25, 0, True)
        torch.set_num_threads(1)
        try:
            again = forward_backward(ops.roi_align, xi, rois, up, 7, 0.25, 0, True)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_errors():
    x, rois = make(2, 4, 10, 10, 5, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=r"input must have shape \[N, C, H, W\]"):
        ops.roi_align(x[0], rois, 7)
    with pytest.raises(RuntimeError, match=r"rois must have shape \[K, 5\]"):
        ops.roi_align(x, rois[:, :4], 7)
    with pytest.raises(RuntimeError, match="input must be float16, bfloat16, float32 or float64"):
        ops.roi_align(x.int(), rois, 7)
    with pytest.raises(RuntimeError, match="rois must be a floating-point tensor"):
        ops.roi_align(x, rois.long(), 7)
    with pytest.raises(RuntimeError, match="output_size must be positive"):
        ops.roi_align(x, rois, (-1, 7))
    with pytest.raises(RuntimeError, match="output_size must be positive"):
        ops.roi_align(x, rois, 0)
    with pytest.raises(RuntimeError, match="spatial_scale must be positive and finite"):
        ops.roi_align(x, rois, 7, float("nan"))
    with pytest.raises(RuntimeError, match=r"sampling_ratio must be at most 1024 \(samples per bin along each axis"):
        ops.roi_align(x, rois, 7, 1.0, 1025)
    with pytest.raises(RuntimeError, match="sampling_ratio must be at most 1024"):
        ops.multiscale_roi_align({"p": x}, [rois[:2, 1:], rois[2:, 1:]], [(40, 40)] * 2, ["p"], 7, 46341)
    assert ops.roi_align(x[:, :1], rois[:1], 1, 1.0, 1024).shape == (1, 1, 1, 1)  # the largest ratio still runs
    with pytest.raises(RuntimeError, match="rois must be on the same device as input"):
        torch.ops.detbench.roi_align(x, rois.to("meta"), 1.0, 7, 7, 2, False)
    bad = rois.clone()
    bad[2, 0] = 2
    with pytest.raises(RuntimeError, match=r"rois\[2, 0\] \(the batch index\) must be an integer in \[0, 2\), got 2"):
        ops.roi_align(x, bad, 7)
    bad[2, 0] = 0.5
    with pytest.raises(RuntimeError, match=r"rois\[2, 0\] \(the batch index\) must be an integer"):
        ops.roi_align(x, bad, 7)
    bad[2, 0] = -1
    with pytest.raises(RuntimeError, match=r"rois\[2, 0\] \(the batch index\)"):
        ops.roi_align(x, bad, 7)
    bad = rois.clone()
    bad[4, 3] = float("inf")
    with pytest.raises(RuntimeError, match=r"rois\[4\] has a non-finite coordinate"):
        ops.roi_align(x, bad, 7)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.detbench.roi_align_backward(torch.zeros(5, 4, 6, 7), x, rois, 1.0, 7, 7, 2, False)
    feats = [x, x[:, :, :5, :5].double()]
    with pytest.raises(RuntimeError, match="every level must have the dtype of level 0"):
        torch.ops.detbench.multiscale_roi_align(feats, rois, [0.25, 0.125], 7, 7, 2, False, 2, 3, 224.0, 4)


@pytest.mark.cuda
def test_cuda_bad_batch_index_safe_result_and_validation():
    x, rois = make(2, 8, 16, 16, 6, torch.float32, "cuda", seed=9)
    bad = rois.clone()
    bad[1, 0] = 7.0
    bad[2, 0] = 0.5
    bad[3, 0] = float("nan")
    bad[4, 2] = float("inf")
    xi = x.clone().requires_grad_()
    out = ops.roi_align(xi, bad, 5, 0.25, 2, True)
    assert torch.all(out[1:5] == 0)
    good = ops.roi_align(x, rois[[0, 5]], 5, 0.25, 2, True)
    assert torch.equal(out[[0, 5]], good)
    out.sum().backward()
    xg = x.clone().requires_grad_()
    ops.roi_align(xg, rois[[0, 5]], 5, 0.25, 2, True).sum().backward()
    torch.testing.assert_close(xi.grad, xg.grad)
    ops.set_validation(True)
    try:
        with pytest.raises(RuntimeError, match=r"rois\[1, 0\] \(the batch index\) must be an integer in \[0, 2\)"):
            ops.roi_align(x, bad, 5)
    finally:
        ops.set_validation(False)


@contextlib.contextmanager
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_cuda_deterministic_backward(dtype, layout):
    x, rois = make(2, 64, 50, 84, 1000, dtype, "cuda", seed=10, layout=layout, extent=(1344, 800))
    up = torch.randn(1000, 64, 7, 7, device="cuda")
    default = forward_backward(ops.roi_align, x, rois, up, 7, 0.0625, 0, True)
    with deterministic():
        runs = [forward_backward(ops.roi_align, x, rois, up, 7, 0.0625, 0, True)[1] for _ in range(5)]
    for r in runs[1:]:
        assert torch.equal(r, runs[0])
    exp = float64_expected(x, rois, up, 7, 0.0625, 0, True)[1]
    s = exp.abs().max().item()
    close(runs[0], exp, GRAD_RTOL[dtype] * 0.1 * s, GRAD_RTOL[dtype], "deterministic grad vs float64")
    close(default[1], exp, GRAD_RTOL[dtype] * 0.1 * s, GRAD_RTOL[dtype], "default grad vs float64")


@pytest.mark.cuda
def test_cuda_zero_and_nonfinite_grad():
    """A zero upstream gives an exact zero gradient; a NaN in one bin reaches exactly the pixels that
    bin's samples touch in its channel (those of the float64 reference's autograd), nothing else."""
    x, rois = make(2, 8, 20, 20, 30, torch.float32, "cuda", seed=11)
    for mode in (False, True):
        with deterministic() if mode else contextlib.nullcontext():
            zero = forward_backward(ops.roi_align, x, rois, torch.zeros(30, 8, 7, 7, device="cuda"), 7, 0.25, 2,
                                    True)[1]
            assert torch.equal(zero, torch.zeros_like(zero))
            up = torch.zeros(30, 8, 7, 7, device="cuda")
            up[3, 2, 1, 1] = float("nan")
            nan = forward_backward(ops.roi_align, x, rois, up, 7, 0.25, 2, True)[1]
            reach = torch.isnan(float64_expected(x, rois, up, 7, 0.25, 2, True)[1])
            assert reach.any() and torch.equal(torch.isnan(nan), reach)
            assert torch.equal(nan.nan_to_num(0.0), torch.zeros_like(nan))


def _pyramid(n, c, device, dtype=torch.float32, layout="nchw", seed=12):
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for name, s in (("p2", 4), ("p3", 8), ("p4", 16), ("p5", 32)):
        f = torch.randn(n, c, 200 // s, 336 // s, generator=g).to(dtype).to(device)
        feats[name] = f.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else f
    boxes = []
    for _ in range(n):
        xy = torch.rand(40, 2, generator=g) * torch.tensor([336.0, 200.0])
        wh = torch.exp(torch.empty(40, 2).uniform_(1, 6.3, generator=g))
        boxes.append(torch.cat([xy, xy + wh], 1).to(device))
    boxes[0][0] = torch.tensor([50.0, 50.0, 40.0, 60.0])  # negative area: no level
    return feats, boxes, [(200, 336)] * n


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_multiscale_matches_torchvision(device, layout):
    feats, boxes, shapes = _pyramid(2, 16, device, layout=layout)
    names = list(feats)
    pooler = torchvision.ops.MultiScaleRoIAlign(names, 7, 2)
    up = torch.randn(80, 16, 7, 7, generator=torch.Generator().manual_seed(1)).to(device)

    def run(fn):
        x = {k: v.detach().requires_grad_() for k, v in feats.items()}
        out = fn(x)
        return out.detach(), torch.autograd.grad(out, [x[k] for k in names], up)

    got = run(lambda x: ops.multiscale_roi_align(x, boxes, shapes, names, 7, 2))
    exp = run(lambda x: pooler({k: v.contiguous() for k, v in x.items()}, boxes, shapes))
    assert torch.all(got[0][0] == 0)
    close(got[0], exp[0], torchvision_atol(list(feats.values())), 1e-5, "output")
    for a, b in zip(got[1], exp[1]):
        close(a, b, 1e-4 * b.abs().max().item(), 1e-4, "grad")
    # one level: roi_align on it
    one = ops.multiscale_roi_align({"p3": feats["p3"]}, boxes, shapes, ["p3"], 7, 2)
    close(one, torchvision.ops.MultiScaleRoIAlign(["p3"], 7, 2)(feats, boxes, shapes), torchvision_atol([feats["p3"]]),
          1e-5, "one level")


@pytest.mark.cuda
def test_multiscale_cuda_deterministic():
    feats, boxes, shapes = _pyramid(2, 32, "cuda", layout="nhwc")
    up = torch.randn(80, 32, 7, 7, device="cuda")
    with deterministic():
        runs = []
        for _ in range(5):
            x = {k: v.detach().requires_grad_() for k, v in feats.items()}
            out = ops.multiscale_roi_align(x, boxes, shapes, list(feats), 7, 2)
            runs.append(torch.autograd.grad(out, list(x.values()), up))
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, runs[0]))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    x, rois = make(2, 8, 20, 20, 30, torch.float32, device, seed=13)
    feats, boxes, shapes = _pyramid(2, 8, device)
    backend = "aot_eager" if device == "cpu" else "inductor"

    @torch.compile(fullgraph=True, backend=backend)
    def f(a, r):
        return ops.roi_align(a, r, 7, 0.25, 2, True) * 2

    a = x.clone().requires_grad_()
    f(a, rois).sum().backward()
    b = x.clone().requires_grad_()
    (ops.roi_align(b, rois, 7, 0.25, 2, True) * 2).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)

    rois_ms = torch.cat([torch.cat([torch.full_like(bx[:, :1], i), bx], 1) for i, bx in enumerate(boxes)])
    scales, k_min, k_max = setup_scales(list(feats.values()), shapes)

    @torch.compile(fullgraph=True, backend=backend)
    def g(*fs):
        return torch.ops.detbench.multiscale_roi_align(list(fs), rois_ms, scales, 7, 7, 2, False, k_min, k_max, 224.0, 4)

    fs = [v.clone().requires_grad_() for v in feats.values()]
    g(*fs).sum().backward()
    ref = [v.clone().requires_grad_() for v in feats.values()]
    ops.multiscale_roi_align(dict(zip(feats, ref)), boxes, shapes, list(feats), 7, 2).sum().backward()
    for p, q in zip(fs, ref):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_opcheck(device, layout):
    x, rois = make(2, 4, 9, 11, 7, torch.float32, device, seed=14, layout=layout)
    xr = x.clone().requires_grad_()
    torch.library.opcheck(torch.ops.detbench.roi_align.default, (xr, rois, 0.5, 3, 2, 2, True))
    grad = torch.randn(7, 4, 3, 2, device=device)
    torch.library.opcheck(torch.ops.detbench.roi_align_backward.default, (grad, x, rois, 0.5, 3, 2, 2, True))
    feats = [x, x[:, :, ::2, ::2].contiguous()]
    if layout == "nhwc":
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    fr = [f.clone().requires_grad_() for f in feats]
    args = ([0.5, 0.25], 3, 2, 2, False, 1, 2, 224.0, 4)
    torch.library.opcheck(torch.ops.detbench.multiscale_roi_align.default, (fr, rois) + args)
    torch.library.opcheck(torch.ops.detbench.multiscale_roi_align_backward.default, (grad, feats, rois) + args)
