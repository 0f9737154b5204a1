"""detbench's fast detection ops, registered with the PyTorch dispatcher as torch.ops.detbench.*."""
from ops._library import BUILT_WITH_CUDA, build_info, set_validation, validation_enabled
from ops.box_iou import box_iou
from ops.nms import batched_nms, nms, segmented_nms, segmented_nms_padded
from ops.roi_align import MultiScaleRoIAlign, multiscale_roi_align, roi_align

__all__ = [
    "BUILT_WITH_CUDA",
    "MultiScaleRoIAlign",
    "batched_nms",
    "box_iou",
    "build_info",
    "multiscale_roi_align",
    "nms",
    "roi_align",
    "segmented_nms",
    "segmented_nms_padded",
    "set_validation",
    "validation_enabled",
]
