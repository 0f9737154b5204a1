"""ops.retinanet_postprocess on CPU and CUDA: against torchvision's RetinaNet.postprocess_detections
(exactly, on float32 data without ties), the padded/list formats, the edge cases (no candidate,
empty levels, truncation, per-image anchors), NaN handling, every argument error, torch.compile,
opcheck, and a CUDA-graph capture of the padded op. The per-level top-k
(detbench._retinanet_topk_above): CUDA against the CPU bit for bit on every path of the CUDA
kernels (buffer, overflow radix select, ties), and against its contract in torch ops."""
import math

import pytest
import torch

import ops
from harness.suite import Case
from reference import retinanet as ref
from suites import retinanet_postprocess as suite

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def case(device="cpu", dtype=torch.float32, images=2, content="realistic", size="small"):
    return Case("retinanet_postprocess", {"images": images, "size": size, "content": content}, dtype, device)


def inputs(c, seed=0):
    return suite.make_inputs(c, torch.Generator().manual_seed(seed))


def assert_matches(got, expected, c, inp, allow_ambiguous=False):
    verdict = suite.compare(got, expected, c, inp)
    assert verdict.passed, f"{verdict.reason} {dict(verdict.details)}"
    assert allow_ambiguous or not verdict.ambiguous, f"{verdict.reason} {dict(verdict.details)}"


def tiny(device="cpu", dtype=torch.float32, seed=0, images=2, classes=3, sizes=(40, 7, 0, 3)):
    """Levels of `sizes` anchors (one empty), random logits around the threshold and anchors."""
    g = torch.Generator().manual_seed(seed)
    logits, deltas, anchors = [], [], []
    for n in sizes:
        logits.append((torch.randn(images, n, classes, generator=g) * 2 - 1).to(dtype).to(device))
        deltas.append((torch.randn(images, n, 4, generator=g) * 0.3).to(dtype).to(device))
        xy = torch.rand(n, 2, generator=g) * 90
        wh = torch.rand(n, 2, generator=g) * 40 + 5
        anchors.append(torch.cat([xy, xy + wh], 1).to(dtype).to(device))
    sizes_t = torch.tensor([[100, 120], [80, 90]][:images] + [[100, 100]] * max(0, images - 2), device=device)
    return logits, deltas, anchors, sizes_t


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_realistic_float32_equals_torchvision(device, seed):
    c = case(device)
    inp = inputs(c, seed)
    got = ops.retinanet_postprocess(*inp)
    assert_matches(got, ref.postprocess_tv_f32_nms(*inp), c, inp)
    if device == "cpu":  # torchvision's own NMS agrees too (on CUDA it offsets coordinates: see the suite)
        assert_matches(got, ref.postprocess_tv(*inp), c, inp)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(4))
def test_tiny_exact_boxes_scores_labels(device, seed):
    """Few candidates, no ties: boxes, scores and labels bit-equal to torchvision's, in order."""
    args = tiny(device, seed=seed)
    boxes, scores, labels, counts = ops.retinanet_postprocess(*args, 0.3, 20, 0.4, 50)
    want = ref.postprocess_tv(*args, 0.3, 20, 0.4, 50)
    for b, w in enumerate(want):
        n = int(counts[b])
        assert n == len(w["scores"]), (n, len(w["scores"]))
        assert torch.equal(labels[b, :n], w["labels"]), (labels[b, :n], w["labels"])
        assert torch.equal(scores[b, :n], w["scores"])
        torch.testing.assert_close(boxes[b, :n], w["boxes"], rtol=1e-6, atol=1e-5)  # exp: 1 ulp between libms


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_other_dtypes(device, dtype):
    c = case(device, dtype)
    inp = inputs(c, 3)
    got = ops.retinanet_postprocess(*inp)
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == torch.int64
    assert_matches(got, ref.postprocess_tv_f32_nms(*inp), c, inp, allow_ambiguous=dtype != torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("content", ["none_above", "all_above", "ties"])
def test_adversarial_contents(device, content):
    c = case(device, content=content)
    inp = inputs(c, 4)
    got = ops.retinanet_postprocess(*inp)
    assert_matches(got, ref.postprocess_tv_f32_nms(*inp), c, inp, allow_ambiguous=True)
    if content == "none_above":
        assert got[3].tolist() == [0, 0] and (got[2] == -1).all()
    else:
        assert (got[3] > 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_truncation_topk_and_detections(device):
    args = tiny(device, seed=5, sizes=(200, 30))
    for topk, det in ((1, 300), (5, 3), (0, 10), (1000, 1)):
        got = ops.retinanet_postprocess(*args, 0.2, topk, 0.5, det)
        want = ref.postprocess_tv(*args, 0.2, topk, 0.5, det)
        assert got[0].shape == (2, det, 4) and got[3].tolist() == [len(w["scores"]) for w in want]
        for b, w in enumerate(want):
            assert torch.equal(got[1][b, : len(w["scores"])], w["scores"])
            assert torch.equal(got[2][b, : len(w["labels"])], w["labels"])


@pytest.mark.parametrize("device", DEVICES)
def test_shapes_of_degenerate_calls(device):
    logits, deltas, anchors, sizes = tiny(device, seed=6)
    boxes, scores, labels, counts = ops.retinanet_postprocess(logits, deltas, anchors, sizes, 0.05, 100, 0.5, 0)
    assert boxes.shape == (2, 0, 4) and scores.shape == (2, 0) and labels.shape == (2, 0) and counts.tolist() == [0, 0]
    empty = ops.retinanet_postprocess([x[:0] for x in logits], [d[:0] for d in deltas], anchors, sizes[:0])
    assert empty[0].shape == (0, 300, 4) and empty[3].shape == (0,)
    one_class = ops.retinanet_postprocess([x[..., :1] for x in logits], deltas, anchors, sizes, 0.1, 10, 0.5, 7)
    want = ref.postprocess_tv([x[..., :1] for x in logits], deltas, anchors, sizes, 0.1, 10, 0.5, 7)
    assert one_class[3].tolist() == [len(w["scores"]) for w in want] and (one_class[2][:, :1] <= 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_padding_list_format_and_per_image_anchors(device):
    logits, deltas, anchors, sizes = tiny(device, seed=7)
    boxes, scores, labels, counts = ops.retinanet_postprocess(logits, deltas, anchors, sizes, 0.2, 50, 0.5, 40)
    for b in range(2):
        n = int(counts[b])
        assert (boxes[b, n:] == 0).all() and (scores[b, n:] == 0).all() and (labels[b, n:] == -1).all()
    listed = ops.retinanet_postprocess_list(logits, deltas, anchors, sizes.tolist(), 0.2, 50, 0.5, 40)
    for b, d in enumerate(listed):
        n = int(counts[b])
        assert torch.equal(d["boxes"], boxes[b, :n]) and torch.equal(d["labels"], labels[b, :n])
    per_image = [a.expand(2, -1, -1).contiguous() for a in anchors]
    again = ops.retinanet_postprocess(logits, deltas, per_image, sizes, 0.2, 50, 0.5, 40)
    assert all(torch.equal(a, b) for a, b in zip(again, (boxes, scores, labels, counts)))
    as_double = ops.retinanet_postprocess(logits, deltas, [a.double() for a in anchors], sizes, 0.2, 50, 0.5, 40)
    assert all(torch.equal(a, b) for a, b in zip(as_double, (boxes, scores, labels, counts)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("score_thresh", [0.2, -0.5])  # below 0 every non-NaN logit is a candidate
@pytest.mark.parametrize("topk", [50, 4])  # 4: fewer slots than image 0's NaN logits on level 0
def test_nan_logits_are_never_candidates(device, score_thresh, topk):
    """torchvision thresholds before its top-k: NaN logits never take a candidate's slot."""
    logits, deltas, anchors, sizes = tiny(device, seed=8)
    logits[0][0, :5] = float("nan")
    boxes, scores, labels, counts = ops.retinanet_postprocess(logits, deltas, anchors, sizes, score_thresh, topk, 0.5,
                                                              40)
    want = ref.postprocess_tv(logits, deltas, anchors, sizes, score_thresh, topk, 0.5, 40)
    assert counts.tolist() == [len(w["scores"]) for w in want]
    for b, w in enumerate(want):
        n = int(counts[b])
        assert torch.equal(labels[b, :n], w["labels"])
        torch.testing.assert_close(scores[b, :n], w["scores"], rtol=1e-6, atol=1e-7)  # sigmoid: within an ulp
    assert torch.isfinite(scores).all()


def test_nan_box_raises_on_cpu():
    logits, deltas, anchors, sizes = tiny(seed=9)
    logits[0][1, 4, 2] = 10.0  # a sure candidate of image 1, level 0, anchor 4
    deltas[0][1, 4, 0] = float("nan")
    with pytest.raises(RuntimeError, match=r"^detbench.retinanet_postprocess: the box decoded for image 1, level 0, "
                                           r"anchor 4 is NaN \(box_deltas\[0\] or anchors\[0\] has a NaN there\)"):
        ops.retinanet_postprocess(logits, deltas, anchors, sizes, 0.2, 50, 0.5, 40)


@pytest.mark.cuda
def test_nan_box_dropped_on_cuda_and_raised_in_validation_mode(validation):
    logits, deltas, anchors, sizes = tiny("cuda", seed=9)
    logits[0][1, 4, 2] = 10.0
    deltas[0][1, 4, 0] = float("nan")
    with pytest.raises(RuntimeError, match=r"^detbench.retinanet_postprocess: the box decoded for image 1, level 0, anchor 4"):
        ops.retinanet_postprocess(logits, deltas, anchors, sizes, 0.2, 50, 0.5, 40)
    ops.set_validation(False)
    boxes, scores, labels, counts = ops.retinanet_postprocess(logits, deltas, anchors, sizes, 0.2, 50, 0.5, 40)
    assert torch.isfinite(boxes).all()
    kept = labels[1, : counts[1]]
    assert not ((kept == 2) & (scores[1, : counts[1]] == torch.sigmoid(torch.tensor(10.0)).cuda())).any()


def test_argument_errors():
    logits, deltas, anchors, sizes = tiny(seed=10)
    call = ops.retinanet_postprocess
    p = r"^detbench.retinanet_postprocess: "
    with pytest.raises(RuntimeError, match=p + r"box_deltas must have 4 levels \(as cls_logits\), got 3"):
        call(logits, deltas[:3], anchors, sizes)
    with pytest.raises(RuntimeError, match=p + r"anchors must have 4 levels \(as cls_logits\), got 5"):
        call(logits, deltas, anchors + anchors[:1], sizes)
    with pytest.raises(RuntimeError, match=p + r"cls_logits must have 1 to 8 levels, got 0"):
        call([], [], [], sizes)
    with pytest.raises(RuntimeError, match=p + r"cls_logits must have 1 to 8 levels, got 9"):
        call(logits[:1] * 9, deltas[:1] * 9, anchors[:1] * 9, sizes)
    with pytest.raises(RuntimeError, match=p + r"cls_logits\[0\] must have shape \[B, N, C\], got \[2, 120\]"):
        call([logits[0].flatten(1)] + logits[1:], deltas, anchors, sizes)
    with pytest.raises(RuntimeError, match=p + r"cls_logits\[1\] must have shape \[B, N, C\] with B = 2 and C = 3 "
                                               r"\(as cls_logits\[0\]\), got \[2, 7, 4\]"):
        call([logits[0], torch.zeros(2, 7, 4)] + logits[2:], deltas, anchors, sizes)
    with pytest.raises(RuntimeError, match=p + r"cls_logits\[2\] must have shape .* got \[1, 0, 3\]"):
        call(logits[:2] + [logits[2][:1]] + logits[3:], deltas, anchors, sizes)
    with pytest.raises(RuntimeError, match=p + r"box_deltas\[1\] must have shape \[2, 7, 4\] \(B and N of cls_logits\[1\]\), got \[2, 8, 4\]"):
        call(logits, [deltas[0], torch.zeros(2, 8, 4)] + deltas[2:], anchors, sizes)
    with pytest.raises(RuntimeError, match=p + r"anchors\[0\] must have shape \[40, 4\] or \[2, 40, 4\] \(N of cls_logits\[0\]\), got \[39, 4\]"):
        call(logits, deltas, [anchors[0][:39]] + anchors[1:], sizes)
    with pytest.raises(RuntimeError, match=p + r"cls_logits\[3\] must have the dtype of cls_logits\[0\] \(Float\), got Double"):
        call(logits[:3] + [logits[3].double()], deltas, anchors, sizes)
    with pytest.raises(RuntimeError, match=p + r"box_deltas\[0\] must have the dtype of cls_logits \(Float\), got Half"):
        call(logits, [deltas[0].half()] + deltas[1:], anchors, sizes)
    with pytest.raises(RuntimeError, match=p + r"cls_logits must be float16, bfloat16, float32 or float64, got Long"):
        call([x.long() for x in logits], deltas, anchors, sizes)
    with pytest.raises(RuntimeError, match=p + r"anchors\[1\] must be float16, bfloat16, float32 or float64, got Int"):
        call(logits, deltas, [anchors[0], anchors[1].int()] + anchors[2:], sizes)
    with pytest.raises(RuntimeError, match=p + r"image_sizes must have shape \[B, 2\] = \[2, 2\] \(height, width per image\), got \[2, 3\]"):
        call(logits, deltas, anchors, torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match=p + r"image_sizes must be an integer tensor, got Float"):
        call(logits, deltas, anchors, sizes.float())
    with pytest.raises(RuntimeError, match=p + r"cls_logits must have at least one class, got shape \[2, 40, 0\]"):
        call([x[..., :0] for x in logits], deltas, anchors, sizes)
    with pytest.raises(RuntimeError, match=p + r"score_thresh must not be NaN"):
        call(logits, deltas, anchors, sizes, float("nan"))
    with pytest.raises(RuntimeError, match=p + r"nms_thresh must not be NaN"):
        call(logits, deltas, anchors, sizes, 0.05, 10, float("nan"))
    with pytest.raises(RuntimeError, match=p + r"topk_candidates must be >= 0, got -1"):
        call(logits, deltas, anchors, sizes, 0.05, -1)
    with pytest.raises(RuntimeError, match=p + r"detections_per_img must be >= 0, got -2"):
        call(logits, deltas, anchors, sizes, 0.05, 10, 0.5, -2)


@pytest.mark.cuda
def test_device_errors():
    logits, deltas, anchors, sizes = tiny("cuda", seed=11)
    p = r"^detbench.retinanet_postprocess: "
    with pytest.raises(RuntimeError, match=p + r"cls_logits\[1\] must be on the device of cls_logits\[0\]"):
        ops.retinanet_postprocess([logits[0], logits[1].cpu()] + logits[2:], deltas, anchors, sizes)
    with pytest.raises(RuntimeError, match=p + r"anchors\[0\] must be on the device of cls_logits"):
        ops.retinanet_postprocess(logits, deltas, [anchors[0].cpu()] + anchors[1:], sizes)
    with pytest.raises(RuntimeError, match=p + r"image_sizes must be on the device of cls_logits"):
        ops.retinanet_postprocess(logits, deltas, anchors, sizes.cpu())


def test_opcheck():
    logits, deltas, anchors, sizes = tiny(seed=12)
    torch.library.opcheck(torch.ops.detbench.retinanet_postprocess.default,
                          (logits, deltas, anchors, sizes, 0.2, 30, 0.5, 25))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph(dynamic):
    def f(logits, deltas, anchors, sizes):
        return ops.retinanet_postprocess(logits, deltas, anchors, sizes, 0.2, 30, 0.5, 25)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for seed, sizes in ((13, (40, 7, 0, 3)), (14, (50, 9, 0, 3))):
        args = tiny(seed=seed, sizes=sizes)
        assert all(torch.equal(a, b) for a, b in zip(compiled(*args), f(*args)))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("content", ["realistic", "all_above"])
def test_cuda_graph_capture_and_replay(dtype, content):
    c = case("cuda", dtype, content=content)
    logits, deltas, anchors, sizes, *rest = inputs(c, 15)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the capture
        ops.retinanet_postprocess(logits, deltas, anchors, sizes, *rest)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.retinanet_postprocess(logits, deltas, anchors, sizes, *rest)
    for seed in (16, 17):
        new = inputs(c, seed)
        for dst, src in zip(logits + deltas, new[0] + new[1]):
            dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        eager = ops.retinanet_postprocess(*new)
        assert all(torch.equal(a, b) for a, b in zip(out, eager))  # the CUDA top-k orders ties by index
        assert_matches(out, ref.postprocess_tv_f32_nms(*new), c, new,
                       allow_ambiguous=dtype != torch.float32 or content != "realistic")


# ---- the per-level top-k: detbench._retinanet_topk_above ----

topk_above = torch.ops.detbench._retinanet_topk_above
THRESH = 0.05
CAPACITY = 4096  # the CUDA kernels' per-row buffer (cuda/topk_above.cu: kMinCapacity)
TOPK_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def topk_reference(x, k, thresh=THRESH):
    """The contract in torch ops, on x's device (torch's sigmoid there): the top k of the elements
    with logit > logit(thresh) - 1 and score > thresh (in the dtype), score descending, equal
    scores by index ascending; padding (-inf, 0). The bound is -inf at thresh 0, +inf at 1 and NaN
    (nothing passes) below 0 and above 1, as score_threshold_logit_bound computes it."""
    bound = (math.nan if thresh < 0 or thresh > 1 else -math.inf if thresh == 0 else math.inf if thresh == 1
             else math.log(thresh) - math.log1p(-thresh) - 1.0)
    score = torch.sigmoid(x)
    thr = torch.tensor(thresh, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32).to(x.dtype)
    passing = (score > thr.to(x.device)) & (x.double() > bound)
    key = torch.where(passing, score, torch.full_like(score, -1))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    keep = passing.gather(1, order)
    values = torch.where(keep, x.gather(1, order), torch.full_like(order, -math.inf, dtype=x.dtype))
    index = torch.where(keep, order, 0)
    pad = k - values.shape[1]
    values = torch.cat([values, values.new_full((x.shape[0], pad), -math.inf)], 1)
    return values, torch.cat([index, index.new_zeros((x.shape[0], pad))], 1)


def grid_values(dtype):
    """Logits whose scores round to the same value of the dtype on any device (libm exps differ by
    an ulp or two): multiples of 1/64 in [-8, 8] (float32/float64: far enough apart that no two
    round to one score or straddle the threshold), for float16/bfloat16 only those whose float64
    sigmoid is > 1e-6 (relative) from a rounding boundary of the dtype; and +-20 (score 1 and ~0)."""
    v = torch.arange(-512, 513, dtype=torch.float64) / 64
    if dtype in (torch.float16, torch.bfloat16):
        s = torch.sigmoid(v)
        v = v[(s * (1 - 1e-6)).to(dtype) == (s * (1 + 1e-6)).to(dtype)]
    return torch.cat([v, torch.tensor([20.0, -20.0], dtype=torch.float64)])


def grid_row(content, m, dtype, g):
    """One row of m grid logits: `realistic` (~0.5 % above the threshold, float16: many equal
    scores), `none_above`, `all_above` and `ties` (every element above: the radix path), `few`
    (7 above), `exactly_capacity` / `capacity_plus_one` (that many above: the path's edge)."""
    pool = grid_values(dtype)
    background, above = pool[pool <= -3.5], pool[pool > -2.9]
    pick = lambda values, n: values[torch.randint(0, len(values), (n,), generator=g)]
    x = pick(background, m)
    if content == "realistic":
        where = torch.rand(m, generator=g) < 0.005
        x[where] = pick(above, int(where.sum()))
    elif content == "all_above":
        x = pick(above[above > -2.5], m)
    elif content == "ties":
        x = torch.full((m,), 0.5, dtype=torch.float64)
    else:
        n = {"few": 7, "exactly_capacity": CAPACITY, "capacity_plus_one": CAPACITY + 1}.get(content, 0)
        x[torch.randperm(m, generator=g)[:n]] = pick(above, n)
    return x.to(dtype)


def misaligned(x):
    """x in storage that starts one element past an allocation: no row starts 16-byte aligned."""
    flat = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)[1:]
    return flat.copy_(x.flatten()).view(x.shape)


def assert_same_topk(got, want):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a.cpu(), b.cpu()), f"first difference at {(a.cpu() != b.cpu()).nonzero()[:4].tolist()}"


@pytest.mark.parametrize("dtype", TOPK_DTYPES, ids=str)
def test_topk_above_cpu_matches_reference(dtype):
    """The CPU kernel against the contract in torch ops (grid logits: torch's vectorized CPU sigmoid
    and the kernel's std::exp agree there), on the contents the CUDA tests use."""
    g = torch.Generator().manual_seed(20)
    contents = ["realistic", "none_above", "all_above", "ties", "few", "exactly_capacity", "capacity_plus_one"]
    x = torch.stack([grid_row(c, 20011, dtype, g) for c in contents])
    for k in (1000, 1, 30000):
        assert_same_topk(topk_above(x, k, THRESH), topk_reference(x, k))


def test_topk_above_cpu_thresholds_and_non_finite_logits():
    """Every threshold regime against the contract: negative (none pass: the pipeline sends such
    thresholds to torch.topk), 0, inside (0, 1), 1 and above (none pass); NaN and -inf logits
    never pass, +inf ones do while the threshold is below 1."""
    g = torch.Generator().manual_seed(25)
    for dtype in TOPK_DTYPES:
        x = torch.stack([grid_row(c, 10007, dtype, g) for c in ("realistic", "none_above", "few")])
        x[0, :50] = float("nan")
        x[1, 50:60] = -float("inf")
        x[2, 60:70] = float("inf")
        for thresh in (-0.5, 0.0, 0.05, 0.5, 0.999, 1.0, 1.5):
            for k in (300, 20000):
                assert_same_topk(topk_above(x, k, thresh), topk_reference(x, k, thresh))
    values, _ = topk_above(x, 20000, 0.0)
    assert (values[1] > -math.inf).sum() == 10007 - 10  # all but the -inf logits


def test_negative_score_threshold_keeps_every_score_as_torchvision():
    args = tiny(seed=3)
    boxes, scores, labels, counts = ops.retinanet_postprocess(*args, -0.5, 20, 0.4, 50)
    want = ref.postprocess_tv(*args, -0.5, 20, 0.4, 50)
    for b, w in enumerate(want):
        n = int(counts[b])
        assert n == len(w["scores"]) > 0, (n, len(w["scores"]))
        assert torch.equal(labels[b, :n], w["labels"]) and torch.equal(scores[b, :n], w["scores"])


def test_topk_above_argument_errors():
    p = r"^detbench.retinanet_postprocess: "
    with pytest.raises(RuntimeError, match=p + r"logits must have shape \[B, m\], got \[3\]"):
        topk_above(torch.zeros(3), 1, 0.05)
    with pytest.raises(RuntimeError, match=p + r"k must be >= 0, got -1"):
        topk_above(torch.zeros(2, 3), -1, 0.05)
    with pytest.raises(RuntimeError, match=p + r"logits must be float16, bfloat16, float32 or float64, got Long"):
        topk_above(torch.zeros(2, 3, dtype=torch.long), 1, 0.05)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", TOPK_DTYPES, ids=str)
@pytest.mark.parametrize("k", [1000, 1, 5000])
def test_topk_above_cuda_equals_cpu_mixed_rows(dtype, k):
    """B = 8 rows of 200,003 elements (no row aligned, not a multiple of any tile), each a different
    path: buffer, radix select with and without ties, nothing above, fewer above than k, exactly
    the capacity and one more. k = 5000: a larger buffer (8192); k = 1: one element."""
    g = torch.Generator().manual_seed(21)
    contents = ["realistic", "all_above", "none_above", "ties", "few", "exactly_capacity", "capacity_plus_one",
                "realistic"]
    x = torch.stack([grid_row(c, 200003, dtype, g) for c in contents])
    want = topk_above(x, k, THRESH)
    got = topk_above(misaligned(x.cuda()), k, THRESH)
    assert_same_topk(got, want)
    assert_same_topk(topk_above(x.cuda(), k, THRESH), want)  # aligned rows too
    assert_same_topk(topk_above(x.cuda(), k, THRESH), got)  # deterministic


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", TOPK_DTYPES, ids=str)
@pytest.mark.parametrize("content", ["realistic", "none_above", "all_above", "ties", "few", "capacity_plus_one"])
@pytest.mark.parametrize("m", [3_000_001, 4097, 7])
def test_topk_above_cuda_equals_cpu_one_row(dtype, content, m):
    """B = 1 (the grid's most blocks per row), a long row, one just above the capacity, a tiny one."""
    if content in ("capacity_plus_one",) and m < CAPACITY + 1:
        pytest.skip("row shorter than the content")
    g = torch.Generator().manual_seed(22)
    x = grid_row(content, m, dtype, g)[None]
    k = min(1000, m)
    assert_same_topk(topk_above(x.cuda(), k, THRESH), topk_above(x, k, THRESH))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("content", ["realistic", "all_above", "ties"])
def test_topk_above_cuda_equals_torch_ops_on_suite_logits(dtype, content):
    """The suite's own (unquantized) logits, every level of 2 small images and of 1 full-size one:
    against the contract computed by torch ops on the GPU (the same sigmoid as the kernels)."""
    for images, size in ((2, "small"), (1, "full")):
        c = Case("retinanet_postprocess", {"images": images, "size": size, "content": content}, dtype, "cuda")
        for logits in inputs(c, 23)[0]:
            flat = logits.flatten(1)
            k = min(1000, flat.shape[1])
            assert_same_topk(topk_above(flat, k, THRESH), topk_reference(flat, k))


@pytest.mark.cuda
def test_topk_above_cuda_thresholds_and_nan():
    """Threshold 0 (every finite logit passes but -inf), 1 and above (none), NaN logits never pass."""
    g = torch.Generator().manual_seed(24)
    x = torch.stack([grid_row("realistic", 10007, torch.float32, g) for _ in range(3)])
    x[0, :50] = float("nan")
    x[1, 50:60] = -float("inf")
    x[2, 60:70] = float("inf")
    for thresh in (0.0, 0.05, 0.5, 0.999, 1.0, 1.5):
        assert_same_topk(topk_above(x.cuda(), 300, thresh), topk_above(x, 300, thresh))


@pytest.mark.cuda
def test_topk_above_cuda_graph_capture_and_replay():
    """Captured once, replayed on rows whose paths differ from the capture's: same as the CPU."""
    g = torch.Generator().manual_seed(25)
    rows = lambda contents: torch.stack([grid_row(c, 100003, torch.float32, g) for c in contents]).cuda()
    x = rows(["realistic", "all_above", "none_above", "ties"])
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        topk_above(x, 1000, THRESH)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = topk_above(x, 1000, THRESH)
    for contents in (["ties", "realistic", "all_above", "few"], ["none_above"] * 4, ["all_above"] * 4):
        x.copy_(rows(contents))
        graph.replay()
        torch.cuda.synchronize()
        assert_same_topk(out, topk_above(x.cpu(), 1000, THRESH))


@pytest.mark.cuda
def test_cuda_equals_cpu_through_the_op_on_grid_logits():
    """The whole op, CUDA against the CPU, on the suite's realistic inputs with logits moved to
    multiples of 1/64 (scores then decide alike on both devices): same detections, labels,
    counts, order; scores and boxes within the exps' ulps (libm's and CUDA's differ)."""
    c = case("cpu", images=2)
    logits, deltas, anchors, sizes, *rest = inputs(c, 26)
    logits = [(x * 64).round().clamp(-512, 512) / 64 for x in logits]
    cpu = ops.retinanet_postprocess(logits, deltas, anchors, sizes, *rest)
    to = lambda ts: [t.cuda() for t in ts]
    gpu = ops.retinanet_postprocess(to(logits), to(deltas), to(anchors), sizes.cuda(), *rest)
    assert torch.equal(gpu[3].cpu(), cpu[3]) and torch.equal(gpu[2].cpu(), cpu[2])
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], rtol=1e-6, atol=1e-4)
