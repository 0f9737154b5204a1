"""Reference implementations with the same signatures as `ops`.

- `reference.tv`: backed by torchvision (the speed baseline users compare against).
- `reference.pure`: pure PyTorch, computed in float64 (the arbiter of correctness).
- `reference.proposals`: anchors, box decoding, matching and RPN proposals: `tv_*` run
  torchvision's AnchorGenerator, BoxCoder, Matcher and RegionProposalNetwork.filter_proposals;
  `pure_*` are the arbiters.
"""
from reference import proposals, pure, tv

__all__ = ["proposals", "pure", "tv"]
