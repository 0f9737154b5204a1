"""Anchors: torchvision's AnchorGenerator, as two functions.

``cell_anchors(sizes, aspect_ratios)`` builds each level's zero-centred cell anchors (tiny,
host-side torch ops, torchvision's arithmetic and rounding); ``grid_anchors`` tiles them over
every FPN level in one kernel launch, in torchvision's layout, and optionally computes the
visibility mask of anchors that do not straddle the image border by more than a threshold.

Semantics (grid_anchors)
------------------------
Level l with feature size (H, W), stride (sy, sx) and cell anchors c[0..A-1]: anchor
(y * W + x) * A + a of the level is c[a] + (x * sx, y * sy, x * sx, y * sy); levels are
concatenated in order (torchvision's ``torch.cat(AnchorGenerator(...)(images, features)[i])``).
The integer shift is added to the cell anchor in float32 (float64 for float64) and rounded once
to the anchors' dtype: torchvision's bits in float32 and float64. In float16 and bfloat16
torchvision adds its int32 shifts to half-type anchors, which rounds the shift to the half type
first: one ulp apart where a shift is not representable there (float16 above 2048, bfloat16 above
256). torchvision derives strides as image_size // feature_size; pass the same.

Visible (straddle_thresh = t >= 0, image_size = (H, W)): x1 >= -t, y1 >= -t, x2 < W + t,
y2 < H + t, decided in float64 on the anchor's values.

Errors
------
RuntimeError naming the argument: levels of feature_sizes / strides not matching cell_anchors
(``detbench.grid_anchors: feature_sizes must have one (height, width) per level: 5 levels in
cell_anchors, got 4``), negative sizes or strides, cell anchors of a wrong shape, of
different dtypes or devices, a NaN straddle_thresh, straddle_thresh >= 0 without image_size,
more than 16 levels. Empty levels (H or W = 0, or no cell anchors) give no anchors.

No sync, no data-dependent shapes; CUDA-graph capturable (output size is known on the host).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ops._library import require_kernels


def cell_anchors(sizes: Sequence, aspect_ratios: Sequence, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Each level's zero-centred cell anchors, torchvision's AnchorGenerator.generate_anchors.

    Args:
        sizes: per level, a sequence of anchor sizes (e.g. ((32,), (64,), (128,), (256,), (512,))).
            A flat sequence of numbers means one size per level, as AnchorGenerator reads it.
        aspect_ratios: per level, a sequence of ratios height / width; a flat sequence of numbers
            is used for every level.

    Returns:
        list of [len(ratios) * len(sizes), 4] tensors (x1, y1, x2, y2), ratio-major, in
        torchvision's order: w = size / sqrt(ratio), h = size * sqrt(ratio), box
        (-w, -h, w, h) / 2 rounded half to even (torch.round), computed in ``dtype``.
    """
    if len(sizes) == 0:
        raise ValueError("detbench.cell_anchors: sizes must have at least one level")
    if not isinstance(sizes[0], (list, tuple)):
        sizes = tuple((s,) for s in sizes)
    if len(aspect_ratios) == 0:
        raise ValueError("detbench.cell_anchors: aspect_ratios must not be empty")
    if not isinstance(aspect_ratios[0], (list, tuple)):
        aspect_ratios = (aspect_ratios,) * len(sizes)
    if len(aspect_ratios) != len(sizes):
        raise ValueError(f"detbench.cell_anchors: aspect_ratios must have one entry per level ({len(sizes)}), "
                         f"got {len(aspect_ratios)}")
    out = []
    for level_sizes, ratios in zip(sizes, aspect_ratios):
        scales = torch.as_tensor(level_sizes, dtype=dtype, device=device)
        ratios = torch.as_tensor(ratios, dtype=dtype, device=device)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        out.append((torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round())
    return out


def _pairs(name: str, values) -> list[int]:
    """[(a, b), ...] or [n, ...] (n meaning (n, n)) -> flat [a0, b0, a1, b1, ...]."""
    flat = []
    for v in values:
        if isinstance(v, (list, tuple, torch.Size)):
            if len(v) != 2:
                raise ValueError(f"detbench.grid_anchors: each entry of {name} must be an int or a pair, got {v!r}")
            flat += [int(v[0]), int(v[1])]
        else:
            flat += [int(v), int(v)]
    return flat


def grid_anchors(feature_sizes: Sequence, strides: Sequence, cell_anchors: Sequence[torch.Tensor],
                 image_size: Sequence[int] | None = None, straddle_thresh: float = -1.0):
    """All levels' anchors in torchvision's AnchorGenerator layout, in one launch.

    Args:
        feature_sizes: per level (H, W) of the feature map.
        strides: per level (stride_y, stride_x), or one int for both.
        cell_anchors: per level [A_l, 4] (from cell_anchors(), on the target device and dtype).
        image_size: (H, W) of the (padded) image; needed for the visibility mask.
        straddle_thresh: >= 0: also return the visibility mask (see the module docstring).

    Returns:
        anchors [sum_l H_l * W_l * A_l, 4] in the cell anchors' dtype and device; with
        straddle_thresh >= 0, (anchors, visible) with visible a bool [N].
    """
    cells = list(cell_anchors)
    if cells:
        require_kernels("grid_anchors", *cells)
    sizes = _pairs("feature_sizes", feature_sizes)
    steps = _pairs("strides", strides)
    image = None if image_size is None else [int(v) for v in image_size]
    anchors, visible = torch.ops.detbench.grid_anchors(cells, sizes, steps, image, float(straddle_thresh))
    return (anchors, visible) if straddle_thresh >= 0 else anchors
