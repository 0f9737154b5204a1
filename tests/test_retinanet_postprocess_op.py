"""ops.retinanet_postprocess on CPU and CUDA: against torchvision's RetinaNet.postprocess_detections
(exactly, on float32 data without ties), the padded/list formats, the edge cases (no candidate,
empty levels, truncation, per-image anchors), NaN handling, every argument error, torch.compile,
opcheck, and a CUDA-graph capture of the padded op."""
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
def test_nan_logits_are_never_candidates(device):
    logits, deltas, anchors, sizes = tiny(device, seed=8)
    logits[0][0, :5] = float("nan")
    got = ops.retinanet_postprocess(logits, deltas, anchors, sizes, 0.2, 50, 0.5, 40)
    want = ref.postprocess_tv(logits, deltas, anchors, sizes, 0.2, 50, 0.5, 40)
    assert got[3].tolist() == [len(w["scores"]) for w in want]
    assert torch.isfinite(got[1]).all()


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
def test_cuda_graph_capture_and_replay(dtype):
    c = case("cuda", dtype)
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
        if dtype == torch.float32:  # float16 logits tie: torch.topk's order of equal values may vary
            assert all(torch.equal(a, b) for a, b in zip(out, eager))
        assert_matches(out, ref.postprocess_tv_f32_nms(*new), c, new, allow_ambiguous=dtype != torch.float32)
