"""The top-k step of ops.retinanet_postprocess, seen through the whole op: with zero box deltas and
one unit box per anchor on an integer grid (exact in every dtype, IoU 0 between anchors, so NMS
suppresses nothing) and detections_per_img = levels x topk_candidates, the output holds every
selected candidate, and each detection's box and label name its (level, anchor, class). Per
image and level, the flat indices kept, in output order, must be exactly the elements scoring
above score_thresh by descending logit (CUDA: cuda/topk_above_kernel.cu) or score (CPU), equal
ones by ascending index, the first topk_candidates. The CUDA selection buffers kCapacity = 4096
candidates per (image, level) and takes a radix select beyond: the cases straddle it."""
import pytest
import torch

import ops
from harness.suite import Case
from reference import retinanet as ref
from suites import retinanet_postprocess as suite

CUDA = pytest.param("cuda", marks=pytest.mark.cuda)
CAPACITY = 4096  # kCapacity of csrc/ops/retinanet_postprocess/cuda/topk_above_kernel.cu
GRID = 128  # anchors per row of unit boxes: coordinates and centres (x + 0.5 <= 127.5) exact in bfloat16
THRESH = 0.05


def poison_cuda_cache():
    """Fills freed blocks of both of the caching allocator's pools with 0x7F bytes (float32 3.4e38,
    float16 NaN, int64 ~9e18), so that an output or intermediate the op leaves unwritten shows."""
    big = torch.empty(64 << 20, dtype=torch.uint8, device="cuda").fill_(0x7F)
    small = [torch.empty(256 << 10, dtype=torch.uint8, device="cuda").fill_(0x7F) for _ in range(32)]
    del big, small


def identity_inputs(logits, dtype, device):
    """logits: CPU float tensors [B, n_l, C]. Zero deltas; anchor g (over all levels) the unit box
    at (g % GRID, g // GRID)."""
    counts = [x.shape[1] for x in logits]
    assert sum(counts) <= GRID * GRID
    batch = logits[0].shape[0]
    g = torch.arange(sum(counts))
    xy = torch.stack([g % GRID, g // GRID], 1).float()
    boxes = torch.cat([xy, xy + 1], 1)
    anchors = list(boxes.split(counts))
    deltas = [torch.zeros(batch, n, 4) for n in counts]
    sizes = torch.tensor([[GRID + 1, GRID + 1]] * batch)
    to = lambda ts: [t.to(dtype).to(device) for t in ts]  # noqa: E731
    return to(logits), to(deltas), to(anchors), sizes.to(device)


def selected(logits, dtype, device, topk):
    """The op's kept flat indices per image and level, in output order (see the module docstring)."""
    x, deltas, anchors, sizes = identity_inputs(logits, dtype, device)
    levels, classes = len(logits), logits[0].shape[2]
    if device == "cuda":
        poison_cuda_cache()
    boxes, scores, labels, counts = ops.retinanet_postprocess(x, deltas, anchors, sizes, THRESH, topk, 0.5,
                                                              levels * topk)
    offsets = torch.tensor([0] + [t.shape[1] for t in logits]).cumsum(0)
    out = []
    for b in range(len(counts)):
        n = int(counts[b])
        assert (labels[b, n:] == -1).all() and (scores[b, n:] == 0).all() and (boxes[b, n:] == 0).all()
        box = boxes[b, :n].double().cpu()
        assert torch.equal(box[:, 2:], box[:, :2] + 1) and torch.equal(box, box.round()), "not an anchor's box"
        gid = (box[:, 1] * GRID + box[:, 0]).long()
        level = torch.searchsorted(offsets, gid, right=True) - 1
        flat = (gid - offsets[level]) * classes + labels[b, :n].cpu()
        out.append([flat[level == l].tolist() for l in range(levels)])
    return out


def expected(logits, dtype, device, topk):
    """Per image and level: the elements scoring > THRESH (torch.sigmoid on `device`, in dtype),
    by descending logit (CUDA) or score (CPU), equal ones by ascending index, the first topk."""
    out = []
    for b in range(logits[0].shape[0]):
        per_level = []
        for t in logits:
            x = t[b].to(dtype).to(device).flatten()
            score = torch.sigmoid(x)
            index = (score > THRESH).nonzero().squeeze(1)
            key = (x if device == "cuda" else score)[index]
            order = torch.sort(key, descending=True, stable=True).indices
            per_level.append(index[order][: min(topk, x.numel())].tolist())
        out.append(per_level)
    return out


def check(logits, device, dtype=torch.float32, topk=1000):
    got = selected(logits, dtype, device, topk)
    want = expected(logits, dtype, device, topk)
    for b, (g, w) in enumerate(zip(got, want)):
        for level, (gl, wl) in enumerate(zip(g, w)):
            assert len(gl) == len(wl), f"image {b} level {level}: {len(gl)} kept, expected {len(wl)}"
            assert gl == wl, f"image {b} level {level}: first difference at rank " + str(
                next(i for i, (p, q) in enumerate(zip(gl, wl)) if p != q))
    return got


def suite_logits(content, images, seed=0):
    """The suite's logits of a small image (~4.5k anchors x 80 classes, 5 levels), on the CPU."""
    c = Case("retinanet_postprocess", {"images": images, "size": "small", "content": content}, torch.float32, "cpu")
    return suite.make_inputs(c, torch.Generator().manual_seed(seed))[0]


def capacity_logits(per_image, anchors=2048, classes=4, seed=0, distinct=False):
    """One level of anchors x classes: in image b exactly per_image[b] candidates (logits on a
    1/8 grid in [0, 3]: distinct scores, many equal logits; or all distinct), -10 elsewhere; and a
    small second level with a few."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((len(per_image), anchors * classes), -10.0)
    for b, n in enumerate(per_image):
        where = torch.randperm(anchors * classes, generator=g)[:n]
        values = torch.randperm(n, generator=g) * (3 / n) if distinct else torch.randint(0, 25, (n,), generator=g) / 8
        x[b, where] = values.float()
    small = torch.randn(len(per_image), 30, classes, generator=g) * 2 - 2
    return [x.view(len(per_image), anchors, classes), small]


# Contents whose scores never tie unless their logits do: the CPU's order (by score) is the
# CUDA one's (by logit), so the CPU runs them too.
@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("content", ["ties", "none_above"])
@pytest.mark.parametrize("images", [1, 8])
def test_suite_contents_separated_scores(device, content, images):
    got = check(suite_logits(content, images), device)
    assert all(len(level) == 0 for image in got for level in image) == (content == "none_above")


@pytest.mark.cuda
@pytest.mark.parametrize("content", ["realistic", "all_above"])
@pytest.mark.parametrize("images", [1, 8])
def test_suite_contents(content, images):
    check(suite_logits(content, images, seed=1), "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("content", ["realistic", "all_above", "ties"])
def test_half_precision(dtype, content):
    check(suite_logits(content, 2, seed=2), "cuda", dtype)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("topk", [1000, CAPACITY])
def test_capacity_and_one_more(device, topk):
    """Image 0 fills the buffer exactly (sorted there), image 1 overflows it by one (radix select)."""
    check(capacity_logits([CAPACITY, CAPACITY + 1, CAPACITY - 1]), device, topk=topk)


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_all_equal_logits_lowest_index_first(device):
    """Every element scores 0.5: the overflow's select runs to the index bits; +0 and -0 tie."""
    logits = [torch.zeros(2, n, 80) for n in (3000, 700, 60)]
    logits[0][0, ::2] = -0.0
    got = check(logits, device)
    assert got[0][0] == list(range(1000)) and got[1][2] == list(range(1000))


@pytest.mark.parametrize("device", ["cpu", CUDA])
def test_topk_larger_than_levels_and_special_values(device):
    """topk_candidates above every level's N_l x C (one level empty); +inf always a candidate,
    NaN and -inf never."""
    g = torch.Generator().manual_seed(3)
    logits = [torch.randn(4, n, 3, generator=g) * 3 for n in (40, 7, 0, 3)]
    logits[0][0, :3] = torch.tensor([float("inf"), float("nan"), float("-inf")])[:, None]
    logits[1][2] = float("nan")
    got = check(logits, device, topk=1000)
    assert got[0][0][:3] == [0, 1, 2]  # anchor 0's classes: +inf
    assert got[2][1] == []


@pytest.mark.cuda
@pytest.mark.parametrize("topk", [0, 5000])
def test_paths_left_to_at_topk(topk):
    """topk_candidates 0 or above the buffer: at::topk's top-k (distinct logits: its order of
    equal ones is unspecified)."""
    logits = capacity_logits([300, CAPACITY + 7], anchors=1500, distinct=True)
    check(logits, "cuda", topk=topk)


@pytest.mark.cuda
@pytest.mark.parametrize("images", [1, 8])
def test_realistic_against_cpu_and_torchvision(images):
    """The whole op at its defaults, float32, against torchvision (one to one) and the CPU op."""
    c = Case("retinanet_postprocess", {"images": images, "size": "small", "content": "realistic"}, torch.float32,
             "cuda")
    inp = suite.make_inputs(c, torch.Generator().manual_seed(4))
    poison_cuda_cache()
    got = ops.retinanet_postprocess(*inp)
    verdict = suite.compare(got, ref.postprocess_tv_f32_nms(*inp), c, inp)
    assert verdict.passed and not verdict.ambiguous, f"{verdict.reason} {dict(verdict.details)}"
    on_cpu = ops.retinanet_postprocess(*[[t.cpu() for t in a] if isinstance(a, list) else
                                         a.cpu() if isinstance(a, torch.Tensor) else a for a in inp])
    verdict = suite.compare(got, on_cpu, c, inp)  # one to one: equal scores may come in either order
    assert verdict.passed and not verdict.ambiguous, f"{verdict.reason} {dict(verdict.details)}"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_graph_replays_every_path(dtype):
    """One capture (realistic logits), replayed on contents that take the buffer, the overflow
    select and nothing at all: each replay equals the eager call, outputs poisoned before it."""
    contents = ["realistic", "all_above", "ties", "none_above", "realistic"]
    logits, deltas, anchors, sizes = identity_inputs(suite_logits(contents[0], 2, seed=5), dtype, "cuda")
    args = (THRESH, 1000, 0.5, 5 * 1000)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the capture
        ops.retinanet_postprocess(logits, deltas, anchors, sizes, *args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.retinanet_postprocess(logits, deltas, anchors, sizes, *args)
    for seed, content in enumerate(contents):
        new = suite_logits(content, 2, seed=6 + seed)
        for dst, src in zip(logits, new):
            dst.copy_(src.to(dtype))
        for t in out:
            t.fill_(7)
        graph.replay()
        torch.cuda.synchronize()
        eager = ops.retinanet_postprocess(logits, deltas, anchors, sizes, *args)
        assert all(torch.equal(a, b) for a, b in zip(out, eager)), content
        assert (out[3] > 0).all() == (content != "none_above"), content
