"""detbench's fast detection ops, registered with the PyTorch dispatcher as torch.ops.detbench.*."""
from ops._library import BUILT_WITH_CUDA, build_info, set_validation, validation_enabled
from ops.box_iou import box_iou
from ops.gaussian_focal_loss import gaussian_focal_loss
from ops.gaussian_target import (
    centernet_centers_and_radii,
    draw_heatmap,
    draw_heatmap_batched,
    gaussian_radius,
)
from ops.nms import batched_nms, nms, segmented_nms, segmented_nms_padded

__all__ = [
    "BUILT_WITH_CUDA",
    "batched_nms",
    "box_iou",
    "build_info",
    "centernet_centers_and_radii",
    "draw_heatmap",
    "draw_heatmap_batched",
    "gaussian_focal_loss",
    "gaussian_radius",
    "nms",
    "segmented_nms",
    "segmented_nms_padded",
    "set_validation",
    "validation_enabled",
]
