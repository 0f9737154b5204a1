"""torchvision-backed references: torchvision's own code, nothing re-implemented."""
import torch
import torchvision


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """`torchvision.ops.box_iou`; the batched form [B,N,4] x [B,M,4] maps over the batch,
    because torchvision releases before 0.27 accept only [N,4] x [M,4]."""
    if boxes1.dim() == 2:
        return torchvision.ops.box_iou(boxes1, boxes2)
    return torch.stack([torchvision.ops.box_iou(a, b) for a, b in zip(boxes1, boxes2)])
