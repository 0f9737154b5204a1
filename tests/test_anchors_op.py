"""ops.cell_anchors and ops.grid_anchors against torchvision's AnchorGenerator (bit-exact) and
the float64 reference, on FPN and odd layouts, every dtype, with the visibility mask and the
documented errors."""
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

import ops
from reference import proposals as ref

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
FPN_SIZES = ((32,), (64,), (128,), (256,), (512,))
RATIOS = (0.5, 1.0, 2.0)


def fpn_layout(h=800, w=1344):
    feature_sizes = [(-(-h // s), -(-w // s)) for s in (4, 8, 16, 32, 64)]
    strides = [(h // fh, w // fw) for fh, fw in feature_sizes]
    return feature_sizes, strides


def assert_same(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    bad = (got != want).any(-1) if got.dim() == 2 else got != want
    if bad.any():
        i = bad.nonzero()[:5].flatten().tolist()
        pytest.fail(f"{int(bad.sum())} rows differ; first {i}: got {got[i].tolist()} want {want[i].tolist()}")


@pytest.mark.parametrize("sizes,ratios", [(FPN_SIZES, RATIOS), (((128, 256, 512),), ((0.5, 1.0, 2.0),)),
                                          ((16, 33), (0.25, 1.0, 3.7))])
def test_cell_anchors_match_torchvision(sizes, ratios):
    gen = AnchorGenerator(sizes, ratios if isinstance(ratios[0], tuple) else (ratios,) * len(sizes))
    got = ops.cell_anchors(sizes, ratios)
    assert len(got) == len(gen.cell_anchors)
    for g, w in zip(got, gen.cell_anchors):
        assert_same(g, w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fpn_anchors_match_torchvision_forward(device, dtype):
    """The whole AnchorGenerator.forward on an 800x1344 batch: every bit equal."""
    feature_sizes, strides = fpn_layout()
    gen = AnchorGenerator(FPN_SIZES, (RATIOS,) * 5)
    images = ImageList(torch.zeros(1, 3, 800, 1344, device=device, dtype=dtype), [(800, 1344)])
    features = [torch.zeros(1, 1, h, w, device=device, dtype=dtype) for h, w in feature_sizes]
    want = gen(images, features)[0]
    cells = [c.to(device=device, dtype=dtype) for c in ops.cell_anchors(FPN_SIZES, RATIOS)]
    got = ops.grid_anchors(feature_sizes, strides, cells)
    assert got.shape == (268569, 4)
    assert_same(got, ref.pure_grid_anchors(feature_sizes, strides, cells))  # rounded once
    if dtype != torch.bfloat16:  # torchvision rounds shifts to the half type first: bfloat16 > 256 differs
        assert_same(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", [
    ([(1, 1)], [(4, 4)], 1),
    ([(0, 5), (3, 0), (2, 3)], [(8, 8), (16, 16), (32, 7)], 3),  # empty levels
    ([(7, 13), (33, 1), (1, 257)], [4, (8, 3), 16], 2),
    ([(50, 77)], [(3, 5)], 9),
])
def test_odd_layouts(device, dtype, layout):
    feature_sizes, strides, per_loc = layout
    cells = [torch.randn(per_loc, 4, generator=torch.Generator().manual_seed(i)).mul(40).round().to(dtype).to(device)
             for i in range(len(feature_sizes))]
    got = ops.grid_anchors(feature_sizes, strides, cells)
    assert_same(got, ref.pure_grid_anchors(feature_sizes, strides, cells))
    if dtype != torch.bfloat16:
        assert_same(got, ref.tv_grid_anchors(feature_sizes, strides, cells))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("thresh", [0.0, 32.0, 1e9])
def test_visibility_mask(device, thresh):
    feature_sizes, strides = fpn_layout(600, 1000)
    cells = [c.to(device) for c in ops.cell_anchors(FPN_SIZES, RATIOS)]
    anchors, visible = ops.grid_anchors(feature_sizes, strides, cells, image_size=(600, 1000), straddle_thresh=thresh)
    want_anchors, want_visible = ref.pure_grid_anchors(feature_sizes, strides, cells, (600, 1000), thresh)
    assert_same(anchors, want_anchors)
    assert visible.dtype == torch.bool
    assert_same(visible, want_visible)
    if thresh == 0.0:
        assert 0 < int(visible.sum()) < len(visible)  # the test means something


@pytest.mark.parametrize("call,match", [
    (lambda c: ops.grid_anchors([(2, 2), (1, 1)], [4], c), "strides must have one"),
    (lambda c: ops.grid_anchors([(2, 2), (1, 1), (3, 3)], [4, 8], c), "feature_sizes must have one"),
    (lambda c: ops.grid_anchors([(2, 2), (1, 1)], [4, 8], c, straddle_thresh=0.0), "image_size"),
    (lambda c: ops.grid_anchors([(2, 2), (1, 1)], [4, 8], c, (10, 10), float("nan")), "straddle_thresh"),
    (lambda c: ops.grid_anchors([(2, 2), (-1, 1)], [4, 8], c), "feature_sizes must be >= 0"),
    (lambda c: ops.grid_anchors([(2, 2), (1, 1)], [4, -8], c), "strides must be >= 0"),
    (lambda c: ops.grid_anchors([(2, 2), (1, 1)], [4, 8], [c[0], c[1].double()]), r"cell_anchors\[1\] must have the dtype"),
    (lambda c: ops.grid_anchors([(2, 2), (1, 1)], [4, 8], [c[0], c[1][:, :3]]), r"cell_anchors\[1\] must have shape"),
    (lambda c: ops.grid_anchors([(2, 2), (1, 1)], [4, 8], [c[0], c[1].long()]), "must be float16"),
    (lambda c: ops.grid_anchors([(1, 1)] * 17, [4] * 17, (c * 9)[:17]), "1 to 16 levels"),
])
def test_errors(call, match):
    cells = ops.cell_anchors(((32,), (64,)), RATIOS)
    with pytest.raises(RuntimeError, match=match):
        call(cells)


def test_opcheck_and_compile():
    cells = ops.cell_anchors(((32,), (64,)), RATIOS)
    args = (cells, [3, 5, 2, 2], [4, 4, 8, 8], [12, 20], 8.0)
    torch.library.opcheck(torch.ops.detbench.grid_anchors.default, args)

    def f(c0, c1):
        return ops.grid_anchors([(3, 5), (2, 2)], [4, 8], [c0, c1], (12, 20), 8.0)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*cells), f(*cells)):
        assert torch.equal(got, want)


@pytest.mark.cuda
def test_cuda_graph_capture():
    feature_sizes, strides = fpn_layout()
    cells = [c.cuda() for c in ops.cell_anchors(FPN_SIZES, RATIOS)]
    ops.grid_anchors(feature_sizes, strides, cells)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        anchors = ops.grid_anchors(feature_sizes, strides, cells)
    anchors.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert_same(anchors, ref.tv_grid_anchors(feature_sizes, strides, cells))
