"""Sigmoid focal loss (RetinaNet's classification loss), torchvision.ops.sigmoid_focal_loss's
semantics, as one fused forward kernel and one fused backward kernel.

Semantics
---------
For logits x and targets t (any real values, as torchvision: usually 0/1 one-hot labels):
p = sigmoid(x), ce = binary_cross_entropy_with_logits(x, t), p_t = p t + (1 - p)(1 - t),
loss = a_t ce (1 - p_t)^gamma with a_t = alpha t + (1 - alpha)(1 - t), or a_t = 1 when alpha < 0
(torchvision's "-1 for ignore"). reduction 'none' returns the elementwise loss, 'mean' its mean
(NaN for an empty input, as torch), 'sum' its sum.

Computed in float32 (float64 for float64 inputs) in a form that stays finite and accurate for
any |x| (log-sigmoid through softplus; 1 - p_t as p (1 - t) + (1 - p) t with both sigmoids
computed directly), so large logits give the float64 result where torchvision's float16 path
under/overflows. On CUDA, results stored in float16/bfloat16 (the loss of half inputs and targets,
the gradient of half inputs) take the hardware exp and log (log1p by its series near 0; relative
error below 1.2e-5); tests/test_sigmoid_focal_loss_op.py holds every finite half logit to one ulp
of float64's result. Targets outside [0, 1] with a non-integer gamma make 1 - p_t negative and the
loss NaN, as in torchvision.

Dtypes
------
inputs: float16, bfloat16, float32 or float64. targets: inputs' dtype, or float32 for
float16/bfloat16 inputs. The loss has torch.result_type(inputs, targets): inputs' dtype, or float32
for the mixed pair. The mean/sum accumulate in float32 per thread and in float64 across blocks.

Autograd
--------
Gradient with respect to inputs only (registered with torch.library.register_autograd, one fused
kernel): d loss / dx = a_t [(p - t)(1 - p_t)^gamma + gamma ce (1 - p_t)^(gamma - 1) dp_t], in float32.
targets get no gradient: passing targets that require grad raises. No double backward.

Errors
------
RuntimeError naming the argument: inputs/targets dtype (above), shape or device mismatch, alpha
> 1 or NaN, gamma < 0 or not finite (torchvision accepts a negative gamma; its loss is then
inf where p_t = 1), a reduction other than 'none', 'mean', 'sum'. No value checks: any logit or
target value is defined (NaN propagates).

Syncs and memory
----------------
No host sync, CUDA-graph capturable. Extra device memory: the output; for 'mean'/'sum' also a
few KiB of per-block partial sums.
"""
from __future__ import annotations

import torch

from ops._library import require_kernels


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
) -> torch.Tensor:
    """The focal loss of logits ``inputs`` against ``targets`` (same shape), as
    torchvision.ops.sigmoid_focal_loss. See the module docstring for semantics, dtypes and errors."""
    require_kernels("sigmoid_focal_loss", inputs, targets)
    if targets.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            "detbench.sigmoid_focal_loss: targets must not require grad (no gradient is computed for targets)"
        )
    return torch.ops.detbench.sigmoid_focal_loss(inputs, targets, float(alpha), float(gamma), str(reduction))


def _setup_context(ctx, inputs, output):
    x, targets, alpha, gamma, reduction = inputs
    ctx.save_for_backward(x, targets)
    ctx.alpha, ctx.gamma, ctx.reduction = alpha, gamma, reduction


def _backward(ctx, grad):
    x, targets = ctx.saved_tensors
    dx = torch.ops.detbench.sigmoid_focal_loss_backward(grad, x, targets, ctx.alpha, ctx.gamma, ctx.reduction)
    return dx, None, None, None, None


torch.library.register_autograd("detbench::sigmoid_focal_loss", _backward, setup_context=_setup_context)
