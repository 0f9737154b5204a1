"""Box IoU: pairwise IoU of two box sets, [N,4] x [M,4] -> [N,M] and batched [B,N,4] x [B,M,4].

Write-bound: the N*M float32 output dominates the bytes moved.
"""
import torch

import ops
from harness import Impl, Suite, Tolerance, tensors_close, tolerance_for
from reference import pure, tv
from suites._boxes import make_boxes

# "BxNxM" or "NxM". The first four are the sweep of record (RPN: ~200k anchors per image); the
# rest are adversarial: empty sides, single boxes, sizes that are no multiple of any tile.
SHAPES = ("100x1000", "100x200000", "1000x1000", "8x100x20000")
ADVERSARIAL_SHAPES = ("0x1000", "100x0", "1x1", "7x33", "257x1001", "3x0x5", "2x1x7", "0x4x4")

# Input dtype -> tolerance on the float32 IoU. fp16/bf16 are loose because torchvision subtracts
# coordinates in the input precision; detbench subtracts in float32.
TOLERANCES = {
    torch.float32: Tolerance(atol=1e-6, rtol=1e-5),
    torch.float16: Tolerance(atol=1e-3, rtol=4e-3),
    torch.bfloat16: Tolerance(atol=8e-3, rtol=3e-2),
}


def parse_shape(shape: str) -> tuple[int | None, int, int]:
    """'100x1000' -> (None, 100, 1000); '8x100x20000' -> (8, 100, 20000)."""
    dims = [int(d) for d in shape.split("x")]
    return (None, *dims) if len(dims) == 2 else tuple(dims)


def make_inputs(case, g):
    b, n, m = parse_shape(case["shape"])
    count = b or 1
    boxes1 = torch.stack([make_boxes(case["content"], n, case.dtype, g) for _ in range(count)])
    boxes2 = torch.stack([make_boxes(case["content"], m, case.dtype, g) for _ in range(count)])
    if b is None:
        boxes1, boxes2 = boxes1[0], boxes2[0]
    return boxes1.to(case.device), boxes2.to(case.device)


def compare(got, expected, case, inputs):
    return tensors_close(got, expected, tolerance_for(case.dtype, TOLERANCES), dtype=torch.float32)


def bytes_moved(case):
    b, n, m = parse_shape(case["shape"])
    b = b or 1
    return b * (n + m) * 4 * case.dtype.itemsize + b * n * m * 4


def torchvision_nan(case, inputs):
    """torchvision divides 0 by 0 where a pair's union is 0: two zero-area boxes (which fp16/bf16
    rounding also makes), or areas that cancel (inverted boxes). Declared only when the inputs
    hold such a pair."""
    boxes1, boxes2 = (x.float().reshape(-1, x.shape[-2], 4) for x in inputs)
    areas1, areas2 = ((x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1]) for x in (boxes1, boxes2))
    if any(torch.isin(-a, b).any() for a, b in zip(areas1, areas2)):
        return "torchvision returns NaN (0/0) where a pair's union is 0; detbench returns 0"
    return None


SUITE = Suite(
    name="box_iou",
    description=__doc__,
    impls=[
        Impl("torchvision", tv.box_iou, known_deviation=torchvision_nan),
        Impl("detbench", ops.box_iou),
        Impl("float64", pure.box_iou, timed=False),
    ],
    reference="float64",
    baseline="torchvision",
    axes={"shape": SHAPES, "content": ("clustered", "degenerate")},
    extra_cases=[{"shape": s, "content": c} for s in ADVERSARIAL_SHAPES for c in ("clustered", "degenerate")]
    + [{"shape": "1000x1000", "content": "huge"}],
    dtypes=(torch.float32, torch.float16, torch.bfloat16),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    ci=lambda case: case["shape"] in ADVERSARIAL_SHAPES or case["shape"] in ("100x1000", "1000x1000"),
)
