import torch

from ops._library import require_kernels


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection over union of two sets of boxes.

    Args:
        boxes1: [N, 4] or [B, N, 4] boxes as (x1, y1, x2, y2).
        boxes2: [M, 4] or [B, M, 4], the same rank, batch size, device and dtype as boxes1.
            float16, bfloat16, float32 or float64; non-contiguous tensors are accepted.

    Returns:
        [N, M] or [B, N, M]: float64 for float64 inputs, float32 for the others (computed in
        float32, as torchvision returns for half inputs).

    The formula is torchvision.ops.box_iou's: area = (x2 - x1) * (y2 - y1) (no +1, negative for
    inverted boxes, not clamped), inter = max(min(x2) - max(x1), 0) * max(min(y2) - max(y1), 0),
    iou = inter / (area1 + area2 - inter). One difference: where the union is <= 0 (e.g. two
    zero-area boxes, where torchvision gives NaN) the IoU is 0. Nothing else changes, since a
    positive intersection implies a positive union.

    Raises RuntimeError, naming the argument, for a wrong shape, device or dtype. Non-finite
    coordinates (NaN or inf): CPU inputs always raise, naming the box. CUDA inputs are not
    checked by default, which would need a device sync: that box's row or column of the result
    is unspecified, nothing else is affected. In validation mode (ops.set_validation(True) or
    DETBENCH_VALIDATE=1) CUDA inputs are checked too and raise the same error.
    """
    require_kernels("box_iou", boxes1, boxes2)
    return torch.ops.detbench.box_iou(boxes1, boxes2)
