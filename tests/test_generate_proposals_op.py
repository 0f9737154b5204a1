"""ops.generate_proposals against the explicit-tie pure reference (exact same boxes and scores
in the same order) and torchvision's RegionProposalNetwork.filter_proposals (the same proposals
per image, order-insensitive where scores tie), on small FPN layouts, every dtype, degenerate
inputs (NaN logits and deltas, empty levels, nothing kept), the errors, torch.compile, and
CUDA-graph capture of the padded output."""
import pytest
import torch

import ops
from reference import proposals as ref
from suites._proposals import as_lists, compare_proposals, rpn_inputs

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def inputs(batch=2, height=160, width=224, dtype=torch.float32, seed=0, device="cpu", levels=5):
    g = torch.Generator().manual_seed(seed)
    objectness, deltas, anchors, sizes, counts = rpn_inputs(batch, height, width, dtype, g, levels)
    return (objectness.to(device), deltas.to(device), anchors.to(device), sizes.to(device), counts)


def run(fn, args, pre, post, nms=0.7, min_size=1e-3, score=0.0):
    return fn(*args, pre, post, nms, min_size, score)


def assert_same_as(got, want, args, pre, dtype, allow_reorder=False):
    verdict = compare_proposals(got, want, (*args, pre), dtype)
    ok = verdict.passed and (allow_reorder or verdict.details.get("reordered", 0) == 0) and not verdict.ambiguous
    assert ok, f"{verdict.reason} {verdict.details} worst {verdict.worst}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pre,post", [(50, 30), (300, 1000), (2000, 100)])
def test_matches_pure_reference_exactly(device, dtype, pre, post):
    args = inputs(dtype=dtype, seed=pre, device=device)
    got = run(ops.generate_proposals, args, pre, post)
    boxes, scores, counts = got
    assert boxes.shape == (2, post, 4) and scores.shape == (2, post) and counts.dtype == torch.int64
    assert boxes.dtype == dtype and scores.dtype == dtype
    want = run(ref.pure_generate_proposals, args, pre, post)
    assert_same_as(got, want, args, pre, dtype)
    for b in range(2):  # padding is zeros
        assert (boxes[b, counts[b]:] == 0).all() and (scores[b, counts[b]:] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pre,post,nms,score", [(100, 50, 0.7, 0.0), (1000, 1000, 0.5, 0.3)])
def test_matches_torchvision_filter_proposals(device, pre, post, nms, score):
    args = inputs(batch=3, seed=5, device=device)
    got = run(ops.generate_proposals, args, pre, post, nms, score=score)
    want = run(ref.tv_generate_proposals, args, pre, post, nms, score=score)
    assert_same_as(got, want, args, pre, torch.float32, allow_reorder=True)
    assert sum(len(b) for b in as_lists(got)[0]) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_ragged_output(device):
    args = inputs(seed=2, device=device)
    boxes, scores = ops.generate_proposals(*args, 100, 60, ragged=True)
    padded = ops.generate_proposals(*args, 100, 60)
    for b in range(2):
        n = int(padded[2][b])
        assert torch.equal(boxes[b], padded[0][b, :n]) and torch.equal(scores[b], padded[1][b, :n])


@pytest.mark.parametrize("device", DEVICES)
def test_nan_objectness_and_deltas_are_dropped(device):
    args = list(inputs(seed=3, device=device))
    objectness, deltas = args[0].clone(), args[1].clone()
    top = objectness[0].topk(20).indices
    objectness[0, top[:10]] = float("nan")  # selected first by top-k, then dropped
    deltas[0, top[10:15], 2] = float("nan")
    deltas[1, :, 0] = float("inf")  # every box of image 1 collapses onto the image border
    args[0], args[1] = objectness, deltas
    got = run(ops.generate_proposals, args, 100, 50)
    want = run(ref.pure_generate_proposals, args, 100, 50)
    assert_same_as(got, want, args, 100, torch.float32)
    assert int(got[2][1]) == 0
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    tv = run(ref.tv_generate_proposals, args, 100, 50)
    assert len(tv[0][1]) == 0 and len(tv[0][0]) == int(got[2][0])


@pytest.mark.parametrize("device", DEVICES)
def test_empty_levels_and_nothing_kept(device):
    o, d, a, s, counts = inputs(seed=4, device=device, levels=3)
    # an empty level in the middle: split the second level's anchors off as level 2
    args = (o, d, a, s, [counts[0], 0, counts[1], counts[2]])
    got = run(ops.generate_proposals, args, 40, 70)
    assert_same_as(got, run(ref.pure_generate_proposals, args, 40, 70), args, 40, torch.float32)
    for pre, post, score in [(0, 10, 0.0), (40, 0, 0.0), (40, 10, 1.1)]:
        boxes, scores, n = run(ops.generate_proposals, args, pre, post, score=score)
        assert boxes.shape == (2, post, 4) and (n == 0).all() and (boxes == 0).all() and (scores == 0).all()
    boxes, scores, n = ops.generate_proposals(o[:0], d[:0], a, s[:0], args[4], 40, 10)
    assert boxes.shape == (0, 10, 4) and n.shape == (0,)


@pytest.mark.parametrize("call,match", [
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a, s, c[:-1], 10, 10), "must sum to A"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a, s, c[:-1] + [c[-1] + 1], 10, 10), "must sum to A"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a, s, [-1, sum(c) + 1], 10, 10), "must be >= 0"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d[:, :-1], a, s, c, 10, 10), r"deltas must have shape \[B, A, 4\]"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d.double(), a, s, c, 10, 10), "deltas must have the dtype"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a[:-1], s, c, 10, 10), r"anchors must have shape \[A, 4\]"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a, s[:1], c, 10, 10), r"image_sizes must have shape \[B, 2\]"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a, s.float(), c, 10, 10), "image_sizes must be int32 or int64"),
    (lambda o, d, a, s, c: ops.generate_proposals(o.long(), d, a, s, c, 10, 10), "objectness must be float16"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a, s, c, -1, 10), "pre_nms_top_n must be >= 0"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a, s, c, 10, -1), "post_nms_top_n must be >= 0"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a, s, c, 10, 10, float("nan")), "nms_thresh must not be NaN"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a, s, c, 10, 10, 0.7, float("nan")), "min_size"),
    (lambda o, d, a, s, c: ops.generate_proposals(o, d, a, s, [1] * 17 + [sum(c) - 17], 10, 10), "1 to 16 levels"),
])
def test_errors(call, match):
    with pytest.raises(RuntimeError, match=match):
        call(*inputs(seed=1, height=64, width=64))


def test_opcheck_and_compile():
    o, d, a, s, c = inputs(seed=6, height=64, width=96)
    torch.library.opcheck(torch.ops.detbench.generate_proposals.default, (o, d, a, s, c, 30, 20, 0.7, 1e-3, 0.0))

    def f(o, d, a, s):
        return ops.generate_proposals(o, d, a, s, c, 30, 20)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(o, d, a, s), f(o, d, a, s)):
        assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu_at_fpn_scale(dtype):
    args = inputs(batch=2, height=800, width=1344, dtype=dtype, seed=8)
    want = run(ops.generate_proposals, args, 2000, 1000)
    cuda_args = tuple(x.cuda() if isinstance(x, torch.Tensor) else x for x in args)
    got = run(ops.generate_proposals, cuda_args, 2000, 1000)
    assert_same_as(got, want, args, 2000, dtype)


@pytest.mark.cuda
def test_cuda_graph_capture_and_replay():
    args = inputs(batch=2, height=800, width=1344, seed=9, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the capture
        run(ops.generate_proposals, args, 1000, 1000)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(ops.generate_proposals, args, 1000, 1000)
    objectness = args[0]
    objectness.copy_(inputs(batch=2, height=800, width=1344, seed=10, device="cuda")[0])  # new head outputs
    graph.replay()
    torch.cuda.synchronize()
    want = run(ref.pure_generate_proposals, args, 1000, 1000)
    assert_same_as(out, want, args, 1000, torch.float32)
