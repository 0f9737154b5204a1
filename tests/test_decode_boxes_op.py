"""ops.decode_boxes against torchvision's BoxCoder.decode_single (fp32: within an ulp; half
types: torchvision's per-step rounding) and the float64 reference, with batching, classes,
extreme deltas and the documented errors."""
import math

import pytest
import torch
from torchvision.models.detection import _utils as det_utils

import ops
from reference import proposals as ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def make(n, c=1, batch=None, dtype=torch.float32, device="cpu", seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1000
    wh = torch.rand(n, 2, generator=g) * 300 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    shape = (n, 4 * c) if batch is None else (batch, n, 4 * c)
    deltas = torch.randn(shape, generator=g) * scale
    return deltas.to(dtype).to(device), boxes.to(dtype).to(device)


def assert_close(got, want, atol, rtol):
    """rtol is relative to each box's largest coordinate: x1 = ctr - w / 2 cancels, so a coordinate
    near 0 carries the rounding error of ctr and w (torch's CPU kernels round differently per
    SIMD width: AVX2 here, AVX-512 on the GPU host)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    err = (got.double() - want.double()).abs()
    boxes = want.double().abs().reshape(*want.shape[:-1], want.shape[-1] // 4, 4)
    scale = boxes.amax(-1, keepdim=True).expand_as(boxes).reshape(want.shape)
    bad = ~(err <= atol + rtol * scale)
    if bad.any():
        idx = bad.nonzero()[:5]
        pytest.fail(f"{int(bad.sum())} values differ; worst {[(i.tolist(), got[tuple(i)].item(), want[tuple(i)].item()) for i in idx]}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [0, 1, 7, 1000, 4099])
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_float32_matches_torchvision_and_float64(device, n, weights):
    deltas, boxes = make(n, c=3, device=device, seed=n)
    got = ops.decode_boxes(deltas, boxes, weights)
    assert_close(got, ref.tv_decode_boxes(deltas, boxes, weights), atol=1e-4, rtol=1e-6)
    assert_close(got, ref.pure_decode_boxes(deltas, boxes, weights), atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_round_like_torchvision(device, dtype):
    deltas, boxes = make(3000, device=device, dtype=dtype, seed=3)
    got = ops.decode_boxes(deltas, boxes)
    want = ref.tv_decode_boxes(deltas, boxes)
    # per-step rounding reproduced: equal up to exp's last float ulp, which can flip one rounding
    ulp = 2.0 ** (-10 if dtype == torch.float16 else -7)
    assert_close(got, want, atol=0.0, rtol=2 * ulp)
    assert (got == want).float().mean() > 0.99


@pytest.mark.parametrize("device", DEVICES)
def test_batched_shared_and_per_image_boxes(device):
    deltas, boxes = make(500, c=2, batch=3, device=device, seed=5)
    got = ops.decode_boxes(deltas, boxes)
    assert_close(got, ref.tv_decode_boxes(deltas, boxes), atol=1e-4, rtol=1e-6)
    per_image = torch.stack([boxes + i for i in range(3)])
    got = ops.decode_boxes(deltas, per_image)
    assert_close(got, ref.tv_decode_boxes(deltas, per_image), atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_extreme_and_nan_deltas(device):
    deltas, boxes = make(6, device=device)
    deltas[0, 2:] = 1e4  # clamped at clip
    deltas[1, 2:] = -1e4  # exp underflows to 0
    deltas[2, 0] = float("nan")
    deltas[3, 3] = float("nan")
    deltas[4, :2] = 1e30
    got = ops.decode_boxes(deltas, boxes)
    want = ref.tv_decode_boxes(deltas, boxes)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    finite = ~torch.isnan(want)
    assert_close(got[finite], want[finite], atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda d, b: ops.decode_boxes(d[:, :3], b), r"deltas must have shape \[N, 4 \* C\]"),
    (lambda d, b: ops.decode_boxes(d, b[:5]), "boxes must have N = 6"),
    (lambda d, b: ops.decode_boxes(d.long(), b), "deltas must be float16"),
    (lambda d, b: ops.decode_boxes(d, b.int()), "boxes must be float16"),
    (lambda d, b: ops.decode_boxes(d, b, (1.0, 1.0, 0.0, 1.0)), "weights must be finite and non-zero"),
    (lambda d, b: ops.decode_boxes(d, b, (1.0, 1.0, 1.0)), "weights must have 4 values"),
    (lambda d, b: ops.decode_boxes(d, b, clip=float("nan")), "clip must not be NaN"),
    (lambda d, b: ops.decode_boxes(d[None], b[None].expand(2, 6, 4)), "boxes must have batch size 1"),
])
def test_errors(call, match):
    deltas, boxes = make(6)
    with pytest.raises(RuntimeError, match=match):
        call(deltas, boxes)


def test_default_clip_is_torchvisions():
    assert ops.box_coder.DEFAULT_CLIP == det_utils.BoxCoder((1, 1, 1, 1)).bbox_xform_clip == math.log(1000 / 16)


def test_opcheck_and_compile():
    deltas, boxes = make(33, c=2)
    torch.library.opcheck(torch.ops.detbench.decode_boxes.default, (deltas, boxes, [1.0, 2.0, 3.0, 4.0], 4.0))
    compiled = torch.compile(ops.decode_boxes, fullgraph=True, backend="aot_eager", dynamic=True)
    assert torch.equal(compiled(deltas, boxes), ops.decode_boxes(deltas, boxes))
