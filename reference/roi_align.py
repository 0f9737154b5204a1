"""RoI Align references: torchvision's (the speed baseline) and a float64 pure-PyTorch arbiter.

Same signatures as ``ops.roi_align`` / ``ops.multiscale_roi_align``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torchvision
from torch import Tensor
from torchvision.ops import poolers
from torchvision.ops._utils import convert_boxes_to_roi_format

from ops.roi_align import _pair, _rois_from_boxes, infer_scales, level_range

# ------------------------------------------------------------------------------------------------
# torchvision


def tv_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision's roi_align kernel (``torch.ops.torchvision.roi_align``, autograd included),
    after torchvision's own list-to-rois conversion.

    Called directly rather than through ``torchvision.ops.roi_align``: under
    ``torch.use_deterministic_algorithms(True)`` on CUDA (on during every harness check) that
    function switches to a torch.compile'd pure-PyTorch fallback which, for adaptive sampling,
    materializes a [K, C, PH, PW, H, W] tensor. Outside deterministic mode both are the same call."""
    rois = boxes if isinstance(boxes, Tensor) else convert_boxes_to_roi_format(boxes)
    ph, pw = _pair(output_size)
    return torch.ops.torchvision.roi_align(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned)


_TV_POOLERS: dict = {}


def tv_multiscale_roi_align(x, boxes, image_shapes, featmap_names, output_size, sampling_ratio, *,
                            canonical_scale=224, canonical_level=4):
    """``torchvision.ops.MultiScaleRoIAlign`` (a cached module per configuration: its scales and
    LevelMapper are set up on the first call, as a model's pooler is), with each level's
    roi_align through ``tv_roi_align`` for the reason given there; otherwise torchvision's own
    ``_multiscale_roi_align`` step for step: level per box, one roi_align per level, an
    index-copy into the result."""
    key = (tuple(featmap_names), _pair(output_size), sampling_ratio, canonical_scale, canonical_level)
    pooler = _TV_POOLERS.get(key)
    if pooler is None:
        pooler = _TV_POOLERS[key] = torchvision.ops.MultiScaleRoIAlign(
            list(featmap_names), _pair(output_size), sampling_ratio,
            canonical_scale=canonical_scale, canonical_level=canonical_level)
    x_filtered = poolers._filter_input(x, pooler.featmap_names)
    if pooler.scales is None or pooler.map_levels is None:
        pooler.scales, pooler.map_levels = poolers._setup_scales(x_filtered, image_shapes, canonical_scale,
                                                                 canonical_level)
    rois = poolers._convert_to_roi_format(boxes)
    if len(x_filtered) == 1:
        return tv_roi_align(x_filtered[0], rois, pooler.output_size, pooler.scales[0], sampling_ratio)
    levels = pooler.map_levels(boxes)
    first = x_filtered[0]
    result = torch.zeros((len(rois), first.shape[1], *pooler.output_size), dtype=first.dtype, device=first.device)
    for level, (feature, scale) in enumerate(zip(x_filtered, pooler.scales)):
        idx = torch.where(levels == level)[0]
        result[idx] = tv_roi_align(feature, rois[idx], pooler.output_size, scale, sampling_ratio).to(result.dtype)
    return result


# ------------------------------------------------------------------------------------------------
# float64 pure PyTorch

_CHUNK_ELEMENTS = 1 << 24  # float64 elements per gathered corner tensor


def _axis(v: Tensor, size: int):
    """Bilinear neighbours and weights along one axis (torchvision's rules), weights in float64:
    (low, high, w_low, w_high, valid)."""
    valid = (v >= -1) & (v <= size) & (size > 0)
    v = v.clamp(min=0)
    low = v.floor().long()  # v >= 0: floor is torchvision's int truncation
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, max(size - 1, 0)), low)
    high = torch.where(edge, low, low + 1)
    v = torch.where(edge, low.to(v.dtype), v)
    lo = (v - low.to(v.dtype)).double()
    zero = torch.zeros_like(lo)
    w_low = torch.where(valid, 1 - lo, zero)
    w_high = torch.where(valid, lo, zero)
    return low.clamp(0, max(size - 1, 0)), high.clamp(0, max(size - 1, 0)), w_low, w_high


def roi_align(input: Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """RoI Align in float64 with torchvision's semantics; gradients through autograd.

    Sample positions and grid sizes are computed in float32 (float64 for float64 rois) with
    torch ops, one rounding per step in torchvision's expression order (the precision
    torchvision's float32 kernel uses and detbench's kernels use for every dtype); bilinear
    weights and sums are float64. A RoI with a batch index outside [0, N) or not integral, or a
    non-finite coordinate, pools zeros (detbench's CUDA policy; its CPU raises instead).
    Returns float64 [K, C, PH, PW] (NCHW)."""
    rois = _rois_from_boxes(boxes, "roi_align")
    ph_count, pw_count = _pair(output_size)
    n_batch, channels, height, width = input.shape
    # rois carry the op's dtype even when the caller differentiates a float64 copy of input
    coord = torch.float64 if rois.dtype == torch.float64 else torch.float32
    r = rois.to(coord)
    data = input.double()
    flat = data.reshape(-1)
    out = torch.zeros(len(r), channels, ph_count, pw_count, dtype=torch.float64, device=input.device)
    if len(r) == 0:
        return out + 0 * data.sum()  # keeps the graph for autograd

    b = r[:, 0]
    ok = (b >= 0) & (b < n_batch) & (b == b.floor()) & torch.isfinite(r[:, 1:]).all(1)
    offset = 0.5 if aligned else 0.0
    scale = torch.tensor(spatial_scale, dtype=coord)
    start_w, start_h = r[:, 1] * scale - offset, r[:, 2] * scale - offset
    roi_w, roi_h = r[:, 3] * scale - offset - start_w, r[:, 4] * scale - offset - start_h
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_h, bin_w = roi_h / ph_count, roi_w / pw_count
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.long)
        grid_w = grid_h.clone()
    else:
        grid_h = torch.ceil(roi_h / ph_count).nan_to_num(0).clamp(0, 4096).long()
        grid_w = torch.ceil(roi_w / pw_count).nan_to_num(0).clamp(0, 4096).long()
    count = (grid_h * grid_w).clamp(min=1).double()

    # RoIs grouped by grid size so that each group is one dense gather.
    keys = torch.stack([grid_h, grid_w], 1)
    for key in torch.unique(keys[ok], dim=0):
        gh, gw = int(key[0]), int(key[1])
        members = (ok & (keys == key).all(1)).nonzero().flatten()
        if gh == 0 or gw == 0:
            continue
        per_roi = channels * ph_count * pw_count * gh * gw
        step = max(1, _CHUNK_ELEMENTS // max(per_roi, 1))
        for chunk in members.split(step):
            iy = (torch.arange(gh, device=r.device, dtype=coord) + 0.5)
            ix = (torch.arange(gw, device=r.device, dtype=coord) + 0.5)
            ph = torch.arange(ph_count, device=r.device, dtype=coord)
            pw = torch.arange(pw_count, device=r.device, dtype=coord)
            # [k, PH, gh] and [k, PW, gw]: (start + p * bin) + (i + 0.5) * bin / grid
            y = (start_h[chunk, None, None] + ph[None, :, None] * bin_h[chunk, None, None]) + \
                (iy[None, None, :] * bin_h[chunk, None, None]) / gh
            x = (start_w[chunk, None, None] + pw[None, :, None] * bin_w[chunk, None, None]) + \
                (ix[None, None, :] * bin_w[chunk, None, None]) / gw
            y_low, y_high, wy_low, wy_high = _axis(y, height)
            x_low, x_high, wx_low, wx_high = _axis(x, width)
            k = len(chunk)
            # flat index of (n, c, 0, 0) per RoI and channel, plus the pixel offset per sample
            base = (b[chunk].long()[:, None] * channels + torch.arange(channels, device=r.device)) * (height * width)

            def corner(yi, xi):  # -> [k, C, PH, gh, PW, gw]
                pix = (yi.reshape(k, ph_count, gh, 1, 1) * width + xi.reshape(k, 1, 1, pw_count, gw)).reshape(k, 1, -1)
                return flat[base[:, :, None] + pix].reshape(k, channels, ph_count, gh, pw_count, gw)

            def w(wy, wx):
                return wy.reshape(k, 1, ph_count, gh, 1, 1) * wx.reshape(k, 1, 1, 1, pw_count, gw)

            val = (w(wy_low, wx_low) * corner(y_low, x_low) + w(wy_low, wx_high) * corner(y_low, x_high)
                   + w(wy_high, wx_low) * corner(y_high, x_low) + w(wy_high, wx_high) * corner(y_high, x_high))
            pooled = val.sum((3, 5)) / count[chunk, None, None, None]
            out = out.index_copy(0, chunk, pooled)
    return out


def fpn_levels(boxes: Tensor, k_min: int, k_max: int, canonical_scale: float = 224, canonical_level: float = 4,
               eps: float = 1e-6) -> Tensor:
    """torchvision's LevelMapper on [K, 4] boxes, in the boxes' dtype: level index from 0, or -1
    where it is NaN (negative area; torchvision then matches no level)."""
    s = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    lvl = torch.clamp(lvl, min=k_min, max=k_max)
    return torch.where(torch.isnan(lvl), torch.full_like(lvl, k_min - 1), lvl).to(torch.int64) - k_min


def multiscale_roi_align(x: Mapping[str, Tensor], boxes: Sequence[Tensor], image_shapes, featmap_names,
                         output_size, sampling_ratio, *, canonical_scale=224, canonical_level=4) -> Tensor:
    """MultiScaleRoIAlign in float64: torchvision's scales and level mapping (``fpn_levels``,
    in the boxes' dtype), then the float64 ``roi_align`` on each level."""
    features = [v for k, v in x.items() if k in featmap_names]
    rois = _rois_from_boxes(list(boxes), "multiscale_roi_align")
    scales = infer_scales(features, image_shapes)
    if len(features) == 1:
        return roi_align(features[0], rois, output_size, scales[0], sampling_ratio)
    k_min, k_max = level_range(scales)
    levels = fpn_levels(rois[:, 1:], k_min, k_max, canonical_scale, canonical_level)
    ph, pw = _pair(output_size)
    out = torch.zeros(len(rois), features[0].shape[1], ph, pw, dtype=torch.float64, device=rois.device)
    out = out + 0 * sum(f.double().sum() for f in features)  # every level in the graph
    for level, (feature, scale) in enumerate(zip(features, scales)):
        idx = (levels == level).nonzero().flatten()
        if len(idx):
            out = out.index_copy(0, idx, roi_align(feature, rois[idx], (ph, pw), scale, sampling_ratio))
    return out


__all__ = ["fpn_levels", "multiscale_roi_align", "roi_align", "tv_multiscale_roi_align", "tv_roi_align"]
