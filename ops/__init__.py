"""detbench's fast detection ops, registered with the PyTorch dispatcher as torch.ops.detbench.*."""
from ops._library import BUILT_WITH_CUDA, build_info, set_validation, validation_enabled
from ops.box_iou import box_iou

__all__ = ["BUILT_WITH_CUDA", "box_iou", "build_info", "set_validation", "validation_enabled"]
