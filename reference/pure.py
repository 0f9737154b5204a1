"""Pure-PyTorch references computed in float64: slow, simple, and the arbiter of correctness."""
import torch


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes, [..., N, 4] x [..., M, 4] -> [..., N, M], in float64.

    torchvision's formula (no +1 in areas). Where the union is 0 (two zero-area boxes)
    the IoU is defined as 0, as detbench defines it; torchvision returns NaN there.
    Returns float64; callers cast to the dtype they compare in.
    """
    a = boxes1.to(torch.float64)
    b = boxes2.to(torch.float64)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union == 0, torch.zeros_like(inter), inter / union)
