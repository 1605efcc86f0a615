"""Inference copies of a KeyPointNet: BatchNorm folded, channels-last, bf16, behind one callable.

:class:`Backend` is what :mod:`kp2d.deploy.backends` returns and what :func:`kp2d.extract` runs instead of
the network when given one. The torch backends live here, below the feature extraction's callers, so that
a model whose weights file asks for bf16 (``"inference": {"precision": "auto"}``) can build its own
(:meth:`kp2d.models.KeyPointNet.default_backend`); the ONNX Runtime ones stay in :mod:`kp2d.deploy`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from kp2d.errors import DataError
from kp2d.features.dense import CellOutput, KeyPointNetOutput
from kp2d.io.images import to_network_channels

__all__ = [
    "TORCH_BACKENDS",
    "Backend",
    "bf16_network",
    "build_torch_backend",
    "fold_batchnorm",
    "fold_conv_bn",
    "torch_backend",
]

#: The torch backends by name (:func:`kp2d.deploy.backends.load_backend` adds the ONNX Runtime ones).
TORCH_BACKENDS = ("torch-fp32", "torch-fold", "torch-fused", "torch-bf16")

_Net = TypeVar("_Net", bound=nn.Module)

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


def fold_batchnorm(model: _Net) -> _Net:
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


@dataclass
class Backend:
    """A named inference function: ``backend(images (B, 3, H, W) in [0, 1]) -> KeyPointNetOutput``.

    Attributes:
        name: one of :data:`BACKENDS`.
        run: the function itself.
        details: what was built (e.g. the ONNX file, the layers kept in float), for reports.
        in_channels: the network's input channels (1: it gets the luma of RGB images).
        cells: the same network's ``forward_cells`` on images as ``run`` takes them, or ``None`` where
            it only runs whole (ONNX Runtime).
        descriptors_at: its ``descriptors_at`` on what ``cells`` returned, or ``None``.
    """

    name: str
    run: Callable[[torch.Tensor], KeyPointNetOutput]
    details: dict[str, object] = field(default_factory=dict)
    in_channels: int = 3  # the network's: a grayscale network (1) gets the luma of RGB images
    cells: Callable[[torch.Tensor], CellOutput] | None = None
    descriptors_at: Callable[..., torch.Tensor] | None = None

    def __call__(self, images: torch.Tensor) -> KeyPointNetOutput:
        """Score ``(B, 1, Hc, Wc)``, coord ``(B, 2, Hc, Wc)``, desc ``(B, 256, Hc, Wc)``, all float32.

        DataError unless ``images`` is a float tensor ``(B, 1|3, H, W)`` (``extract`` converts other
        inputs; a uint8 tensor here would run on values 0–255).
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise DataError(f"a backend takes float images (B, 3, H, W) in [0, 1], got {shape}")
        if not images.is_floating_point():
            raise DataError(
                f"a backend takes float images in [0, 1], got {images.dtype} (divide by 255, or use extract)"
            )
        return self.run(to_network_channels(images, self.in_channels))


class Float32Conv(nn.Module):
    """A conv run in float32 even under autocast (score and location heads of the bf16 backend)."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.conv(x.float())


def torch_backend(
    name: str, net: nn.Module, channels_last: bool, autocast: torch.dtype | None
) -> Backend:
    """``net.describe`` (``net`` already folded or copied: it is used, not copied) as a :class:`Backend`.

    ``channels_last`` converts ``net`` and each input to NHWC; ``autocast`` (e.g. ``torch.bfloat16``) runs
    it under autocast on its device. Outputs are float32 and contiguous.
    """
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    parameter = next(net.parameters())
    device_type = parameter.device.type
    # under autocast the input stays float32 (autocast casts per op); else it takes the weights' dtype,
    # so that a model in fp16 / bf16 (``model.half()``) runs on its own dtype
    input_dtype = torch.float32 if autocast is not None else parameter.dtype

    def context() -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if autocast is not None:
            stack.enter_context(torch.autocast(device_type=device_type, dtype=autocast))
        return stack

    def prepared(images: torch.Tensor) -> torch.Tensor:
        images = images.to(input_dtype)
        return images.contiguous(memory_format=torch.channels_last) if channels_last else images

    def run(images: torch.Tensor) -> KeyPointNetOutput:
        with context():
            out = net.describe(prepared(images))
        return KeyPointNetOutput(*(t.float().contiguous() for t in out))

    def cells(images: torch.Tensor) -> CellOutput:
        with context():
            score, coord, features = net.forward_cells(prepared(to_network_channels(images, net.in_channels)))
        return CellOutput(score.float(), coord.float(), features)

    def descriptors_at(features: torch.Tensor, *args) -> torch.Tensor:
        with context():
            return net.descriptors_at(features, *args).float()

    details = {"channels_last": channels_last, "autocast": str(autocast) if autocast else None}
    two_stage = hasattr(net, "forward_cells") and hasattr(net, "descriptors_at")
    return Backend(
        name, run, details, net.in_channels,
        cells if two_stage else None, descriptors_at if two_stage else None,
    )


def bf16_network(model: _Net) -> _Net:
    """A folded fp32 copy of a KeyPointNet for bf16 autocast, its score and location heads kept in fp32.

    Under autocast the heads would round the scores (which decide the top-k) and the sub-cell offsets to
    bf16's 8 bits; keeping them fp32 costs two small convolutions.
    """
    net = fold_batchnorm(model).float()  # autocast wants fp32 weights (a .half() model's are not)
    net.convDb = Float32Conv(net.convDb)
    net.convPb = Float32Conv(net.convPb)
    return _inplace_activation(net)


def _inplace_activation(net: _Net) -> _Net:
    """``net`` (an inference copy) with its LeakyReLU overwriting its input.

    Each activation's input is a fresh convolution output, so overwriting it is safe; a new full-size
    tensor costs far more than the activation itself (fresh pages).
    """
    if isinstance(getattr(net, "relu", None), nn.LeakyReLU):
        net.relu = nn.LeakyReLU(net.relu.negative_slope, inplace=True)
    return net


def build_torch_backend(name: str, model: _Net) -> Backend:
    """The backend of :data:`TORCH_BACKENDS` called ``name``, built from a copy of ``model`` (unchanged).

    ``torch-fp32`` the network as it is, ``torch-fold`` BatchNorm folded, ``torch-fused`` folded and
    channels-last, ``torch-bf16`` fused under bf16 autocast (:func:`bf16_network`).
    """
    if name == "torch-fp32":
        return torch_backend(name, copy.deepcopy(model).eval().requires_grad_(False), False, None)
    if name == "torch-fold":
        return torch_backend(name, _inplace_activation(fold_batchnorm(model)), False, None)
    if name == "torch-fused":
        return torch_backend(name, _inplace_activation(fold_batchnorm(model)), True, None)
    if name == "torch-bf16":
        return torch_backend(name, bf16_network(model), True, torch.bfloat16)
    raise ValueError(f"not a torch backend: {name!r} (choose from {', '.join(TORCH_BACKENDS)})")
