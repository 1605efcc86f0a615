"""BatchNorm folded into the preceding convolutions (eval-mode arithmetic, one op fewer per layer)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from kp2d.models import KeyPointNet

__all__ = ["fold_batchnorm", "fold_conv_bn"]


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """One convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode (running statistics).

    ``w' = w · γ/√(σ² + ε)``, ``b' = (b − μ) · γ/√(σ² + ε) + β`` (``b = 0`` for a conv without bias),
    computed in float64 and stored in the conv's dtype.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    dtype = conv.weight.dtype
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    weight = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(var)
    bias = (bias - mean) * scale + beta

    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=dtype)
    with torch.no_grad():
        fused.weight.copy_(weight.to(dtype))
        fused.bias.copy_(bias.to(dtype))
    return fused


def fold_batchnorm(model: KeyPointNet) -> KeyPointNet:
    """A copy of ``model`` in eval mode with every ``Sequential(Conv2d, BatchNorm2d)`` replaced by one conv.

    The copy computes the same function as ``model.eval()`` (to float rounding); ``model`` is unchanged.
    The copy's state-dict keys differ (``conv1a.weight``/``conv1a.bias`` instead of ``conv1a.0.*``/
    ``conv1a.1.*``): it is for inference, not for saving.
    """
    folded = copy.deepcopy(model).eval().requires_grad_(False)
    for name, child in list(folded.named_children()):
        if (
            isinstance(child, nn.Sequential)
            and len(child) == 2
            and isinstance(child[0], nn.Conv2d)
            and isinstance(child[1], nn.BatchNorm2d)
        ):
            setattr(folded, name, fold_conv_bn(child[0], child[1]).requires_grad_(False))
    return folded
