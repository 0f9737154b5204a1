"""Reference implementations with the same signatures as `ops`.

- `reference.tv`: backed by torchvision (the speed baseline users compare against).
- `reference.pure`: pure PyTorch, computed in float64 (the arbiter of correctness).
- `reference.gaussian_target`: mmdet's gen_gaussian_target / gaussian_radius (loaded from the
  installed mmdet by file path), vectorized float32/float64 drawers, the Gaussian focal loss.
- `reference.proposals`: anchors, box decoding, matching and RPN proposals: `tv_*` run
  torchvision's AnchorGenerator, BoxCoder, Matcher and RegionProposalNetwork.filter_proposals;
  `pure_*` are the arbiters.
- `reference.retinanet`: torchvision's sigmoid_focal_loss and RetinaNet.postprocess_detections
  (the real method on a minimal object), a float64 focal loss, RetinaNet anchors.
"""
from reference import gaussian_target, proposals, pure, retinanet, tv

__all__ = ["gaussian_target", "proposals", "pure", "retinanet", "tv"]
