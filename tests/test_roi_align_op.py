"""ops.roi_align and ops.multiscale_roi_align against torchvision and the float64 reference, on
CPU and CUDA: forward, backward (atomic and deterministic), layouts, dtypes, bad inputs."""
import pytest
import torch
import torchvision

import ops
from reference import roi_align as ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
HALF = [torch.float16, torch.bfloat16]

# vs the float64 reference (float32 sample positions, as the kernels): forward / backward.
FWD_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12),
           torch.float16: dict(rtol=1e-3, atol=1e-3), torch.bfloat16: dict(rtol=8e-3, atol=8e-3)}
BWD_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10),
           torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


def assert_close(actual, expected, *, rtol, atol, k=5):
    """assert_close that also prints the k worst elements on failure."""

    def msg(default):
        a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
        excess = ((a - e).abs() - (atol + rtol * e.abs())).nan_to_num(nan=float("inf")).flatten()
        worst = excess.topk(min(k, excess.numel())).indices
        lines = [f"  index {tuple(int(x) for x in torch.unravel_index(i, a.shape))}: actual {a.flatten()[i].item()!r}, "
                 f"expected {e.flatten()[i].item()!r}" for i in worst if excess[i] > 0]
        return default + "\nworst elements:\n" + "\n".join(lines)

    torch.testing.assert_close(actual.detach().double().cpu(), expected.detach().double().cpu(), rtol=rtol, atol=atol,
                               msg=msg)


def make_rois(k, batch, image_hw, seed, dtype=torch.float32, device="cpu", kinds=("normal",)):
    """[k, 5] rois: boxes of 2-60 % of the image, some outside, tiny or inverted per `kinds`."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    xy = torch.rand(k, 2, generator=g) * torch.tensor([w, h])
    wh = (torch.rand(k, 2, generator=g) * 0.58 + 0.02) * torch.tensor([w, h])
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    if "tiny" in kinds:
        boxes[::3, 2:] = boxes[::3, :2] + torch.rand(len(boxes[::3]), 2, generator=g) * 0.9
        boxes[1::5] = boxes[1::5][:, [2, 3, 0, 1]]  # inverted
    if "outside" in kinds:
        boxes[::4] += torch.tensor([w, h, w, h]) * 0.8
        boxes[2::4] -= torch.tensor([w, h, w, h]) * 0.9
    b = torch.randint(0, batch, (k, 1), generator=g).float()
    return torch.cat([b, boxes], 1).to(dtype).to(device)


def make_input(shape, seed, dtype=torch.float32, device="cpu", channels_last=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


CONFIGS = [  # (N, C, H, W), K, output_size, spatial_scale, sampling_ratio, aligned
    ((2, 5, 17, 23), 40, (7, 7), 0.25, 2, True),
    ((2, 5, 17, 23), 40, (7, 7), 0.25, 2, False),
    ((1, 3, 9, 31), 17, (3, 5), 0.5, 0, True),
    ((2, 16, 20, 30), 33, 7, 0.25, -1, False),
    ((3, 8, 12, 12), 1, (14, 14), 0.125, 3, True),
    ((2, 4, 10, 10), 0, (7, 7), 0.25, 2, True),
    ((2, 0, 10, 10), 5, (7, 7), 0.25, 2, True),
    ((2, 16, 20, 30), 25, (2, 2), 1.0, 0, False),  # huge RoIs at scale 1, adaptive grids > 32 columns
]


def run_config(cfg, device, dtype, channels_last=False, kinds=("normal", "tiny", "outside"), seed=0):
    shape, k, output_size, scale, sampling, aligned = cfg
    x = make_input(shape, seed, dtype, device, channels_last)
    rois = make_rois(k, shape[0], (shape[2] / scale, shape[3] / scale), seed + 1, dtype, device, kinds)
    return x, rois, output_size, scale, sampling, aligned


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_forward_matches_torchvision_float32(device, channels_last, cfg):
    x, rois, *args = run_config(cfg, device, torch.float32, channels_last, kinds=("normal", "outside"))
    out = ops.roi_align(x, rois, *args)
    assert out.dtype == x.dtype and out.shape == (len(rois), x.shape[1], *torch.nn.modules.utils._pair(args[0]))
    if channels_last and x.shape[1] > 1 and out.numel():
        assert out.is_contiguous(memory_format=torch.channels_last)
    expected = ref.tv_roi_align(x.contiguous(), rois, *args)
    # torchvision's CUDA kernel contracts coordinate arithmetic into FMAs: an ulp of position.
    tol = dict(rtol=1e-5, atol=1e-5) if device == "cpu" else dict(rtol=1e-4, atol=1e-4)
    assert_close(out, expected, **tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_forward_backward_match_float64_reference(device, dtype, channels_last, cfg):
    x, rois, *args = run_config(cfg, device, dtype, channels_last)
    xg = x.detach().requires_grad_()
    out = ops.roi_align(xg, rois, *args)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(dtype).to(device)
    (gx,) = torch.autograd.grad(out, xg, grad) if out.numel() else (torch.zeros_like(x),)
    x64 = x.detach().double().requires_grad_()
    out64 = ref.roi_align(x64, rois, *args)
    (gx64,) = torch.autograd.grad(out64, x64, grad.double())
    assert out.dtype == dtype and gx.dtype == dtype
    assert_close(out, out64, **FWD_TOL[dtype])
    assert_close(gx, gx64, **BWD_TOL[dtype])
    if channels_last and x.shape[1] > 1 and gx.numel():
        assert gx.is_contiguous(memory_format=torch.channels_last)


def test_list_of_boxes_equals_rois_tensor():
    x = make_input((3, 4, 16, 16), 1)
    boxes = [make_rois(n, 1, (64, 64), 10 + i)[:, 1:] for i, n in enumerate((5, 0, 7))]
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    assert torch.equal(ops.roi_align(x, boxes, 5, 0.25, 2), ops.roi_align(x, rois, 5, 0.25, 2))
    assert_close(ops.roi_align(x, boxes, 5, 0.25, 2), torchvision.ops.roi_align(x, boxes, 5, 0.25, 2), rtol=1e-5, atol=1e-5)


def test_gradcheck_float64():
    x, rois, *args = run_config(((2, 3, 8, 9), 6, (3, 2), 0.5, 2, True), "cpu", torch.float64)
    torch.autograd.gradcheck(lambda t: ops.roi_align(t, rois, *args), (x.requires_grad_(),))


# ------------------------------------------------------------------------------------------------
# Multi-scale


def pyramid(batch, channels, image_hw, seed, dtype=torch.float32, device="cpu", channels_last=False):
    h, w = image_hw
    return {str(i): make_input((batch, channels, h // s, w // s), seed + i, dtype, device, channels_last)
            for i, s in enumerate((4, 8, 16, 32))}


def pyramid_boxes(batch, n, image_hw, seed, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    h, w = image_hw
    out = []
    for _ in range(batch):
        size = torch.exp(torch.empty(n, 2).uniform_(2.3, 6.3, generator=g))  # 10-540 px: every level
        c = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
        b = torch.cat([c - size / 2, c + size / 2], 1)
        b[-1] = torch.tensor([50.0, 50.0, 40.0, 70.0])  # negative area: no level
        out.append(b.to(dtype).to(device))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("output_size,sampling", [((7, 7), 2), ((14, 14), 0), ((5, 3), 1)], ids=str)
def test_multiscale_matches_torchvision_and_reference(device, channels_last, output_size, sampling):
    image_hw = (256, 384)
    x = pyramid(2, 6, image_hw, 3, device=device, channels_last=channels_last)
    boxes = pyramid_boxes(2, 30, image_hw, 4, device=device)
    names = ["0", "1", "2", "3"]
    shapes = [image_hw, (250, 380)]
    out = ops.multiscale_roi_align(x, boxes, shapes, names, output_size, sampling)
    pooler = torchvision.ops.MultiScaleRoIAlign(names, output_size, sampling)
    expected = pooler({k: v.contiguous() for k, v in x.items()}, boxes, shapes)
    tol = dict(rtol=1e-5, atol=1e-5) if device == "cpu" else dict(rtol=1e-4, atol=1e-4)
    assert_close(out, expected, **tol)
    assert (out[29] == 0).all() and (out[59] == 0).all()  # negative area: no level, as torchvision
    # gradients vs the float64 reference, one per level
    leaves = [v.detach().requires_grad_() for v in x.values()]
    out = ops.multiscale_roi_align(dict(zip(names, leaves)), boxes, shapes, names, output_size, sampling)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(device)
    grads = torch.autograd.grad(out, leaves, grad)
    leaves64 = [v.detach().double().requires_grad_() for v in x.values()]
    out64 = ref.multiscale_roi_align(dict(zip(names, leaves64)), boxes, shapes, names, output_size, sampling)
    grads64 = torch.autograd.grad(out64, leaves64, grad.double())
    assert_close(out, out64, **FWD_TOL[torch.float32])
    for g_, e_ in zip(grads, grads64):
        assert_close(g_, e_, **BWD_TOL[torch.float32])


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_multiscale_half_level_mapping_matches_float64_reference(dtype):
    image_hw = (256, 384)
    x = pyramid(2, 4, image_hw, 6, dtype)
    boxes = pyramid_boxes(2, 40, image_hw, 7, dtype)
    names = ["0", "1", "2", "3"]
    out = ops.multiscale_roi_align(x, boxes, [image_hw] * 2, names, 7, 2)
    expected = ref.multiscale_roi_align(x, boxes, [image_hw] * 2, names, 7, 2)
    assert_close(out, expected, **FWD_TOL[dtype])


def test_multiscale_single_level_is_roi_align():
    x = {"0": make_input((2, 3, 32, 48), 8)}
    boxes = pyramid_boxes(2, 10, (128, 192), 9)
    out = ops.multiscale_roi_align(x, boxes, [(128, 192)] * 2, ["0"], 7, 2)
    assert torch.equal(out, ops.roi_align(x["0"], boxes, 7, 0.25, 2))


def test_multiscale_module():
    x = pyramid(1, 3, (128, 192), 10)
    boxes = pyramid_boxes(1, 8, (128, 192), 11)
    module = ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    assert torch.equal(module(x, boxes, [(128, 192)]),
                       ops.multiscale_roi_align(x, boxes, [(128, 192)], ["0", "1", "2", "3"], 7, 2))


# ------------------------------------------------------------------------------------------------
# Bad input

def _x():
    return torch.zeros(2, 3, 8, 8)


def _r():
    return torch.tensor([[0, 1.0, 1, 5, 5]])


@pytest.mark.parametrize("call,error,match", [
    (lambda: ops.roi_align(torch.zeros(3, 8, 8), _r(), 2), RuntimeError, r"input must have shape \[N, C, H, W\], got \[3, 8, 8\]"),
    (lambda: ops.roi_align(_x().int(), _r().int(), 2), RuntimeError, "input must be float16, bfloat16, float32 or float64, got Int"),
    (lambda: ops.roi_align(_x(), torch.zeros(2, 4), 2), RuntimeError, r"rois must have shape \[K, 5\], got \[2, 4\]"),
    (lambda: ops.roi_align(_x(), _r().double(), 2), RuntimeError, r"rois must have the same dtype as the features \(Float\), got Double"),
    (lambda: ops.roi_align(_x(), _r(), (0, 7)), RuntimeError, r"output_size must be positive, got \(0, 7\)"),
    (lambda: ops.roi_align(_x(), _r(), (7, -1)), RuntimeError, r"output_size must be positive, got \(7, -1\)"),
    (lambda: ops.roi_align(_x(), _r(), 2, float("nan")), RuntimeError, "spatial_scale must be finite, got nan"),
    (lambda: ops.roi_align(_x(), [torch.zeros(2, 5)], 2), ValueError, r"boxes\[0\] must have shape \[Ki, 4\], got \[2, 5\]"),
    (lambda: ops.roi_align(_x(), [], 2), ValueError, "boxes is an empty list"),
    (lambda: ops.roi_align(_x(), torch.tensor([[2, 1.0, 1, 5, 5]]), 2), RuntimeError,
     r"rois\[0, 0\] \(the batch index\) must be an integer in \[0, 2\), got 2"),
    (lambda: ops.roi_align(_x(), torch.tensor([[0, 1.0, 1, 5, 5], [0.5, 1, 1, 5, 5]]), 2), RuntimeError,
     r"rois\[1, 0\] \(the batch index\) must be an integer in \[0, 2\), got 0.5"),
    (lambda: ops.roi_align(_x(), torch.tensor([[-1, 1.0, 1, 5, 5]]), 2), RuntimeError, r"rois\[0, 0\] \(the batch index\)"),
    (lambda: ops.roi_align(_x(), torch.tensor([[0, 1.0, float("nan"), 5, 5]]), 2), RuntimeError,
     r"rois\[0\] has a non-finite coordinate \(NaN or inf\)"),
    (lambda: ops.multiscale_roi_align({"0": _x(), "1": torch.zeros(2, 4, 4, 4)}, [torch.zeros(1, 4)], [(32, 32)], ["0", "1"], 2, 2),
     RuntimeError, r"features\[1\] must have the batch size and channels of features\[0\]"),
    (lambda: ops.multiscale_roi_align({"0": _x(), "1": torch.zeros(2, 3, 4, 4).half()}, [torch.zeros(1, 4)], [(32, 32)], ["0", "1"], 2, 2),
     RuntimeError, r"features\[1\] must have the same dtype as features\[0\]"),
    (lambda: ops.multiscale_roi_align({"0": _x()}, [torch.zeros(1, 4)], [(32, 32)], ["p2"], 2, 2),
     ValueError, "none of featmap_names"),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_backward_bad_grad_shape_raises():
    with pytest.raises(RuntimeError, match=r"grad must have shape \[K, C, PH, PW\] = \[1, 3, 2, 2\], got \[1, 3, 2, 3\]"):
        torch.ops.detbench._roi_align_backward(torch.zeros(1, 3, 2, 3), _r(), 1.0, 2, 2, 2, False, 2, 3, 8, 8, False, False)


@pytest.mark.cuda
def test_different_devices_raise_cuda():
    with pytest.raises(RuntimeError, match=r"rois must be on the same device as the features \(cuda:0\), got cpu"):
        ops.roi_align(_x().cuda(), _r(), 2)


# ------------------------------------------------------------------------------------------------
# torch.compile, opcheck


def test_opcheck():
    x, rois, *args = run_config(CONFIGS[0], "cpu", torch.float32)
    ph, pw = args[0]
    torch.library.opcheck(torch.ops.detbench.roi_align.default, (x.requires_grad_(), rois, 0.25, ph, pw, 2, True))
    xc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.detbench.roi_align.default, (xc, rois, 0.25, ph, pw, 0, False))
    feats = [v.requires_grad_() for v in pyramid(2, 3, (128, 192), 12).values()]
    boxes = pyramid_boxes(2, 6, (128, 192), 13)
    rois2 = torch.cat([torch.cat([torch.full((6, 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    torch.library.opcheck(torch.ops.detbench.multiscale_roi_align.default,
                          (feats, rois2, [0.25, 0.125, 0.0625, 0.03125], 7, 7, 2, False, 2, 5, 224.0, 4.0))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_forward_and_backward(dynamic):
    x, rois, *args = run_config(CONFIGS[0], "cpu", torch.float32)

    def f(t, r):
        return ops.roi_align(t, r, (7, 7), 0.25, 2, True).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled(xa, rois).backward()
    f(xb, rois).backward()
    assert torch.equal(xa.grad, xb.grad)


# ------------------------------------------------------------------------------------------------
# CUDA only


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, *HALF], ids=str)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_cuda_nhwc_equals_nchw_and_cpu(dtype, cfg):
    x, rois, *args = run_config(cfg, "cuda", dtype)
    nchw = ops.roi_align(x, rois, *args)
    nhwc = ops.roi_align(x.contiguous(memory_format=torch.channels_last), rois, *args)
    cpu = ops.roi_align(x.cpu(), rois.cpu(), *args)
    assert_close(nhwc, nchw, **FWD_TOL[dtype])
    assert_close(nchw, cpu, **FWD_TOL[dtype])


@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_cuda_deterministic_backward_bit_identical(channels_last, dtype):
    x, rois, *args = run_config(((2, 64, 50, 84), 2000, (7, 7), 0.25, 2, True), "cuda", dtype, channels_last,
                                kinds=("normal",))
    grad = torch.randn(len(rois), 64, 7, 7, device="cuda").to(dtype)
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(5):
            xg = x.detach().requires_grad_()
            (g,) = torch.autograd.grad(ops.roi_align(xg, rois, *args), xg, grad)
            results.append(g)
    finally:
        torch.use_deterministic_algorithms(False)
    for g in results[1:]:
        assert torch.equal(g, results[0])
    xg = x.detach().requires_grad_()
    (atomic,) = torch.autograd.grad(ops.roi_align(xg, rois, *args), xg, grad)
    assert_close(results[0], atomic, **BWD_TOL[dtype])


@pytest.mark.cuda
def test_cuda_multiscale_deterministic_bit_identical():
    x = pyramid(2, 32, (800, 1344), 14, device="cuda", channels_last=True)
    boxes = pyramid_boxes(2, 500, (800, 1344), 15, device="cuda")
    names = list(x)
    grad = torch.randn(1000, 32, 7, 7, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(5):
            leaves = [v.detach().requires_grad_() for v in x.values()]
            out = ops.multiscale_roi_align(dict(zip(names, leaves)), boxes, [(800, 1344)] * 2, names, 7, 2)
            runs.append(torch.autograd.grad(out, leaves, grad))
    finally:
        torch.use_deterministic_algorithms(False)
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, runs[0]))


@pytest.mark.cuda
@pytest.mark.parametrize("bad", ["batch_high", "batch_negative", "batch_fraction", "nan_coord"])
def test_cuda_default_mode_invalid_roi_gives_zeros(bad):
    x = make_input((2, 8, 16, 16), 16, device="cuda")
    rois = make_rois(20, 2, (64, 64), 17, device="cuda")
    good = ops.roi_align(x, rois, 7, 0.25, 2, True)
    value = {"batch_high": (0, 2.0), "batch_negative": (0, -1.0), "batch_fraction": (0, 0.5), "nan_coord": (2, float("nan"))}[bad]
    broken = rois.clone()
    broken[5, value[0]] = value[1]
    xg = x.detach().requires_grad_()
    out = ops.roi_align(xg, broken, 7, 0.25, 2, True)
    assert (out[5] == 0).all()
    keep = torch.arange(20, device="cuda") != 5
    assert torch.equal(out[keep], good[keep])
    out.sum().backward()  # the broken RoI contributes no gradient, nothing out of bounds
    xr = x.detach().requires_grad_()
    ops.roi_align(xr, rois[keep], 7, 0.25, 2, True).sum().backward()
    assert_close(xg.grad, xr.grad, **BWD_TOL[torch.float32])


@pytest.mark.cuda
def test_cuda_validation_mode_raises(validation):
    x = make_input((2, 8, 16, 16), 18, device="cuda")
    with pytest.raises(RuntimeError, match=r"rois\[1, 0\] \(the batch index\) must be an integer in \[0, 2\), got 3"):
        ops.roi_align(x, torch.tensor([[0, 1.0, 1, 5, 5], [3, 1, 1, 5, 5]], device="cuda"), 2)
    with pytest.raises(RuntimeError, match=r"rois\[0\] has a non-finite coordinate"):
        ops.roi_align(x, torch.tensor([[0, float("inf"), 1, 5, 5]], device="cuda"), 2)


@pytest.mark.cuda
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cuda_graph_capture(channels_last):
    x = make_input((2, 16, 50, 84), 19, device="cuda", channels_last=channels_last)
    rois = make_rois(300, 2, (200, 336), 20, device="cuda")
    expected = ops.roi_align(x, rois, 7, 0.25, 2, True)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.roi_align(x, rois, 7, 0.25, 2, True)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.roi_align(x, rois, 7, 0.25, 2, True)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
