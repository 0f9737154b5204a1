"""Pure-PyTorch references computed in float64: slow, simple, and the arbiter of correctness."""
import numpy
import torch


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes, [..., N, 4] x [..., M, 4] -> [..., N, M], in float64.

    torchvision's formula (no +1 in areas). Where the union is 0 (two zero-area boxes)
    the IoU is defined as 0, as detbench defines it; torchvision returns NaN there.
    Returns float64; callers cast to the dtype they compare in.
    """
    a = boxes1.to(torch.float64)
    b = boxes2.to(torch.float64)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union == 0, torch.zeros_like(inter), inter / union)


def rank_order(scores: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """NMS rank: descending score, equal scores by ascending index; with `groups`, grouped by
    ascending group first (each group's boxes contiguous, in rank order)."""
    order = torch.sort(scores.to(torch.float64), descending=True, stable=True).indices
    if groups is not None:
        order = order[torch.sort(groups[order], stable=True).indices]
    return order


GREEDY_BLOCK = 512  # ranked boxes resolved together on the host (a 512 x 512 bool matrix)
COLUMNS_PER_CHUNK = 1 << 15  # bounds a block-vs-later IoU at 512 x 32,768 float64


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy class-aware NMS in float64: boxes of different `idxs` never suppress each other.

    Walks the boxes in rank order (descending score, ties by index); each kept box removes the
    later boxes of its group whose IoU with it is > iou_threshold (a NaN IoU suppresses
    nothing). Returns the kept indices sorted by descending score, ties by ascending index
    (torchvision's order).

    The walk goes a block of GREEDY_BLOCK ranked boxes at a time, which decides exactly as one
    box at a time does: the block's boxes that no earlier kept box suppressed are resolved among
    themselves in rank order (on the host, over their IoU matrix), then the block's kept boxes
    suppress the later boxes still alive, all at once. Rounds: N / GREEDY_BLOCK, not one per kept
    box (100,000 boxes, 80 classes: seconds instead of half a minute on an H200)."""
    order = rank_order(scores)
    ranked = boxes[order].to(torch.float64)
    groups = idxs[order]
    n = len(order)
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    kept = [torch.empty(0, dtype=torch.int64, device=boxes.device)]
    for start in range(0, n, GREEDY_BLOCK):
        stop = min(start + GREEDY_BLOCK, n)
        alive = start + (~suppressed[start:stop]).nonzero().flatten()
        overlaps = _suppresses(ranked, groups, alive, alive, iou_threshold).cpu().numpy()
        keep = numpy.ones(len(alive), dtype=bool)
        for i in range(len(alive)):
            if keep[i]:
                keep[i + 1:] &= ~overlaps[i, i + 1:]
        block_kept = alive[torch.from_numpy(keep).to(boxes.device)]
        kept.append(block_kept)
        later = stop + (~suppressed[stop:]).nonzero().flatten()
        for columns in later.split(COLUMNS_PER_CHUNK):
            suppressed[columns] = _suppresses(ranked, groups, block_kept, columns, iou_threshold).any(dim=0)
    return order[torch.cat(kept)]


def _suppresses(ranked, groups, rows, columns, iou_threshold) -> torch.Tensor:
    """[rows, columns] bool: box `row` suppresses box `column` if it is kept first."""
    iou = box_iou(ranked[rows], ranked[columns])
    return (iou > iou_threshold) & (groups[rows][:, None] == groups[columns][None, :])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS in float64 with torchvision's semantics (see batched_nms)."""
    return batched_nms(boxes, scores, torch.zeros_like(scores, dtype=torch.int64), iou_threshold)


def segmented_nms_padded(boxes: torch.Tensor, scores: torch.Tensor, segment_offsets: torch.Tensor,
                         iou_threshold: float, max_output_per_segment: int,
                         score_threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent greedy NMS in each segment offsets[s]..offsets[s+1]-1 (float64): boxes scoring
    <= score_threshold dropped first, at most max_output_per_segment kept per segment. Returns
    (indices [S, max_output_per_segment] of global box indices in rank order, padded with -1;
    counts [S])."""
    return pad_segments(batched_nms_in_segments(boxes, scores, segment_offsets, iou_threshold, score_threshold,
                                                batched_nms), segment_offsets, max_output_per_segment)


def batched_nms_in_segments(boxes, scores, segment_offsets, iou_threshold, score_threshold, batched_nms_fn):
    """Segment ids as classes, the score threshold applied first: any batched NMS then solves
    every segment at once. Returns the kept global indices sorted by segment, then rank."""
    n = len(scores)
    segment = torch.bucketize(torch.arange(n, device=scores.device), segment_offsets[1:], right=True)
    candidates = torch.arange(n, device=scores.device)
    if score_threshold is not None:
        candidates = candidates[scores > score_threshold]
    kept = candidates[batched_nms_fn(boxes[candidates], scores[candidates], segment[candidates], iou_threshold)]
    return kept[torch.sort(segment[kept], stable=True).indices]


def pad_segments(kept: torch.Tensor, segment_offsets: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept indices grouped by segment -> ([S, width] padded with -1, counts [S]), the first
    `width` of each segment."""
    segments = len(segment_offsets) - 1
    segment = torch.bucketize(kept, segment_offsets[1:], right=True)
    counts = torch.bincount(segment, minlength=segments)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(kept), device=kept.device) - starts[segment]
    padded = torch.full((segments, width), -1, dtype=torch.int64, device=kept.device)
    fits = slot < width
    padded[segment[fits], slot[fits]] = kept[fits]
    return padded, counts.clamp(max=width)


def _pair(v):
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _axis(pos: torch.Tensor, size: int):
    """torchvision's bilinear_interpolate along one axis, in the positions' dtype: (lo, hi, w_lo,
    w_hi, inside)."""
    inside = (pos >= -1) & (pos <= size)
    v = pos.clamp(min=0)
    lo = v.floor().clamp(max=max(size - 1, 0))
    edge = lo >= size - 1
    v = torch.where(edge, lo, v)
    hi = torch.where(edge, lo, lo + 1)
    l = v - lo
    return lo.long(), hi.long(), 1 - l, l, inside


def roi_align(input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False, positions_dtype: torch.dtype | None = None) -> torch.Tensor:
    """RoI Align in float64: torchvision's sample positions (computed in float32 as torchvision
    rounds them; float64 for float64 input), bilinear interpolation and averaging in float64;
    differentiable with respect to input through autograd. Vectorized: RoIs are grouped by their
    sampling grid, and every (RoI, bin, sample, corner) becomes one weighted row of the
    channels-last feature matrix, gathered and summed in chunks of bounded memory. positions_dtype
    overrides the positions' dtype (to differentiate a float64 copy of a float32 input). A RoI with a
    batch index that is no integer in [0, N) or a non-finite box gets 0 (what detbench's CUDA
    path gives it)."""
    if not isinstance(boxes, torch.Tensor):
        boxes = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)], 0)
    ph, pw = _pair(output_size)
    pos_dtype = positions_dtype or (torch.float64 if input.dtype == torch.float64 else torch.float32)
    # The geometry and the gather indices on the CPU: torchvision's CPU kernel rounds positions op
    # by op with IEEE division, and PyTorch's CUDA division by a Python number multiplies by its
    # reciprocal instead (positions 1 ulp off). Only the gather runs on the input's device.
    r = boxes.detach().to("cpu", pos_dtype)
    x = input.double()
    N, C, H, W = x.shape
    K = r.shape[0]
    out = x.new_zeros(K * ph * pw, C) + x.flatten()[:0].sum()  # depends on x even with nothing to sample
    if K == 0 or C == 0 or H == 0 or W == 0:
        return out.reshape(K, ph, pw, C).permute(0, 3, 1, 2)
    b = r[:, 0]
    valid = (b >= 0) & (b < N) & (b == b.floor()) & torch.isfinite(r[:, 1:]).all(1)
    offset = 0.5 if aligned else 0.0
    scale = torch.tensor(spatial_scale, dtype=pos_dtype)
    sw, sh, ew, eh = (r[:, i] * scale - offset for i in (1, 2, 3, 4))
    rw, rh = ew - sw, eh - sh
    if not aligned:
        rw, rh = rw.clamp(min=1), rh.clamp(min=1)
    bh, bw = rh / ph, rw / pw

    def grid(bin_size):
        if sampling_ratio > 0:
            return torch.full_like(bin_size, sampling_ratio, dtype=torch.long)
        g = torch.ceil(bin_size).nan_to_num(0.0, 0.0, 0.0)
        return g.clamp(0, 1024).long()

    gh, gw = grid(bh), grid(bw)
    count = (gh * gw).clamp(min=1).double()
    xf = x.permute(0, 2, 3, 1).reshape(N * H * W, C)
    pairs = torch.stack([gh, gw], 1)[valid]
    chunk = max(1, (1 << 25) // max(C, 1))
    for a, bb in torch.unique(pairs, dim=0).tolist():
        if a == 0 or bb == 0:
            continue
        idx = torch.nonzero(valid & (gh == a) & (gw == bb)).flatten()
        p = torch.arange(ph, dtype=pos_dtype)[None, :, None]
        q = torch.arange(pw, dtype=pos_dtype)[None, :, None]
        iy = (torch.arange(a, dtype=pos_dtype) + 0.5)[None, None, :]
        ix = (torch.arange(bb, dtype=pos_dtype) + 0.5)[None, None, :]
        y = (sh[idx, None, None] + p * bh[idx, None, None]) + (iy * bh[idx, None, None]) / float(a)  # [Kg, ph, a]
        xx = (sw[idx, None, None] + q * bw[idx, None, None]) + (ix * bw[idx, None, None]) / float(bb)  # [Kg, pw, b]
        ylo, yhi, wylo, wyhi, yin = _axis(y, H)
        xlo, xhi, wxlo, wxhi, xin = _axis(xx, W)
        n = b[idx].long()[:, None, None, None, None]
        target = ((idx[:, None, None, None, None] * ph + torch.arange(ph)[None, :, None, None, None]) * pw
                  + torch.arange(pw)[None, None, None, :, None])
        inside = yin[:, :, :, None, None] & xin[:, None, None, :, :]
        norm = count[idx][:, None, None, None, None]
        rows, weights, targets = [], [], []
        for yi, wy in ((ylo, wylo), (yhi, wyhi)):
            for xi, wx in ((xlo, wxlo), (xhi, wxhi)):
                row = (n * H + yi[:, :, :, None, None]) * W + xi[:, None, None, :, :]
                w = wy.double()[:, :, :, None, None] * wx.double()[:, None, None, :, :] / norm
                shape = torch.broadcast_shapes(row.shape, target.shape, inside.shape)
                m = inside.expand(shape)
                rows.append(row.expand(shape)[m])
                weights.append(w.expand(shape)[m])
                targets.append(target.expand(shape)[m])
        rows, weights, targets = torch.cat(rows), torch.cat(weights), torch.cat(targets)
        rows, weights, targets = rows.to(x.device), weights.to(x.device), targets.to(x.device)
        for s in range(0, rows.numel(), chunk):
            e = s + chunk
            out = out.index_add(0, targets[s:e], xf[rows[s:e]] * weights[s:e, None])
    return out.reshape(K, ph, pw, C).permute(0, 3, 1, 2)


def multiscale_roi_align(x, boxes, image_shapes, featmap_names, output_size, sampling_ratio, canonical_scale=224,
                         canonical_level=4, positions_dtype: torch.dtype | None = None) -> torch.Tensor:
    """MultiScaleRoIAlign in float64: torchvision's scales and its own LevelMapper (on the boxes as
    given) decide each RoI's level; each level is pooled with the float64 roi_align above."""
    from torchvision.ops.poolers import LevelMapper

    from ops.roi_align import setup_scales

    features = [x[k] for k in featmap_names]
    scales, k_min, k_max = setup_scales(features, image_shapes)
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)], 0)
    if len(features) == 1:
        return roi_align(features[0], rois, output_size, scales[0], sampling_ratio, positions_dtype=positions_dtype)
    levels = LevelMapper(k_min, k_max, canonical_scale=canonical_scale, canonical_level=canonical_level)(boxes)
    ph, pw = _pair(output_size)
    C = features[0].shape[1]
    result = features[0].new_zeros((rois.shape[0], C, ph, pw), dtype=torch.float64) + sum(
        f.flatten()[:0].double().sum() for f in features)
    for level, (f, s) in enumerate(zip(features, scales)):
        idx = torch.nonzero(levels == level).flatten()
        result = result.index_copy(0, idx, roi_align(f, rois[idx], (ph, pw), s, sampling_ratio,
                                                         positions_dtype=positions_dtype))
    return result
