"""ops.match_proposals and ops.match_boxes against torchvision's Matcher looped over images (and
box_iou for match_boxes) and the batched pure reference: identical matches, with ties (the
low-quality rescue over a batch), zero-gt images, padded batches, NaN qualities and the
documented errors."""
import pytest
import torch
import torchvision

import ops
from reference import proposals as ref
from suites._boxes import clustered_boxes

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
SETTINGS = [(0.7, 0.3, True), (0.7, 0.3, False), (0.5, 0.5, True), (0.5, 0.4, False)]


def assert_same(got, want):
    assert got.dtype == torch.int64 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    bad = got != want.to(got.device)
    if bad.any():
        i = bad.nonzero()[:5]
        pytest.fail(f"{int(bad.sum())} matches differ; first {[(t.tolist(), int(got[tuple(t)]), int(want[tuple(t)])) for t in i]}")


def images(counts, p, seed, device="cpu", dtype=torch.float32, integer=True):
    """Per-image gt boxes (clustered around objects) and shared proposals; integer coordinates
    make equal IoUs (ties) common."""
    g = torch.Generator().manual_seed(seed)
    props = clustered_boxes(p, g, max(1, p // 40))
    gts = [clustered_boxes(n, g, max(1, n // 2)) if n else torch.zeros(0, 4) for n in counts]
    if integer:
        props, gts = props.round(), [x.round() for x in gts]
    return [x.to(dtype).to(device) for x in gts], props.to(dtype).to(device)


def padded(gts):
    g = max(len(x) for x in gts)
    out = gts[0].new_full((len(gts), g, 4), float("nan"))  # padding rows must be ignored, whatever they hold
    for b, x in enumerate(gts):
        out[b, : len(x)] = x
    return out, torch.tensor([len(x) for x in gts], device=gts[0].device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("high,low,allow", SETTINGS)
@pytest.mark.parametrize("counts,p", [([5], 1), ([1], 300), ([3, 0, 17, 1], 257), ([100, 40, 0, 7, 100, 1, 2, 60], 2000)])
def test_match_boxes_matches_torchvision(device, high, low, allow, counts, p):
    gts, props = images(counts, p, seed=p + len(counts), device=device)
    want = ref.tv_match_boxes(gts, props, high, low, allow)
    assert_same(ops.match_boxes(gts, props, high, low, allow), want)
    gt_pad, gt_counts = padded(gts)
    assert_same(ops.match_boxes(gt_pad, props, high, low, allow, gt_counts=gt_counts), want)
    assert_same(ref.pure_match_boxes(gts, props, high, low, allow), want)
    per_image = props.expand(len(gts), *props.shape).contiguous()
    assert_same(ops.match_boxes(gt_pad, per_image, high, low, allow, gt_counts=gt_counts), want)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_rescue_in_every_image(device):
    """Each gt has several proposals at its (equal) highest IoU, below the low threshold, in
    every image of the batch: all of them must be rescued to their own best gt."""
    gts = [torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]]) + 7 * b for b in range(3)]
    props = torch.tensor([[0.0, 0, 40, 10], [-30, 0, 10, 10], [0, -30, 10, 10], [100, 100, 140, 110],
                          [500, 500, 510, 510]])
    gts = [x.to(device) for x in gts]
    props = props.to(device)
    want = ref.tv_match_boxes(gts, props, 0.9, 0.8, True)
    got = ops.match_boxes(gts, props, 0.9, 0.8, True)
    assert_same(got, want)
    assert (got[0, :3] == 0).all()  # the tie group of image 0 is rescued


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("high,low,allow", SETTINGS)
def test_match_proposals_matches_torchvision(device, dtype, high, low, allow):
    g = torch.Generator().manual_seed(7)
    counts = [4, 0, 9, 1, 30]
    # quantized qualities: many exact ties, within and across gts
    iou = [(torch.randint(0, 12, (n, 333), generator=g).to(dtype) / 11).to(device) for n in counts]
    want = ref.tv_match_proposals(iou, high, low, allow)
    assert_same(ops.match_proposals(iou, high, low, allow), want)
    assert_same(ref.pure_match_proposals(iou, high, low, allow), want)
    assert_same(ops.match_proposals(iou[2], high, low, allow), want[2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("allow", [False, True])
def test_match_proposals_ignores_padding_rows(device, allow):
    # [B, G, P] with gt_counts: the rows past an image's count hold NaN and 2.0 (a NaN or a
    # quality above every real one would win any max they took part in); the result is the
    # per-image one (the list API leaves those rows unwritten, relying on this).
    g = torch.Generator().manual_seed(3)
    counts = [3, 0, 5]
    iou = [torch.rand(n, 50, generator=g).to(device) for n in counts]
    pad = torch.full((3, 5, 50), float("nan"), device=device)
    pad[0, 4] = 2.0
    for b, x in enumerate(iou):
        pad[b, : counts[b]] = x
    got = ops.match_proposals(pad, 0.7, 0.3, allow, gt_counts=torch.tensor(counts, device=device))
    assert_same(got, ref.tv_match_proposals(iou, 0.7, 0.3, allow))


@pytest.mark.parametrize("device", DEVICES)
def test_match_proposals_nan_quality(device):
    iou = torch.tensor([[0.1, float("nan"), 0.9, 0.2], [0.8, 0.3, float("nan"), 0.1], [0.0, 0.0, 0.0, 0.0]], device=device)
    for allow in (False, True):
        assert_same(ops.match_proposals(iou, 0.7, 0.3, allow), ref.tv_match_proposals(iou, 0.7, 0.3, allow))


@pytest.mark.parametrize("device", DEVICES)
def test_zero_gt_and_zero_proposals(device):
    props = torch.tensor([[0.0, 0, 5, 5], [1, 1, 4, 4]], device=device)
    assert_same(ops.match_boxes(torch.zeros(0, 4, device=device), props, 0.7, 0.3, True),
                torch.full((2,), -1, dtype=torch.int64))
    assert_same(ops.match_boxes(torch.zeros(3, 0, 4, device=device), props, 0.7, 0.3, True),
                torch.full((3, 2), -1, dtype=torch.int64))
    assert ops.match_boxes(torch.ones(2, 3, 4, device=device), torch.zeros(0, 4, device=device), 0.7, 0.3, True).shape == (2, 0)
    assert_same(ops.match_proposals(torch.zeros(0, 5, device=device), 0.7, 0.3, True), torch.full((5,), -1, dtype=torch.int64))
    assert ops.match_proposals(torch.zeros(2, 3, 0, device=device), 0.7, 0.3).shape == (2, 0)


def test_cpu_bad_values_raise():
    props = torch.tensor([[0.0, 0, 5, 5]])
    gt = torch.tensor([[[0.0, 0, 5, 5], [1, 1, 2, 2]]])
    with pytest.raises(RuntimeError, match=r"gt_counts\[0\] must be in \[0, G = 2\], got 3"):
        ops.match_boxes(gt, props, 0.7, 0.3, gt_counts=torch.tensor([3]))
    with pytest.raises(RuntimeError, match=r"gt_counts\[0\] must be in \[0, G = 2\], got -1"):
        ops.match_proposals(torch.zeros(1, 2, 4), 0.7, 0.3, gt_counts=torch.tensor([-1]))
    with pytest.raises(RuntimeError, match="gt_boxes has a non-finite coordinate .* at box 1 of image 0"):
        ops.match_boxes(gt.clone().index_fill_(1, torch.tensor([1]), float("nan")), props, 0.7, 0.3)
    with pytest.raises(RuntimeError, match="proposals has a non-finite coordinate .* at box 0"):
        ops.match_boxes(gt, props * float("inf"), 0.7, 0.3)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.match_proposals(torch.zeros(3), 0.7, 0.3), r"iou must have shape \[G, P\]"),
    (lambda: ops.match_proposals(torch.zeros(2, 3, dtype=torch.int64), 0.7, 0.3), "iou must be float16"),
    (lambda: ops.match_proposals(torch.zeros(2, 3), 0.3, 0.7), "low must be <= high"),
    (lambda: ops.match_proposals(torch.zeros(2, 3), float("nan"), 0.3), "must not be NaN"),
    (lambda: ops.match_proposals(torch.zeros(2, 3), 0.7, 0.3, gt_counts=torch.tensor([1])), "only for batched"),
    (lambda: ops.match_proposals(torch.zeros(2, 2, 3), 0.7, 0.3, gt_counts=torch.tensor([1])), r"gt_counts must have shape \[B\]"),
    (lambda: ops.match_proposals(torch.zeros(2, 2, 3), 0.7, 0.3, gt_counts=torch.tensor([1.0, 2.0])), "integer tensor"),
    (lambda: ops.match_boxes(torch.zeros(2, 5), torch.zeros(3, 4), 0.7, 0.3), r"gt_boxes must have shape \[G, 4\]"),
    (lambda: ops.match_boxes(torch.zeros(2, 4), torch.zeros(3, 4).double(), 0.7, 0.3), "proposals must have the dtype"),
    (lambda: ops.match_boxes(torch.zeros(2, 2, 4), torch.zeros(3, 3, 4), 0.7, 0.3), "proposals must have batch size 2"),
    (lambda: ops.match_boxes(torch.zeros(2, 4), torch.zeros(2, 3, 4), 0.7, 0.3), r"proposals must have shape \[P, 4\]"),
])
def test_errors(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_opcheck_and_compile():
    gts, props = images([3, 5], 50, seed=1)
    gt_pad, counts = padded(gts)
    gt_pad = gt_pad.nan_to_num(0.0)
    torch.library.opcheck(torch.ops.detbench.match_boxes.default, (gt_pad, counts, props, 0.7, 0.3, True))
    iou = torch.rand(2, 5, 50)
    torch.library.opcheck(torch.ops.detbench.match_proposals.default, (iou, counts, 0.7, 0.3, True))
    compiled = torch.compile(ops.match_boxes, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(gt_pad, props, 0.7, 0.3, True, counts), ops.match_boxes(gt_pad, props, 0.7, 0.3, True, counts))


@pytest.mark.cuda
def test_cuda_counts_clamped_and_validation(validation):
    gt = torch.tensor([[[0.0, 0, 5, 5], [1, 1, 2, 2]]], device="cuda")
    props = torch.tensor([[0.0, 0, 5, 5]], device="cuda")
    with pytest.raises(RuntimeError, match=r"gt_counts\[0\] must be in \[0, G = 2\], got 3"):
        ops.match_boxes(gt, props, 0.7, 0.3, gt_counts=torch.tensor([3], device="cuda"))
    with pytest.raises(RuntimeError, match="proposals has a non-finite coordinate"):
        ops.match_boxes(gt, props * float("nan"), 0.7, 0.3)
    ops.set_validation(False)
    assert_same(ops.match_boxes(gt, props, 0.7, 0.3, gt_counts=torch.tensor([3], device="cuda")),
                ops.match_boxes(gt, props, 0.7, 0.3))  # clamped to G


@pytest.mark.cuda
def test_cuda_all_anchors_batch_matches_cpu():
    """The benchmark shape, reduced: 4 images x 100 gt x 60k anchors, CUDA == CPU == torchvision."""
    gts, props = images([100, 1, 0, 57], 60000, seed=11, integer=False)
    want = ops.match_boxes(gts, props, 0.7, 0.3, True)
    got = ops.match_boxes([x.cuda() for x in gts], props.cuda(), 0.7, 0.3, True)
    assert_same(got.cpu(), want)
    assert_same(want, ref.tv_match_boxes(gts, props, 0.7, 0.3, True))
