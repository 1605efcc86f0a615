"""Typed, strict configuration: dataclasses filled from YAML presets (``v0`` … ``v4``) or user files.

A user file may start with ``extends: v2`` (a preset name or another file) and then override fields;
a key that is not a field is an error naming it. The resolved config is stored in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from kp2d.errors import ConfigError

__all__ = [
    "AugmentationConfig",
    "Config",
    "DESCRIPTOR_SAMPLINGS",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "check_something_to_learn",
    "config_from_dict",
    "list_presets",
    "list_recipes",
    "load_config",
    "MAX_NETWORK_SIZE",
    "MIN_IMAGE_SIZE",
    "parse_image_shape",
]

MIN_IMAGE_SIZE = 32  # pixels, each side
MAX_NETWORK_SIZE = 16384  # pixels, each side of the network's input (after scale_factor)
#: Parts of KeyPointNet that ``train.freeze`` names (:meth:`kp2d.models.KeyPointNet.part_modules`).
NETWORK_PARTS = ("encoder", "score", "location", "descriptor")
#: KeyPointNet's first blocks (``model.stem``): the paper's at full resolution, or strided.
STEMS = ("full", "strided")
#: KeyPointNet's second block (``model.block2``): a 2x2 max-pool after it (the paper's), or strided.
SECOND_BLOCKS = ("pooled", "strided")
#: KeyPointNet's 2x2 poolings (``model.pooling``): a max-pool (the paper's), or a max at stride 1, then a
#: fixed 3x3 binomial blur at stride 2, whose output moves less when the image moves against the cell grid.
POOLINGS = ("max", "maxblur")


def _check_range(
    key: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``value`` is finite and within the bounds."""
    try:
        ok = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        raise ConfigError(f"{key} is too large") from None
    if low is not None:
        ok = ok and (value > low if low_open else value >= low)
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if ok:
        return
    if low is not None and high is not None:
        rule = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        rule = f"above {low}" if low_open else f"at least {low}"
    else:
        rule = f"below {high}" if high_open else f"at most {high}"
    raise ConfigError(f"{key} must be {rule}, got {value!r}")


@dataclass
class ModelConfig:
    """Network switches (the ablations V0–V4)."""

    use_color: bool = True  # RGB input (False: 1-channel grayscale)
    do_upsample: bool = True  # descriptor map at 1/4 resolution fused with the conv3b skip
    do_cross: bool = True  # keypoints may move across cell borders
    with_dropout: bool = True
    with_io: bool = True  # train IO-Net and its loss
    width: float = 1.0  # channel multiplier of every layer but the 256-D descriptor output (1: the paper's)
    # "full": two 3x3 convs at the input resolution, then a 2x2 max-pool (the paper's); "strided": a 4x4
    # stride-2 conv and a 3x3 conv at half resolution, about a quarter of the first block's work
    stem: str = "full"
    # 0: the heads' first layers are 3x3 convs (the paper's); r > 0: each is factorised through r channels
    # (1x1 in, 3x3 r -> r, 1x1 out), about r^2 / C^2 of their work
    head_rank: int = 0
    # "pooled": block 2's two 3x3 convs, then a 2x2 max-pool (the paper's); "strided": conv2a a 4x4
    # stride-2 conv and conv2b at the lower resolution, no pool, about a quarter of the block's work
    block2: str = "pooled"
    # 0: blocks 3 and 4 are plain 3x3 convs (the paper's); 0 < f <= 1: each of conv3a..conv4b is
    # factorised through f of its input and output channels (1x1 in, 3x3, 1x1 out, then its BatchNorm)
    backbone_rank: float = 0.0
    # "max": the 2x2 poolings are max-pools (the paper's); "maxblur": each takes the max over 2x2 windows at
    # stride 1, then blurs by [1 2 1]^2 / 16 at stride 2 (no weights: any checkpoint loads either way)
    pooling: str = "max"

    def __post_init__(self) -> None:
        _check_range("model.width", self.width, low=0.125, high=2.0)
        if self.stem not in STEMS:
            raise ConfigError(f"model.stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        _check_range("model.head_rank", self.head_rank, low=0, high=512)
        if self.block2 not in SECOND_BLOCKS:
            raise ConfigError(
                f"model.block2 must be one of {', '.join(SECOND_BLOCKS)}, got {self.block2!r}"
            )
        _check_range("model.backbone_rank", self.backbone_rank, low=0.0, high=1.0)
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")


#: The layout switches of :class:`ModelConfig` beyond the paper's (cheaper layers, the blurred pooling), at
#: the paper's values (their defaults).
PAPER_LAYOUT: dict[str, str | int | float] = {
    name: getattr(ModelConfig(), name) for name in ("stem", "head_rank", "block2", "backbone_rank", "pooling")
}
#: The switches of :data:`PAPER_LAYOUT` that change the network's weights (the pooling has none).
WEIGHT_LAYOUT: dict[str, str | int | float] = {
    name: plain for name, plain in PAPER_LAYOUT.items() if name != "pooling"
}


#: How a keypoint's descriptor is read from the dense map (inference's ``descriptor_sampling``, training's
#: ``loss.descriptor_sampling``). ``"original"``: the original code's ``grid_sample(align_corners=True)``
#: over the input's pixel range, which reads the map's first and last cells at the image's first and last
#: pixels, so a keypoint's descriptor comes from up to half a cell inwards of it near the borders, a shrink
#: about the centre that depends on the input size. ``"centred"``: each map cell is read at the centre of
#: the pixels it covers, at any size.
DESCRIPTOR_SAMPLINGS = ("original", "centred")


@dataclass
class LossConfig:
    """Loss weights and thresholds (SPEC §3)."""

    keypoint_loss_weight: float = 1.0  # location loss and IO loss
    descriptor_loss_weight: float = 2.0  # the term is this x losses.TRIPLET_FACTOR x the triplet loss
    score_loss_weight: float = 1.0
    descriptor_loss: bool = True
    location_threshold: float = 4.0  # px: cells farther from any target keypoint are not used
    relax_field: float = 4.0  # px: negatives must be farther than this in x or y
    triplet_margin: float = 0.2
    min_valid_cells: int = 20  # images with fewer valid cells are skipped by the descriptor loss
    io_top_k: int = 300  # cells fed to IO-Net per image
    io_selection: str = "lowest"  # "lowest" (the original code) or "highest" (the paper's text) scores
    io_inlier_threshold: float = 4.0  # px
    io_min_inliers: int = 10  # the IO loss is used when the batch has more inliers than this
    distill_weight: float = 1.0  # weight of losses.distillation_loss when train.teacher is set
    # weight of losses.warped_distillation_loss: the network on the *target* image learns the teacher's
    # outputs on the source at the warped points, i.e. invariance beyond the teacher's own
    distill_warped_weight: float = 0.0
    # weight of losses.warped_location_loss: the network's keypoints on the *target* must land where the
    # teacher's keypoints of the source warp to, i.e. keypoints that keep their place across warps and scales
    distill_warped_location_weight: float = 0.0
    # each term's weight inside losses.distillation_loss: e.g. 0 for the descriptor leaves the descriptors
    # to the self-supervised losses while the scores stay the teacher's
    distill_score_weight: float = 1.0
    distill_location_weight: float = 1.0
    distill_descriptor_weight: float = 1.0
    # weight of losses.shift_consistency_loss: the network's keypoints on a copy of the image cut a random
    # part of a cell in must keep their place, i.e. keypoints that do not move with the cell grid's phase
    shift_consistency_weight: float = 0.0
    # weight of losses.scale_consistency_loss: the network's keypoints on a copy of the image reduced by a
    # random factor in scale_consistency_factors must land on the image's own, i.e. keypoints that keep
    # their place when the input's scale changes, as the runs a zoom pairs do
    scale_consistency_weight: float = 0.0
    scale_consistency_factors: tuple[float, float] = (0.5, 0.9)
    # how the descriptor and IO terms read the dense descriptor map at a keypoint: "original" (the original
    # code's align_corners=True reading) or "centred" (each cell at its own pixels), as inference's
    # descriptor_sampling; a model meant to read centred can learn its descriptors that way
    descriptor_sampling: str = "original"

    def __post_init__(self) -> None:
        if self.io_selection not in ("lowest", "highest"):
            raise ConfigError(f"loss.io_selection must be 'lowest' or 'highest', got {self.io_selection!r}")
        if self.descriptor_sampling not in DESCRIPTOR_SAMPLINGS:
            raise ConfigError(
                f"loss.descriptor_sampling must be one of {', '.join(DESCRIPTOR_SAMPLINGS)}, "
                f"got {self.descriptor_sampling!r}"
            )
        for name in ("keypoint_loss_weight", "descriptor_loss_weight", "score_loss_weight", "relax_field",
                     "triplet_margin", "min_valid_cells", "io_min_inliers", "distill_weight",
                     "distill_warped_weight", "distill_warped_location_weight", "distill_score_weight",
                     "distill_location_weight", "distill_descriptor_weight", "shift_consistency_weight",
                     "scale_consistency_weight"):
            _check_range(f"loss.{name}", getattr(self, name), low=0)
        _check_range("loss.location_threshold", self.location_threshold, low=0, low_open=True)
        low, high = self.scale_consistency_factors
        if not 0 < low <= high < 1:
            raise ConfigError(
                "loss.scale_consistency_factors must be [low, high] with 0 < low <= high < 1, "
                f"got {list(self.scale_consistency_factors)}"
            )
        _check_range("loss.io_inlier_threshold", self.io_inlier_threshold, low=0, low_open=True)
        _check_range("loss.io_top_k", self.io_top_k, low=1)


@dataclass
class AugmentationConfig:
    """Homographic adaptation and photometric augmentation (SPEC §3)."""

    image_shape: tuple[int, int] = (240, 320)  # (H, W)
    horizontal_flip: float = 0.5  # probabilities
    vertical_flip: float = 0.5
    affine_degrees: float = 15.0
    affine_translate: float = 0.1  # fraction of the image size
    affine_scale: tuple[float, float] = (0.9, 1.1)
    patch_ratio: float = 0.7
    perspective_amplitude: float = 0.4
    scaling_amplitude: float = 0.2
    max_angle: float = math.pi / 4
    channel_shuffle: float = 0.5  # shared by source and target
    grayscale: float = 0.5  # shared by source and target
    noise: float = 0.5  # per image
    noise_std: float = 0.05  # of the full range
    blur_kernels: tuple[int, ...] = (0, 1, 3, 5)  # drawn uniformly per image; 0 and 1 = no blur
    jitter: tuple[float, float, float, float] = (0.5, 0.5, 0.2, 0.05)  # brightness, contrast, saturation, hue
    original_jitter_noop: bool = False  # True reproduces the original code, whose jitter does nothing
    # (H, W) photos are resized to before a random image_shape window is cut from each (0, 0: no crop):
    # e.g. [480, 640] with image_shape [240, 320] shows the content scale of 480x640 training at its cost
    crop_from: tuple[int, int] = (0, 0)
    # with crop_from: the window's side is image_shape times a factor drawn per batch from this range,
    # resized to image_shape, so that one run meets content at several scales (e.g. [1, 2] with crop_from
    # twice image_shape: from the 2x photo down to the 1x one)
    crop_window_scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        height, width = self.image_shape
        if height % 8 or width % 8 or min(height, width) < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"augmentation.image_shape must be multiples of 8, at least 32: {self.image_shape}"
            )
        # a larger training image is a memory error or an OpenCV traceback deep in the data loader
        if max(height, width) > MAX_NETWORK_SIZE:
            raise ConfigError(
                f"augmentation.image_shape must be at most {MAX_NETWORK_SIZE} a side: "
                f"{list(self.image_shape)}"
            )
        if self.crop_from != (0, 0) and not (self.crop_from[0] >= height and self.crop_from[1] >= width):
            raise ConfigError(
                f"augmentation.crop_from {list(self.crop_from)} must be at least image_shape "
                f"{list(self.image_shape)} on both sides (or [0, 0]: no crop)"
            )
        if max(self.crop_from) > MAX_NETWORK_SIZE:
            raise ConfigError(
                f"augmentation.crop_from must be at most {MAX_NETWORK_SIZE} a side: {list(self.crop_from)}"
            )
        low, high = self.crop_window_scale
        if not (1 <= low <= high) or (self.crop_from == (0, 0) and high != 1):
            raise ConfigError(
                f"augmentation.crop_window_scale {list(self.crop_window_scale)} must be [low, high] with "
                "1 <= low <= high, and [1, 1] without crop_from"
            )
        if self.crop_from != (0, 0) and (
            round(height * high) > self.crop_from[0] or round(width * high) > self.crop_from[1]
        ):
            raise ConfigError(
                f"augmentation.crop_window_scale {high:g} makes {round(width * high)}x{round(height * high)} "
                f"windows, larger than crop_from {list(self.crop_from)}"
            )
        bad_kernels = [k for k in self.blur_kernels if k < 0 or (k > 1 and k % 2 == 0)]
        if bad_kernels or not self.blur_kernels:
            raise ConfigError(
                f"augmentation.blur_kernels must be 0 or odd sizes, got {list(self.blur_kernels)}"
            )
        if max(self.blur_kernels) // 2 >= min(height, width):
            raise ConfigError(
                f"augmentation.blur_kernels: a {max(self.blur_kernels)}-tap blur needs images of more than "
                f"{max(self.blur_kernels) // 2} px a side, image_shape is {list(self.image_shape)}"
            )
        for name in ("horizontal_flip", "vertical_flip", "channel_shuffle", "grayscale", "noise",
                     "affine_translate"):
            _check_range(f"augmentation.{name}", getattr(self, name), low=0, high=1)
        for name in ("affine_degrees", "perspective_amplitude", "max_angle", "noise_std"):
            _check_range(f"augmentation.{name}", getattr(self, name), low=0)
        # the homography sampler scales the patch by up to 1 -/+ scaling_amplitude / 2: it must stay > 0
        _check_range("augmentation.scaling_amplitude", self.scaling_amplitude, low=0, high=2, high_open=True)
        _check_range("augmentation.patch_ratio", self.patch_ratio, low=0, high=1, low_open=True)
        # each patch corner moves by up to perspective_amplitude / 2 per axis; at patch_ratio the corners
        # can line up and the homography is singular
        _check_range(
            f"augmentation.perspective_amplitude (below patch_ratio, {self.patch_ratio:g})",
            self.perspective_amplitude, low=0, high=self.patch_ratio, high_open=True,
        )
        low_scale, high_scale = self.affine_scale
        if not (math.isfinite(high_scale) and 0 < low_scale <= high_scale):
            raise ConfigError(
                "augmentation.affine_scale must be [low, high] with 0 < low <= high, "
                f"got {list(self.affine_scale)}"
            )
        for name, amount in zip(("brightness", "contrast", "saturation"), self.jitter[:3], strict=True):
            _check_range(f"augmentation.jitter ({name})", amount, low=0)
        _check_range("augmentation.jitter (hue)", self.jitter[3], low=0, high=0.5)


@dataclass
class OptimConfig:
    """Adam for KeyPointNet and IO-Net, step decay of the learning rate per epoch."""

    learning_rate: float = 1e-3
    io_learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_decay: float = 0.5
    lr_decay_epochs: int = 40
    max_lr_decays: int = 4

    def __post_init__(self) -> None:
        _check_range("optim.learning_rate", self.learning_rate, low=0, low_open=True)
        _check_range("optim.io_learning_rate", self.io_learning_rate, low=0, low_open=True)
        _check_range("optim.weight_decay", self.weight_decay, low=0)
        _check_range("optim.lr_decay", self.lr_decay, low=0, high=1, low_open=True)
        _check_range("optim.lr_decay_epochs", self.lr_decay_epochs, low=1)
        _check_range("optim.max_lr_decays", self.max_lr_decays, low=0)


@dataclass
class TrainConfig:
    """Loop, precision, logging and checkpointing."""

    epochs: int = 50
    batch_size: int = 8  # per process
    seed: int = 42
    num_workers: int = 2
    precision: str = "auto"  # "fp32", "bf16", "fp16" (CUDA only) or "auto" (bf16 where fast, else fp32)
    log_every: int = 10  # steps
    checkpoint_every: int = 100  # steps; a checkpoint is also written at the end of each epoch
    snapshot_every: int = 10  # epochs; keeps a weights-only epoch_NNN.ckpt (0: none)
    val_every: int = 1  # epochs; 0 disables HPatches validation
    val_shape: tuple[int, int] = (320, 240)  # (W, H) for validation
    val_top_k: int = 300
    wandb: bool = False
    wandb_project: str = "kp2d"
    teacher: str = ""  # shipped name or checkpoint whose outputs the network also learns (distillation)
    # parts of KeyPointNet kept as they start (weights and BatchNorm statistics): encoder, score,
    # location, descriptor; e.g. [encoder, score, location] trains the descriptor head alone
    freeze: tuple[str, ...] = ()
    # every BatchNorm keeps the running statistics it starts with (eval mode) while the weights train:
    # fine-tuning on other views then leaves the statistics the network is run with alone
    keep_batchnorm_statistics: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        unknown = [part for part in self.freeze if part not in NETWORK_PARTS]
        if unknown or len(set(self.freeze)) == len(NETWORK_PARTS):
            raise ConfigError(
                f"train.freeze takes some of {', '.join(NETWORK_PARTS)} (not all), got {list(self.freeze)}"
            )
        for name in ("epochs", "batch_size", "log_every", "checkpoint_every", "val_top_k"):
            _check_range(f"train.{name}", getattr(self, name), low=1)
        for name in ("num_workers", "snapshot_every", "val_every"):
            _check_range(f"train.{name}", getattr(self, name), low=0)
        _check_range("train.seed", self.seed, low=0, high=2**32, high_open=True)
        width, height = self.val_shape
        if width % 8 or height % 8 or min(width, height) < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"train.val_shape (W, H) must be multiples of 8, at least 32: {list(self.val_shape)}"
            )
        if max(width, height) > MAX_NETWORK_SIZE:
            raise ConfigError(
                f"train.val_shape (W, H) must be at most {MAX_NETWORK_SIZE} a side: {list(self.val_shape)}"
            )


@dataclass
class Config:
    """Everything a training run needs; see the field dataclasses."""

    name: str = "v4"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (lists for tuples): YAML- and ``torch.load(weights_only=True)``-safe."""
        return _plain(asdict(self))


def check_something_to_learn(config: Config) -> None:
    """Raise ConfigError when no loss term has a weight > 0: a run would train nothing.

    Self-supervised terms count with a weight > 0 (the descriptor's only with ``loss.descriptor_loss``);
    distillation counts with ``train.teacher`` and ``loss.distill_weight`` > 0 (with one of its term
    weights > 0), ``loss.distill_warped_weight`` or ``distill_warped_location_weight`` > 0.
    """
    loss = config.loss
    self_supervised = loss.keypoint_loss_weight > 0 or loss.score_loss_weight > 0
    self_supervised |= loss.descriptor_loss and loss.descriptor_loss_weight > 0
    terms = (loss.distill_score_weight, loss.distill_location_weight, loss.distill_descriptor_weight)
    distilled = loss.distill_weight > 0 and any(weight > 0 for weight in terms)
    warped = loss.distill_warped_weight > 0 or loss.distill_warped_location_weight > 0
    distilled = bool(config.train.teacher) and (distilled or warped)
    if not (self_supervised or distilled):
        teacher = f"train.teacher {config.train.teacher}" if config.train.teacher else "no train.teacher"
        descriptor = "" if loss.descriptor_loss else ", loss.descriptor_loss false"
        raise ConfigError(
            f"{config.name}: nothing to learn ({teacher}{descriptor}; every self-supervised and distillation "
            "loss weight that counts is 0): give loss.keypoint_loss_weight, descriptor_loss_weight, "
            "score_loss_weight or, with a teacher, distill_weight a weight > 0"
        )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation (bool, int, float, str, tuple[...], dataclass)."""
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(annotation, value, where)
    origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {list(value)!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot, unsigned exponent) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(annotation, types.UnionType):  # pragma: no cover - not used by the fields today
        return value
    raise ConfigError(f"{where}: unsupported field type {annotation!r}")


def _build(cls: type, data: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key '{key}' (allowed here: {', '.join(sorted(names))})")
    kwargs = {
        name: _coerce(value, hints[name], f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a (partial) nested dict; missing fields take their defaults."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
    return _build(Config, data)


def parse_image_shape(text: str) -> tuple[int, int]:
    """``"HxW"`` (e.g. ``"240x320"``) → ``(H, W)``, with the checks of ``augmentation.image_shape``."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
        return AugmentationConfig(image_shape=(height, width)).image_shape
    except (ValueError, ConfigError):
        raise ConfigError(
            f"expected HxW with sides multiples of 8, from {MIN_IMAGE_SIZE} to {MAX_NETWORK_SIZE} "
            f"(e.g. 240x320), got {text!r}"
        ) from None


def list_presets() -> list[str]:
    """Names of the configs shipped inside the package (``v0`` … ``v4``)."""
    folder = resources.files("kp2d") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def list_recipes() -> list[str]:
    """Names of the shipped weights' recipes (``recipes/v4_shipped_s8`` …), loadable as presets."""
    folder = resources.files("kp2d") / "configs" / "recipes"
    return sorted(f"recipes/{p.name[: -len('.yaml')]}" for p in folder.iterdir() if p.name.endswith(".yaml"))


def _preset_file(name: str) -> Traversable | None:
    """The packaged YAML of preset ``name`` (``v4`` or ``recipes/v4_shipped_s8``), ``None`` if none."""
    parts = name.split("/")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "recipes") or not all(parts):
        return None  # only the presets and the recipes folder, never a path out of the package
    node = resources.files("kp2d") / "configs"
    for part in parts[:-1]:
        node = node / part
    node = node / f"{parts[-1]}.yaml"
    return node if node.is_file() else None


def _read_text_config(path: Path) -> str:
    """A YAML file's text; a binary file (a photo, a checkpoint) or an unreadable one is a ConfigError."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise ConfigError(f"{path} is not a YAML config file (binary content)")
    return text


def _read_yaml(name_or_path: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a preset or a YAML file, following ``extends``; returns the merged raw dict."""
    text_name = str(name_or_path)
    if text_name in seen:
        raise ConfigError(f"config 'extends' loops: {' -> '.join([*seen, text_name])}")
    path = Path(text_name)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named v4 does not hide the preset
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        text = _read_text_config(path)
    else:
        preset = _preset_file(text_name)
        if preset is None:
            raise ConfigError(
                f"unknown config '{text_name}': not a file and not a preset ({', '.join(list_presets())}; "
                f"recipes: {', '.join(list_recipes())})"
            )
        text = preset.read_text()
    import yaml  # only reading a config needs the parser; `import kp2d` for inference does not

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{text_name}: invalid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{text_name}: a config must be a mapping of keys")
    if path.is_file():
        data.setdefault("name", path.stem)  # a user file names its runs (default --out runs/<name>)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{text_name}: 'extends' must name a preset or a file")
    parent_path = Path(parent)
    if not parent_path.is_absolute() and path.parent != Path("") and (path.parent / parent).is_file():
        parent = str(path.parent / parent)
    return _merge(_read_yaml(parent, (*seen, text_name)), data)


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load a preset by name (``"v4"``) or a YAML file, then apply ``overrides`` (a nested dict)."""
    data = _read_yaml(name_or_path)
    if overrides:
        data = _merge(data, overrides)
    return config_from_dict(data)
