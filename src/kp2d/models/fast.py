"""Inference copies of a KeyPointNet: BatchNorm folded, channels-last, bf16, behind one callable.

:class:`Backend` is what :mod:`kp2d.deploy.backends` returns and what :func:`kp2d.extract` runs instead of
the network when given one. The torch backends live here, below the feature extraction's callers, so that
a model whose weights file asks for bf16 (``"inference": {"precision": "auto"}``) can build its own
(:meth:`kp2d.models.KeyPointNet.default_backend`); the ONNX Runtime ones stay in :mod:`kp2d.deploy`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from kp2d.errors import DataError
from kp2d.features.dense import IMAGE_MEAN, IMAGE_SCALE, CellOutput, KeyPointNetOutput, normalize_image
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

    A ``Sequential(Conv2d, ..., Conv2d, BatchNorm2d)`` (a factorised layer) keeps its convs, the last one
    with the BatchNorm folded in.

    The copy computes the same function as ``model.eval()`` (to float rounding); ``model`` is unchanged.
    The copy's state-dict keys differ (``conv1a.weight``/``conv1a.bias`` instead of ``conv1a.0.*``/
    ``conv1a.1.*``): it is for inference, not for saving.
    """
    folded = copy.deepcopy(model).eval().requires_grad_(False)
    for name, child in list(folded.named_children()):
        if (
            isinstance(child, nn.Sequential)
            and len(child) >= 2
            and all(isinstance(layer, nn.Conv2d) for layer in child[:-1])
            and isinstance(child[-1], nn.BatchNorm2d)
        ):
            last = fold_conv_bn(child[-2], child[-1]).requires_grad_(False)
            setattr(folded, name, last if len(child) == 2 else nn.Sequential(*child[:-2], last))
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
    """A conv run in float32 even under autocast (score and location heads of the bf16 backend).

    On a CPU a 3x3 conv with a few outputs runs as :func:`conv3x3_by_matmul`: oneDNN's float32 kernel
    for so few output channels is several times slower than one matrix product.
    """

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            if x.device.type == "cpu" and _narrow_3x3(self.conv):
                return conv3x3_by_matmul(x, self.conv.weight.float(), self.conv.bias)
            return self.conv(x)


#: Output channels up to which :class:`Float32Conv` multiplies matrices instead of calling the conv.
_NARROW_OUTPUTS = 8


def _narrow_3x3(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 3x3, stride-1, zero-padded-by-1 conv with a few output channels."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.out_channels <= _NARROW_OUTPUTS
    )


def conv3x3_by_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3x3 kernel as one matrix product and nine shifted sums.

    ``x (N, C, H, W)`` (any memory format), ``weight (O, C, 3, 3)``, ``bias (O,)``; returns ``(N, O, H, W)``.
    Each output pixel adds the nine taps' products of the input pixels around it, so the product of every
    pixel with every tap is computed once, ``(N, 9·O, H·W)``, then summed shifted.
    """
    batch, _, height, width = x.shape
    outputs = weight.shape[0]
    taps = weight.permute(2, 3, 0, 1).reshape(9 * outputs, weight.shape[1])  # rows (ky, kx, o)
    products = torch.matmul(taps, x.flatten(2))  # a view of a channels-last x: no copy
    padded = F.pad(products.view(batch, 9 * outputs, height, width), (1, 1, 1, 1))
    padded = padded.view(batch, 3, 3, outputs, height + 2, width + 2)
    out = padded[:, 0, 0, :, :height, :width].clone()
    if bias is not None:
        out += bias.to(out.dtype).view(1, outputs, 1, 1)
    for ky in range(3):
        for kx in range(3):
            if ky or kx:
                out += padded[:, ky, kx, :, ky:ky + height, kx:kx + width]
    return out


class ConvLeakyReLU(nn.Sequential):
    """``LeakyReLU(conv(x))`` with the activation done inside oneDNN's convolution on a CPU.

    A ``Sequential(conv, LeakyReLU)``, so code that reads a layer's parts (``conv3x3_at``) and any
    other device run the two steps; on a CPU one call writes the activated output, saving a pass over a
    full-size map. ``dtype``: the weights' type for that call (bf16 for the bf16 backend).
    """

    def __init__(self, conv: nn.Conv2d, negative_slope: float, dtype: torch.dtype) -> None:
        super().__init__(conv, nn.LeakyReLU(negative_slope, inplace=True))
        self.negative_slope = negative_slope
        self.register_buffer("fused_weight", conv.weight.detach().to(dtype), persistent=False)
        bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("fused_bias", bias.detach().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        conv = self[0]
        return _CONV_POINTWISE(
            x.to(self.fused_weight.dtype), self.fused_weight, self.fused_bias, list(conv.padding),
            list(conv.stride), list(conv.dilation), conv.groups, "leaky_relu", [self.negative_slope], "",
        )


class ImageConvLeakyReLU(ConvLeakyReLU):
    """The first layer of a fast copy on images in [0, 1]: :func:`normalize_image`, the conv and LeakyReLU.

    On a CPU the normalisation's scale moves into the weights, and the image less its mean is written once,
    in ``dtype`` and channels-last, straight into the conv's input (the normalised image's zero border is
    the conv's own padding). The network then skips its own normalisation. Elsewhere it normalises, then
    runs the two steps.
    """

    def __init__(self, conv: nn.Conv2d, negative_slope: float, dtype: torch.dtype) -> None:
        super().__init__(conv, negative_slope, dtype)
        self.fused_weight = (conv.weight.detach().double() * IMAGE_SCALE).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super(ConvLeakyReLU, self).forward(normalize_image(x))
        centred = torch.empty(
            x.shape, dtype=self.fused_weight.dtype, device=x.device, memory_format=torch.channels_last
        )
        return super().forward(torch.sub(x, IMAGE_MEAN, out=centred))


# oneDNN's convolution with a fused activation (PyTorch's compiler uses it); absent from some builds
_CONV_POINTWISE = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)

#: The layers each followed by the network's LeakyReLU and nothing else (``convFb`` is not).
_ACTIVATED_LAYERS = (
    "conv1a", "conv1b", "conv2a", "conv2b", "conv3a", "conv3b", "conv4a", "conv4b",
    "convDa", "convPa", "convFa", "convFaa",
)


@functools.cache
def _fused_activation_works(dtype: torch.dtype) -> bool:
    """Whether this build's fused CPU convolution runs in ``dtype`` and gives conv-then-LeakyReLU."""
    if _CONV_POINTWISE is None:
        return False
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 6, 6, generator=generator).to(dtype)
    weight = torch.randn(3, 4, 3, 3, generator=generator).to(dtype)
    bias = torch.randn(3, generator=generator)
    try:
        with torch.inference_mode():
            got = _CONV_POINTWISE(x, weight, bias, [1, 1], [1, 1], [1, 1], 1, "leaky_relu", [0.01], "")
            want = F.leaky_relu(F.conv2d(x.float(), weight.float(), bias, padding=1), 0.01)
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return got.shape == want.shape and bool(torch.allclose(got.float(), want, atol=0.1, rtol=0.02))


def _fused_activations(net: _Net, dtype: torch.dtype) -> _Net:
    """``net`` (an inference copy on the CPU) with each LeakyReLU done inside the conv before it.

    Where the build lacks the fused convolution, or ``net`` is not a KeyPointNet, the activations only
    overwrite their inputs (:func:`_inplace_activation`).
    """
    relu = getattr(net, "relu", None)
    layers = [getattr(net, name, None) for name in _ACTIVATED_LAYERS]
    if (
        not isinstance(relu, nn.LeakyReLU)
        or any(layer is None for layer in layers)
        or next(net.parameters()).device.type != "cpu"
        or not _fused_activation_works(dtype)
    ):
        return _inplace_activation(net)
    for name, layer in zip(_ACTIVATED_LAYERS, layers, strict=True):
        setattr(net, name, _with_activation(layer, relu.negative_slope, dtype))
    net.relu = nn.Identity()  # every use of it now follows a layer that activates its own output
    if getattr(net, "normalizes_input", False) and isinstance(net.conv1a, ConvLeakyReLU):
        net.conv1a = ImageConvLeakyReLU(layers[0], relu.negative_slope, dtype)
        net.normalizes_input = False
    return net


def _with_activation(layer: nn.Module, negative_slope: float, dtype: torch.dtype) -> nn.Module:
    """``layer`` (a conv, or a Sequential ending in one) followed by LeakyReLU, fused where it ends."""
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":  # oneDNN pads with zeros: such a conv keeps its two steps
            return nn.Sequential(layer, nn.LeakyReLU(negative_slope, inplace=True))
        return ConvLeakyReLU(layer, negative_slope, dtype)
    if isinstance(layer, nn.Sequential) and len(layer) and isinstance(layer[-1], nn.Conv2d):
        return nn.Sequential(*layer[:-1], ConvLeakyReLU(layer[-1], negative_slope, dtype))
    raise TypeError(f"cannot fuse an activation after {type(layer).__name__}")


class PairMaxPool(nn.Module):
    """``MaxPool2d(2, 2)`` as the largest of four strided views: twice as fast on a CPU, the same values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]  # floor mode, as MaxPool2d(2, 2)
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


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

    def descriptors_at(features: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with context():
            return net.descriptors_at(features, *args, **kwargs).float()

    details = {"channels_last": channels_last, "autocast": str(autocast) if autocast else None}
    two_stage = hasattr(net, "forward_cells") and hasattr(net, "descriptors_at")
    return Backend(
        name, run, details, net.in_channels,
        cells if two_stage else None, descriptors_at if two_stage else None,
    )


def bf16_network(model: _Net) -> _Net:
    """A folded fp32 copy of a KeyPointNet for bf16 autocast, its score and location heads kept in fp32.

    Under autocast the heads would round the scores (which decide the top-k) and the sub-cell offsets to
    bf16's 8 bits; keeping them fp32 costs two small convolutions. On a CPU the copy's activations are
    fused into its convolutions, in bf16 (:func:`_fast_layers`).
    """
    net = fold_batchnorm(model).float()  # autocast wants fp32 weights (a .half() model's are not)
    return _fast_layers(net, torch.bfloat16)


def _fast_layers(net: _Net, dtype: torch.dtype) -> _Net:
    """An inference copy ``net`` with the layers that are faster on a CPU and compute the same function.

    The score and location output convs in :class:`Float32Conv`, a :class:`PairMaxPool`, and each
    LeakyReLU fused into the conv before it, the conv run in ``dtype`` (:func:`_fused_activations`).
    """
    if next(net.parameters()).dtype == torch.float32:  # a half-precision network keeps its own heads
        for name in ("convDb", "convPb"):
            if isinstance(getattr(net, name, None), nn.Conv2d):
                setattr(net, name, Float32Conv(getattr(net, name)))
    if _is_pair_max_pool(getattr(net, "pool", None)):
        net.pool = PairMaxPool()
    return _fused_activations(net, dtype)


def _is_pair_max_pool(pool: nn.Module | None) -> bool:
    """Whether ``pool`` is ``MaxPool2d(2, 2)`` (what :class:`PairMaxPool` computes)."""
    return (
        isinstance(pool, nn.MaxPool2d)
        and pool.kernel_size in (2, (2, 2))
        and pool.stride in (2, (2, 2))
        and pool.padding in (0, (0, 0))
        and pool.dilation in (1, (1, 1))
        and not pool.ceil_mode
    )


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

    ``torch-fp32`` the network as it is, ``torch-fold`` BatchNorm folded, ``torch-fused`` folded,
    channels-last and with the CPU's faster layers (:func:`_fast_layers`), ``torch-bf16`` the same under
    bf16 autocast, its score and location heads in fp32 (:func:`bf16_network`).
    """
    if name == "torch-fp32":
        return torch_backend(name, copy.deepcopy(model).eval().requires_grad_(False), False, None)
    if name == "torch-fold":
        return torch_backend(name, _inplace_activation(fold_batchnorm(model)), False, None)
    if name == "torch-fused":
        folded = fold_batchnorm(model)
        return torch_backend(name, _fast_layers(folded, next(folded.parameters()).dtype), True, None)
    if name == "torch-bf16":
        return torch_backend(name, bf16_network(model), True, torch.bfloat16)
    raise ValueError(f"not a torch backend: {name!r} (choose from {', '.join(TORCH_BACKENDS)})")
