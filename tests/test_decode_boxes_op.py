"""ops.decode_boxes against torchvision's BoxCoder.decode_single (fp32: within an ulp; half
types: torchvision's per-step rounding) and the float64 reference, with batching, classes,
extreme deltas and the documented errors."""
import math

import pytest
import torch
from torchvision.models.detection import _utils as det_utils

import ops
from half_values import every_value
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


def _round(x, dtype):
    return x.to(dtype).float() if dtype != torch.float32 else x


def _bits_as_float(bits):
    return bits.to(torch.int32).view(torch.float32)


def _model_exp(x):
    """The CPU kernels' float exp (csrc/cpu/vectorizable.h, csrc/cpu/avx2.h), step by step in
    float32 tensor ops: clamp, Cody-Waite reduction, Cephes' polynomial, 2^n in two factors."""
    nan = torch.isnan(x)
    xc = torch.where(nan, 0.0, x.clamp(-104.0, 89.0))
    k_round = 12582912.0
    shifted = xc * 1.44269504088896341 + k_round
    n = shifted - k_round
    e = shifted.view(torch.int32) - torch.tensor(k_round).view(torch.int32)
    r = xc - n * 0.693359375
    r = r - n * -2.12194440e-4
    z = r * r
    y = torch.full_like(r, 1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        y = y * r + c
    y = y * z + r + 1.0
    e1 = e >> 1
    scaled = y * _bits_as_float((e1 + 127) << 23) * _bits_as_float((e - e1 + 127) << 23)
    return torch.where(nan, x, scaled)


def model_decode(deltas, boxes, weights, clip):
    """decode_box as the CPU kernels compute it (float32 steps, each rounded to the dtype; the
    kernels' exp): their exact bits, so any difference between their code paths shows."""
    dtype = deltas.dtype
    d = deltas.float().unflatten(-1, (-1, 4))
    b = boxes.to(dtype).float()[..., None, :]
    width, height = _round(b[..., 2] - b[..., 0], dtype), _round(b[..., 3] - b[..., 1], dtype)
    ctr_x = _round(b[..., 0] + _round(0.5 * width, dtype), dtype)
    ctr_y = _round(b[..., 1] + _round(0.5 * height, dtype), dtype)
    dx, dy, dw, dh = (_round(d[..., k] / torch.full_like(d[..., k], weights[k]), dtype) for k in range(4))
    clip_t = _round(torch.tensor(clip).float(), dtype)
    dw = torch.where(dw > clip_t, clip_t, dw)
    dh = torch.where(dh > clip_t, clip_t, dh)
    pred_ctr_x = _round(_round(dx * width, dtype) + ctr_x, dtype)
    pred_ctr_y = _round(_round(dy * height, dtype) + ctr_y, dtype)
    pred_w = _round(_round(_model_exp(dw), dtype) * width, dtype)
    pred_h = _round(_round(_model_exp(dh), dtype) * height, dtype)
    half_w, half_h = _round(0.5 * pred_w, dtype), _round(0.5 * pred_h, dtype)
    out = torch.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], -1)
    return out.flatten(-2).to(dtype)


SPECIAL_VALUES = [0.0, -0.0, 1e-8, -1e-8, 6e-5, 1e-30, 1e4, -1e4, 1e30, -1e30, 65504.0, 70000.0, math.inf,
                  -math.inf, math.nan, 4.135, 4.1352, 11.0, 11.1, 88.7, 89.0, 104.0, -104.0, -110.0, 0.5, 2.5]


def adversarial(n, c, scale, seed):
    """Random boxes and deltas with a fifth of the deltas and a tenth of the box coordinates
    replaced by special values (overflow, underflow, subnormal, inf, NaN, clip edges), a third of
    the boxes empty and a sixth inverted."""
    g = torch.Generator().manual_seed(seed)
    deltas, boxes = make(n, c, seed=seed, scale=scale)
    special = torch.tensor(SPECIAL_VALUES)
    for t, p in ((deltas, 0.2), (boxes, 0.1)):
        m = torch.rand(t.shape, generator=g) < p
        t[m] = special[torch.randint(len(special), (int(m.sum()),), generator=g)]
    boxes[: n // 3, 2:] = boxes[: n // 3, :2]
    boxes[n // 3: n // 2, 2:] = boxes[n // 3: n // 2, :2] - 5
    return deltas, boxes


def assert_bits_equal(got, want):
    both_nan = torch.isnan(got) & torch.isnan(want)
    same = ((got == want) & (torch.signbit(got) == torch.signbit(want))) | both_nan
    if not same.all():
        idx = (~same).nonzero()[:5]
        pytest.fail(f"{int((~same).sum())} of {got.numel()} differ; first {[(i.tolist(), got[tuple(i)].item(), want[tuple(i)].item()) for i in idx]}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,c", [(0, 1), (1, 1), (7, 1), (8, 1), (9, 1), (17, 1), (1000, 1), (5, 3), (16, 8), (101, 91)])
@pytest.mark.parametrize("weights,clip", [((1.0, 1.0, 1.0, 1.0), math.log(1000 / 16)), ((10.0, 10.0, 5.0, 5.0), 4.0),
                                          ((0.1, 3.0, 0.7, 1e-3), 0.0), ((1.0, 1.0, 1.0, 1.0), math.inf),
                                          ((1.0, 2.0, 1.0, 2.0), -math.inf)])
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_bits_match_the_kernel_model(dtype, n, c, weights, clip, threads):
    """Bit for bit (NaN as NaN) against model_decode on adversarial data, whichever CPU path runs
    (AVX2 + F16C, or the auto-vectorized fallback), every tail length of the 8-pair steps."""
    deltas, boxes = adversarial(n, c, scale=5.0, seed=n * 100 + c)
    deltas, boxes = deltas.to(dtype), boxes.to(dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = ops.decode_boxes(deltas, boxes, weights, clip)
    finally:
        torch.set_num_threads(previous)
    assert_bits_equal(got, model_decode(deltas, boxes, weights, clip))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_half_value_as_delta(dtype):
    """Every float16/bfloat16 bit pattern as each of the 4 deltas: exact against the model."""
    values = every_value(dtype)
    deltas = values.repeat_interleave(4).reshape(-1, 4 * 4)
    boxes = torch.tensor([[3.0, 5.0, 1000.0, 1.0]], dtype=dtype).expand(deltas.shape[0], 4)
    for weights, clip in (((1.0, 1.0, 1.0, 1.0), math.log(1000 / 16)), ((10.0, 10.0, 5.0, 5.0), 4.0)):
        assert_bits_equal(ops.decode_boxes(deltas, boxes, weights, clip), model_decode(deltas, boxes, weights, clip))
