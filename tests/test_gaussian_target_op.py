"""Correctness of ops.draw_heatmap, draw_heatmap_batched, gaussian_radius and
centernet_centers_and_radii: against mmdet's own functions (loaded from the installed mmdet,
max abs difference <= 1e-6 on the same device) and the float64 drawer, on weird shapes,
existing heatmap content, every bad input, torch.compile and opcheck; CUDA: the default path's
safe result, validation mode, one launch, CUDA graphs."""
import pytest
import torch

import ops
from reference import gaussian_target as ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
needs_mmdet = pytest.mark.skipif(ref.MMDET is None, reason=f"mmdet unavailable: {ref.MMDET_UNAVAILABLE}")
ATOL = 1e-6


def assert_close(got, expected, atol=ATOL, what="heatmap"):
    got, expected = got.detach().cpu().double(), expected.detach().cpu().double()
    assert got.shape == expected.shape, (got.shape, expected.shape)
    both_nan = torch.isnan(got) & torch.isnan(expected)
    err = torch.where(both_nan, torch.zeros_like(got), (got - expected).abs())
    err = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)
    if err.numel() and err.max() > atol:
        worst = torch.topk(err.flatten(), min(5, err.numel())).indices
        lines = [f"  at {tuple(int(i) for i in torch.unravel_index(j, err.shape))}: got {got.flatten()[j].item()!r}, "
                 f"expected {expected.flatten()[j].item()!r}" for j in worst]
        raise AssertionError(f"{what}: max abs err {err.max().item():.3g} > {atol:g}\n" + "\n".join(lines))


def random_batched(seed, b, h, w, t, classes=None, r_max=4, dtype=torch.int64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    centers = torch.stack((torch.randint(0, w, (b, t), generator=g), torch.randint(0, h, (b, t), generator=g)), -1)
    radii = torch.randint(0, r_max + 1, (b, t), generator=g)
    counts = torch.randint(0, t + 1, (b,), generator=g)
    labels = torch.randint(0, classes, (b, t), generator=g) if classes else None
    shape = (b, classes, h, w) if classes else (b, h, w)
    to = lambda x: None if x is None else x.to(dtype).to(device)  # noqa: E731
    return torch.zeros(shape, device=device), to(centers), to(radii), to(counts), to(labels)


BATCHED_SHAPES = [  # (b, h, w, t, classes, r_max)
    (48, 20, 50, 50, None, 4), (48, 20, 50, 50, 20, 4), (3, 1, 1, 4, None, 3), (2, 33, 65, 40, None, 40),
    (1, 100, 7, 9, 3, 12), (4, 64, 64, 300, 2, 20), (0, 5, 5, 3, None, 1), (3, 5, 5, 0, 2, 1),
    (2, 128, 128, 8, None, 200),
]


@needs_mmdet
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("shape", BATCHED_SHAPES, ids=str)
def test_batched_matches_mmdet_and_float64(device, index_dtype, shape):
    b, h, w, t, classes, r_max = shape
    heat, centers, radii, counts, labels = random_batched(sum(shape[:4]), b, h, w, t, classes, r_max, index_dtype,
                                                         device)
    expected = ref.mmdet_draw_heatmap_batched(heat.clone(), centers, radii, counts, labels)
    got = ops.draw_heatmap_batched(heat, centers, radii, counts, labels)
    assert got is heat
    assert_close(got, expected)
    assert_close(got, ref.vectorized_draw_heatmap_batched(torch.zeros_like(heat), centers, radii, counts, labels,
                                                          dtype=torch.float64))


@needs_mmdet
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1.0, 0.5, 3.0, -1.0])
def test_flat_matches_mmdet_on_existing_content(device, k):
    """Drawing merges with what the heatmaps hold (random values, some above the Gaussians)."""
    g = torch.Generator().manual_seed(7)
    m, h, w, t = 6, 37, 70, 120
    heat = (torch.rand(m, h, w, generator=g) * 1.5 - 0.25).to(device)
    centers = torch.stack((torch.randint(0, w, (t,), generator=g), torch.randint(0, h, (t,), generator=g)), -1)
    radii = torch.randint(0, 30, (t,), generator=g)
    index = torch.randint(0, m, (t,), generator=g)
    centers, radii, index = centers.to(device), radii.to(device), index.to(device)
    expected = ref.mmdet_draw_heatmap(heat.clone(), centers, radii, index, k)
    assert_close(ops.draw_heatmap(heat, centers, radii, index, k), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_in_heatmap_stays_nan_and_untouched_pixels_keep_their_bits(device):
    heat = torch.full((1, 9, 9), 0.25, device=device)
    heat[0, 4, 5] = float("nan")
    heat[0, 0, 0] = -7.0  # outside every window
    before = heat.clone()
    ops.draw_heatmap(heat, torch.tensor([[4, 4]], device=device), torch.tensor([1], device=device),
                     torch.tensor([0], device=device))
    assert torch.isnan(heat[0, 4, 5])
    assert heat[0, 4, 4] == 1.0
    window = torch.zeros(9, 9, dtype=torch.bool)
    window[3:6, 3:6] = True
    assert torch.equal(heat[0][~window.to(device)], before[0][~window.to(device)])


@pytest.mark.parametrize("device", DEVICES)
def test_radius_zero_is_one_pixel_and_boxes_past_the_borders_clip(device):
    heat = torch.zeros(2, 4, 6, device=device)
    ops.draw_heatmap(heat, torch.tensor([[0, 0], [5, 3]], device=device), torch.tensor([0, 1000], device=device),
                     torch.tensor([0, 1], device=device))
    assert heat[0].count_nonzero() == 1 and heat[0, 0, 0] == 1.0
    assert heat[1].count_nonzero() == 24 and heat[1, 3, 5] == 1.0  # radius 1000 covers the plane


@needs_mmdet
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gaussian_radius_matches_mmdet_on_the_same_device(device, dtype):
    """Bit for bit: mmdet called with 0-dim tensors of that dtype on that device."""
    g = torch.Generator().manual_seed(3)
    h = (torch.rand(400, generator=g) * 200 + 0.5).to(dtype)
    w = (torch.rand(400, generator=g) * 200 + 0.5).to(dtype)
    h[:5] = torch.tensor([1.0, 7.25, 100.0, 0.5, 3.0], dtype=dtype)
    w[:5] = torch.tensor([1.0, 7.25, 2.0, 64.0, 3.0], dtype=dtype)
    h, w = h.to(device), w.to(device)
    for overlap in (0.3, 0.7):
        expected = ref.mmdet_gaussian_radius(h, w, overlap)
        got = ops.gaussian_radius(h, w, overlap)
        assert got.dtype == dtype
        assert torch.equal(got.cpu(), expected.cpu()), (got - expected).abs().max()
        assert_close(got, ref.float64_gaussian_radius(h, w, overlap), atol=1e-4, what="radius vs float64")


def test_gaussian_radius_float64_cpu_is_mmdet_with_python_floats():
    if ref.MMDET is None:
        pytest.skip(ref.MMDET_UNAVAILABLE)
    h = torch.tensor([3.5, 17.0, 250.25], dtype=torch.float64)
    w = torch.tensor([9.0, 17.0, 1.5], dtype=torch.float64)
    expected = [ref.MMDET.gaussian_radius([a, b], 0.7) for a, b in zip(h.tolist(), w.tolist())]
    assert ops.gaussian_radius(h, w).tolist() == expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gaussian_radius_is_nan_where_mmdet_raises(device, dtype):
    """h + w = 0 with h * w < 0: the first two discriminants are positive, the third negative
    (mmdet's math.sqrt raises); NaN inputs stay NaN; a normal box beside them is unaffected."""
    h = torch.tensor([10.0, 10.0, float("nan"), 4.0], dtype=dtype, device=device)
    w = torch.tensor([-10.0, -30.0, 3.0, 6.0], dtype=dtype, device=device)
    got = ops.gaussian_radius(h, w, 0.7).cpu()
    expected = ref.float64_gaussian_radius(h.cpu(), w.cpu(), 0.7)
    assert expected[:3].isnan().all() and not expected[3].isnan(), expected  # the arbiter agrees
    assert got[:3].isnan().all(), got
    assert not got[3].isnan() and abs(float(got[3]) - float(expected[3])) < 1e-5, (got, expected)
    if ref.MMDET is not None:
        for a, b in zip(h[:2].tolist(), w[:2].tolist()):
            with pytest.raises(ValueError):
                ref.MMDET.gaussian_radius([a, b], 0.7)


@needs_mmdet
@pytest.mark.parametrize("device", DEVICES)
def test_centernet_centers_and_radii_match_centernet_head(device):
    """CenterNetHead.get_targets' per-box arithmetic, replayed with mmdet's gaussian_radius."""
    g = torch.Generator().manual_seed(11)
    size = torch.rand(64, 2, generator=g) * 300 + 1
    xy = torch.rand(64, 2, generator=g) * (512 - size)
    boxes = torch.cat((xy, xy + size), 1).to(device)
    width_ratio, height_ratio = float(128 / 512), float(128 / 512)
    centers, radii = ops.centernet_centers_and_radii(boxes, width_ratio, height_ratio)
    center_x = (boxes[:, [0]] + boxes[:, [2]]) * width_ratio / 2
    center_y = (boxes[:, [1]] + boxes[:, [3]]) * height_ratio / 2
    for j, ct in enumerate(torch.cat((center_x, center_y), dim=1)):
        ctx_int, cty_int = ct.int()
        scale_box_h = (boxes[j][3] - boxes[j][1]) * height_ratio
        scale_box_w = (boxes[j][2] - boxes[j][0]) * width_ratio
        radius = max(0, int(ref.MMDET.gaussian_radius([scale_box_h, scale_box_w], min_overlap=0.3)))
        assert centers[j].tolist() == [int(ctx_int), int(cty_int)] and int(radii[j]) == radius, j


# ---------------------------------------------------------------------------------------------
# Bad input


def flat_args(device="cpu", **over):
    args = dict(heatmaps=torch.zeros(3, 20, 50, device=device), centers=torch.tensor([[4, 5], [49, 19]], device=device),
                radii=torch.tensor([2, 3], device=device), heatmap_index=torch.tensor([0, 2], device=device))
    args.update(over)
    return args


def batched_args(device="cpu", **over):
    args = dict(heatmaps=torch.zeros(2, 4, 20, 50, device=device),
                centers=torch.tensor([[[4, 5], [49, 19]], [[0, 0], [9, 9]]], device=device),
                radii=torch.tensor([[2, 3], [1, 1]], device=device), counts=torch.tensor([2, 1], device=device),
                labels=torch.tensor([[0, 3], [1, 7]], device=device))
    args.update(over)
    return args


METADATA_ERRORS = [
    ("flat", dict(heatmaps=torch.zeros(3, 20, 50, dtype=torch.float64)), "heatmaps must be float32"),
    ("flat", dict(heatmaps=torch.zeros(3, 50, 20).transpose(1, 2)), "heatmaps must be contiguous"),
    ("flat", dict(heatmaps=torch.zeros(20, 50)), r"heatmaps must have shape \[M, H, W\]"),
    ("flat", dict(centers=torch.tensor([[4.0, 5.0], [1.0, 1.0]])), "centers must be int32 or int64"),
    ("flat", dict(centers=torch.tensor([4, 5])), r"centers must have shape \[T, 2\]"),
    ("flat", dict(radii=torch.tensor([2])), r"radii must have shape \[T\]"),
    ("flat", dict(radii=torch.tensor([2, 3], dtype=torch.int32)), "radii must have the same dtype as centers"),
    ("flat", dict(heatmap_index=torch.tensor([0, 1, 2])), r"heatmap_index must have shape \[T\]"),
    ("batched", dict(labels=None), r"heatmaps must have shape \[B, H, W\] \(or \[B, C, H, W\] with labels\)"),
    ("batched", dict(heatmaps=torch.zeros(2, 20, 50)), r"heatmaps must have shape \[B, C, H, W\] when labels"),
    ("batched", dict(counts=torch.tensor([2, 1, 0])), r"counts must have shape \[B\]"),
    ("batched", dict(centers=torch.zeros(3, 2, 2, dtype=torch.int64)), r"centers must have shape \[B, T, 2\]"),
    ("batched", dict(labels=torch.tensor([[0, 3]])), r"labels must have shape \[B, T\]"),
    ("batched", dict(counts=torch.tensor([2, 1], dtype=torch.int32)), "counts must have the same dtype as centers"),
]


@pytest.mark.parametrize("kind,over,message", METADATA_ERRORS)
def test_metadata_errors(kind, over, message):
    fn, args = (ops.draw_heatmap, flat_args(**over)) if kind == "flat" else (ops.draw_heatmap_batched,
                                                                              batched_args(**over))
    with pytest.raises(RuntimeError, match=f"detbench.draw_heatmap(_batched)?: {message}"):
        fn(**args)


def test_k_must_be_finite():
    with pytest.raises(RuntimeError, match="k must be finite"):
        ops.draw_heatmap(**flat_args(), k=float("inf"))


VALUE_ERRORS = [
    ("flat", dict(centers=torch.tensor([[50, 5], [1, 1]])), r"centers\[0\] = \(x=50, y=5\) is outside the 20x50"),
    ("flat", dict(centers=torch.tensor([[4, 5], [1, -1]])), r"centers\[1\] = \(x=1, y=-1\) is outside"),
    ("flat", dict(radii=torch.tensor([2, -3])), r"radii\[1\] must be >= 0, got -3"),
    ("flat", dict(heatmap_index=torch.tensor([3, 0])), r"heatmap_index\[0\] must be in \[0, 3\), got 3"),
    ("batched", dict(counts=torch.tensor([3, 1])), r"counts\[0\] must be in \[0, T\] with T = 2"),
    ("batched", dict(counts=torch.tensor([2, -1])), r"counts\[1\] must be in \[0, T\]"),
    ("batched", dict(labels=torch.tensor([[0, 4], [1, 7]])), r"labels\[0, 1\] must be in \[0, 4\), got 4"),
    ("batched", dict(centers=torch.tensor([[[4, 5], [49, 20]], [[0, 0], [9, 9]]])), r"centers\[0, 1\] = \(x=49, y=20\)"),
]


@pytest.mark.parametrize("kind,over,message", VALUE_ERRORS)
def test_value_errors_on_cpu(kind, over, message):
    fn, args = (ops.draw_heatmap, flat_args(**over)) if kind == "flat" else (ops.draw_heatmap_batched,
                                                                              batched_args(**over))
    before = args["heatmaps"].clone()
    with pytest.raises(RuntimeError, match=message):
        fn(**args)
    assert torch.equal(args["heatmaps"], before), "an error must leave the heatmaps untouched"


def test_padding_past_counts_is_never_read():
    """Boxes past counts[b] may hold anything: no error, no drawing."""
    args = batched_args()
    args["labels"][1, 1] = 99
    args["centers"][1, 1] = torch.tensor([-5, 1000])
    args["radii"][1, 1] = -4
    ops.draw_heatmap_batched(**args)
    assert args["heatmaps"][1].count_nonzero() == 4  # box (1, 0): radius 1 at the corner (0, 0)


def test_mismatched_devices():
    if not torch.cuda.is_available():
        meta = torch.zeros(3, 20, 50, device="meta")
        with pytest.raises(RuntimeError, match="centers must be on the same device as heatmaps"):
            torch.ops.detbench.draw_heatmap(meta, flat_args()["centers"], flat_args()["radii"],
                                            flat_args()["heatmap_index"])
        return
    with pytest.raises(RuntimeError, match="centers must be on the same device as heatmaps"):
        ops.draw_heatmap(**flat_args(heatmaps=torch.zeros(3, 20, 50, device="cuda")))


def test_gaussian_radius_errors():
    h = torch.ones(3)
    with pytest.raises(RuntimeError, match="heights must be float32 or float64"):
        ops.gaussian_radius(h.half(), h.half())
    with pytest.raises(RuntimeError, match="widths must have the same dtype as heights"):
        ops.gaussian_radius(h, h.double())
    with pytest.raises(RuntimeError, match="widths must have the same shape as heights"):
        ops.gaussian_radius(h, torch.ones(4))
    with pytest.raises(RuntimeError, match=r"min_overlap must be in \(0, 1\)"):
        ops.gaussian_radius(h, h, 1.0)


# ---------------------------------------------------------------------------------------------
# torch.compile, opcheck


def test_compile_fullgraph():
    heat, centers, radii, counts, labels = random_batched(5, 4, 20, 50, 30, classes=3)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def targets(heat, centers, radii, counts, labels):
        heat.zero_()
        ops.draw_heatmap_batched(heat, centers, radii, counts, labels)
        return heat * 2

    expected = ops.draw_heatmap_batched(torch.zeros_like(heat), centers, radii, counts, labels) * 2
    assert torch.equal(targets(heat, centers, radii, counts, labels), expected)


def test_opcheck():
    heat, centers, radii, counts, labels = random_batched(6, 3, 20, 50, 10, classes=4)
    torch.library.opcheck(torch.ops.detbench.draw_heatmap_batched.default, (heat, centers, radii, counts, labels, 1.0))
    torch.library.opcheck(torch.ops.detbench.draw_heatmap.default, tuple(flat_args().values()) + (1.0,))
    torch.library.opcheck(torch.ops.detbench.gaussian_radius.default, (torch.rand(5) + 1, torch.rand(5) + 1, 0.7))


# ---------------------------------------------------------------------------------------------
# CUDA: the default path's safe result, validation mode, one launch, graphs


@pytest.mark.cuda
@pytest.mark.parametrize("kind,over,message", VALUE_ERRORS)
def test_cuda_default_skips_bad_boxes_and_validation_raises(kind, over, message, validation):
    fn = ops.draw_heatmap if kind == "flat" else ops.draw_heatmap_batched
    make = flat_args if kind == "flat" else batched_args
    args = make("cuda", **{k: v.cuda() for k, v in over.items()})
    with pytest.raises(RuntimeError, match=message):
        fn(**args)
    ops.set_validation(False)
    fn(**args)  # default: no error; bad boxes skipped, counts clamped
    cpu = make(**over)
    if kind == "flat":
        ok = ((cpu["centers"][:, 0] >= 0) & (cpu["centers"][:, 0] < 50) & (cpu["centers"][:, 1] >= 0)
              & (cpu["centers"][:, 1] < 20) & (cpu["radii"] >= 0) & (cpu["heatmap_index"] < 3))
        expected = ops.draw_heatmap(cpu["heatmaps"], cpu["centers"][ok], cpu["radii"][ok], cpu["heatmap_index"][ok])
    else:
        t = cpu["centers"].shape[1]
        counts = cpu["counts"].clamp(0, t)
        expected = cpu["heatmaps"]
        for b in range(2):
            for j in range(int(counts[b])):
                x, y = cpu["centers"][b, j].tolist()
                if 0 <= x < 50 and 0 <= y < 20 and cpu["radii"][b, j] >= 0 and 0 <= cpu["labels"][b, j] < 4:
                    ops.draw_heatmap(expected[b], cpu["centers"][b, j:j + 1], cpu["radii"][b, j:j + 1],
                                     cpu["labels"][b, j:j + 1])
    assert_close(args["heatmaps"], expected)


@pytest.mark.cuda
def test_cuda_one_launch_for_the_accv_case():
    heat, centers, radii, counts, _ = random_batched(1, 48, 20, 50, 50, r_max=4, dtype=torch.int32, device="cuda")
    ops.draw_heatmap_batched(heat, centers, radii, counts)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        ops.draw_heatmap_batched(heat, centers, radii, counts)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1, kernels


@pytest.mark.cuda
def test_cuda_graph_capture_and_determinism():
    heat, centers, radii, counts, labels = random_batched(2, 16, 128, 128, 128, classes=80, r_max=40, device="cuda")
    expected = ops.draw_heatmap_batched(heat.clone(), centers, radii, counts, labels)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        with torch.cuda.graph(graph):
            heat.zero_()
            ops.draw_heatmap_batched(heat, centers, radii, counts, labels)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(heat, expected)
    assert_close(heat, ops.draw_heatmap_batched(heat.cpu().zero_(), centers.cpu(), radii.cpu(), counts.cpu(),
                                                labels.cpu()))
