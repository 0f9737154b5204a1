"""References for the two-stage detector ops (anchors, box decoding, matching, RPN proposals),
with the signatures of ``ops``.

- ``tv_*``: torchvision's own modules run on the inputs (AnchorGenerator.grid_anchors,
  BoxCoder.decode_single, Matcher looped over images, RegionProposalNetwork.filter_proposals
  after BoxCoder.decode): the baselines.
- ``pure_*``: simple PyTorch written from the semantics, the arbiters: anchors and decoding in
  float64; matching vectorized over the batch on torchvision's own float32 IoU (a float64 IoU
  would decide ties differently); proposals per image and level with explicit tie rules and
  float64 NMS.
"""
from __future__ import annotations

import math

import numpy
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork

from reference import pure

# ---------------------------------------------------------------------------------------------
# Anchors


def _pairs(values):
    return [(int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v)) for v in values]


def _visible(anchors, image_size, t):
    h, w = image_size
    a = anchors.double()
    return (a[:, 0] >= -t) & (a[:, 1] >= -t) & (a[:, 2] < w + t) & (a[:, 3] < h + t)


def tv_grid_anchors(feature_sizes, strides, cell_anchors, image_size=None, straddle_thresh=-1.0):
    """torchvision's AnchorGenerator.grid_anchors (what its forward runs, uncached) with the
    given cell anchors, levels concatenated; the visibility mask with torch ops."""
    generator = AnchorGenerator(sizes=tuple((1,) for _ in cell_anchors), aspect_ratios=((1.0,),) * len(cell_anchors))
    generator.cell_anchors = list(cell_anchors)
    device = cell_anchors[0].device
    steps = [[torch.tensor(sy, device=device), torch.tensor(sx, device=device)] for sy, sx in _pairs(strides)]
    anchors = torch.cat(generator.grid_anchors([list(s) for s in _pairs(feature_sizes)], steps))
    if straddle_thresh >= 0:
        return anchors, _visible(anchors, image_size, straddle_thresh)
    return anchors


def pure_grid_anchors(feature_sizes, strides, cell_anchors, image_size=None, straddle_thresh=-1.0):
    """Anchors in float64: for each level, location-major then cell anchor; cast to the cell
    anchors' dtype at the end."""
    out = []
    for (h, w), (sy, sx), cells in zip(_pairs(feature_sizes), _pairs(strides), cell_anchors):
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64, device=cells.device) * sy,
                                torch.arange(w, dtype=torch.float64, device=cells.device) * sx, indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
        out.append((shifts + cells.double()[None]).reshape(-1, 4))
    anchors = torch.cat(out).to(cell_anchors[0].dtype)
    if straddle_thresh >= 0:
        return anchors, _visible(anchors, image_size, straddle_thresh)
    return anchors


# ---------------------------------------------------------------------------------------------
# Decoding


def tv_decode_boxes(deltas, boxes, weights=(1.0, 1.0, 1.0, 1.0), clip=math.log(1000.0 / 16)):
    """BoxCoder(weights, clip).decode_single; batched deltas flattened over the batch."""
    coder = det_utils.BoxCoder(tuple(weights), clip)
    if deltas.dim() == 2:
        return coder.decode_single(deltas, boxes)
    b, n, c4 = deltas.shape
    if boxes.dim() == 2:
        boxes = boxes.expand(b, n, 4)
    return coder.decode_single(deltas.reshape(b * n, c4), boxes.reshape(b * n, 4)).reshape(b, n, c4)


def pure_decode_boxes(deltas, boxes, weights=(1.0, 1.0, 1.0, 1.0), clip=math.log(1000.0 / 16)):
    """The decode formula in float64 (the boxes first rounded to the deltas' dtype, as
    torchvision converts them), cast to the deltas' dtype."""
    d = deltas.double().unflatten(-1, (-1, 4))
    b = boxes.to(deltas.dtype).double()
    if b.dim() < d.dim() - 1:
        b = b.expand(*d.shape[:-2], 4)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    cx, cy = b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h
    wx, wy, ww, wh = weights
    dw = torch.clamp(d[..., 2] / ww, max=clip)
    dh = torch.clamp(d[..., 3] / wh, max=clip)
    pcx = d[..., 0] / wx * w[..., None] + cx[..., None]
    pcy = d[..., 1] / wy * h[..., None] + cy[..., None]
    pw, ph = torch.exp(dw) * w[..., None], torch.exp(dh) * h[..., None]
    out = torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=-1)
    return out.flatten(-2).to(deltas.dtype)


# ---------------------------------------------------------------------------------------------
# Matching


def _per_image(x, counts):
    """[B, G, ...] + counts -> per-image slices; a list stays a list."""
    if isinstance(x, (list, tuple)):
        return list(x)
    n = [x.shape[1]] * x.shape[0] if counts is None else counts.tolist()
    return [x[b, : n[b]] for b in range(x.shape[0])]


def tv_match_proposals(iou, high, low, allow_low_quality_matches=False, gt_counts=None):
    """torchvision's Matcher looped over images. An image without gt gets all -1 (background),
    as torchvision's RegionProposalNetwork.assign_targets_to_anchors treats it (Matcher itself
    raises there)."""
    matcher = det_utils.Matcher(high, low, allow_low_quality_matches)
    if isinstance(iou, torch.Tensor) and iou.dim() == 2:
        return _tv_match_one(matcher, iou)
    return torch.stack([_tv_match_one(matcher, m) for m in _per_image(iou, gt_counts)])


def _tv_match_one(matcher, quality):
    if quality.shape[0] == 0:
        return torch.full((quality.shape[1],), -1, dtype=torch.int64, device=quality.device)
    if quality.shape[1] == 0:
        return torch.empty(0, dtype=torch.int64, device=quality.device)
    return matcher(quality)


def tv_match_boxes(gt_boxes, proposals, high, low, allow_low_quality_matches=False, gt_counts=None):
    """torchvision.ops.box_iou + Matcher, looped over images (RPN's assign_targets_to_anchors)."""
    matcher = det_utils.Matcher(high, low, allow_low_quality_matches)
    if isinstance(gt_boxes, torch.Tensor) and gt_boxes.dim() == 2:
        return _tv_match_one(matcher, torchvision.ops.box_iou(gt_boxes, proposals))
    gts = _per_image(gt_boxes, gt_counts)
    props = [proposals] * len(gts) if proposals.dim() == 2 else list(proposals)
    return torch.stack([_tv_match_one(matcher, torchvision.ops.box_iou(g, p)) for g, p in zip(gts, props)])


def pure_match_proposals(iou, high, low, allow_low_quality_matches=False, gt_counts=None):
    """Matcher's rules vectorized over a padded batch (no loop over images): padded gt rows are
    -inf so they never win a max or reach a gt's highest quality."""
    if isinstance(iou, (list, tuple)):
        g = max(m.shape[0] for m in iou)
        padded = torch.full((len(iou), g, iou[0].shape[1]), -math.inf, dtype=iou[0].dtype, device=iou[0].device)
        for b, m in enumerate(iou):
            padded[b, : m.shape[0]] = m
        counts = torch.tensor([m.shape[0] for m in iou], device=iou[0].device)
        return pure_match_proposals(padded, high, low, allow_low_quality_matches, counts)
    single = iou.dim() == 2
    q = iou[None] if single else iou
    B, G, P = q.shape
    counts = torch.full((B,), G, device=q.device) if gt_counts is None else gt_counts.to(q.device).long()
    real = torch.arange(G, device=q.device)[None, :] < counts[:, None]  # [B, G]
    q = torch.where(real[:, :, None], q, torch.full_like(q, -math.inf))
    out = torch.full((B, P), -1, dtype=torch.int64, device=q.device)
    if G and P:
        best, arg = q.max(dim=1)  # first maximum; NaN wins, as in torchvision
        matches = arg.clone()
        matches[best < low] = -1
        matches[(best >= low) & (best < high)] = -2
        if allow_low_quality_matches:
            highest = q.max(dim=2).values  # [B, G]
            reach = ((q == highest[:, :, None]) & real[:, :, None]).any(dim=1)
            matches[reach] = arg[reach]
        out = torch.where(counts[:, None] > 0, matches, out)
    return out[0] if single else out


def _iou_float(a, p):
    """torchvision's box_iou formula in the inputs' precision, 0 where the boxes do not overlap."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])
    lt = torch.maximum(a[:, None, :2], p[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], p[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return torch.where(inter > 0, inter / (area_a[:, None] + area_p[None, :] - inter), torch.zeros_like(inter))


def pure_match_boxes(gt_boxes, proposals, high, low, allow_low_quality_matches=False, gt_counts=None):
    """torchvision's float32 IoU formula (detbench's 0 for an empty union) on the padded batch,
    then pure_match_proposals."""
    if isinstance(gt_boxes, (list, tuple)):
        g = max(x.shape[0] for x in gt_boxes)
        padded = gt_boxes[0].new_zeros((len(gt_boxes), g, 4))
        for b, x in enumerate(gt_boxes):
            padded[b, : x.shape[0]] = x
        gt_counts = torch.tensor([x.shape[0] for x in gt_boxes], device=padded.device)
        gt_boxes = padded
    ct = torch.float64 if gt_boxes.dtype == torch.float64 else torch.float32
    single = gt_boxes.dim() == 2
    a = (gt_boxes[None] if single else gt_boxes).to(ct)
    p = proposals.to(ct)
    if p.dim() == 2:
        p = p.expand(a.shape[0], *p.shape)
    # one image at a time: the [G, P, 2] corner tensors of all images at once would not fit
    iou = torch.stack([_iou_float(a[b], p[b]) for b in range(a.shape[0])])
    out = pure_match_proposals(iou, high, low, allow_low_quality_matches, None if single else gt_counts)
    return out[0] if single else out


# ---------------------------------------------------------------------------------------------
# Proposals


class _NoHead(torch.nn.Module):
    def forward(self, x):  # never called: filter_proposals gets the head's outputs directly
        raise NotImplementedError


def _rpn(pre_nms_top_n, post_nms_top_n, nms_thresh, min_size, score_thresh):
    rpn = RegionProposalNetwork(AnchorGenerator(), _NoHead(), 0.7, 0.3, 256, 0.5,
                                dict(training=pre_nms_top_n, testing=pre_nms_top_n),
                                dict(training=post_nms_top_n, testing=post_nms_top_n), nms_thresh, score_thresh)
    rpn.min_size = min_size
    return rpn.eval()


def _image_shapes(image_sizes):
    if isinstance(image_sizes, torch.Tensor):
        return [tuple(int(v) for v in row) for row in image_sizes.tolist()]
    return [tuple(int(v) for v in s) for s in image_sizes]


def tv_generate_proposals(objectness, deltas, anchors, image_sizes, num_anchors_per_level, pre_nms_top_n=1000,
                          post_nms_top_n=1000, nms_thresh=0.7, min_size=1e-3, score_thresh=0.0):
    """torchvision's RPN inference path after the head: BoxCoder.decode of every anchor, then
    RegionProposalNetwork.filter_proposals. Returns its (list of boxes, list of scores)."""
    rpn = _rpn(pre_nms_top_n, post_nms_top_n, nms_thresh, min_size, score_thresh)
    b, a = objectness.shape
    per_image = [anchors] * b if anchors.dim() == 2 else list(anchors)
    proposals = rpn.box_coder.decode(deltas.reshape(b * a, 4), per_image).view(b, -1, 4)
    return rpn.filter_proposals(proposals, objectness.reshape(b * a, 1), _image_shapes(image_sizes),
                                list(num_anchors_per_level))


def _greedy_nms_float64(boxes, scores, threshold):
    """Greedy NMS of one group in float64 on its full IoU matrix (groups here have <= a few
    thousand boxes): rank = descending score, ties by position; a box is dropped when its IoU
    with a kept, higher-ranked box is > threshold. Returns the kept positions in rank order."""
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    suppress = (pure.box_iou(boxes[order], boxes[order]) > threshold).cpu().numpy()
    removed = numpy.zeros(len(order), dtype=bool)
    kept = []
    for i in range(len(order)):
        if not removed[i]:
            kept.append(i)
            removed[i + 1:] |= suppress[i, i + 1:]
    return order.cpu()[torch.tensor(kept, dtype=torch.int64)]


def pure_generate_proposals(objectness, deltas, anchors, image_sizes, num_anchors_per_level, pre_nms_top_n=1000,
                            post_nms_top_n=1000, nms_thresh=0.7, min_size=1e-3, score_thresh=0.0):
    """filter_proposals' steps per image and level with detbench's tie rules made explicit
    (top-k by a stable descending sort; NMS and the final order by score, then candidate
    position) and float64 NMS (on each level's full IoU matrix). torchvision's own decode, sigmoid, clip and size filter run in
    the input dtype. Returns (list of boxes, list of scores)."""
    coder = det_utils.BoxCoder((1.0, 1.0, 1.0, 1.0))
    shapes = _image_shapes(image_sizes)
    out_boxes, out_scores = [], []
    for b in range(objectness.shape[0]):
        anchors_b = anchors if anchors.dim() == 2 else anchors[b]
        cand_boxes, cand_scores = [], []
        start = 0
        for n in num_anchors_per_level:
            logits = objectness[b, start : start + n]
            order = torch.sort(logits, descending=True, stable=True).indices[: min(pre_nms_top_n, n)] + start
            start += n
            boxes = coder.decode_single(deltas[b, order], anchors_b[order])
            boxes = torchvision.ops.clip_boxes_to_image(boxes, shapes[b])
            scores = torch.sigmoid(objectness[b, order])
            ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
            keep = (ws >= min_size) & (hs >= min_size) & (scores >= score_thresh) & torch.isfinite(boxes).all(1)
            cand_boxes.append(boxes[keep])
            cand_scores.append(scores[keep])
        kept = [start + _greedy_nms_float64(bx, sc, nms_thresh) for start, bx, sc in
                zip(torch.tensor([0] + [len(x) for x in cand_boxes]).cumsum(0).tolist(), cand_boxes, cand_scores)]
        boxes, scores = torch.cat(cand_boxes), torch.cat(cand_scores)
        kept = torch.cat(kept).to(boxes.device)
        # all levels by descending score, equal scores by candidate position (level, then rank)
        kept = kept[torch.sort(scores[kept].double(), descending=True, stable=True).indices][:post_nms_top_n]
        out_boxes.append(boxes[kept])
        out_scores.append(scores[kept])
    return out_boxes, out_scores
