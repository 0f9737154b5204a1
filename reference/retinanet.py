"""References for the RetinaNet ops: torchvision's own code, and a float64 pure-PyTorch focal loss.

- `sigmoid_focal_loss_tv`: torchvision.ops.sigmoid_focal_loss (the speed baseline).
- `sigmoid_focal_loss_f64` / `sigmoid_focal_loss_f64_with_grad`: the same loss in float64 in a
  stable form (log-sigmoid, both sigmoids computed directly), the correctness arbiter, and its
  gradient through float64 autograd.
- `postprocess_tv`: torchvision's real RetinaNet.postprocess_detections (the method itself,
  called on a minimal object carrying the attributes it reads), on the case's device and dtype.
- `postprocess_tv_f32_nms`: the same method with its class-aware NMS run per class
  (torchvision's own `_batched_nms_vanilla`) on the boxes cast to float32: torchvision's
  coordinate-offset trick overflows float16 (label x (max coordinate + 1) > 65504 for 80 classes
  at 1344 px) and its half-precision NMS computes areas in half (> 65504 overflows), so this is
  the arbiter of what torchvision's semantics give, with IoUs in float32 like detbench's.
"""
from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.ops import boxes as box_ops


def sigmoid_focal_loss_tv(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss."""
    return torchvision.ops.sigmoid_focal_loss(inputs, targets, alpha=alpha, gamma=gamma, reduction=reduction)


def sigmoid_focal_loss_f64(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """The focal loss in float64: ce = -(t log p + (1 - t) log(1 - p)) with log p and log(1 - p)
    from logsigmoid, and 1 - p_t = p (1 - t) + (1 - p) t with p and 1 - p each a sigmoid, so
    nothing cancels for large |logits|. Returns float64."""
    x = inputs.to(torch.float64)
    t = targets.to(torch.float64)
    ce = -(t * F.logsigmoid(x) + (1 - t) * F.logsigmoid(-x))
    m = torch.sigmoid(x) * (1 - t) + torch.sigmoid(-x) * t
    # Where 1 - p_t underflows to 0 (|x| > ~745), m^gamma's derivative is inf x 0 for gamma < 1:
    # the limit of the whole term is 0, which this gives (no gradient flows through the constant).
    m = torch.where(m == 0, torch.full_like(m, 1e-300), m)
    loss = ce * m**gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def sigmoid_focal_loss_f64_with_grad(inputs, targets, alpha=0.25, gamma=2, reduction="none", grad=None):
    """(loss, d(sum(grad * loss)) / d inputs) in float64; grad defaults to ones (a 0-dim one for
    the reduced losses)."""
    x = inputs.detach().to(torch.float64).requires_grad_(True)
    loss = sigmoid_focal_loss_f64(x, targets, alpha, gamma, reduction)
    g = torch.ones_like(loss) if grad is None else grad.to(torch.float64)
    (dx,) = torch.autograd.grad(loss, x, g)
    return loss.detach(), dx


def _postprocess_object(score_thresh, topk_candidates, nms_thresh, detections_per_img):
    """What RetinaNet.postprocess_detections reads from `self`."""
    return SimpleNamespace(box_coder=det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)), score_thresh=score_thresh,
                           nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                           topk_candidates=topk_candidates)


def _image_shapes(image_sizes):
    if isinstance(image_sizes, torch.Tensor):
        return [(int(h), int(w)) for h, w in image_sizes.tolist()]
    return [(int(h), int(w)) for h, w in image_sizes]


def postprocess_tv(cls_logits, box_deltas, anchors, image_sizes, score_thresh=0.05, topk_candidates=1000,
                   nms_thresh=0.5, detections_per_img=300):
    """torchvision's RetinaNet.postprocess_detections on per-level head outputs ([B, N_l, C] and
    [B, N_l, 4]) and per-level anchors ([N_l, 4] shared, or [B, N_l, 4]). Returns its list of
    {"boxes", "scores", "labels"} per image."""
    shapes = _image_shapes(image_sizes)
    per_image_anchors = [[a if a.dim() == 2 else a[b] for a in anchors] for b in range(len(shapes))]
    head_outputs = {"cls_logits": list(cls_logits), "bbox_regression": list(box_deltas)}
    obj = _postprocess_object(score_thresh, topk_candidates, nms_thresh, detections_per_img)
    return RetinaNet.postprocess_detections(obj, head_outputs, per_image_anchors, shapes)


def _batched_nms_float32_per_class(boxes, scores, idxs, iou_threshold):
    return box_ops._batched_nms_vanilla(boxes.float(), scores.float(), idxs, iou_threshold)


@contextlib.contextmanager
def _float32_per_class_nms():
    original = box_ops.batched_nms
    box_ops.batched_nms = _batched_nms_float32_per_class
    try:
        yield
    finally:
        box_ops.batched_nms = original


def postprocess_tv_f32_nms(*args, **kwargs):
    """postprocess_tv with torchvision's per-class NMS on float32 copies of the boxes (see the
    module docstring); everything else is torchvision's code in the inputs' dtype."""
    with _float32_per_class_nms():
        return postprocess_tv(*args, **kwargs)


def retinanet_anchors(image_hw=(800, 1344), strides=(8, 16, 32, 64, 128), scales=(1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
                      ratios=(0.5, 1.0, 2.0)):
    """RetinaNet's anchors per level, [H_l * W_l * A, 4] float32 in torchvision's order (position
    major, then the A = len(scales) * len(ratios) anchors), size 4 * stride * scale."""
    h, w = image_hw
    levels = []
    for stride in strides:
        fh, fw = math.ceil(h / stride), math.ceil(w / stride)
        sizes = torch.tensor([4 * stride * s for s in scales])
        r = torch.tensor(ratios)
        hr, wr = r.sqrt(), 1 / r.sqrt()
        ws = (wr[:, None] * sizes[None, :]).flatten()
        hs = (hr[:, None] * sizes[None, :]).flatten()
        base = torch.stack([-ws, -hs, ws, hs], dim=1) / 2
        ys, xs = torch.meshgrid(torch.arange(fh) * stride, torch.arange(fw) * stride, indexing="ij")
        shifts = torch.stack([xs.flatten(), ys.flatten(), xs.flatten(), ys.flatten()], dim=1).float()
        levels.append((shifts[:, None, :] + base[None, :, :]).reshape(-1, 4))
    return levels
