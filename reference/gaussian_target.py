"""References for CenterNet-style targets (ops.gaussian_target, ops.gaussian_focal_loss).

- mmdet's own ``gen_gaussian_target`` / ``gaussian_radius``, loaded by file path from the
  installed mmdet 3.x (``mmdet/models/utils/gaussian_target.py`` imports only torch; importing
  the ``mmdet`` package itself needs a compiled mmcv), looped over boxes as mmdet does.
  ``MMDET_UNAVAILABLE`` says why when it cannot be loaded (None when it can).
- A vectorized pure-PyTorch drawer (every box x every pixel, then a max): the fast baseline
  without custom kernels, in float32, and the same in float64 (the arbiter of correctness).
- The Gaussian focal loss, mmdet's formula written out in pure PyTorch (mmdet's loss module
  imports mmdet's registry, so it is cited, not imported): in the input dtype (the baseline) or
  in float64 (the arbiter).
"""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps


def _load_mmdet_gaussian_target() -> tuple[ModuleType | None, str | None]:
    try:
        spec = importlib.util.find_spec("mmdet")  # finds the package without importing it
    except (ImportError, ValueError) as e:
        return None, f"mmdet cannot be located: {e}"
    if spec is None or not spec.submodule_search_locations:
        return None, "mmdet is not installed (pip install --no-deps mmdet==3.3.0)"
    path = os.path.join(spec.submodule_search_locations[0], "models", "utils", "gaussian_target.py")
    if not os.path.exists(path):
        return None, f"mmdet is installed but has no {path}"
    module_spec = importlib.util.spec_from_file_location("detbench_mmdet_gaussian_target", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a future mmdet whose file imports more than torch
        return None, f"loading {path} failed: {type(e).__name__}: {e}"
    return module, None


MMDET, MMDET_UNAVAILABLE = _load_mmdet_gaussian_target()


def _mmdet() -> ModuleType:
    if MMDET is None:
        raise RuntimeError(MMDET_UNAVAILABLE)
    return MMDET


# --------------------------------------------------------------------------------------------
# mmdet, looped over boxes


def mmdet_draw_heatmap(heatmaps, centers, radii, heatmap_index, k=1.0):
    """``gen_gaussian_target(heatmaps[heatmap_index[t]], [x, y], r, k)`` for every box t, in place."""
    gen = _mmdet().gen_gaussian_target
    for (x, y), r, m in zip(centers.tolist(), radii.tolist(), heatmap_index.tolist()):
        gen(heatmaps[m], [x, y], r, k)
    return heatmaps


def mmdet_draw_heatmap_batched(heatmaps, centers, radii, counts, labels=None, k=1.0):
    """mmdet's loop over images and their first counts[b] boxes (CenterNetHead.get_targets'),
    into heatmaps[b] or, with labels, heatmaps[b, labels[b, t]]; in place."""
    gen = _mmdet().gen_gaussian_target
    centers_l, radii_l, counts_l = centers.tolist(), radii.tolist(), counts.tolist()
    labels_l = labels.tolist() if labels is not None else None
    for b, count in enumerate(counts_l):
        for t in range(count):
            plane = heatmaps[b] if labels_l is None else heatmaps[b, labels_l[b][t]]
            gen(plane, centers_l[b][t], radii_l[b][t], k)
    return heatmaps


def mmdet_gaussian_radius(heights, widths, min_overlap=0.7):
    """mmdet's gaussian_radius called per element with 0-dim tensors (as CenterNetHead does)."""
    fn = _mmdet().gaussian_radius
    out = [fn([h, w], min_overlap) for h, w in zip(heights.flatten(), widths.flatten())]
    return torch.stack(out).reshape(heights.shape) if out else heights.new_empty(heights.shape)


# --------------------------------------------------------------------------------------------
# Vectorized pure PyTorch: every box x every pixel, then the max


def _gaussians(centers, radii, height, width, k, dtype):
    """[N, H, W]: box n's k * Gaussian over its window (mmdet's values) and -inf elsewhere."""
    device = centers.device
    x = centers[:, 0].to(dtype)[:, None, None]
    y = centers[:, 1].to(dtype)[:, None, None]
    r = radii.to(dtype)[:, None, None]
    cols = torch.arange(width, device=device, dtype=dtype)[None, None, :]
    rows = torch.arange(height, device=device, dtype=dtype)[None, :, None]
    dx, dy = cols - x, rows - y
    sigma = (2 * radii.to(torch.float64) + 1) / 6  # mmdet: Python floats
    divisor = (2 * sigma * sigma).to(dtype)[:, None, None]
    g = torch.exp(-(dx * dx + dy * dy) / divisor)
    g = torch.where(g < FLOAT32_EPS, torch.zeros_like(g), g) * k
    inside = (dx.abs() <= r) & (dy.abs() <= r)
    return torch.where(inside, g, torch.full_like(g, -torch.inf))


def vectorized_draw_heatmap(heatmaps, centers, radii, heatmap_index, k=1.0, dtype=torch.float32):
    """draw_heatmap without a loop: all boxes x all pixels, scatter-max into their planes.
    In place for dtype=float32; dtype=float64 returns a new float64 tensor (the arbiter)."""
    out = heatmaps if dtype == heatmaps.dtype else heatmaps.to(dtype)
    m, h, w = out.shape
    if centers.shape[0]:
        g = _gaussians(centers, radii, h, w, k, dtype)
        index = heatmap_index.long()[:, None, None].expand(-1, h, w)
        out.scatter_reduce_(0, index, g, "amax", include_self=True)
    return out


def vectorized_draw_heatmap_batched(heatmaps, centers, radii, counts, labels=None, k=1.0, dtype=torch.float32):
    """draw_heatmap_batched without a loop (and without a host sync): the padded [B, T] boxes
    x all pixels, padding masked to -inf, scatter-max into [B * C] planes. In place for
    float32; dtype=float64 returns a new float64 tensor (the arbiter)."""
    out = heatmaps if dtype == heatmaps.dtype else heatmaps.to(dtype)
    b, t = centers.shape[:2]
    c = out.shape[1] if labels is not None else 1
    h, w = out.shape[-2:]
    if b * t:
        g = _gaussians(centers.reshape(-1, 2), radii.reshape(-1), h, w, k, dtype)
        valid = (torch.arange(t, device=centers.device)[None, :] < counts[:, None]).reshape(-1)
        g = torch.where(valid[:, None, None], g, torch.full_like(g, -torch.inf))
        plane = torch.arange(b, device=centers.device)[:, None] * c
        if labels is not None:
            plane = plane + labels.long().clamp(0, c - 1)  # padding's labels are never drawn
        index = plane.expand(b, t).reshape(-1, 1, 1).expand(-1, h, w)
        out.view(b * c, h, w).scatter_reduce_(0, index, g, "amax", include_self=True)
    return out


def float64_gaussian_radius(heights, widths, min_overlap=0.7):
    """mmdet's gaussian_radius formula in float64, vectorized (NaN for a negative discriminant)."""
    h, w, mo = heights.double(), widths.double(), float(min_overlap)
    b1 = h + w
    c1 = w * h * (1 - mo) / (1 + mo)
    r1 = (b1 - torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - mo) * w * h
    r2 = (b2 - torch.sqrt(b2**2 - 16 * c2)) / 8
    b3 = -2 * mo * (h + w)
    c3 = (mo - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 16 * mo * c3)) / (8 * mo)
    return torch.minimum(torch.minimum(r1, r2), r3)


# --------------------------------------------------------------------------------------------
# Gaussian focal loss: mmdet's formula (gaussian_focal_loss + weight_reduce_loss)


def gaussian_focal_loss(pred, target, alpha=2.0, gamma=4.0, pos_weight=1.0, neg_weight=1.0, reduction="mean",
                        avg_factor=None):
    """mmdet's gaussian_focal_loss, written out, in pred's dtype (pass float64 tensors for the
    arbiter). Autograd gives its backward."""
    eps = 1e-12
    pos_weights = target.eq(1)
    neg_weights = (1 - target).pow(gamma)
    pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * pos_weights
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * neg_weights
    loss = pos_weight * pos_loss + neg_weight * neg_loss
    if avg_factor is None:
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]
    if reduction == "mean":
        return loss.sum() / (avg_factor + FLOAT32_EPS)
    if reduction == "none":
        return loss
    raise ValueError('avg_factor can not be used with reduction="sum"')
