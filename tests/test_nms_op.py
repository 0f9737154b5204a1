"""Correctness of ops.nms, batched_nms, segmented_nms and segmented_nms_padded on CPU and CUDA:
against a greedy reference computed in the ops' own precision (which must match exactly, even
at the threshold), against the float64 reference and torchvision where they decide the same,
and on the documented edge cases (ties, duplicates, degenerate boxes, NaN, bad offsets)."""
import math

import pytest
import torch
import torchvision

import ops
import reference
from suites._boxes import clustered_boxes

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SIZES = [0, 1, 2, 63, 64, 65, 257, 1000, 1024, 1025, 2049, 4097, 9000]  # CUDA: <= 1024 boxes take the bitmask path, > 2048 the all-GPU path


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def make(n, seed, dtype=torch.float32, device="cpu", objects=None, integer=False, offset=0.0):
    """n clustered boxes and uniform scores (ties appear once cast to half types)."""
    g = torch.Generator().manual_seed(seed)
    boxes = clustered_boxes(n, g, objects)
    if integer:
        boxes = boxes.round()
    boxes = boxes + offset
    scores = torch.rand(n, generator=g)
    return boxes.to(dtype).to(device), scores.to(dtype).to(device)


def distinct_scores(n, seed, device="cpu"):
    """n different float32 scores in [0, 1), in random order."""
    return (torch.randperm(n, generator=torch.Generator().manual_seed(seed)).float() / n).to(device)


# ---------------------------------------------------------------------------------------------
# References


def ref_rank(scores):
    """Descending score, equal scores by ascending index."""
    return torch.sort(scores.double(), descending=True, stable=True).indices


def ref_iou_above(kept_box, kept_area, boxes, areas, thr):
    """IoU(kept box, boxes) > thr (a Python float), with the ops' formula in the ops' precision,
    compared with thr as a real number."""
    w = (torch.minimum(kept_box[2], boxes[:, 2]) - torch.maximum(kept_box[0], boxes[:, 0])).clamp(min=0)
    h = (torch.minimum(kept_box[3], boxes[:, 3]) - torch.maximum(kept_box[1], boxes[:, 1])).clamp(min=0)
    inter = w * h
    iou = torch.where(inter > 0, inter / (kept_area + areas - inter), torch.zeros_like(inter))
    return iou.double() > thr


def ref_iou_value(pair):
    """The IoU of a pair of boxes as the ops compute it (float32, or float64 for float64)."""
    b = pair.to(compute_dtype(pair.dtype))
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = (torch.minimum(b[0, 2], b[1, 2]) - torch.maximum(b[0, 0], b[1, 0])).clamp(min=0)
    h = (torch.minimum(b[0, 3], b[1, 3]) - torch.maximum(b[0, 1], b[1, 1])).clamp(min=0)
    inter = w * h
    return (inter / (area[0] + area[1] - inter)).item() if inter > 0 else 0.0


def ref_greedy(boxes, scores, iou_threshold, max_output=None):
    """Greedy NMS of one group of CPU boxes, in float32 (float64 for float64 inputs) like the
    ops; returns the kept indices (into boxes) by rank."""
    ct = compute_dtype(boxes.dtype)
    order = ref_rank(scores)
    b = boxes.to(ct)[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    thr = float(iou_threshold)
    alive = torch.arange(len(order))
    kept = []
    while alive.numel() and (max_output is None or len(kept) < max_output):
        first, rest = alive[0], alive[1:]
        kept.append(int(order[first]))
        alive = rest[~ref_iou_above(b[first], area[first], b[rest], area[rest], thr)]
    return torch.tensor(kept, dtype=torch.int64)


def ref_nms(boxes, scores, iou_threshold):
    return ref_greedy(boxes.cpu(), scores.cpu(), iou_threshold)


def ref_batched(boxes, scores, idxs, iou_threshold):
    boxes, scores, idxs = boxes.cpu(), scores.cpu(), idxs.cpu()
    kept = [torch.empty(0, dtype=torch.int64)]
    for c in idxs.unique():
        sel = (idxs == c).nonzero().flatten()
        kept.append(sel[ref_greedy(boxes[sel], scores[sel], iou_threshold)])
    k = torch.cat(kept).sort().values
    return k[ref_rank(scores[k])]


def ref_segmented(boxes, scores, offsets, iou_threshold, max_output=None, score_threshold=None):
    """Each segment's kept indices (global) by rank."""
    boxes, scores = boxes.cpu(), scores.cpu()
    offsets = [int(o) for o in offsets]
    per = []
    for s in range(len(offsets) - 1):
        sel = torch.arange(offsets[s], offsets[s + 1], dtype=torch.int64)
        if score_threshold is not None:
            sel = sel[scores[sel].double() > score_threshold]
        per.append(sel[ref_greedy(boxes[sel], scores[sel], iou_threshold, max_output)])
    return per


def mask_of(per, n):
    mask = torch.zeros(n, dtype=torch.bool)
    for k in per:
        mask[k] = True
    return mask


def padded_of(per, m):
    indices = torch.full((len(per), m), -1, dtype=torch.int64)
    for s, k in enumerate(per):
        indices[s, : len(k)] = k[:m]
    return indices, torch.tensor([min(len(k), m) for k in per], dtype=torch.int64)


def poison(*shapes_dtypes, device):
    """Leave garbage-filled blocks of the outputs' sizes in the CUDA caching allocator, which hands
    them to the next outputs of those sizes: an element a kernel fails to write then shows."""
    if torch.device(device).type == "cuda":
        for shape, dtype in shapes_dtypes:
            torch.full(shape, True if dtype == torch.bool else 7777, dtype=dtype, device=device)


def assert_equal(got, expected):
    got = got.cpu()
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    if not torch.equal(got, expected):
        diff = (got != expected).nonzero().flatten()[:5] if got.shape == expected.shape else None
        raise AssertionError(
            f"mismatch: got {got.shape} {got[:20].tolist()}..., expected {expected.shape} {expected[:20].tolist()}..."
            + (f"; first differing positions {diff.tolist()}" if diff is not None else "")
        )


# ---------------------------------------------------------------------------------------------
# nms


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_nms_matches_reference(device, dtype, n, iou_threshold):
    boxes, scores = make(n, seed=n, dtype=dtype, device=device)
    expected = ref_nms(boxes, scores, iou_threshold)
    poison(((len(expected),), torch.int64), device=device)
    got = ops.nms(boxes, scores, iou_threshold)
    assert got.device == boxes.device
    assert_equal(got, expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1000, 20000])
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision(device, n, iou_threshold):
    """float32, distinct scores (torchvision orders ties arbitrarily): torchvision's CPU kernel
    computes the same float32 IoUs."""
    if n > 1000 and device == "cpu":
        pytest.skip("covered on CUDA, where it takes the all-GPU path")
    boxes, scores = make(n, seed=1, device=device)
    scores = distinct_scores(n, seed=1, device=device)
    expected = torchvision.ops.nms(boxes.cpu(), scores.cpu(), iou_threshold)
    assert_equal(ops.nms(boxes, scores, iou_threshold), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_nms_matches_float64_reference_on_integer_boxes(device, dtype, iou_threshold):
    """Integer coordinates make every IoU a ratio of small integers: float32 and float64 then
    decide alike, so the reference of record (float64) must agree exactly."""
    if not hasattr(reference.pure, "nms"):
        pytest.skip("reference.pure.nms not available")
    boxes, scores = make(3000, seed=2, dtype=dtype, device=device, integer=True)
    expected = reference.pure.nms(boxes.cpu(), scores.cpu(), iou_threshold)
    assert_equal(ops.nms(boxes, scores, iou_threshold), expected)
    assert_equal(expected, ref_nms(boxes, scores, iou_threshold))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("classes", [1, 3])
def test_float64_reference_block_walk_equals_one_box_walk(device, classes):
    """reference.pure walks GREEDY_BLOCK ranked boxes at a time: on float64 boxes (both compute
    the same IoUs) it must keep exactly what the one-box-at-a-time walk keeps, across block
    boundaries (N not a multiple of the block), score ties and duplicate boxes."""
    n = 3 * reference.pure.GREEDY_BLOCK + 77
    boxes, _ = make(n, seed=4, dtype=torch.float64, device=device)
    boxes[1::9] = boxes[::9][: len(boxes[1::9])]  # duplicates: IoU exactly 1
    scores = (torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(4)).double() / 50).to(device)
    idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(5)).to(device)
    for iou_threshold in (0.3, 0.7):
        expected = ref_batched(boxes, scores, idxs, iou_threshold)
        assert_equal(reference.pure.batched_nms(boxes, scores, idxs, iou_threshold), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_nms_threshold_is_compared_as_a_real_number(device):
    """A float32 IoU v is above a threshold t < v even where float32(t) == v (t between v and
    the float below it): the comparison is with the real threshold, as in torchvision's CPU kernel."""
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.3, 1.0]])
    scores = torch.tensor([1.0, 0.5])
    v = ref_iou_value(boxes)
    below = torch.nextafter(torch.tensor(v), torch.tensor(-math.inf)).item()  # the float32 below v
    t = v - (v - below) / 4  # not a float32; rounds to v
    assert torch.tensor(t, dtype=torch.float32).item() == v
    assert torchvision.ops.nms(boxes, scores, t).tolist() == [0]
    boxes, scores = boxes.to(device), scores.to(device)
    assert ops.nms(boxes, scores, t).tolist() == [0]
    assert ops.nms(boxes, scores, v).tolist() == [0, 1]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nms_threshold_boundary(device, dtype):
    """A box is suppressed iff IoU > threshold: with the threshold exactly at a pair's IoU (as
    computed in the op's precision) it survives, one ulp below it does not."""
    ct = compute_dtype(dtype)
    g = torch.Generator().manual_seed(3)
    for _ in range(40):
        pair = clustered_boxes(2, g, objects=1).to(dtype)
        b = pair.to(ct)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        w = (torch.minimum(b[0, 2], b[1, 2]) - torch.maximum(b[0, 0], b[1, 0])).clamp(min=0)
        h = (torch.minimum(b[0, 3], b[1, 3]) - torch.maximum(b[0, 1], b[1, 1])).clamp(min=0)
        inter = w * h
        if not inter > 0:
            continue
        iou = inter / (area[0] + area[1] - inter)
        below = torch.nextafter(iou, torch.tensor(-math.inf, dtype=ct))
        scores = torch.tensor([1.0, 0.5], dtype=dtype)
        pair, scores = pair.to(device), scores.to(device)
        assert ops.nms(pair, scores, iou.item()).tolist() == [0, 1]
        assert ops.nms(pair, scores, below.item()).tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nms_ties_and_duplicates(device, dtype):
    """Equal scores are ranked by index; exact duplicate boxes suppress each other (IoU 1)."""
    boxes, _ = make(3000, seed=4, dtype=dtype)
    boxes[1::3] = boxes[0::3][: len(boxes[1::3])]  # duplicates
    scores = torch.randint(0, 6, (3000,), generator=torch.Generator().manual_seed(5)).to(dtype)  # heavy ties
    scores[::7] = -0.0
    scores[1::7] = 0.0
    expected = ref_nms(boxes, scores, 0.5)
    assert_equal(ops.nms(boxes.to(device), scores.to(device), 0.5), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scores_over_the_whole_range_rank_in_float_order(device, dtype):
    """Ranking sees every score bit pattern but NaN in float order: negatives, both zeros, +-inf,
    the largest finite and subnormal values (the CPU ranks by the bit patterns), with ties."""
    finfo = torch.finfo(dtype)
    special = torch.tensor([-math.inf, math.inf, finfo.max, -finfo.max, finfo.tiny, -finfo.tiny,
                            finfo.tiny / 4, -finfo.tiny / 4, 0.0, -0.0, -1.0, 1.0, -1e-3, 1e-3], dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    boxes, _ = make(4000, seed=7, dtype=dtype)
    scores = special[torch.randint(0, len(special), (4000,), generator=g)].to(dtype)
    scores[::3] = (torch.randn(len(scores[::3]), generator=g) * 1e3).to(dtype)
    assert_equal(ops.nms(boxes.to(device), scores.to(device), 0.5), ref_nms(boxes, scores, 0.5))
    for classes in (7, 500):  # segments of ~570 boxes and of ~8 (the CPU insertion-sorts those)
        idxs = make_classes(4000, classes, seed=8, device="cpu")
        assert_equal(ops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5),
                     ref_batched(boxes, scores, idxs, 0.5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [1, 100, 5000])
def test_nms_all_identical_keeps_first(device, n):
    boxes = torch.tensor([[10.0, 20.0, 50.0, 70.0]]).repeat(n, 1)
    scores = torch.ones(n)
    scores[n // 2] = 2.0
    assert ops.nms(boxes.to(device), scores.to(device), 0.5).tolist() == [n // 2]
    scores = torch.ones(n)  # all tied: the first index
    assert ops.nms(boxes.to(device), scores.to(device), 0.99).tolist() == [0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n", [65, 5000, 10000])
def test_nms_no_overlaps_keeps_all(device, n):
    i = torch.arange(n, dtype=torch.float32)
    x, y = (i % 100) * 3, (i // 100) * 3
    boxes = torch.stack([x, y, x + 2, y + 2], 1)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(6))
    assert_equal(ops.nms(boxes.to(device), scores.to(device), 0.0), ref_rank(scores))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nms_degenerate_boxes(device, dtype):
    """Zero-area, point and inverted boxes: a union <= 0 gives IoU 0, and inverted boxes never
    intersect anything, so none of these suppresses or is suppressed (threshold >= 0)."""
    boxes = torch.tensor(
        [
            [1, 1, 1, 1],  # a point
            [1, 1, 1, 1],  # the same point
            [0, 0, 4, 0],  # a segment
            [0, 0, 4, 0],
            [2, 2, 0, 0],  # inverted, area +4
            [2, 2, 0, 0],
            [0, 0, -1, 1],  # inverted in x, area -1
            [0, 0, 1, 1],  # area +1: union with the box above is 0
            [0, 0, 4, 4],  # an ordinary box
        ],
        dtype=dtype,
    )
    scores = torch.linspace(1, 0.1, len(boxes), dtype=torch.float64).to(dtype)
    got = ops.nms(boxes.to(device), scores.to(device), 0.0)
    assert_equal(got, ref_nms(boxes, scores, 0.0))
    # The ordinary box (last) overlaps the unit box [0, 0, 1, 1] (IoU 1/16 > 0): suppressed.
    assert got.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    boxes, _ = make(2000, seed=7, dtype=dtype)
    from suites._boxes import degenerate_boxes

    boxes = degenerate_boxes(2000, torch.Generator().manual_seed(8)).to(dtype)
    scores = torch.rand(2000, generator=torch.Generator().manual_seed(9)).to(dtype)
    assert_equal(ops.nms(boxes.to(device), scores.to(device), 0.5), ref_nms(boxes, scores, 0.5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("iou_threshold", [-0.5, 0.0, 1.0, 1.5])
def test_nms_extreme_thresholds(device, iou_threshold):
    boxes, scores = make(700, seed=10, device=device)
    expected = ref_nms(boxes, scores, iou_threshold)
    if iou_threshold < 0:
        assert len(expected) == 1  # IoU 0 > a negative threshold: the first suppresses all
    if iou_threshold >= 1:
        assert len(expected) == 700
    assert_equal(ops.nms(boxes, scores, iou_threshold), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_nms_huge_coordinates(device, dtype):
    offset = 3.0e4 if dtype == torch.float16 else 1.0e6
    boxes, scores = make(3000, seed=11, dtype=dtype, offset=offset)
    assert_equal(ops.nms(boxes.to(device), scores.to(device), 0.5), ref_nms(boxes, scores, 0.5))


@pytest.mark.parametrize("device", DEVICES)
def test_nms_non_contiguous(device):
    boxes, scores = make(500, seed=12, device=device)
    expected = ref_nms(boxes, scores, 0.5)
    boxes_t = boxes.t().contiguous().t()
    scores_s = torch.stack([scores, scores], 1)[:, 0]
    assert not boxes_t.is_contiguous() and not scores_s.is_contiguous()
    assert_equal(ops.nms(boxes_t, scores_s, 0.5), expected)


# ---------------------------------------------------------------------------------------------
# batched_nms


def make_classes(n, classes, seed, device, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-(2**40), 2**40, (classes,), generator=g)
    return values[torch.randint(0, classes, (n,), generator=g)].to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,classes", [(0, 1), (1, 1), (100, 3), (2000, 80), (9000, 4), (5000, 1)])
def test_batched_nms_matches_reference(device, dtype, n, classes):
    boxes, scores = make(n, seed=13 + n, dtype=dtype, device=device)
    idxs = make_classes(n, classes, seed=14, device=device)
    expected = ref_batched(boxes, scores, idxs, 0.5)
    poison(((len(expected),), torch.int64), device=device)
    assert_equal(ops.batched_nms(boxes, scores, idxs, 0.5), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,classes", [(2000, 80), (20000, 80), (20000, 3)])
def test_batched_nms_matches_torchvision(device, n, classes):
    if n > 2000 and device == "cpu":
        pytest.skip("covered on CUDA")
    boxes, _ = make(n, seed=15, device=device)
    scores = distinct_scores(n, seed=15, device=device)  # torchvision orders ties arbitrarily
    idxs = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(16)).to(device)
    # On the CPU at these sizes torchvision runs its per-class loop of exact float32 nms calls.
    expected = torchvision.ops.batched_nms(boxes.cpu(), scores.cpu(), idxs.cpu(), 0.7)
    assert_equal(ops.batched_nms(boxes, scores, idxs, 0.7), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_int32_idxs_and_one_class_equals_nms(device):
    boxes, scores = make(3000, seed=17, device=device)
    idxs = torch.full((3000,), 5, dtype=torch.int32, device=device)
    assert_equal(ops.batched_nms(boxes, scores, idxs, 0.6), ops.nms(boxes, scores, 0.6).cpu())
    idxs = make_classes(3000, 7, seed=18, device=device, dtype=torch.int32)
    assert_equal(ops.batched_nms(boxes, scores, idxs, 0.6), ref_batched(boxes, scores, idxs, 0.6))


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_huge_coordinates(device):
    """No coordinate-offset trick: far-apart classes at 1e6 keep float32 precision."""
    boxes, scores = make(2000, seed=19, offset=1.0e6, device=device)
    idxs = make_classes(2000, 9, seed=20, device=device)
    assert_equal(ops.batched_nms(boxes, scores, idxs, 0.5), ref_batched(boxes, scores, idxs, 0.5))


# ---------------------------------------------------------------------------------------------
# segmented_nms / segmented_nms_padded


SEGMENTS = [  # offsets, for n boxes
    ([0], 10),
    ([0, 0], 0),
    ([0, 10], 10),
    ([0, 1, 2, 65, 65, 300], 300),
    ([5, 10, 10, 900], 1000),  # boxes outside every segment
    ([0, 3000, 3050, 3050, 3800], 3800),  # CUDA: one segment on the all-GPU path
    (list(range(0, 40001, 1000)), 40000),  # 8 images x 5 levels x 1000 proposals
    # CUDA, average segment <= 1024 boxes (the small-segment bitmask path), mixed with segments
    # that still take the other paths:
    ([0, 1024, 2049, 2049], 2049),  # exactly 1024 boxes (small) and 1025 (one block)
    ([0, 10, 2010, 2015, 2065], 2065),  # 2000 boxes: one block
    ([0, 3000, 3001, 3002], 3002),  # 3000 boxes: all-GPU path
    (list(range(0, 2001, 5)), 2000),  # 400 segments: a device-wide sort, then the bitmask path
]


def run_segmented(device, dtype, offsets, n, iou_threshold, max_output, score_threshold, seed):
    boxes, scores = make(n, seed=seed, dtype=dtype, device=device)
    off = torch.tensor(offsets, dtype=torch.int64, device=device)
    per = ref_segmented(boxes, scores, offsets, iou_threshold, max_output, score_threshold)
    poison(((n,), torch.bool), device=device)
    mask = ops.segmented_nms(boxes, scores, off, iou_threshold, max_output, score_threshold)
    assert mask.dtype == torch.bool and mask.shape == (n,) and mask.device == boxes.device
    assert_equal(mask, mask_of(per, n))
    m = 11 if max_output is None else max_output
    poison(((len(per), m), torch.int64), ((len(per),), torch.int64), device=device)
    indices, counts = ops.segmented_nms_padded(boxes, scores, off, iou_threshold, m, score_threshold)
    want_indices, want_counts = padded_of(per, m)
    assert_equal(indices, want_indices)
    assert_equal(counts, want_counts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offsets,n", SEGMENTS, ids=range(len(SEGMENTS)))
@pytest.mark.parametrize(
    "max_output,score_threshold", [(None, None), (3, None), (100, 0.4), (None, 0.9)], ids=str
)
def test_segmented_matches_reference(device, dtype, offsets, n, max_output, score_threshold):
    if n >= 40000 and (dtype != torch.float32 or device == "cpu" and max_output is None):
        pytest.skip("the large case in float32 (and on CPU only with max_output)")
    run_segmented(device, dtype, offsets, n, 0.7, max_output, score_threshold, seed=21 + n)


@pytest.mark.parametrize("device", DEVICES)
def test_segmented_max_output_zero(device):
    boxes, scores = make(100, seed=22, device=device)
    off = torch.tensor([0, 40, 100], device=device)
    assert not ops.segmented_nms(boxes, scores, off, 0.5, 0).any()
    indices, counts = ops.segmented_nms_padded(boxes, scores, off, 0.5, 0)
    assert indices.shape == (2, 0) and counts.tolist() == [0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_segmented_max_output_on_one_big_segment(device):
    """max_output stops the walk early, also on the all-GPU path (CUDA, > 2048 boxes)."""
    run_segmented(device, torch.float32, [0, 20000], 20000, 0.5, 100, None, seed=23)
    run_segmented(device, torch.float32, [0, 20000], 20000, 0.7, 1000, None, seed=24)


@pytest.mark.cuda
def test_segmented_cuda_large():
    run_segmented("cuda", torch.float32, [0, 100, 60100, 61000], 61000, 0.5, None, None, seed=25)


# ---------------------------------------------------------------------------------------------
# Non-finite values and bad offsets


def _bad_values(n=40):
    boxes, scores = make(n, seed=26)
    boxes[17, 2] = float("nan")
    boxes[18, 0] = float("inf")
    scores[3] = float("nan")
    scores[5] = float("inf")  # an infinite score is fine
    return boxes, scores


CALLS = {
    "nms": lambda b, s, o: ops.nms(b, s, 0.5),
    "batched_nms": lambda b, s, o: ops.batched_nms(b, s, torch.zeros(len(b), dtype=torch.int64, device=b.device), 0.5),
    "segmented_nms": lambda b, s, o: ops.segmented_nms(b, s, o, 0.5),
    "segmented_nms_padded": lambda b, s, o: ops.segmented_nms_padded(b, s, o, 0.5, 4),
}


@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_nonfinite_values_raise(op, dtype):
    boxes, scores = _bad_values()
    _assert_value_errors(op, boxes.to(dtype), scores.to(dtype), torch.tensor([0, 40]))


def _assert_value_errors(op, boxes, scores, off):
    """The CPU's (and validation mode's) errors for _bad_values(), fixed one after the other."""
    with pytest.raises(RuntimeError, match=rf"^detbench.{op}: boxes has a non-finite coordinate \(NaN or inf\) at box 17$"):
        CALLS[op](boxes, scores, off)
    boxes[17, 2] = boxes[18, 0] = 1.0
    with pytest.raises(RuntimeError, match=rf"^detbench.{op}: scores has a NaN at box 3$"):
        CALLS[op](boxes, scores, off)
    scores[3] = 0.5
    CALLS[op](boxes, scores, off)  # inf scores are fine


BAD_OFFSETS = [
    ([-1, 10, 40], r"segment_offsets\[0\] must be >= 0, got -1"),
    ([0, 10, 5, 40], r"segment_offsets must be non-decreasing, got 10 then 5 at index 2"),
    ([0, 10, 41], r"segment_offsets\[-1\] must be <= N = 40 \(the number of boxes\), got 41"),
]


@pytest.mark.parametrize("op", ["segmented_nms", "segmented_nms_padded"])
@pytest.mark.parametrize("offsets,message", BAD_OFFSETS, ids=range(len(BAD_OFFSETS)))
def test_cpu_bad_offsets_raise(op, offsets, message):
    boxes, scores = make(40, seed=27)
    with pytest.raises(RuntimeError, match=rf"^detbench.{op}: {message}$"):
        CALLS[op](boxes, scores, torch.tensor(offsets))


@pytest.mark.cuda
@pytest.mark.parametrize("op", list(CALLS))
def test_cuda_validation_mode_raises(validation, op):
    boxes, scores = _bad_values()
    boxes, scores = boxes.cuda(), scores.cuda()
    _assert_value_errors(op, boxes, scores, torch.tensor([0, 40], device="cuda"))
    if op.startswith("segmented"):
        for offsets, message in BAD_OFFSETS:
            with pytest.raises(RuntimeError, match=rf"^detbench.{op}: {message}$"):
                CALLS[op](boxes, scores, torch.tensor(offsets, device="cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_default_mode_invalid_boxes_are_ignored(dtype):
    """Default CUDA mode: a box with a non-finite coordinate or a NaN score is never kept and
    suppresses nothing: the result is that of the other boxes alone."""
    n = 3000
    boxes, scores = make(n, seed=28, dtype=dtype)
    bad = torch.randperm(n, generator=torch.Generator().manual_seed(29))[:300]
    boxes[bad[:100], 0] = float("nan")
    boxes[bad[100:200], 3] = float("inf")
    scores[bad[200:]] = float("nan")
    good = torch.ones(n, dtype=torch.bool)
    good[bad] = False
    sel = good.nonzero().flatten()
    expected = sel[ref_nms(boxes[sel], scores[sel], 0.5)]
    b, s = boxes.cuda(), scores.cuda()
    assert_equal(ops.nms(b, s, 0.5), expected)
    idxs = make_classes(n, 5, seed=30, device="cuda")
    assert_equal(ops.batched_nms(b, s, idxs, 0.5), sel[ref_batched(boxes[sel], scores[sel], idxs.cpu()[sel], 0.5)])
    off = torch.tensor([0, 1000, 3000], device="cuda")
    mask = ops.segmented_nms(b, s, off, 0.5)
    want = torch.zeros(n, dtype=torch.bool)
    for lo, hi in [(0, 1000), (1000, 3000)]:
        seg = sel[(sel >= lo) & (sel < hi)]
        want[seg[ref_greedy(boxes[seg], scores[seg], 0.5)]] = True
    assert_equal(mask, want)


@pytest.mark.cuda
def test_cuda_default_mode_bad_offsets_are_clamped():
    """Default CUDA mode: offsets clamped to [0, N] and made non-decreasing."""
    boxes, scores = make(1000, seed=31, device="cuda")
    off = torch.tensor([-5, 300, 100, 200, 2000], device="cuda")
    sanitized = [0, 300, 300, 300, 1000]
    per = ref_segmented(boxes, scores, sanitized, 0.5)
    assert_equal(ops.segmented_nms(boxes, scores, off, 0.5), mask_of(per, 1000))
    indices, counts = ops.segmented_nms_padded(boxes, scores, off, 0.5, 50)
    want_indices, want_counts = padded_of(per, 50)
    assert_equal(indices, want_indices)
    assert_equal(counts, want_counts)


# ---------------------------------------------------------------------------------------------
# Argument errors


def _b(n=5, dtype=torch.float32, last=4):
    return torch.rand(n, last).to(dtype)


def _s(n=5, dtype=torch.float32):
    return torch.rand(n).to(dtype)


_I = torch.zeros(5, dtype=torch.int64)
_O = torch.tensor([0, 5])

BAD_ARGS = [  # (op, call, message)
    ("nms", lambda: ops.nms(_b(last=5), _s(), 0.5), r"boxes must have shape \[N, 4\], got \[5, 5\]"),
    ("nms", lambda: ops.nms(torch.rand(4), _s(), 0.5), r"boxes must have shape \[N, 4\], got \[4\]"),
    ("nms", lambda: ops.nms(_b(dtype=torch.int64), _s(), 0.5), r"boxes must be float16, bfloat16, float32 or float64, got Long"),
    ("nms", lambda: ops.nms(_b(), _s(4), 0.5), r"scores must have shape \[N\] with N = 5 \(the number of boxes\), got \[4\]"),
    ("nms", lambda: ops.nms(_b(), _s().view(5, 1), 0.5), r"scores must have shape \[N\] .*, got \[5, 1\]"),
    ("nms", lambda: ops.nms(_b(), _s(dtype=torch.float16), 0.5), r"scores must have the same dtype as boxes \(Float\), got Half"),
    ("nms", lambda: ops.nms(_b(), _s(dtype=torch.int32), 0.5), r"scores must have the same dtype as boxes \(Float\), got Int"),
    ("nms", lambda: ops.nms(_b(), _s(), float("nan")), r"iou_threshold must not be NaN"),
    ("batched_nms", lambda: ops.batched_nms(_b(), _s(), _I.float(), 0.5), r"idxs must be an integer tensor, got Float"),
    ("batched_nms", lambda: ops.batched_nms(_b(), _s(), _I[:4], 0.5), r"idxs must have shape \[N\] with N = 5 .*, got \[4\]"),
    ("batched_nms", lambda: ops.batched_nms(_b(), _s(), _I.bool(), 0.5), r"idxs must be an integer tensor, got Bool"),
    ("segmented_nms", lambda: ops.segmented_nms(_b(), _s(), _O.int(), 0.5), r"segment_offsets must be int64, got Int"),
    ("segmented_nms", lambda: ops.segmented_nms(_b(), _s(), _O[:0], 0.5), r"segment_offsets must have shape \[S \+ 1\] \(S >= 0 segments\), got \[0\]"),
    ("segmented_nms", lambda: ops.segmented_nms(_b(), _s(), _O.view(1, 2), 0.5), r"segment_offsets must have shape \[S \+ 1\] .*, got \[1, 2\]"),
    ("segmented_nms", lambda: ops.segmented_nms(_b(), _s(), _O, 0.5, -1), r"max_output_per_segment must be >= 0, got -1"),
    ("segmented_nms", lambda: ops.segmented_nms(_b(), _s(), _O, 0.5, None, float("nan")), r"score_threshold must not be NaN"),
    ("segmented_nms_padded", lambda: ops.segmented_nms_padded(_b(), _s(), _O, 0.5, -2), r"max_output_per_segment must be >= 0, got -2"),
    ("segmented_nms_padded", lambda: ops.segmented_nms_padded(_b(dtype=torch.float64), _s(), _O, 0.5, 2), r"scores must have the same dtype as boxes \(Double\), got Float"),
]


@pytest.mark.parametrize("op,call,message", BAD_ARGS, ids=range(len(BAD_ARGS)))
def test_bad_arguments_raise(op, call, message):
    with pytest.raises(RuntimeError, match=rf"^detbench.{op}: {message}"):
        call()


def test_different_devices_raise():
    # meta stands in for a second device: the kernels run the same checks.
    with pytest.raises(RuntimeError, match=r"^detbench.nms: scores must be on the same device as boxes \(cpu\), got meta"):
        ops.nms(_b(), _s().to("meta"), 0.5)
    with pytest.raises(RuntimeError, match=r"^detbench.batched_nms: idxs must be on the same device as boxes \(cpu\), got meta"):
        ops.batched_nms(_b(), _s(), _I.to("meta"), 0.5)
    with pytest.raises(RuntimeError, match=r"^detbench.segmented_nms: segment_offsets must be on the same device as boxes \(cpu\), got meta"):
        ops.segmented_nms(_b(), _s(), _O.to("meta"), 0.5)


@pytest.mark.cuda
def test_different_devices_raise_cuda():
    with pytest.raises(RuntimeError, match=r"scores must be on the same device as boxes \(cuda:0\), got cpu"):
        ops.nms(_b().cuda(), _s(), 0.5)
    with pytest.raises(RuntimeError, match=r"segment_offsets must be on the same device as boxes \(cuda:0\), got cpu"):
        ops.segmented_nms(_b().cuda(), _s().cuda(), _O, 0.5)


# ---------------------------------------------------------------------------------------------
# Fake tensors, torch.compile, opcheck


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        boxes, scores = torch.empty(7, 4, dtype=torch.float16), torch.empty(7, dtype=torch.float16)
        off = torch.empty(4, dtype=torch.int64)
        assert ops.segmented_nms(boxes, scores, off, 0.5).shape == (7,)
        indices, counts = ops.segmented_nms_padded(boxes, scores, off, 0.5, 9)
        assert indices.shape == (3, 9) and indices.dtype == torch.int64 and counts.shape == (3,)
        with pytest.raises(RuntimeError, match=r"^detbench.segmented_nms: segment_offsets must be int64, got Int"):
            ops.segmented_nms(boxes, scores, off.int(), 0.5)


def test_fake_kernels_check_arguments():
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(shape_env=ShapeEnv()):
        boxes, scores = torch.empty(7, 4), torch.empty(7)
        out = ops.nms(boxes, scores, 0.5)
        assert out.dim() == 1 and out.dtype == torch.int64
        out = ops.batched_nms(boxes, scores, torch.empty(7, dtype=torch.int64), 0.5)
        assert out.dim() == 1 and out.dtype == torch.int64
        with pytest.raises(RuntimeError, match=r"^detbench.nms: scores must have shape \[N\] with N = 7"):
            ops.nms(boxes, torch.empty(6), 0.5)
        with pytest.raises(RuntimeError, match=r"^detbench.batched_nms: idxs must be an integer tensor, got Float"):
            ops.batched_nms(boxes, scores, torch.empty(7), 0.5)


def test_opcheck():
    boxes, scores = make(50, seed=32)
    off = torch.tensor([0, 20, 50])
    torch.library.opcheck(torch.ops.detbench.segmented_nms.default, (boxes, scores, off, 0.5, 5, 0.1))
    torch.library.opcheck(torch.ops.detbench.segmented_nms_padded.default, (boxes, scores, off, 0.5, 5, None))
    tests = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(torch.ops.detbench.nms.default, (boxes, scores, 0.5), test_utils=tests)
    torch.library.opcheck(
        torch.ops.detbench.batched_nms.default, (boxes, scores, torch.zeros(50, dtype=torch.int64), 0.5), test_utils=tests
    )


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    def f(boxes, scores, idxs, offsets):
        return (
            ops.nms(boxes, scores, 0.5),
            ops.batched_nms(boxes, scores, idxs, 0.5),
            ops.segmented_nms(boxes, scores, offsets, 0.5, 10, 0.1),
            ops.segmented_nms_padded(boxes, scores, offsets, 0.5, 10),
        )

    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=dynamic)
        for n in (60, 90):
            boxes, scores = make(n, seed=33 + n)
            idxs = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n))
            offsets = torch.tensor([0, n // 3, n])
            for got, want in zip(compiled(boxes, scores, idxs, offsets), f(boxes, scores, idxs, offsets)):
                if isinstance(want, tuple):
                    assert all(torch.equal(a, b) for a, b in zip(got, want))
                else:
                    assert torch.equal(got, want)


@pytest.mark.skipif(ops.BUILT_WITH_CUDA, reason="a CUDA build has CUDA kernels: the rebuild message cannot occur")
def test_cpu_only_build_rejects_cuda_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        boxes, scores = torch.ones(3, 4, device="cuda"), torch.ones(3, device="cuda")
        with pytest.raises(RuntimeError, match=r"^detbench.nms: got CUDA tensors but detbench was built without CUDA kernels"):
            ops.nms(boxes, scores, 0.5)
        with pytest.raises(RuntimeError, match=r"^detbench.segmented_nms: got CUDA tensors"):
            ops.segmented_nms(boxes, scores, torch.zeros(2, dtype=torch.int64, device="cuda"), 0.5)


# ---------------------------------------------------------------------------------------------
# CUDA: graphs, syncs, memory


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize(
    "offsets,n",
    [(list(range(0, 40001, 1000)), 40000), (list(range(0, 4001, 10)), 4000), ([0, 20000, 20500], 20500)],
    ids=["rpn", "many", "big"],
)
def test_cuda_graph_capture_and_replay(dtype, offsets, n):
    boxes, scores = make(n, seed=34, dtype=dtype, device="cuda")
    off = torch.tensor(offsets, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the capture
        ops.segmented_nms(boxes, scores, off, 0.7, 300)
        ops.segmented_nms_padded(boxes, scores, off, 0.7, 300)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        mask = ops.segmented_nms(boxes, scores, off, 0.7, 300)
        indices, counts = ops.segmented_nms_padded(boxes, scores, off, 0.7, 300, 0.2)
    for seed in (35, 36):  # replay twice: the control words start from zero each time
        new_boxes, new_scores = make(n, seed=seed, dtype=dtype)
        boxes.copy_(new_boxes)
        scores.copy_(new_scores)
        graph.replay()
        torch.cuda.synchronize()
        assert_equal(mask, mask_of(ref_segmented(new_boxes, new_scores, offsets, 0.7, 300), n))
        want_indices, want_counts = padded_of(ref_segmented(new_boxes, new_scores, offsets, 0.7, 300, 0.2), 300)
        assert_equal(indices, want_indices)
        assert_equal(counts, want_counts)


def _synchronizes(fn):
    """Whether fn makes a synchronizing CUDA call, by torch's sync debug mode set to raise (its
    warnings, raised from inside a C++ op, do not reach Python's warning machinery)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
        return False
    except RuntimeError as e:
        if "synchronizing" not in str(e):
            raise
        return True
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


@pytest.mark.cuda
def test_cuda_syncs():
    """segmented_nms(_padded) never sync; nms and batched_nms do (once, for the output length:
    a counts.item() and a masked_select respectively)."""
    boxes, scores = make(20000, seed=37, device="cuda")
    off = torch.tensor([0, 5000, 20000], device="cuda")
    idxs = make_classes(20000, 80, seed=38, device="cuda")
    ops.nms(boxes, scores, 0.5)  # first calls set up the kernels
    ops.batched_nms(boxes, scores, idxs, 0.5)
    ops.segmented_nms(boxes, scores, off, 0.5)
    ops.segmented_nms_padded(boxes, scores, off, 0.5, 100)
    assert not _synchronizes(lambda: ops.segmented_nms(boxes, scores, off, 0.5, 100, 0.2))
    assert not _synchronizes(lambda: ops.segmented_nms_padded(boxes, scores, off, 0.5, 100))
    rpn = torch.arange(0, 20001, 1000, device="cuda")  # the per-segment sort and bitmask path
    ops.segmented_nms_padded(boxes, scores, rpn, 0.7, 1000)
    assert not _synchronizes(lambda: ops.segmented_nms_padded(boxes, scores, rpn, 0.7, 1000))
    assert _synchronizes(lambda: ops.nms(boxes, scores, 0.5))
    assert _synchronizes(lambda: ops.batched_nms(boxes, scores, idxs, 0.5))
    # Still right after the raised sync errors.
    assert_equal(ops.nms(boxes, scores, 0.5), ref_nms(boxes, scores, 0.5))


@pytest.mark.cuda
def test_cuda_peak_memory_is_linear():
    """Extra device memory O(N): at 200k boxes, far below the 5 GB of an N x N / 8 mask."""
    boxes, scores = make(200000, seed=39, device="cuda")
    ops.nms(boxes, scores, 0.7)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    ops.nms(boxes, scores, 0.7)
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 150 * 200000, peak  # bytes per box
