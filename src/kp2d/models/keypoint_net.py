"""KeyPointNet: keypoint score, sub-cell location and descriptor maps from one image (SPEC §1).

The network and its construction (from a config, a checkpoint or a shipped name); files are read by
:mod:`kp2d.io`, keypoints selected by :mod:`kp2d.features`, losses in :mod:`kp2d.losses`. Both sit below
this module, so ``from_pretrained`` and ``extract`` need no upward import. State-dict keys are those of
the original checkpoints (``conv1a.0.weight``, ``conv1a.1.running_mean``, ``convDb.weight``, ...), so they
load unchanged.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import torch
from torch import nn

from kp2d.config import NETWORK_PARTS, POOLINGS, SECOND_BLOCKS, STEMS, ModelConfig, load_config
from kp2d.features.dense import (
    CELL,
    DEFAULT_SCORE_THRESHOLD,
    DESCRIPTOR_DIM,
    CellOutput,
    KeyPointNetOutput,
    conv3x3_at,
    gather_patches,
    interior_mask,
    map_points,
    normalize_image,
    padded_cells,
    sample_descriptors,
    window_inside,
)
from kp2d.features.extraction import extract
from kp2d.geometry import cell_centers
from kp2d.io.checkpoint import Checkpoint, load_checkpoint, load_state_dict_strict
from kp2d.io.inference import InferenceSettings, model_precision
from kp2d.io.weights import DEFAULT_MODEL, resolve_model_path
from kp2d.models.fast import Backend, build_torch_backend
from kp2d.runtime import autocast_dtype, resolve_device

__all__ = [
    "KeyPointNet",
    "build_keypoint_net",
    "keypoint_net_from",
    "load_keypoint_net",
    "normalize_image",
    "untrained_keypoint_net",
]

#: The layers of each of :data:`~kp2d.config.NETWORK_PARTS`, in its order.
_PART_LAYERS = dict(zip(NETWORK_PARTS, (
    ("conv1a", "conv1b", "conv2a", "conv2b", "conv3a", "conv3b", "conv4a", "conv4b"),
    ("convDa", "convDb"),
    ("convPa", "convPb"),
    ("convFa", "convFb", "convFaa", "convFbb"),
), strict=True))

def _conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv without bias followed by BatchNorm (keys ``.0.weight`` / ``.1.*`` as the original)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, momentum=0.1),
    )


def _factorised_conv(channels: int, rank: int) -> nn.Sequential:
    """``channels -> channels`` 3x3 conv through ``rank`` channels: 1x1 in, 3x3, 1x1 out with a bias."""
    return nn.Sequential(
        nn.Conv2d(channels, rank, kernel_size=1, bias=False),
        nn.Conv2d(rank, rank, kernel_size=3, padding=1, bias=False),
        nn.Conv2d(rank, channels, kernel_size=1),
    )


def _factorised_conv_bn(in_channels: int, out_channels: int, rank: float) -> nn.Sequential:
    """A 3x3 conv through ``rank`` of its channels (1x1 in, 3x3, 1x1 out, no biases), then BatchNorm."""
    rank_in, rank_out = (max(8, 8 * round(c * rank / 8)) for c in (in_channels, out_channels))
    return nn.Sequential(
        nn.Conv2d(in_channels, rank_in, kernel_size=1, bias=False),
        nn.Conv2d(rank_in, rank_out, kernel_size=3, padding=1, bias=False),
        nn.Conv2d(rank_out, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels, momentum=0.1),
    )


class MaxBlurPool(nn.Module):
    """A 2x2 pooling that moves less with the grid: max over 2x2 windows at stride 1, then a blur at stride 2.

    The max of ``MaxPool2d(2, 2)`` jumps as the image moves against its grid; blurring the stride-1 max by
    ``[1 2 1]^2 / 16`` before keeping every other pixel low-passes it first (Zhang, "Making convolutional
    networks shift-invariant again", ICML 2019). ``(B, C, H, W) -> (B, C, H/2, W/2)`` for even ``H``, ``W``,
    each output centred where ``MaxPool2d(2, 2)``'s is. It has no weights.
    """

    def __init__(self) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (torch.outer(taps, taps) / 16).view(1, 1, 3, 3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        x = nn.functional.max_pool2d(nn.functional.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
        x = nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
        kernel = self.kernel.to(x.dtype).expand(channels, 1, 3, 3)
        return nn.functional.conv2d(x, kernel, stride=2, groups=channels)


class KeyPointNet(nn.Module):
    """Keypoint detector and descriptor (Tang et al., ICLR 2020).

    Args:
        in_channels: 3 for RGB input, 1 for grayscale.
        do_upsample: descriptor head upsamples to 1/4 resolution and fuses the ``conv3b`` skip.
        do_cross: keypoints may move up to one cell across the cell border (``r = 2``), else ``r = 1``.
        with_dropout: ``Dropout2d(0.2)`` after each block (active in training mode only).
        width: multiplies every layer's channels (32, 64, 128, 256, 256, 512) except the 256-D descriptor
            output; 1 is the paper's network (the original checkpoints).
        stem: ``"full"`` (the paper's first block: two 3x3 convs at the input resolution, then a 2x2
            max-pool) or ``"strided"`` (``conv1a`` a 4x4 stride-2 conv, ``conv1b`` at half resolution, no
            pool): the same 1/2-resolution output for about a quarter of the work.
        head_rank: 0 (the paper's), or each head's first layer (``convDa``, ``convPa``, ``convFa``) factorised
            through this many channels (1x1, 3x3, 1x1 with a bias; no BatchNorm).
        block2: ``"pooled"`` (the paper's second block: two 3x3 convs, then a 2x2 max-pool) or
            ``"strided"`` (``conv2a`` a 4x4 stride-2 conv, ``conv2b`` at the lower resolution, no pool).
        backbone_rank: 0 (the paper's), or each of ``conv3a`` … ``conv4b`` factorised through this fraction
            of its input and output channels (1x1, 3x3, 1x1, then its BatchNorm).
        pooling: ``"max"`` (the paper's 2x2 max-pools) or ``"maxblur"`` (:class:`MaxBlurPool`, no weights).

    Input: ``(B, in_channels, H, W)`` images in [0, 1], ``H`` and ``W`` multiples of 8.
    Output: :class:`KeyPointNetOutput` (dense maps, the same in training and eval mode).
    """

    #: Whether :meth:`forward_cells` maps its input with :func:`normalize_image`; an inference copy whose
    #: first layer normalises the image on the way (:class:`kp2d.models.fast.ImageConvLeakyReLU`) sets False.
    normalizes_input: bool = True

    def __init__(
        self,
        in_channels: int = 3,
        do_upsample: bool = True,
        do_cross: bool = True,
        with_dropout: bool = True,
        width: float = 1.0,
        stem: str = "full",
        head_rank: int = 0,
        block2: str = "pooled",
        backbone_rank: float = 0.0,
        pooling: str = "max",
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
        if block2 not in SECOND_BLOCKS:
            raise ValueError(f"block2 must be one of {', '.join(SECOND_BLOCKS)}, got {block2!r}")
        if not 0.0 <= backbone_rank <= 1.0:
            raise ValueError(f"backbone_rank must be in [0, 1], got {backbone_rank}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.in_channels = in_channels
        self.do_upsample = do_upsample
        self.do_cross = do_cross
        self.with_dropout = with_dropout
        self.width = width
        self.stem = stem
        self.head_rank = head_rank
        self.block2 = block2
        self.backbone_rank = backbone_rank
        self.pooling = pooling
        self.cross_ratio = 2.0 if do_cross else 1.0
        # a plain attribute, not a buffer: the state dict keeps the original's keys
        self.inference_settings = InferenceSettings()

        # multiples of 8, so that the pixel-shuffled map (d1 / 4) plus the skip (c3) is convFaa's input
        c1, c2, c3, c4, c5 = (max(8, 8 * round(c * width / 8)) for c in (32, 64, 128, 256, 256))
        d1 = 2 * c4
        if stem == "strided":
            self.conv1a = _conv_bn(in_channels, c1, kernel_size=4, stride=2)
        else:
            self.conv1a = _conv_bn(in_channels, c1)
        self.conv1b = _conv_bn(c1, c1)
        if block2 == "strided":
            self.conv2a = _conv_bn(c1, c2, kernel_size=4, stride=2)
        else:
            self.conv2a = _conv_bn(c1, c2)
        self.conv2b = _conv_bn(c2, c2)
        deep = (lambda i, o: _factorised_conv_bn(i, o, backbone_rank)) if backbone_rank else _conv_bn
        self.conv3a, self.conv3b = deep(c2, c3), deep(c3, c3)
        self.conv4a, self.conv4b = deep(c3, c4), deep(c4, c4)
        head = (lambda: _factorised_conv(c4, head_rank)) if head_rank else (lambda: _conv_bn(c4, c4))
        # score head
        self.convDa = head()
        self.convDb = nn.Conv2d(c5, 1, kernel_size=3, padding=1)
        # location head
        self.convPa = head()
        self.convPb = nn.Conv2d(c5, 2, kernel_size=3, padding=1)
        # descriptor head
        self.convFa = head()
        self.convFb = _conv_bn(c4, d1)
        self.convFaa = _conv_bn(d1 // 4 + c3 if do_upsample else c4, c5)
        self.convFbb = nn.Conv2d(c5, DESCRIPTOR_DIM, kernel_size=3, padding=1)

        self.relu = nn.LeakyReLU(0.01)
        self.dropout = nn.Dropout2d(0.2) if with_dropout else nn.Identity()
        self.pool = MaxBlurPool() if pooling == "maxblur" else nn.MaxPool2d(2, 2)
        self.upsample = nn.PixelShuffle(upscale_factor=2)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | None = None, device: str | torch.device = "cpu"
    ) -> KeyPointNet:
        """Load shipped weights by name (``"v0"`` … ``"v4"``; ``None``: the default model) or a checkpoint.

        Returns the network in eval mode, on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or
        ``"auto"``), with the file's :attr:`inference_settings`.
        """
        return load_keypoint_net(DEFAULT_MODEL if name_or_path is None else name_or_path, device)

    def extract(
        self,
        image,
        top_k: int | None = 1000,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_radius: float = 0,
        backend=None,
        scale_factor: float | None = None,
        fit_memory: bool = False,
        extra_scales=None,
        extra_rotations=None,
        precision=None,
        extra_weight=None,
        extra_suppression=None,
        interpolation=None,
    ):
        """Keypoints, scores and descriptors of one image or a batch; see :func:`kp2d.extract`.

        ``scale_factor=None`` / ``extra_scales=None`` / ``extra_rotations=None`` / ``precision=None`` /
        ``extra_weight=None`` / ``extra_suppression=None`` / ``interpolation=None`` use
        :attr:`inference_settings` (1, none, fp32, 1, 0 and bilinear unless the weights file records them).
        """
        return extract(
            self,
            image,
            top_k=top_k,
            score_threshold=score_threshold,
            nms_radius=nms_radius,
            backend=backend,
            scale_factor=scale_factor,
            fit_memory=fit_memory,
            extra_scales=extra_scales,
            extra_rotations=extra_rotations,
            precision=precision,
            extra_weight=extra_weight,
            extra_suppression=extra_suppression,
            interpolation=interpolation,
        )

    def default_backend(self, precision: str | None = None) -> Backend | None:
        """What :func:`kp2d.extract` runs when given no backend: ``None`` (this network) or a faster copy.

        ``precision`` (``None``: :attr:`inference_settings`' ``precision``) ``"bf16"``, or ``"auto"`` on
        a CPU with AVX512-BF16 / AMX or a GPU with bf16, gives a ``torch-bf16`` backend (BatchNorm folded,
        channels-last, score and location heads in fp32). ``"auto"`` on any other CPU gives ``torch-fused``
        (the fp32 network with BatchNorm folded, channels-last: the same function to float rounding, and
        faster). Either is built on first use and rebuilt when the weights, buffers, device or
        ``inference_settings.descriptor_sampling`` change.
        ``"fp32"``, and a network in another dtype than float32, run this network as it is.
        """
        precision = model_precision(self, precision)
        parameter = next(self.parameters())
        if precision == "fp32" or parameter.dtype != torch.float32:
            return None
        dtype = autocast_dtype(precision, parameter.device)
        if dtype is None and parameter.device.type != "cpu":
            return None
        key = (_weights_key(self), dtype, self.inference_settings.descriptor_sampling)
        cached = _FAST_COPIES.get(self)
        if cached is not None and cached[0] == key:
            return cached[1]
        # "auto" on a CPU without native bf16 gets the folded fp32 copy (dtype is bf16 or None here)
        backend = build_torch_backend("torch-fused" if dtype is None else "torch-bf16", self)
        _FAST_COPIES[self] = (key, backend)
        return backend

    @property
    def descriptor_stride(self) -> int:
        """Pixels per descriptor-map cell: 4 with upsampling, else 8."""
        return CELL // 2 if self.do_upsample else CELL

    def _block(self, x: torch.Tensor, first: nn.Module, second: nn.Module) -> torch.Tensor:
        return self.dropout(self.relu(second(self.relu(first(x)))))

    def part_modules(self, part: str) -> list[nn.Module]:
        """The layers of one of :data:`~kp2d.config.NETWORK_PARTS` (what ``train.freeze`` names)."""
        if part not in _PART_LAYERS:
            raise ValueError(f"unknown part {part!r}: use one of {', '.join(NETWORK_PARTS)}")
        return [getattr(self, name) for name in _PART_LAYERS[part]]

    def forward(self, image: torch.Tensor) -> KeyPointNetOutput:
        """Dense score, keypoint and descriptor maps; see :class:`KeyPointNetOutput`."""
        score, coord, features = self.forward_cells(image)
        return KeyPointNetOutput(score, coord, self.descriptor_map(features))

    def forward_cells(self, image: torch.Tensor) -> CellOutput:
        """Score and keypoint maps and the descriptor head's input (:class:`CellOutput`)."""
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(image.shape)}"
            )
        _, _, height, width = image.shape
        if height % CELL or width % CELL:
            raise ValueError(f"image height and width must be multiples of {CELL}, got {height}x{width}")

        x = normalize_image(image) if self.normalizes_input else image
        x = self._block(x, self.conv1a, self.conv1b)
        if self.stem == "full":
            x = self.pool(x)
        x = self._block(x, self.conv2a, self.conv2b)
        if self.block2 == "pooled":
            x = self.pool(x)
        skip = self._block(x, self.conv3a, self.conv3b)
        x = self._block(self.pool(skip), self.conv4a, self.conv4b)

        # Score and keypoint heads finish in fp32 even under bf16/fp16 autocast, because a bf16 pixel
        # coordinate is far coarser than the losses' thresholds (8-bit mantissa).
        score = self.convDb(self.dropout(self.relu(self.convDa(x)))).float().sigmoid()
        score = score * interior_mask(*score.shape[-2:], device=score.device, dtype=score.dtype)

        offset = self.convPb(self.dropout(self.relu(self.convPa(x)))).float().tanh()
        batch, _, rows, cols = offset.shape
        half_cell = (CELL - 1) / 2.0
        centers = cell_centers(batch, rows, cols, CELL, device=offset.device, dtype=offset.dtype)
        coord = centers + offset * (self.cross_ratio * half_cell)
        coord = torch.stack(
            [coord[:, 0].clamp(0, width - 1), coord[:, 1].clamp(0, height - 1)], dim=1
        )

        features = self.dropout(self.relu(self.convFa(x)))
        if self.do_upsample:
            features = torch.cat([self.upsample(self.convFb(features)), skip], dim=1)
        return CellOutput(score, coord, features)

    def descriptor_map(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, 256, Hd, Wd)`` dense descriptors (not normalised) from :attr:`CellOutput.features`."""
        return self.convFbb(self.relu(self.convFaa(features)))

    def descriptors_at(
        self,
        features: torch.Tensor,
        batch_index: torch.Tensor,
        points: torch.Tensor,
        height: int,
        width: int,
        sampling: str | None = None,
        dense: bool | None = None,
    ) -> torch.Tensor:
        """``(N, 256)`` float32 unit descriptors at ``points (N, 2)`` (pixels, x y) of images ``batch_index``.

        Equal, to float rounding, to :func:`sample_descriptors` on :meth:`descriptor_map` at those points of
        the ``height x width`` input, but the head's two layers run only at the map cells the points read
        (four each) and at the cells around those, each cell once however many points share it: a few
        hundred keypoints cost a small share of the dense map. ``sampling``: how the map is read
        (:data:`~kp2d.config.DESCRIPTOR_SAMPLINGS`); ``None``: the network's
        ``inference_settings.descriptor_sampling``. ``dense``: ``True`` computes the whole map and reads it,
        ``False`` the cells only; ``None`` picks the one with less work (``benchmarks/descriptor_head.py``).
        """
        batch, _, rows, cols = features.shape
        if points.shape[0] == 0:
            return torch.zeros(0, self.convFbb.out_channels, device=features.device)
        sampling = sampling or self.inference_settings.descriptor_sampling
        at = map_points(points, height, width, rows, cols, sampling)
        # a cell past the map reads 0 (grid_sample's padding), so it gets no weight and reads the last one
        weights = at.weights * window_inside(at.top, at.left, 2, rows, cols)[:, None].to(at.weights.dtype)
        offsets = torch.arange(2, device=points.device)
        read_rows = (at.top[:, None, None] + offsets[:, None]).clamp(max=rows - 1)  # (N, 2, 1)
        read_cols = (at.left[:, None, None] + offsets).clamp(max=cols - 1)  # (N, 1, 2)
        flat = (batch_index[:, None, None] * rows + read_rows) * cols + read_cols  # (N, 2, 2)
        read, reader = torch.unique(flat.flatten(), return_inverse=True)
        read_batch, read_rows, read_cols = read // (rows * cols), read // cols % rows, read % cols
        # the first layer's outputs the second reads: the 3x3 cells around each cell read, on the map
        needed = torch.zeros(batch, rows + 2, cols + 2, dtype=torch.bool, device=features.device)
        around = torch.arange(3, device=points.device)
        around_rows = read_rows[:, None, None] + around[:, None]  # rows of the padded map, (U, 3, 1)
        needed[read_batch[:, None, None], around_rows, read_cols[:, None, None] + around] = True
        hidden_batch, hidden_rows, hidden_cols = needed[:, 1:-1, 1:-1].nonzero(as_tuple=True)
        hidden_channels, out_channels = self.convFbb.in_channels, self.convFbb.out_channels
        work = len(hidden_rows) * hidden_channels + len(read) * out_channels
        if dense is None:  # a matrix product per cell does about half a dense convolution's work per second
            dense = 2 * work >= batch * rows * cols * (hidden_channels + out_channels)
        if dense:
            corners = gather_patches(self.descriptor_map(features), batch_index, at.top, at.left, 2)
            desc = (corners.float() * weights).sum(dim=(2, 3))
        else:
            hidden = self.relu(conv3x3_at(
                self.convFaa, padded_cells(features), hidden_batch, hidden_rows, hidden_cols
            ))
            # the cells left 0 are read only beyond the map, where the dense layer's padding reads 0 too
            hidden_map = hidden.new_zeros(batch, rows + 2, cols + 2, hidden.shape[1])
            hidden_map[hidden_batch, hidden_rows + 1, hidden_cols + 1] = hidden
            values = conv3x3_at(self.convFbb, hidden_map, read_batch, read_rows, read_cols)  # (U, 256)
            corners = values[reader].view(-1, 2, 2, values.shape[1]).float()  # (N, 2, 2, 256)
            desc = (corners * weights[:, 0, :, :, None]).sum(dim=(1, 2))
        return desc / desc.norm(p=2, dim=1, keepdim=True)

    def describe(self, image: torch.Tensor, sampling: str | None = None) -> KeyPointNetOutput:
        """Like :meth:`forward`, with ``desc`` sampled at ``coord`` and L2-normalised: ``(B, 256, Hc, Wc)``.

        This is the original's eval-mode output, whatever the module's mode, when the map is read the
        original way. ``sampling``: how the map is read (:data:`~kp2d.config.DESCRIPTOR_SAMPLINGS`);
        ``None``: the network's ``inference_settings.descriptor_sampling``.
        """
        out = self(image)
        height, width = image.shape[-2:]
        sampling = sampling or self.inference_settings.descriptor_sampling
        return out._replace(desc=sample_descriptors(out.desc, out.coord, height, width, sampling))


#: Each network's faster copy (bf16, or fused fp32), the :func:`_weights_key` and autocast dtype it was
#: built from; gone with the network.
_FAST_COPIES: weakref.WeakKeyDictionary[KeyPointNet, tuple[tuple, Backend]] = weakref.WeakKeyDictionary()


def _weights_key(net: nn.Module) -> tuple:
    """Identity of the weights and buffers as they are now: storage, in-place version, device, dtype."""
    return tuple(
        (tensor.data_ptr(), tensor._version, tensor.device, tensor.dtype)
        for tensor in (*net.parameters(), *net.buffers())
    )


def build_keypoint_net(model: ModelConfig) -> KeyPointNet:
    """A fresh (randomly initialised) KeyPointNet with the given switches."""
    return KeyPointNet(
        in_channels=3 if model.use_color else 1,
        do_upsample=model.do_upsample,
        do_cross=model.do_cross,
        with_dropout=model.with_dropout,
        width=model.width,
        stem=model.stem,
        head_rank=model.head_rank,
        block2=model.block2,
        backbone_rank=model.backbone_rank,
        pooling=model.pooling,
    )


def untrained_keypoint_net(config: str | os.PathLike = "v4") -> KeyPointNet:
    """The untrained network of ``kp2d eval --random-init``: ``config``'s switches, weights drawn with seed 0.

    Reseeds the global torch generator.
    """
    model = load_config(config).model
    torch.manual_seed(0)
    return build_keypoint_net(model)


def keypoint_net_from(checkpoint: Checkpoint, source: str | Path) -> KeyPointNet:
    """A KeyPointNet with ``checkpoint``'s switches, weights and inference settings.

    ``source`` names the file in errors.
    """
    net = build_keypoint_net(checkpoint.model)
    load_state_dict_strict(net, checkpoint.state_dict, str(source))
    net.inference_settings = checkpoint.inference
    return net


def load_keypoint_net(name_or_path: str | Path, device: str | torch.device = "cpu") -> KeyPointNet:
    """KeyPointNet from a pretrained name or a checkpoint, in eval mode, on ``device`` (channels-last on CPU).

    ``device`` as :func:`kp2d.runtime.resolve_device` takes it (``"auto"`` too); one that this machine
    lacks is a :class:`~kp2d.errors.Kp2dError`.
    """
    target = resolve_device(str(device))
    path = resolve_model_path(name_or_path)
    net = keypoint_net_from(load_checkpoint(path), path).to(target).eval()
    if target.type == "cpu":  # channels-last convolutions are faster on CPUs (same values up to rounding)
        net = net.to(memory_format=torch.channels_last)
    return net
