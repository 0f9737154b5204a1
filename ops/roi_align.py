"""RoI Align (Mask R-CNN's box and mask heads) and the FPN pooler, torchvision's semantics.

``roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False)``
---------------------------------------------------------------------------------------------
torchvision.ops.roi_align exactly: ``input`` [N, C, H, W]; ``boxes`` a [K, 5] tensor of
(batch index, x1, y1, x2, y2) or a list of [Ki, 4] boxes per image; output [K, C, PH, PW].
Coordinates are scaled by ``spatial_scale``; ``aligned`` shifts them by -0.5 (half-pixel
centres); without it a RoI is at least 1x1. Each bin averages ``sampling_ratio``² bilinear samples
(adaptive ``ceil(roi_size / output_size)`` per axis when ``sampling_ratio <= 0``, capped at 1024);
a sample outside [-1, H] x [-1, W] counts as 0. The sample positions are rounded as
torchvision rounds them (float32; float64 for float64 input), the interpolation accumulates in
float32 (float64) for every dtype. rois may be any floating dtype (converted to float32).

Memory formats: NCHW, and channels-last input read in place (no transpose copy); the output and
the input gradient then are channels-last too. Any other strides are copied to NCHW.

Backward (``torch.library.register_autograd``, works under ``torch.compile(fullgraph=True)``): on
the CPU always deterministic (channels split across threads, RoIs in order). On CUDA by default
(``sampling_ratio`` 1 or 2) the forward's walk reversed: each RoI's block adds its samples' corner
shares of the gradient into a float32 (float64) NHWC accumulator with channel-contiguous atomics,
then converts it to the gradient's dtype and layout; the additions' order varies from run to run
(float32 rounding). Under ``torch.use_deterministic_algorithms(True)``, and for larger or adaptive
sampling grids (whose atomics grow with the samples), a gather with no atomics: a block per
8x8-pixel tile of a feature map sums, in registers and in RoI order, the contributions of every RoI
whose samples touch the tile (float32 for float16/bfloat16 inputs, rounded once); when the tiles are
too few to fill the GPU (a mask head on a coarse level), the RoIs are split into contiguous shares
whose partial tiles are added in share order: bit-identical run to run (on one GPU model). Either
way a NaN in the upstream gradient reaches only the pixels its bin samples. rois get no gradient.

``multiscale_roi_align(x, boxes, image_shapes, featmap_names, output_size, sampling_ratio,
canonical_scale=224, canonical_level=4)``
--------------------------------------------------------------------------------------------
torchvision.ops.MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio, canonical_scale,
canonical_level)(x, boxes, image_shapes): scales inferred from the feature shapes and the largest
image size as torchvision does, the LevelMapper's level floor(canonical_level +
log2(sqrt(area) / canonical_scale) + 1e-6) clamped to the available levels, computed on the device
per RoI in float32, and every level pooled in one pass (one launch on CUDA), forward and backward.
A box with a negative area matches no level and gets zeros (as in torchvision).

Errors and bad values
---------------------
RuntimeError naming the argument: input/features not 4-D or not floating, levels with other
dtypes/devices/batch/channels, rois not [K, 5] or not floating or on another device,
output_size not in [1, 1024], sampling_ratio over 1024 (torchvision takes any; the adaptive
grid's cap), a non-positive or non-finite spatial scale, more than 8 levels.
A RoI whose batch index is not an integer in [0, N), or whose box is not finite: an error on the
CPU and in validation mode (``ops.set_validation(True)``, a sync); the default CUDA path reads
nothing for it and gives it a zero output and no gradient.
"""
from __future__ import annotations

import math

import torch

from ops._library import require_kernels


def _pair(v):
    if isinstance(v, int):
        return v, v
    v = tuple(v)
    if len(v) == 1:
        return int(v[0]), int(v[0])
    if len(v) != 2:
        raise RuntimeError(f"detbench.roi_align: output_size must be an int or a pair, got {v}")
    return int(v[0]), int(v[1])


def _to_rois(boxes) -> torch.Tensor:
    """torchvision's convert_boxes_to_roi_format: a list of [Ki, 4] -> [K, 5]."""
    if isinstance(boxes, torch.Tensor):
        return boxes
    boxes = list(boxes)
    for i, b in enumerate(boxes):
        if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[1] != 4:
            raise RuntimeError(f"detbench.roi_align: boxes[{i}] must be a [Ki, 4] tensor, got "
                               f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}")
    if not boxes:
        raise RuntimeError("detbench.roi_align: boxes is an empty list (pass a [0, 5] tensor for no RoIs)")
    ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([ids, torch.cat(boxes, dim=0)], dim=1)


def roi_align(input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> torch.Tensor:
    """torchvision.ops.roi_align. See the module docstring."""
    rois = _to_rois(boxes)
    require_kernels("roi_align", input, rois)
    ph, pw = _pair(output_size)
    return torch.ops.detbench.roi_align(input, rois, float(spatial_scale), ph, pw, int(sampling_ratio), bool(aligned))


def _setup_context(ctx, inputs, output):
    input, rois, *args = inputs
    ctx.save_for_backward(input, rois)
    ctx.args = args


def _backward(ctx, grad):
    input, rois = ctx.saved_tensors
    grad_input = torch.ops.detbench.roi_align_backward(grad, input, rois, *ctx.args)
    return (grad_input, None) + (None,) * len(ctx.args)


torch.library.register_autograd("detbench::roi_align", _backward, setup_context=_setup_context)


def _infer_scale(feature: torch.Tensor, original_size) -> float:
    """torchvision.ops.poolers._infer_scale."""
    possible = []
    for s1, s2 in zip(feature.shape[-2:], original_size):
        approx = float(s1) / float(s2)
        possible.append(2 ** float(torch.tensor(approx).log2().round()))
    if possible[0] != possible[1]:
        raise RuntimeError(f"detbench.multiscale_roi_align: feature map {tuple(feature.shape)} has different "
                           f"scales along height and width ({possible}) for image size {original_size}")
    return possible[0]


def setup_scales(features, image_shapes):
    """(scales, k_min, k_max) as torchvision's MultiScaleRoIAlign._setup_scales infers them."""
    if not image_shapes:
        raise RuntimeError("detbench.multiscale_roi_align: image_shapes must not be empty")
    original = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
    scales = [_infer_scale(f, original) for f in features]
    lvl_min = -torch.log2(torch.tensor(scales[0], dtype=torch.float32)).item()
    lvl_max = -torch.log2(torch.tensor(scales[-1], dtype=torch.float32)).item()
    return scales, int(lvl_min), int(lvl_max)


def multiscale_roi_align(x, boxes, image_shapes, featmap_names=None, output_size=7, sampling_ratio=2,
                         canonical_scale: int = 224, canonical_level: int = 4) -> torch.Tensor:
    """torchvision.ops.MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio, canonical_scale,
    canonical_level)(x, boxes, image_shapes). ``x``: a dict of feature maps (``featmap_names``
    selects, in that order) or a list of them; ``boxes``: a list of [Ki, 4] per image (or a [K, 5]
    tensor). See the module docstring."""
    if isinstance(x, dict):
        names = list(x) if featmap_names is None else list(featmap_names)
        features = [x[k] for k in names]
    else:
        features = list(x)
    if not features:
        raise RuntimeError("detbench.multiscale_roi_align: no feature maps selected")
    rois = _to_rois(boxes)
    require_kernels("multiscale_roi_align", *features, rois)
    ph, pw = _pair(output_size)
    scales, k_min, k_max = setup_scales(features, image_shapes)
    if len(features) == 1:  # torchvision: plain roi_align on the one level
        return roi_align(features[0], rois, (ph, pw), scales[0], sampling_ratio)
    return torch.ops.detbench.multiscale_roi_align(features, rois, scales, ph, pw, int(sampling_ratio), False,
                                                   k_min, k_max, float(canonical_scale), int(canonical_level))


def _ms_setup_context(ctx, inputs, output):
    features, rois, *args = inputs
    ctx.save_for_backward(rois, *features)
    ctx.args = args


def _ms_backward(ctx, grad):
    rois, *features = ctx.saved_tensors
    grads = torch.ops.detbench.multiscale_roi_align_backward(grad, features, rois, *ctx.args)
    return (list(grads), None) + (None,) * len(ctx.args)


torch.library.register_autograd("detbench::multiscale_roi_align", _ms_backward, setup_context=_ms_setup_context)
