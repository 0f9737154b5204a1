"""RoI Align: torchvision's roi_align, and the FPN pooler (torchvision's MultiScaleRoIAlign) in one pass.

Semantics
---------
``roi_align`` is ``torchvision.ops.roi_align``: same signature, same results (float32 to
rounding: the kernels compute every step in torchvision's order). Each RoI ``(b, x1, y1, x2, y2)``
is scaled by ``spatial_scale`` (and shifted by -0.5 when ``aligned``); without ``aligned`` its
size is clamped to at least 1 x 1. It is split into ``output_size`` bins; each bin averages
``sampling_ratio``² bilinear samples (``sampling_ratio <= 0``: ``ceil(roi size / bins)`` per axis,
capped at 4096 per axis). A sample outside ``[-1, H] x [-1, W]`` counts as 0; inside, coordinates
below 0 are clamped to 0 and the last row/column is repeated.

Dtypes float16, bfloat16, float32, float64 (``rois`` the same dtype as ``input``, torchvision's
rule); all arithmetic in float32 (float64 for float64), rounded once to the output dtype, where
torchvision computes float16 coordinates in float16 (and has no bfloat16 kernel).

Memory format: a channels-last ``input`` (NHWC) is read as is on CUDA, with coalesced
channel-fastest loads, and the output (and the input gradient) is channels-last too; any other
layout is read as NCHW (non-contiguous inputs are copied first). On the CPU channels-last inputs
are copied to NCHW, and the output is returned channels-last.

Gradients
---------
Autograd through ``torch.library.register_autograd`` (works under ``torch.compile``); the
gradient flows to ``input`` only (``rois`` get none, as in torchvision). CUDA backward: float
atomics with float32 accumulation by default; under ``torch.use_deterministic_algorithms(True)``
a deterministic kernel (64-bit fixed-point integer atomics, bit-identical run to run; one extra
pass over ``grad_output`` for its max, an int64 accumulator of the input's size). Its absolute
error per pixel is at most (contributions) x max|grad_output| x K x PH x PW x 2^-63, far below
float32 rounding; a non-finite ``grad_output`` makes the whole input gradient NaN in that mode.
The CPU backward is always deterministic (no atomics).

Errors and the validation policy
--------------------------------
Raises RuntimeError naming the argument for: ``input`` not 4-D or not a float dtype; ``rois`` not
``[K, 5]`` (or a list entry not ``[Ki, 4]``), of another dtype or device; ``output_size`` not
positive; a non-finite ``spatial_scale``. Values (README, "Input validation policy"): a RoI whose
batch index is not an integer in ``[0, N)``, or with a NaN/inf coordinate,

- CPU: raises ``detbench.roi_align: rois[k, 0] (the batch index) must be an integer in [0, N),
  got ...`` (or ``rois[k] has a non-finite coordinate (NaN or inf)``);
- CUDA (default, no sync): that RoI's output is zeros and it receives no gradient; nothing else
  changes, and nothing is read out of bounds;
- CUDA in validation mode (``ops.set_validation(True)`` / ``DETBENCH_VALIDATE=1``): the CPU's
  error, after one device-to-host copy of the RoIs.

Syncs and memory: no host sync on CUDA outside validation mode (CUDA-graph capturable).
Forward: only the output. Backward: the gradient, plus a float32 accumulator of the input's size
for float16/bfloat16 (int64 in deterministic mode).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ops._library import require_kernels


def _pair(output_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    ph, pw = output_size
    return int(ph), int(pw)


def _rois_from_boxes(boxes: Tensor | Sequence[Tensor], op: str) -> Tensor:
    """A [K, 5] rois tensor as given, or a list of per-image [Ki, 4] boxes with the image index
    prepended (torchvision's convert_boxes_to_roi_format)."""
    if isinstance(boxes, Tensor):
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"detbench.{op}: boxes must be a Tensor[K, 5] or a list of Tensor[Ki, 4], got {type(boxes).__name__}")
    if len(boxes) == 0:
        raise ValueError(f"detbench.{op}: boxes is an empty list; pass one (possibly empty) Tensor[Ki, 4] per image")
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            shape = list(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"detbench.{op}: boxes[{i}] must have shape [Ki, 4], got {shape}")
    if len(boxes) == 1:
        b = boxes[0]
        return torch.cat([torch.zeros_like(b[:, :1]), b], dim=1)
    ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([ids, torch.cat(list(boxes), dim=0)], dim=1)


def _channels_last(t: Tensor) -> bool:
    """The kernels' layout rule (csrc/ops/roi_align/roi_align.cpp, roi_align_channels_last)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def roi_align(
    input: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoI Align with average pooling, exactly ``torchvision.ops.roi_align``.

    Args:
        input: [N, C, H, W] features (NCHW or channels-last), float16/bfloat16/float32/float64.
        boxes: Tensor[K, 5] of (batch index, x1, y1, x2, y2), or a list of N Tensor[Ki, 4]
            (x1, y1, x2, y2) per image; the same dtype and device as ``input``.
        output_size: (PH, PW) or an int for both.
        spatial_scale: maps box coordinates to feature coordinates (e.g. 0.25 for stride 4).
        sampling_ratio: samples per bin and axis; <= 0: adaptive, ceil(roi size / bins).
        aligned: shift boxes by -0.5 pixel (Detectron2's alignment); False: legacy, RoIs >= 1 px.

    Returns:
        [K, C, PH, PW] in ``input``'s dtype; channels-last when ``input`` is.

    See the module docstring for rounding, gradients, errors and the CUDA validation policy.
    """
    rois = _rois_from_boxes(boxes, "roi_align")
    ph, pw = _pair(output_size)
    require_kernels("roi_align", input, rois)
    return torch.ops.detbench.roi_align(input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned))


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, ph, pw, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (spatial_scale, ph, pw, sampling_ratio, aligned)
    ctx.input_shape = input.shape
    ctx.channels_last = _channels_last(input)


def _roi_align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    n, c, h, w = ctx.input_shape
    grad_input = torch.ops.detbench._roi_align_backward(
        grad, rois, *ctx.args, n, c, h, w, ctx.channels_last, torch.are_deterministic_algorithms_enabled()
    )
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd("detbench::roi_align", _roi_align_backward, setup_context=_roi_align_setup_context)


# ------------------------------------------------------------------------------------------------
# Multi-scale (FPN) pooling


def infer_scales(features: Sequence[Tensor], image_shapes: Sequence[tuple[int, int]]) -> list[float]:
    """torchvision's MultiScaleRoIAlign scale inference: for each level, 2^round(log2(feature
    height / largest image height)), computed on a float32 scalar as torchvision does."""
    max_h = max(int(s[0]) for s in image_shapes)
    return [2.0 ** float(torch.tensor(float(f.shape[-2]) / float(max_h)).log2().round()) for f in features]


def level_range(scales: Sequence[float]) -> tuple[int, int]:
    """(k_min, k_max) of torchvision's LevelMapper: -log2 of the first and last level's scale."""
    k_min = int(-torch.log2(torch.tensor(scales[0], dtype=torch.float32)).item())
    k_max = int(-torch.log2(torch.tensor(scales[-1], dtype=torch.float32)).item())
    return k_min, k_max


def multiscale_roi_align(
    x: Mapping[str, Tensor],
    boxes: Sequence[Tensor],
    image_shapes: Sequence[tuple[int, int]],
    featmap_names: Sequence[str],
    output_size: int | Sequence[int],
    sampling_ratio: int,
    *,
    canonical_scale: int = 224,
    canonical_level: int = 4,
) -> Tensor:
    """FPN RoI pooling, exactly ``torchvision.ops.MultiScaleRoIAlign(featmap_names, output_size,
    sampling_ratio, canonical_scale=..., canonical_level=...)(x, boxes, image_shapes)``, in one
    kernel launch (forward) instead of one roi_align and one index-copy per level.

    Args:
        x: feature maps by name (an ordered dict, finest level first, like a torchvision FPN's
            output); the levels used are those named in ``featmap_names``, in ``x``'s order. All
            [N, C, H_l, W_l] with one dtype, device and layout (channels-last levels are read as is).
        boxes: list of N Tensor[Ki, 4] (x1, y1, x2, y2) in image coordinates, ``x``'s dtype.
        image_shapes: (height, width) of each image before batching (for the scales).
        featmap_names, output_size, sampling_ratio, canonical_scale, canonical_level: as
            MultiScaleRoIAlign (``aligned`` is False there, so here).

    Returns:
        [K, C, PH, PW], K = sum Ki, RoIs in the order of ``boxes``.

    Level of each box (torchvision's LevelMapper, evaluated in the boxes' dtype step by step as
    torch does): floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6), clamped to
    [k_min, k_max] = -log2 of the first and last level's scale (scales inferred as torchvision
    does, ``infer_scales``); a box of negative area has no level and, as in torchvision, pools
    zeros. With one level every RoI is pooled from it (torchvision's shortcut). Gradients,
    validation policy and errors: as ``roi_align`` (messages name ``features[i]``).
    """
    features = [v for k, v in x.items() if k in featmap_names]
    if not features:
        raise ValueError(f"detbench.multiscale_roi_align: none of featmap_names {list(featmap_names)} is in x")
    rois = _rois_from_boxes(boxes, "multiscale_roi_align")
    scales = infer_scales(features, image_shapes)
    ph, pw = _pair(output_size)
    if len(features) == 1:
        return roi_align(features[0], rois, (ph, pw), scales[0], sampling_ratio)
    k_min, k_max = level_range(scales)
    require_kernels("multiscale_roi_align", rois, *features)
    return torch.ops.detbench.multiscale_roi_align(
        features, rois, scales, ph, pw, int(sampling_ratio), False, k_min, k_max,
        float(canonical_scale), float(canonical_level),
    )


class MultiScaleRoIAlign(nn.Module):
    """Drop-in for ``torchvision.ops.MultiScaleRoIAlign`` backed by ``multiscale_roi_align``."""

    def __init__(self, featmap_names: list[str], output_size: int | Sequence[int], sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        return multiscale_roi_align(x, boxes, image_shapes, self.featmap_names, self.output_size, self.sampling_ratio,
                                    canonical_scale=self.canonical_scale, canonical_level=self.canonical_level)


def _multiscale_setup_context(ctx, inputs, output):
    features, rois, *args = inputs
    ctx.save_for_backward(rois)
    ctx.args = tuple(args)
    ctx.batch, ctx.channels = features[0].shape[0], features[0].shape[1]
    ctx.heights = [f.shape[2] for f in features]
    ctx.widths = [f.shape[3] for f in features]
    ctx.channels_last = _channels_last(features[0])


def _multiscale_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    grads = torch.ops.detbench._multiscale_roi_align_backward(
        grad, rois, *ctx.args, ctx.batch, ctx.channels, ctx.heights, ctx.widths, ctx.channels_last,
        torch.are_deterministic_algorithms_enabled(),
    )
    return (list(grads), None, *([None] * len(ctx.args)))


torch.library.register_autograd(
    "detbench::multiscale_roi_align", _multiscale_backward, setup_context=_multiscale_setup_context
)
