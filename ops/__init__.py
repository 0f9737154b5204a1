"""detbench's fast detection ops, registered with the PyTorch dispatcher as torch.ops.detbench.*."""
from ops._library import BUILT_WITH_CUDA, build_info, set_validation, validation_enabled
from ops.box_iou import box_iou
from ops.nms import batched_nms, nms, segmented_nms, segmented_nms_padded
from ops.retinanet import retinanet_postprocess, retinanet_postprocess_list
from ops.sigmoid_focal_loss import sigmoid_focal_loss

__all__ = [
    "BUILT_WITH_CUDA",
    "batched_nms",
    "box_iou",
    "build_info",
    "nms",
    "retinanet_postprocess",
    "retinanet_postprocess_list",
    "segmented_nms",
    "segmented_nms_padded",
    "set_validation",
    "sigmoid_focal_loss",
    "validation_enabled",
]
