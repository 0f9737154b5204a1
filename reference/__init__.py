"""Reference implementations with the same signatures as `ops`.

- `reference.tv`: backed by torchvision (the speed baseline users compare against).
- `reference.pure`: pure PyTorch, computed in float64 (the arbiter of correctness).
"""
from reference import pure, tv

__all__ = ["pure", "tv"]
