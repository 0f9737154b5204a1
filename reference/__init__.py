"""Reference implementations with the same signatures as `ops`.

- `reference.tv`: backed by torchvision (the speed baseline users compare against).
- `reference.pure`: pure PyTorch, computed in float64 (the arbiter of correctness).
- `reference.gaussian_target`: mmdet's gen_gaussian_target / gaussian_radius (loaded from the
  installed mmdet by file path), vectorized float32/float64 drawers, the Gaussian focal loss.
"""
from reference import gaussian_target, pure, tv

__all__ = ["gaussian_target", "pure", "tv"]
