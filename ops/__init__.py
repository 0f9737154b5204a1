"""detbench's fast detection ops, registered with the PyTorch dispatcher as torch.ops.detbench.*."""
from ops._library import BUILT_WITH_CUDA, build_info, set_validation, validation_enabled
from ops.anchors import cell_anchors, grid_anchors
from ops.box_coder import decode_boxes
from ops.box_iou import box_iou
from ops.matcher import match_boxes, match_proposals
from ops.nms import batched_nms, nms, segmented_nms, segmented_nms_padded
from ops.proposals import generate_proposals

__all__ = [
    "BUILT_WITH_CUDA",
    "batched_nms",
    "box_iou",
    "build_info",
    "cell_anchors",
    "decode_boxes",
    "generate_proposals",
    "grid_anchors",
    "match_boxes",
    "match_proposals",
    "nms",
    "segmented_nms",
    "segmented_nms_padded",
    "set_validation",
    "validation_enabled",
]
