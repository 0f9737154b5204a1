"""Anchor grids: every FPN level's anchors in one launch (torchvision's AnchorGenerator layout).

Faster R-CNN R50-FPN at 800x1344: 5 levels, strides 4-64, 3 aspect ratios, 268,569 anchors.
Write-bound (16 bytes per float32 anchor); torchvision runs ~8 small ops per level.
"""
import torch

import ops
from harness import Comparison, Impl, Suite, Tolerance, tensors_close
from reference import proposals as ref
from suites._proposals import FPN_SIZES, RATIOS, fpn_layout

LAYOUTS = {"fpn800x1344": (800, 1344, 5), "fpn512x512": (512, 512, 5), "odd": None}
TOL = Tolerance(atol=1e-6, rtol=1e-5)


def make_inputs(case, g):
    if case["layout"] == "odd":  # empty levels, 1x1, no multiple of anything
        feature_sizes, strides = [(7, 13), (0, 5), (1, 1), (33, 2)], [(4, 4), (8, 8), (16, 3), (5, 32)]
        cells = [(torch.randn(k, 4, generator=g) * 40).round() for k in (3, 2, 1, 9)]
        image = (30, 55)
    else:
        h, w, levels = LAYOUTS[case["layout"]]
        feature_sizes, strides, _ = fpn_layout(h, w, levels)
        cells = ops.cell_anchors(FPN_SIZES[:levels], RATIOS)
        image = (h, w)
    cells = [c.to(case.dtype).to(case.device) for c in cells]
    return feature_sizes, strides, cells, image, case["straddle"]


def compare(got, expected, case, inputs):
    if case["straddle"] >= 0:
        if not (isinstance(got, tuple) and len(got) == 2):
            return Comparison(False, f"expected (anchors, visible), got {type(got).__name__}")
        if not torch.equal(got[1].cpu(), expected[1].cpu()):
            return Comparison(False, f"visibility differs at {int((got[1].cpu() != expected[1].cpu()).sum())} anchors")
        got, expected = got[0], expected[0]
    return tensors_close(got, expected, TOL, dtype=case.dtype)


def bytes_moved(case):
    h, w, levels = LAYOUTS[case["layout"]] or (30, 55, 4)
    n = sum(a * b * 3 for a, b in fpn_layout(h, w, levels)[0])
    return n * 4 * case.dtype.itemsize + (n if case["straddle"] >= 0 else 0)


SUITE = Suite(
    name="grid_anchors",
    description=__doc__,
    impls=[Impl("torchvision", ref.tv_grid_anchors), Impl("detbench", ops.grid_anchors),
           Impl("float64", ref.pure_grid_anchors, timed=False)],
    reference="float64",
    baseline="torchvision",
    axes={"layout": ("fpn800x1344",), "straddle": (-1.0, 0.0)},
    extra_cases=[{"layout": "fpn512x512", "straddle": -1.0}, {"layout": "odd", "straddle": 8.0}],
    dtypes=(torch.float32, torch.float16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    ci=lambda case: case["layout"] != "fpn800x1344" or case.dtype == torch.float32,
)
