"""Box generators shared by the suites: realistic detection data, and the adversarial kinds.

Everything is drawn on the CPU from the given generator in float32 and only then cast and moved,
so a case's data are identical on every device and every run.
"""
from __future__ import annotations

import math

import torch

IMAGE_HW = (800, 1344)  # a Mask R-CNN input image (height, width)
CONTENTS = ("clustered", "degenerate", "huge")


def clustered_boxes(n: int, g: torch.Generator, objects: int | None = None) -> torch.Tensor:
    """[n, 4] xyxy float32 boxes in image coordinates, as a detector's proposals or anchors fall:
    around a few objects (log-uniform sizes 16-512 px, aspect ratio 1:2-2:1), each box a jittered
    copy of its object (about +-15 % in position and scale), clipped to the image."""
    h, w = IMAGE_HW
    k = objects or max(1, min(64, n // 50))
    size = torch.exp(torch.empty(k).uniform_(math.log(16), math.log(512), generator=g))
    aspect = torch.exp(torch.empty(k).uniform_(-0.69, 0.69, generator=g))
    obj_w, obj_h = size * aspect.sqrt(), size / aspect.sqrt()
    obj_cx = torch.rand(k, generator=g) * w
    obj_cy = torch.rand(k, generator=g) * h
    owner = torch.randint(0, k, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g) * 0.15
    bw = obj_w[owner] * torch.exp(jitter[:, 2])
    bh = obj_h[owner] * torch.exp(jitter[:, 3])
    cx = obj_cx[owner] + jitter[:, 0] * obj_w[owner]
    cy = obj_cy[owner] + jitter[:, 1] * obj_h[owner]
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    return boxes


def degenerate_boxes(n: int, g: torch.Generator, objects: int | None = None) -> torch.Tensor:
    """Clustered boxes with a quarter of them broken: zero width, zero height, single points,
    inverted (x2 < x1 or y2 < y1), and exact duplicates of other boxes."""
    boxes = clustered_boxes(n, g, objects)
    if n == 0:
        return boxes
    kind = torch.randint(0, 8, (n,), generator=g)  # kinds 0-5 broken below, 6-7 left intact
    boxes[kind == 0, 2] = boxes[kind == 0, 0]                       # zero width
    boxes[kind == 1, 3] = boxes[kind == 1, 1]                       # zero height
    boxes[kind == 2, 2:] = boxes[kind == 2, :2]                     # a point
    boxes[kind == 3] = boxes[kind == 3][:, [2, 1, 0, 3]]            # inverted in x
    boxes[kind == 4] = boxes[kind == 4][:, [0, 3, 2, 1]]            # inverted in y
    dup = (kind == 5).nonzero().flatten()
    boxes[dup] = boxes[torch.randint(0, n, (dup.numel(),), generator=g)]  # exact duplicates (ties)
    return boxes


def huge_offset(dtype: torch.dtype) -> float:
    """An offset near the top of the dtype's range that still leaves the boxes finite."""
    return 3.0e4 if dtype == torch.float16 else 1.0e6


def make_boxes(content: str, n: int, dtype: torch.dtype, g: torch.Generator, objects: int | None = None) -> torch.Tensor:
    """[n, 4] boxes of the named content kind around `objects` objects (default: one per 50
    boxes, at most 64), cast to dtype (still on the CPU)."""
    if content == "clustered":
        boxes = clustered_boxes(n, g, objects)
    elif content == "degenerate":
        boxes = degenerate_boxes(n, g, objects)
    elif content == "huge":
        boxes = clustered_boxes(n, g, objects) + huge_offset(dtype)
    else:
        raise ValueError(f"unknown content {content!r}; known: {CONTENTS}")
    return boxes.to(dtype)
