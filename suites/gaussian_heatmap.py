"""Gaussian heatmap drawing (CenterNet targets): draw_heatmap_batched, per image and class-wise.

Every implementation draws into the case's heatmaps after zeroing them (what CenterNetHead
does with new_zeros): the timed call is the zeroing plus the draw, the same work for all.
mmdet's loop is the baseline (the issue's ratios: >= 5,000x on the ACCV case); the vectorized
pure-PyTorch drawer is the fast no-kernel alternative; float64 is the arbiter. Heatmaps must
match to 1e-6 absolute (the issue: max abs difference <= 1e-6 vs mmdet in float32).
"""
import torch

import ops
from harness import Impl, Suite, Tolerance, tensors_close
from reference import gaussian_target as ref

# name -> (B, C or None, H, W, T). C: class-wise (labels) with C classes.
CASES = {
    "accv": (48, None, 20, 50, 50),             # ACCV-Lab's case: counts 0-50, radii 1-4
    "accv_classwise": (48, 20, 20, 50, 50),     # its class-wise case
    "centernet": (16, 80, 128, 128, 128),       # CenterNet: radii from gaussian_radius
    "load_balance": (8, None, 128, 128, 256),   # 4 boxes of radius 40-64 among 252 of radius 0-2
    "border": (4, None, 37, 61, 32),            # centers on the edges, radii up to 80 (past them)
    "dense_overlap": (2, 3, 64, 64, 600),       # 600 boxes around one point: > one culling chunk
    "zero_boxes": (8, None, 20, 50, 16),        # counts all 0
    "no_slots": (4, None, 20, 50, 0),           # T = 0
    "radius0": (8, None, 20, 50, 50),           # every radius 0: single pixels
    "tiny": (2, None, 1, 1, 3),                 # 1x1 heatmaps
}
CPU_TOO_SLOW = {"centernet"}  # the vectorized drawer's 16x128x128x128 temporaries, on 2 cores


def _uniform_int(g, low, high, shape):
    return torch.randint(low, high + 1, shape, generator=g)


def _centernet_boxes(g, b, t):
    """Boxes in a 512x512 image, sizes log-uniform 8-400 px, and their centers and radii at
    stride 4 as CenterNetHead computes them (float64 radius formula: inputs only)."""
    size = torch.exp(torch.empty(b, t, 2).uniform_(torch.log(torch.tensor(8.0)).item(),
                                                    torch.log(torch.tensor(400.0)).item(), generator=g))
    center = torch.rand(b, t, 2, generator=g) * (512 - size) + size / 2
    x1y1, x2y2 = center - size / 2, center + size / 2
    ratio = 128 / 512
    centers = ((x1y1 + x2y2) * ratio / 2).to(torch.int64)
    radii = ref.float64_gaussian_radius(size[..., 1] * ratio, size[..., 0] * ratio, 0.3).trunc().clamp(min=0)
    return centers, radii.to(torch.int64)


def make_inputs(case, g):
    name = case["case"]
    b, c, h, w, t = CASES[name]
    index_dtype = torch.int32 if name.startswith("accv") else torch.int64
    x = _uniform_int(g, 0, w - 1, (b, t))
    y = _uniform_int(g, 0, h - 1, (b, t))
    radii = _uniform_int(g, 1, 4, (b, t))
    counts = _uniform_int(g, 0, t, (b,))
    if name == "centernet":
        centers, radii = _centernet_boxes(g, b, t)
        x, y = centers[..., 0], centers[..., 1]
        counts = _uniform_int(g, 1, t, (b,))
    elif name == "load_balance":
        radii = _uniform_int(g, 0, 2, (b, t))
        radii[:, :4] = _uniform_int(g, 40, 64, (b, 4))
        counts = torch.full((b,), t)
    elif name == "border":
        x = torch.where(torch.rand(b, t, generator=g) < 0.5, torch.zeros_like(x), torch.full_like(x, w - 1))
        y = torch.where(torch.rand(b, t, generator=g) < 0.5, torch.zeros_like(y), torch.full_like(y, h - 1))
        x[:, ::3] = _uniform_int(g, 0, w - 1, (b, len(range(0, t, 3))))  # some along the edges
        radii = _uniform_int(g, 0, 80, (b, t))
        counts = torch.full((b,), t)
    elif name == "dense_overlap":
        x = _uniform_int(g, 30, 34, (b, t))
        y = _uniform_int(g, 30, 34, (b, t))
        radii = _uniform_int(g, 0, 20, (b, t))
        counts = torch.tensor([t, t - 77])
    elif name == "zero_boxes":
        counts = torch.zeros(b, dtype=torch.int64)
    elif name == "radius0":
        radii = torch.zeros_like(radii)
    elif name == "tiny":
        radii = torch.tensor([[0, 2, 5], [1, 0, 3]])
        counts = torch.tensor([3, 2])
    centers = torch.stack((x, y), dim=-1)
    labels = _uniform_int(g, 0, c - 1, (b, t)).to(index_dtype) if c else None
    heatmaps = torch.zeros((b, c, h, w) if c else (b, h, w))
    args = (heatmaps, centers.to(index_dtype), radii.to(index_dtype), counts.to(index_dtype), labels)
    return tuple(a.to(case.device) if a is not None else None for a in args)


def _zeroed(draw):
    """draw(heatmaps, ...) after zeroing the heatmaps, the same for every implementation."""
    def run(heatmaps, centers, radii, counts, labels):
        heatmaps.zero_()
        return draw(heatmaps, centers, radii, counts, labels)
    return run


def float64_drawer(heatmaps, centers, radii, counts, labels):
    return ref.vectorized_draw_heatmap_batched(torch.zeros_like(heatmaps), centers, radii, counts, labels,
                                               dtype=torch.float64)


def mmdet_unsupported(case):
    return ref.MMDET_UNAVAILABLE


def compare(got, expected, case, inputs):
    return tensors_close(got, expected, Tolerance(atol=1e-6, rtol=0.0), dtype=torch.float32)


def bytes_moved(case):
    """Zeroing writes the heatmaps once; the boxes are read once."""
    b, c, h, w, t = CASES[case["case"]]
    index_bytes = 4 if case["case"].startswith("accv") else 8
    return b * (c or 1) * h * w * 4 + b * t * (4 if c else 3) * index_bytes + b * index_bytes


SUITE = Suite(
    name="gaussian_heatmap",
    description=__doc__,
    impls=[
        Impl("mmdet", _zeroed(ref.mmdet_draw_heatmap_batched), unsupported=mmdet_unsupported),
        Impl("vectorized", _zeroed(ref.vectorized_draw_heatmap_batched)),
        Impl("detbench", _zeroed(ops.draw_heatmap_batched)),
        Impl("float64", float64_drawer, timed=False),
    ],
    reference="float64",
    baseline="mmdet",
    axes={"case": tuple(CASES)},
    dtypes=(torch.float32,),
    make_inputs=make_inputs,
    compare=compare,
    bytes_moved=bytes_moved,
    include=lambda case: not (case.device == "cpu" and case["case"] in CPU_TOO_SLOW),
    ci=lambda case: case["case"] not in ("centernet", "load_balance"),
)
