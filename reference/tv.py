"""torchvision-backed references: torchvision's own code, nothing re-implemented."""
import torch
import torchvision


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """`torchvision.ops.box_iou`; the batched form [B,N,4] x [B,M,4] maps over the batch,
    because torchvision releases before 0.27 accept only [N,4] x [M,4]."""
    if boxes1.dim() == 2:
        return torchvision.ops.box_iou(boxes1, boxes2)
    return torch.stack([torchvision.ops.box_iou(a, b) for a, b in zip(boxes1, boxes2)])


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """`torchvision.ops.nms`."""
    return torchvision.ops.nms(boxes, scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """`torchvision.ops.batched_nms` (its own choice between the coordinate-offset trick and a
    Python loop over classes, by size)."""
    return torchvision.ops.batched_nms(boxes, scores, idxs, iou_threshold)


def segmented_nms_padded(boxes, scores, segment_offsets, iou_threshold, max_output_per_segment, score_threshold=None):
    """What torchvision users write for many NMS problems at once: `batched_nms` with the segment
    id as the class, then the padded per-segment output built with torch ops."""
    from reference.pure import batched_nms_in_segments, pad_segments

    kept = batched_nms_in_segments(boxes, scores, segment_offsets, iou_threshold, score_threshold,
                                   torchvision.ops.batched_nms)
    return pad_segments(kept, segment_offsets, max_output_per_segment)


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """`torchvision.ops.roi_align`."""
    return torchvision.ops.roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


_POOLERS: dict = {}


def multiscale_roi_align(x, boxes, image_shapes, featmap_names, output_size, sampling_ratio, canonical_scale=224,
                         canonical_level=4):
    """`torchvision.ops.MultiScaleRoIAlign(featmap_names, output_size, sampling_ratio, canonical_scale,
    canonical_level)(x, boxes, image_shapes)`; one module per configuration, as a model holds it. The
    module infers its levels' scales on its first call and keeps them, so the feature and image sizes
    are part of the configuration."""
    key = (tuple(featmap_names), output_size if isinstance(output_size, int) else tuple(output_size), sampling_ratio,
           canonical_scale, canonical_level, tuple(tuple(x[name].shape[-2:]) for name in featmap_names),
           tuple(tuple(int(v) for v in shape) for shape in image_shapes))
    if key not in _POOLERS:
        _POOLERS[key] = torchvision.ops.MultiScaleRoIAlign(list(featmap_names), output_size, sampling_ratio,
                                                           canonical_scale=canonical_scale,
                                                           canonical_level=canonical_level)
    return _POOLERS[key](x, boxes, image_shapes)
