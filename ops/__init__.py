"""detbench's fast detection ops, registered with the PyTorch dispatcher as torch.ops.detbench.*."""
from ops._library import BUILT_WITH_CUDA, build_info, set_validation, validation_enabled
from ops.anchors import cell_anchors, grid_anchors
from ops.box_coder import decode_boxes
from ops.box_iou import box_iou
from ops.gaussian_focal_loss import gaussian_focal_loss
from ops.gaussian_target import (
    centernet_centers_and_radii,
    draw_heatmap,
    draw_heatmap_batched,
    gaussian_radius,
)
from ops.matcher import match_boxes, match_proposals
from ops.nms import batched_nms, nms, segmented_nms, segmented_nms_padded
from ops.proposals import generate_proposals
from ops.roi_align import multiscale_roi_align, roi_align
from ops.retinanet import retinanet_postprocess, retinanet_postprocess_list
from ops.sigmoid_focal_loss import sigmoid_focal_loss

__all__ = [
    "BUILT_WITH_CUDA",
    "batched_nms",
    "box_iou",
    "build_info",
    "cell_anchors",
    "centernet_centers_and_radii",
    "decode_boxes",
    "draw_heatmap",
    "draw_heatmap_batched",
    "gaussian_focal_loss",
    "gaussian_radius",
    "generate_proposals",
    "grid_anchors",
    "match_boxes",
    "match_proposals",
    "multiscale_roi_align",
    "nms",
    "retinanet_postprocess",
    "retinanet_postprocess_list",
    "roi_align",
    "segmented_nms",
    "segmented_nms_padded",
    "set_validation",
    "sigmoid_focal_loss",
    "validation_enabled",
]
