"""Box decoding (torchvision's BoxCoder.decode_single): RPN deltas over every anchor of a batch,
and the box head's per-class deltas. Memory-bound: 16 bytes of deltas in, 16 out per box (fp32).
"""
import math

import torch

import ops
from harness import Impl, Suite, Tolerance, tensors_close
from reference import proposals as ref
from suites._proposals import rpn_inputs

# name -> (images, boxes, classes, weights)
SHAPES = {"rpn8x268569": (8, 268569, 1, (1.0, 1.0, 1.0, 1.0)), "rpn1x268569": (1, 268569, 1, (1.0, 1.0, 1.0, 1.0)),
          "boxhead1000x91": (None, 1000, 91, (10.0, 10.0, 5.0, 5.0)), "odd7x3": (None, 7, 3, (10.0, 10.0, 5.0, 5.0))}
# vs the float64 formula: float32 within an ulp of each step; half types round every step
TOLERANCES = {torch.float32: Tolerance(atol=1e-3, rtol=1e-5), torch.float16: Tolerance(atol=1.0, rtol=4e-3)}


def make_inputs(case, g):
    images, n, classes, weights = SHAPES[case["shape"]]
    if case["shape"].startswith("rpn"):
        _, deltas, anchors, _, _ = rpn_inputs(images, 800, 1344, case.dtype, g)
        return deltas.to(case.device), anchors.to(case.device), weights, math.log(1000 / 16)
    xy = torch.rand(n, 2, generator=g) * 1000
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 300 + 1], 1)
    deltas = torch.randn(n, 4 * classes, generator=g) * 0.5
    return deltas.to(case.dtype).to(case.device), boxes.to(case.dtype).to(case.device), weights, math.log(1000 / 16)


def compare(got, expected, case, inputs):
    return tensors_close(got, expected, TOLERANCES[case.dtype], dtype=case.dtype)


def bytes_moved(case):
    images, n, classes, _ = SHAPES[case["shape"]]
    return (images or 1) * n * classes * 4 * case.dtype.itemsize * 2 + n * 4 * case.dtype.itemsize


SUITE = Suite(
    name="decode_boxes",
    description=__doc__,
    impls=[Impl("torchvision", ref.tv_decode_boxes), Impl("detbench", ops.decode_boxes),
           Impl("float64", ref.pure_decode_boxes, timed=False)],
    reference="float64",
    baseline="torchvision",
    axes={"shape": ("rpn8x268569", "boxhead1000x91")},
    extra_cases=[{"shape": "rpn1x268569"}, {"shape": "odd7x3"}],
    dtypes=(torch.float32, torch.float16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    ci=lambda case: case["shape"] in ("boxhead1000x91", "odd7x3"),
)
