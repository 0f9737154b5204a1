"""Correctness of ops.box_iou against the float64 reference and torchvision, on CPU and CUDA."""
import os
import subprocess
import sys

import pytest
import torch

import ops
import reference

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# Against the float64 reference, by output dtype. Half and bfloat16 inputs are exact in float32,
# so every non-float64 input is computed to float32 accuracy.
REF_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-14)}

# Against torchvision, by input dtype: torchvision rounds max/min differences to the input dtype
# before upcasting, which moves the IoU by a few of that dtype's ulps.
TV_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-14),
    torch.float16: dict(rtol=3e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=1e-4),
}

SHAPES = [  # (boxes1 leading dims, boxes2 leading dims)
    ((0,), (5,)),
    ((5,), (0,)),
    ((0,), (0,)),
    ((1,), (1,)),
    ((1,), (7,)),
    ((7,), (1,)),
    ((7,), (33,)),
    ((33,), (257,)),
    ((257,), (1000,)),
    ((1000,), (7,)),
    ((5,), (2051,)),  # several column tiles, M no multiple of 4 (CUDA's scalar-store path)
    ((0, 3), (0, 5)),
    ((2, 0), (2, 5)),
    ((2, 7), (2, 0)),
    ((3, 7), (3, 33)),
    ((2, 33), (2, 257)),
    ((2, 257), (2, 1000)),
    ((2, 3), (2, 1030)),
]


def random_boxes(lead, dtype, device="cpu", seed=0):
    """xyxy boxes of shape [*lead, 4] around a few cluster centres, so that IoUs span 0 to 1."""
    g = torch.Generator().manual_seed(seed)
    n = lead[-1]
    centres = torch.rand(*lead[:-1], 4, 2, generator=g, dtype=torch.float64) * 100
    which = torch.randint(0, 4, (*lead[:-1], n), generator=g)
    centre = torch.gather(centres, -2, which[..., None].expand(*which.shape, 2))
    xy = centre + torch.randn(*lead, 2, generator=g, dtype=torch.float64) * 8
    wh = 2 + torch.rand(*lead, 2, generator=g, dtype=torch.float64) * 30
    return torch.cat([xy - wh / 2, xy + wh / 2], -1).to(dtype).to(device)


def assert_close(actual, expected, *, rtol, atol, k=5, **kwargs):
    """torch.testing.assert_close that, on failure, also prints the k worst elements."""

    def msg(default):
        a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
        excess = (a - e).abs() - (atol + rtol * e.abs())
        excess = torch.where(torch.isnan(a) != torch.isnan(e), torch.inf, excess.nan_to_num(nan=-torch.inf))
        excess = excess.flatten()
        worst = excess.topk(min(k, excess.numel())).indices
        worst = worst[excess[worst] > 0]
        lines = [
            f"  index {tuple(int(x) for x in torch.unravel_index(i, a.shape))}: "
            f"actual {a.flatten()[i].item()!r}, expected {e.flatten()[i].item()!r}"
            for i in worst
        ]
        return default + f"\nworst {len(lines)} elements out of tolerance:\n" + "\n".join(lines)

    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg, **kwargs)


def out_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def poison_allocator(shape, dtype, device):
    """Leave a NaN-filled block of the output's size in the CUDA caching allocator, which hands it
    to the next output of that size: an element the kernel fails to write then shows as NaN
    rather than as a right value left over from an earlier call."""
    if torch.device(device).type == "cuda":
        torch.full(shape, float("nan"), dtype=out_dtype(dtype), device=device)


def check_against_reference(out, boxes1, boxes2):
    assert out.dtype == out_dtype(boxes1.dtype)
    ref = reference.pure.box_iou(boxes1.cpu(), boxes2.cpu()).to(out.dtype)
    assert_close(out.cpu(), ref, **REF_TOL[out.dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead1,lead2", SHAPES, ids=str)
def test_matches_reference(device, dtype, lead1, lead2):
    boxes1 = random_boxes(lead1, dtype, device, seed=1)
    boxes2 = random_boxes(lead2, dtype, device, seed=2)
    poison_allocator((*lead1, lead2[-1]), dtype, device)
    out = ops.box_iou(boxes1, boxes2)
    assert out.shape == (*lead1, lead2[-1])
    assert out.device == boxes1.device
    check_against_reference(out, boxes1, boxes2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead1,lead2", [((33,), (257,)), ((2, 7), (2, 1000))], ids=str)
def test_matches_torchvision(device, dtype, lead1, lead2):
    boxes1 = random_boxes(lead1, dtype, device, seed=3)
    boxes2 = random_boxes(lead2, dtype, device, seed=4)
    out = ops.box_iou(boxes1, boxes2)
    expected = reference.tv.box_iou(boxes1, boxes2).to(out.dtype)
    finite = torch.isfinite(expected)
    assert_close(out[finite], expected[finite], **TV_TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_degenerate_boxes(device, dtype):
    boxes = torch.tensor(
        [
            [1, 1, 1, 1],  # a point
            [0, 0, 4, 0],  # a horizontal segment
            [0, 0, 4, 4],  # an ordinary box, containing the two above
            [2, 2, 0, 0],  # inverted in x and y: area +4, never intersects anything
            [0, 0, -1, 1],  # inverted in x: area -1
            [0, 0, 1, 1],  # area +1: its union with the box above is 0
            [3, 3, 3, 3],  # another point
        ],
        dtype=dtype,
        device=device,
    )
    out = ops.box_iou(boxes, boxes)
    check_against_reference(out, boxes, boxes)
    # union <= 0 gives 0 where torchvision gives NaN: a point with itself or another point,
    # a segment with itself, and the area -1 box with the area +1 box (0 / (-1 + 1 - 0)).
    for i, j in [(0, 0), (0, 6), (1, 1), (4, 5), (5, 4)]:
        assert out[i, j].item() == 0, (i, j)
        assert torch.isnan(reference.tv.box_iou(boxes[[i]], boxes[[j]])).item(), (i, j)
    assert out[2, 2].item() == 1
    assert out[5, 5].item() == 1
    assert out[2, 5].item() == pytest.approx(1 / 16)
    assert torch.all(out[3] == 0) and torch.all(out[:, 3] == 0)


def strided_views(boxes):
    """Non-contiguous views holding the same boxes, and a contiguous one that starts 4 bytes
    (one float32) past a 16-byte boundary of its storage."""
    lead = boxes.shape[:-1]
    yield boxes.transpose(-1, -2).contiguous().transpose(-1, -2)  # column-major
    yield torch.stack([boxes, torch.zeros_like(boxes)], -2).select(-2, 0)  # rows 32 elements apart
    yield torch.cat([boxes, boxes], -1)[..., 4:]  # rows 8 elements apart
    flat = torch.cat([boxes.new_zeros(1), boxes.flatten()])
    yield flat[1:].view(*lead, 4)  # contiguous, but offset by one element


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead1,lead2", [((33,), (257,)), ((3, 7), (3, 33))], ids=str)
def test_non_contiguous_inputs(device, dtype, lead1, lead2):
    boxes1 = random_boxes(lead1, dtype, device, seed=5)
    boxes2 = random_boxes(lead2, dtype, device, seed=6)
    expected = ops.box_iou(boxes1, boxes2)
    for view1, view2 in zip(strided_views(boxes1), strided_views(boxes2)):
        assert torch.equal(view1, boxes1) and torch.equal(view2, boxes2)
        assert torch.equal(ops.box_iou(view1, boxes2), expected)
        assert torch.equal(ops.box_iou(boxes1, view2), expected)
        assert torch.equal(ops.box_iou(view1, view2), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_broadcast_view(device):
    boxes1 = random_boxes((3, 7), torch.float32, device, seed=7)
    boxes2 = random_boxes((1, 33), torch.float32, device, seed=8).expand(3, 33, 4)  # batch stride 0
    check_against_reference(ops.box_iou(boxes1, boxes2), boxes1, boxes2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype,out_dtype",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
    ids=str,
)
def test_output_dtype(device, dtype, out_dtype):
    boxes = random_boxes((5,), dtype, device)
    assert ops.box_iou(boxes, boxes).dtype == out_dtype
    assert ops.box_iou(boxes[:0], boxes).dtype == out_dtype


def _box(*lead, dtype=torch.float32, last=4):
    return torch.ones(*lead, last, dtype=dtype)


BAD_INPUTS = [  # (boxes1, boxes2, expected message)
    (_box(3, last=5), _box(2), r"boxes1 must have shape \[N, 4\] or \[B, N, 4\], got \[3, 5\]"),
    (_box(), _box(2), r"boxes1 must have shape \[N, 4\] or \[B, N, 4\], got \[4\]"),
    (_box(1, 2, 3), _box(2), r"boxes1 must have shape .*, got \[1, 2, 3, 4\]"),
    (_box(2), _box(3, last=3), r"boxes2 must have shape \[M, 4\] or \[B, M, 4\], got \[3, 3\]"),
    (_box(2), _box(1, 3), r"boxes2 must have as many dimensions as boxes1 \(2\), got shape \[1, 3, 4\]"),
    (_box(2, 3), _box(3, 5), r"boxes2 must have the same batch size as boxes1 \(2\), got shape \[3, 5, 4\]"),
    (_box(2), _box(3, dtype=torch.float64), r"boxes2 must have the same dtype as boxes1 \(Float\), got Double"),
    (_box(2, dtype=torch.int64), _box(3, dtype=torch.int64), r"boxes1 must be float16, bfloat16, float32 or float64, got Long"),
    (_box(2), _box(3, dtype=torch.int32), r"boxes2 must be float16, bfloat16, float32 or float64, got Int"),
    (_box(2, dtype=torch.complex64), _box(3), r"boxes1 must be float16, bfloat16, float32 or float64, got ComplexFloat"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("boxes1,boxes2,message", BAD_INPUTS, ids=range(len(BAD_INPUTS)))
def test_bad_inputs_raise(device, boxes1, boxes2, message):
    with pytest.raises(RuntimeError, match="^detbench.box_iou: " + message):
        ops.box_iou(boxes1.to(device), boxes2.to(device))


def test_different_devices_raise():
    # meta stands in for a second device: its kernel runs the same checks as the CPU and CUDA ones.
    with pytest.raises(RuntimeError, match=r"^detbench.box_iou: boxes2 must be on the same device as boxes1 \(cpu\), got meta"):
        ops.box_iou(_box(2), _box(3).to("meta"))


@pytest.mark.cuda
def test_different_devices_raise_cuda():
    with pytest.raises(RuntimeError, match=r"boxes2 must be on the same device as boxes1 \(cuda:0\), got cpu"):
        ops.box_iou(_box(2).cuda(), _box(3))


NONFINITE = [  # (argument, batch dims, index of the bad box, value, where the message says it is)
    ("boxes1", (), (17,), float("nan"), "at box 17"),
    ("boxes2", (), (3,), float("inf"), "at box 3"),
    ("boxes1", (2,), (1, 4), float("-inf"), "at box 4 of batch 1"),
    ("boxes2", (3,), (2, 28), float("nan"), "at box 28 of batch 2"),
]


def _with_nonfinite(arg, batch, index, value, dtype, device):
    """boxes1 [*batch, 20, 4] and boxes2 [*batch, 30, 4] with `value` in box `index` of `arg`,
    and in the box after it too: the first bad box is the one to report."""
    boxes = {"boxes1": random_boxes((*batch, 20), dtype, seed=9), "boxes2": random_boxes((*batch, 30), dtype, seed=10)}
    boxes[arg][index + (2,)] = value
    boxes[arg][(*index[:-1], index[-1] + 1, 0)] = value
    return boxes["boxes1"].to(device), boxes["boxes2"].to(device)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arg,batch,index,value,where", NONFINITE, ids=range(len(NONFINITE)))
def test_cpu_nonfinite_coordinates_raise(dtype, arg, batch, index, value, where):
    boxes1, boxes2 = _with_nonfinite(arg, batch, index, value, dtype, "cpu")
    with pytest.raises(RuntimeError, match=rf"^detbench.box_iou: {arg} has a non-finite coordinate \(NaN or inf\) {where}$"):
        ops.box_iou(boxes1, boxes2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("arg,batch,index,value,where", NONFINITE, ids=range(len(NONFINITE)))
def test_cuda_validation_mode_raises_on_nonfinite(validation, dtype, arg, batch, index, value, where):
    boxes1, boxes2 = _with_nonfinite(arg, batch, index, value, dtype, "cuda")
    with pytest.raises(RuntimeError, match=rf"^detbench.box_iou: {arg} has a non-finite coordinate \(NaN or inf\) {where}$"):
        ops.box_iou(boxes1, boxes2)
    # Finite inputs pass validation unchanged.
    good1, good2 = random_boxes(boxes1.shape[:-1], dtype, "cuda"), random_boxes(boxes2.shape[:-1], dtype, "cuda")
    check_against_reference(ops.box_iou(good1, good2), good1, good2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_default_mode_nan_affects_only_its_row_and_column(dtype):
    boxes1 = random_boxes((40,), dtype, seed=11)
    boxes2 = random_boxes((50,), dtype, seed=12)
    boxes1[17, 0] = float("nan")
    boxes2[31, 3] = float("inf")
    out = ops.box_iou(boxes1.cuda(), boxes2.cuda())
    torch.cuda.synchronize()
    keep1, keep2 = torch.arange(40) != 17, torch.arange(50) != 31
    check_against_reference(out[keep1][:, keep2], boxes1[keep1], boxes2[keep2])


def test_validation_flag():
    assert not ops.validation_enabled()
    ops.set_validation(True)
    try:
        assert ops.validation_enabled()
    finally:
        ops.set_validation(False)
    assert not ops.validation_enabled()


def test_validation_env_var():
    env = dict(os.environ, DETBENCH_VALIDATE="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import ops; print(ops.validation_enabled())"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_build_info():
    info = ops.build_info()
    assert info["built_with_cuda"] is ops.BUILT_WITH_CUDA
    assert (info["cuda_version"] is None) == (not ops.BUILT_WITH_CUDA)
    assert info["torch_version"] == torch.__version__


@pytest.mark.skipif(ops.BUILT_WITH_CUDA, reason="a CUDA build has CUDA kernels: the rebuild message cannot occur")
def test_cpu_only_build_rejects_cuda_tensors():
    # Fake CUDA tensors (no GPU needed) take the same path through ops.box_iou as real ones.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        boxes = torch.ones(3, 4, device="cuda")
        with pytest.raises(RuntimeError, match=r"^detbench.box_iou: got CUDA tensors but detbench was built without CUDA kernels; rebuild with `FORCE_CUDA=1 pip install --no-build-isolation -e \.`"):
            ops.box_iou(boxes, boxes)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = ops.box_iou(torch.empty(2, 5, 4, dtype=torch.float16), torch.empty(2, 9, 4, dtype=torch.float16))
        assert out.shape == (2, 5, 9) and out.dtype == torch.float32


def test_opcheck():
    boxes1 = random_boxes((2, 7), torch.float32, seed=13)
    boxes2 = random_boxes((2, 33), torch.float32, seed=14)
    torch.library.opcheck(torch.ops.detbench.box_iou.default, (boxes1, boxes2))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    compiled = torch.compile(ops.box_iou, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for lead1, lead2 in [((7,), (33,)), ((9,), (40,)), ((2, 7), (2, 33))]:
        boxes1 = random_boxes(lead1, torch.float32, seed=15)
        boxes2 = random_boxes(lead2, torch.float32, seed=16)
        assert torch.equal(compiled(boxes1, boxes2), ops.box_iou(boxes1, boxes2))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_graph_capture_and_replay(dtype):
    boxes1 = random_boxes((33,), dtype, "cuda", seed=17)
    boxes2 = random_boxes((257,), dtype, "cuda", seed=18)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.box_iou(boxes1, boxes2)  # warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.box_iou(boxes1, boxes2)
    boxes1.copy_(random_boxes((33,), dtype, "cuda", seed=19))
    boxes2.copy_(random_boxes((257,), dtype, "cuda", seed=20))
    graph.replay()
    torch.cuda.synchronize()
    check_against_reference(out, boxes1, boxes2)


@pytest.mark.cuda
def test_cuda_grid_limits():
    # More batches than a grid's z dimension holds (65535): the kernel loops over the rest.
    boxes1 = random_boxes((70000, 1), torch.float32, "cuda", seed=21)
    boxes2 = random_boxes((70000, 3), torch.float32, "cuda", seed=22)
    check_against_reference(ops.box_iou(boxes1, boxes2), boxes1, boxes2)


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1030, 1032], ids=["scalar_stores", "vector_stores"])
def test_cuda_thread_loops_over_rows(m):
    # Far more rows than the grid has threads for: each thread loops down the rows.
    boxes1 = random_boxes((2, 20000), torch.float32, "cuda", seed=25)
    boxes2 = random_boxes((2, m), torch.float32, "cuda", seed=26)
    poison_allocator((2, 20000, m), torch.float32, "cuda")
    out = ops.box_iou(boxes1, boxes2)
    rows = torch.arange(0, 20000, 97)
    check_against_reference(out[:, rows], boxes1[:, rows], boxes2)


@pytest.mark.cuda
def test_cuda_more_than_2_31_outputs():
    # 2.1M x 1024 outputs (8.6 GB): past int32 indexing, and more row tiles than the grid's y
    # dimension holds. Rows near both ends are checked.
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GB of GPU memory")
    n, m = 2_100_000, 1024
    assert n * m > 2**31
    boxes1 = random_boxes((n,), torch.float32, "cuda", seed=23)
    boxes2 = random_boxes((m,), torch.float32, "cuda", seed=24)
    out = ops.box_iou(boxes1, boxes2)
    for rows in [slice(0, 64), slice(n // 2, n // 2 + 64), slice(n - 64, n)]:
        check_against_reference(out[rows], boxes1[rows], boxes2)
    del out
    torch.cuda.empty_cache()
