"""Box decoding: torchvision's BoxCoder.decode_single in one kernel.

Semantics
---------
For reference box (x1, y1, x2, y2) and deltas (dx, dy, dw, dh) per class, weights (wx, wy, ww, wh)::

    w, h = x2 - x1, y2 - y1;  cx, cy = x1 + 0.5 w, y1 + 0.5 h
    dw, dh = min(dw / ww, clip), min(dh / wh, clip)        # NaN stays NaN
    pcx, pcy = dx / wx * w + cx, dy / wy * h + cy
    pw, ph = exp(dw) * w, exp(dh) * h
    box = (pcx - 0.5 pw, pcy - 0.5 ph, pcx + 0.5 pw, pcy + 0.5 ph)

computed in the deltas' dtype the way torchvision's eager ops compute it: the boxes are first
converted to the deltas' dtype (``boxes.to(rel_codes.dtype)``), every step is computed in
float32 (float64 for float64) and rounded to the deltas' dtype, and no multiply-add is fused.
float32 results equal torchvision's up to the last ulp of exp and of a division by a weight
(PyTorch's CUDA kernels multiply by the reciprocal there); float16/bfloat16 results reproduce
torchvision's per-step rounding.

Shapes: deltas [N, 4 * C] with boxes [N, 4] (decode_single), or deltas [B, N, 4 * C] with boxes
[N, 4] (shared, e.g. anchors) or [B, N, 4]. Output: the deltas' shape and dtype.

Errors: RuntimeError naming the argument for wrong shapes, dtypes or devices, weights that are
not 4 finite non-zero numbers, a NaN clip. Values are not checked: NaN deltas give NaN boxes, as
in torchvision. No sync; CUDA-graph capturable.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ops._library import require_kernels

DEFAULT_CLIP = math.log(1000.0 / 16)


def decode_boxes(deltas: torch.Tensor, boxes: torch.Tensor, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 clip: float = DEFAULT_CLIP) -> torch.Tensor:
    """Decoded boxes, torchvision's BoxCoder(weights, clip).decode_single(deltas, boxes); see the module docstring."""
    require_kernels("decode_boxes", deltas, boxes)
    return torch.ops.detbench.decode_boxes(deltas, boxes, [float(w) for w in weights], float(clip))
