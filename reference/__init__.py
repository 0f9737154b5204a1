"""Reference implementations with the same signatures as `ops`.

- `reference.tv`: backed by torchvision (the speed baseline users compare against).
- `reference.pure`: pure PyTorch, computed in float64 (the arbiter of correctness).
- `reference.retinanet`: torchvision's sigmoid_focal_loss and RetinaNet.postprocess_detections
  (the real method on a minimal object), a float64 focal loss, RetinaNet anchors.
"""
from reference import pure, retinanet, tv

__all__ = ["pure", "retinanet", "tv"]
