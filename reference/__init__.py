"""Reference implementations with the same signatures as `ops`.

- `reference.tv`: backed by torchvision (the speed baseline users compare against).
- `reference.pure`: pure PyTorch, computed in float64 (the arbiter of correctness).
- `reference.roi_align`: RoI Align and MultiScaleRoIAlign, torchvision-backed (`tv_*`) and float64.
"""
from reference import pure, roi_align, tv

__all__ = ["pure", "roi_align", "tv"]
