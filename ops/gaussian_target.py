"""CenterNet-style Gaussian targets: drawing Gaussian heatmaps (flat, batched, class-wise) and
the CornerNet Gaussian radius, exactly as mmdet computes them (mmdet 3.x,
``mmdet/models/utils/gaussian_target.py``: ``gen_gaussian_target``, ``gaussian2D``,
``gaussian_radius``), without a Python loop over boxes.

Drawing semantics
-----------------
A box is an integer center (x, y) and an integer radius r >= 0. It draws, over the pixels with
|col - x| <= r and |row - y| <= r inside the heatmap (the window clipped at the borders as
mmdet clips it), the values k * g with g = exp(-(dx^2 + dy^2) / (2 sigma^2)), sigma = (2r+1)/6,
g set to 0 where it is below float32 eps (mmdet's ``eps * max`` with max = 1), merged into the
heatmap with an elementwise max (torch.max: a NaN already in the heatmap stays NaN). Boxes
may overlap; the max makes their order irrelevant. All float32, with mmdet's float32 arithmetic
(sigma's divisor in float64 rounded to float32; on CUDA the division is a multiplication by the
float32 reciprocal, as torch does for a CUDA tensor divided by a Python scalar): max abs
difference from mmdet on the same device ≤ 1e-6 (the exp can differ by an ulp).

Errors
------
Metadata (always, naming the argument): heatmaps not float32, not contiguous or of the wrong
rank; centers not int32/int64 or of the wrong shape; radii / heatmap_index / counts / labels of
another dtype than centers or the wrong shape; any argument on another device; k not finite.

Values (README, "Input validation policy"): a center outside the heatmap
(``detbench.draw_heatmap: centers[3] = (x=50, y=2) is outside the 20x50 heatmap ...``), a
negative radius (``radii[3] must be >= 0``), a heatmap index or label out of range
(``heatmap_index[3] must be in [0, 48)``, ``labels[1, 3] must be in [0, 20)``), a count outside
[0, T] (``counts[2] must be in [0, T] with T = 50``):

- CPU: always raise (only the first counts[b] boxes of each image are looked at);
- CUDA, default (no sync, CUDA-graph capturable): such a box is skipped (draws nothing), and
  counts are clamped to [0, T]. Nothing outside the heatmap is ever written;
- CUDA in validation mode (``ops.set_validation(True)`` / ``DETBENCH_VALIDATE=1``): checked with
  a sync, raising the CPU's error.

CUDA: one kernel launch per call, no sync, no extra memory; only the tiles that boxes reach
are read and written (see NOTES.md, "## gaussian_target").
"""
from __future__ import annotations

import torch

from ops._library import require_kernels


def draw_heatmap(heatmaps: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor,
                 heatmap_index: torch.Tensor, k: float = 1.0) -> torch.Tensor:
    """Draw T Gaussians into M heatmaps, in place: box t into ``heatmaps[heatmap_index[t]]``.

    Args:
        heatmaps: float32 [M, H, W], contiguous; modified in place.
        centers: int32 or int64 [T, 2], (x, y) = (column, row) of each box's center.
        radii: [T], the same dtype as centers, >= 0.
        heatmap_index: [T], the same dtype, in [0, M).
        k: the Gaussian's peak value (mmdet's ``k``).

    Returns:
        heatmaps. Equivalent to ``for t: gen_gaussian_target(heatmaps[heatmap_index[t]],
        centers[t].tolist(), int(radii[t]), k)``.
    """
    require_kernels("draw_heatmap", heatmaps, centers, radii, heatmap_index)
    torch.ops.detbench.draw_heatmap(heatmaps, centers, radii, heatmap_index, float(k))
    return heatmaps


def draw_heatmap_batched(heatmaps: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor,
                         counts: torch.Tensor, labels: torch.Tensor | None = None,
                         k: float = 1.0) -> torch.Tensor:
    """Draw padded per-image boxes into per-image heatmaps, in place; class-wise with ``labels``.

    Args:
        heatmaps: float32, contiguous, modified in place: [B, H, W], or [B, C, H, W] with labels.
        centers: int32 or int64 [B, T, 2], (x, y) per box; image b uses its first counts[b]
            boxes, the rest is padding and is never read.
        radii: [B, T], the same dtype as centers.
        counts: [B], the same dtype, each in [0, T].
        labels: optional [B, T], the same dtype: box (b, t) draws into heatmaps[b, labels[b, t]].
        k: the Gaussian's peak value.

    Returns:
        heatmaps (mmdet's loop over images and boxes, one call).
    """
    require_kernels("draw_heatmap_batched", heatmaps, centers, radii, counts)
    torch.ops.detbench.draw_heatmap_batched(heatmaps, centers, radii, counts, labels, float(k))
    return heatmaps


def gaussian_radius(heights: torch.Tensor, widths: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """mmdet's ``gaussian_radius([height, width], min_overlap)``, elementwise: the CornerNet
    radius, min of the three quadratic-root cases, as a float (not truncated).

    Args:
        heights, widths: float32 or float64 tensors of one shape, dtype and device.
        min_overlap: in (0, 1).

    Returns:
        Radii, the same shape and dtype. Each value is what mmdet returns when called with 0-dim
        tensors of that dtype on that device (CenterNetHead passes float32 tensors): the same
        float operations in the same order (for float64 on the CPU, mmdet called with Python
        floats). Where mmdet's ``math.sqrt`` would raise (a negative discriminant, e.g. for
        negative sizes) the radius is NaN.
    """
    require_kernels("gaussian_radius", heights, widths)
    return torch.ops.detbench.gaussian_radius(heights, widths, float(min_overlap))


def centernet_centers_and_radii(boxes: torch.Tensor, width_ratio: float, height_ratio: float,
                                min_overlap: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer centers and radii of boxes at the output stride, exactly as mmdet's
    ``CenterNetHead.get_targets`` computes them (vectorized, the same float ops):
    ``center = ((x1 + x2) * width_ratio / 2, (y1 + y2) * height_ratio / 2)`` truncated to
    integers, ``radius = max(0, int(gaussian_radius([(y2 - y1) * height_ratio,
    (x2 - x1) * width_ratio], min_overlap)))``.

    Args:
        boxes: [..., 4] (x1, y1, x2, y2) in input-image pixels, float32 (as mmdet's gt boxes)
            or float64; finite.
        width_ratio, height_ratio: output size / input size (mmdet's ``feat_w / img_w``).

    Returns:
        (centers int64 [..., 2] as (x, y), radii int64 [...]), ready for draw_heatmap_batched.
    """
    center_x = (boxes[..., 0] + boxes[..., 2]) * float(width_ratio) / 2
    center_y = (boxes[..., 1] + boxes[..., 3]) * float(height_ratio) / 2
    centers = torch.stack((center_x, center_y), dim=-1).to(torch.int64)  # .int(): truncation
    heights = (boxes[..., 3] - boxes[..., 1]) * float(height_ratio)
    widths = (boxes[..., 2] - boxes[..., 0]) * float(width_ratio)
    radii = gaussian_radius(heights, widths, min_overlap).trunc().clamp(min=0).to(torch.int64)
    return centers, radii
