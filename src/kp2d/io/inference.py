"""Inference settings a weights file records for its network (``"inference": {"scale_factor": 2.0}``).

``extra_scales`` (``"inference": {"scale_factor": 2.0, "extra_scales": [1.0]}``) are more input scales the
network also runs at, their keypoints pooled with the main scale's by score (see :func:`kp2d.extract`).
``extra_rotations`` (``[45, -45]``, degrees) likewise runs it on copies of the image turned by those angles.
``extra_weight`` (``0.9``) multiplies the scores of the extra scales' keypoints before the pooling, so that
they fill in where the main run finds little rather than crowd out its keypoints (default 1: plain scores);
the turned copies keep their scores.
``extra_suppression`` (``4``, pixels of the image) leaves out an extra scale's keypoint where the main run has
one within that distance that scores at least as much (default 0: none left out).
``descriptor_sampling`` (``"centred"``) reads each descriptor from the dense map at the centre of the pixels
its cells cover, not the original code's way (``"original"``, the default; see
:data:`DESCRIPTOR_SAMPLINGS`).
``interpolation`` (``"bicubic"``) enlarges the image to the network's input with bicubic interpolation, not
bilinear (the default): a sharper input for the finer keypoints of a scale factor above 1.
``precision`` (``"auto"``) runs it under bf16 autocast where the hardware does bf16 natively, elsewhere on a
CPU in fp32 with BatchNorm folded (``"bf16"``: always bf16; ``"fp32"``, the default: the network as it is);
see :meth:`kp2d.models.KeyPointNet.default_backend`.

A shipped model may be meant to run differently from the defaults, e.g. on images resized by 2; the file
says so in its ``inference`` entry, which the checkpoint's checksum covers like every other entry. Files
without the entry (the original's, older kp2d files) get the defaults. ``extract``, ``kp2d.track``, the
HPatches detector and the CLIs use a loaded network's settings unless an explicit option overrides them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kp2d.checks import check_finite, check_scale_factor
from kp2d.config import DESCRIPTOR_SAMPLINGS  # re-exported: the readings of a descriptor map
from kp2d.errors import CheckpointError, ConfigError

__all__ = [
    "DESCRIPTOR_SAMPLINGS",
    "INFERENCE_KEY",
    "INTERPOLATIONS",
    "PRECISIONS",
    "InferenceSettings",
    "check_descriptor_sampling",
    "check_extra_rotations",
    "check_extra_scales",
    "check_extra_suppression",
    "check_extra_weight",
    "check_interpolation",
    "check_precision",
    "inference_settings_from",
    "model_descriptor_sampling",
    "model_extra_rotations",
    "model_extra_scales",
    "model_extra_suppression",
    "model_extra_weight",
    "model_interpolation",
    "model_precision",
    "model_scale_factor",
    "parse_extra_rotations",
    "parse_extra_scales",
    "parse_extra_suppression",
    "parse_extra_weight",
    "run_score_weight",
]

#: The checkpoint entry that holds the settings.
INFERENCE_KEY = "inference"

#: ``precision`` values: plain float32, bf16 autocast, bf16 where the device does it natively.
PRECISIONS = ("fp32", "bf16", "auto")

#: ``interpolation`` values: how an image is enlarged to the network's input (shrinking is always bilinear,
#: antialiased).
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class InferenceSettings:
    """How a network is meant to run.

    Attributes:
        scale_factor: the network runs on images resized by this factor (see :func:`kp2d.extract`).
        extra_scales: more factors it also runs at, keypoints pooled by score (``()``: none).
        extra_rotations: angles in degrees of turned copies of the image it also runs on, at
            ``scale_factor``, keypoints pooled by score (``()``: none).
        precision: ``"fp32"``, ``"bf16"`` (autocast, heads in fp32) or ``"auto"`` (bf16 on a CPU with
            AVX512-BF16 / AMX or a GPU with bf16, else fp32, BatchNorm folded on a CPU); used when no
            backend is given.
        extra_weight: the scores of the extra scales' keypoints are multiplied by this (in ``(0, 1]``)
            before they are pooled with the main run's (1: as they are); not those of the turned copies.
        extra_suppression: an extra scale's keypoint is left out where a keypoint of the main run lies
            within this many pixels of the image and scores at least as much (0: none left out).
        descriptor_sampling: how descriptors are read from the dense map, one of
            :data:`DESCRIPTOR_SAMPLINGS` (``"original"``: the original code's way).
        interpolation: how the image is enlarged to the network's input (and its turned copies sampled),
            one of :data:`INTERPOLATIONS`; bicubic values are clamped to ``[0, 1]``.
    """

    scale_factor: float = 1.0
    extra_scales: tuple[float, ...] = ()
    extra_rotations: tuple[float, ...] = ()
    precision: str = "fp32"
    extra_weight: float = 1.0
    extra_suppression: float = 0.0
    descriptor_sampling: str = "original"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        scale_factor = check_scale_factor(self.scale_factor)
        object.__setattr__(self, "scale_factor", scale_factor)
        object.__setattr__(self, "extra_scales", check_extra_scales(self.extra_scales, scale_factor))
        object.__setattr__(self, "extra_rotations", check_extra_rotations(self.extra_rotations))
        object.__setattr__(self, "precision", check_precision(self.precision))
        object.__setattr__(self, "extra_weight", check_extra_weight(self.extra_weight))
        object.__setattr__(self, "extra_suppression", check_extra_suppression(self.extra_suppression))
        object.__setattr__(self, "descriptor_sampling", check_descriptor_sampling(self.descriptor_sampling))
        object.__setattr__(self, "interpolation", check_interpolation(self.interpolation))

    @property
    def scales(self) -> tuple[float, ...]:
        """Every factor the network runs at, the main one first."""
        return (self.scale_factor, *self.extra_scales)

    def to_entry(self) -> dict[str, Any]:
        """The checkpoint entry: ``{"scale_factor": 2.0}``, plus the extra scales and rotations if any."""
        entry: dict[str, Any] = {"scale_factor": self.scale_factor}
        if self.extra_scales:
            entry["extra_scales"] = list(self.extra_scales)
        if self.extra_rotations:
            entry["extra_rotations"] = list(self.extra_rotations)
        if self.precision != "fp32":
            entry["precision"] = self.precision
        if self.extra_weight != 1:
            entry["extra_weight"] = self.extra_weight
        if self.extra_suppression:
            entry["extra_suppression"] = self.extra_suppression
        if self.descriptor_sampling != "original":
            entry["descriptor_sampling"] = self.descriptor_sampling
        if self.interpolation != "bilinear":
            entry["interpolation"] = self.interpolation
        return entry

    def label(self, precision: str | None = None) -> str:
        """The non-default settings for a table row, as ``" (input x2.8+x1.25 bicubic, turned 0/45, bf16)"``.

        ``precision``: what the precision resolved to on this machine (``"bf16"`` / ``"fp32"``), named
        instead of the recorded ``"auto"``; ``""`` for the defaults.
        """
        parts = []
        if self.scale_factor != 1 or self.extra_scales:
            bicubic = " bicubic" if self.interpolation != "bilinear" else ""
            parts.append("input " + "+".join(f"x{scale:g}" for scale in self.scales) + bicubic)
        elif self.interpolation != "bilinear":  # turned copies at x1 are sampled so too
            parts.append(self.interpolation)
        if self.extra_rotations:
            parts.append("turned " + "/".join(f"{angle:g}" for angle in (0.0, *self.extra_rotations)))
        if self.extra_weight != 1 and self.extra_scales:
            parts.append(f"extra scales' scores x{self.extra_weight:g}")
        if self.extra_suppression and self.extra_scales:
            parts.append(f"extra scales suppressed within {self.extra_suppression:g} px")
        if self.descriptor_sampling != "original":
            parts.append(f"descriptors {self.descriptor_sampling}")
        precision = precision or self.precision
        if precision != "fp32":
            parts.append(precision)
        return f" ({', '.join(parts)})" if parts else ""


def check_extra_scales(extra_scales: Any, scale_factor: float | None = None) -> tuple[float, ...]:
    """``extra_scales`` as a tuple of floats > 0, without duplicates or ``scale_factor`` itself.

    Raises:
        ConfigError: not a sequence of numbers > 0.
    """
    if isinstance(extra_scales, (str, bytes)) or not hasattr(extra_scales, "__iter__"):
        raise ConfigError(f"extra_scales must be a list of numbers > 0, got {extra_scales!r}")
    scales: list[float] = []
    for value in extra_scales:
        try:
            scale = check_scale_factor(value)
        except ConfigError:
            raise ConfigError(f"extra_scales must be numbers > 0, got {value!r}") from None
        if scale != scale_factor and scale not in scales:
            scales.append(scale)
    return tuple(scales)


def check_extra_rotations(extra_rotations: Any) -> tuple[float, ...]:
    """``extra_rotations`` as a tuple of angles in ``(-180, 180]`` degrees, without 0 or duplicates.

    Raises:
        ConfigError: not a sequence of finite numbers.
    """
    if isinstance(extra_rotations, (str, bytes)) or not hasattr(extra_rotations, "__iter__"):
        raise ConfigError(f"extra_rotations must be a list of angles in degrees, got {extra_rotations!r}")
    angles: list[float] = []
    for value in extra_rotations:
        try:
            angle = check_finite("extra_rotations", value)
        except ConfigError:
            raise ConfigError(f"extra_rotations must be finite angles in degrees, got {value!r}") from None
        angle = -((-angle + 180.0) % 360.0 - 180.0)  # into (-180, 180]
        if angle != 0 and angle not in angles:
            angles.append(angle)
    return tuple(angles)


def check_extra_weight(extra_weight: Any, option: str = "extra_weight") -> float:
    """``extra_weight`` as a float in ``(0, 1]`` (pooled scores stay in ``(0, 1]``, as every score).

    Raises:
        ConfigError: naming ``option``, for anything else (above 1, NaN, a bool, text).
    """
    must = _weight_must(option, extra_weight)
    if isinstance(extra_weight, (bool, str, bytes)):
        raise ConfigError(must)
    try:
        weight = float(extra_weight)
    except (TypeError, ValueError):
        raise ConfigError(must) from None
    if not 0 < weight <= 1:
        raise ConfigError(must)
    return weight


def check_extra_suppression(extra_suppression: Any, option: str = "extra_suppression") -> float:
    """``extra_suppression`` as a finite float >= 0 (pixels of the image; 0: no suppression).

    Raises:
        ConfigError: naming ``option``, for anything else (negative, NaN, a bool, text).
    """
    must = f"{option} must be a distance in pixels >= 0 (0: none), got {extra_suppression!r}"
    if isinstance(extra_suppression, (bool, str, bytes)):
        raise ConfigError(must)
    try:
        radius = float(extra_suppression)
    except (TypeError, ValueError):
        raise ConfigError(must) from None
    if not (math.isfinite(radius) and radius >= 0):
        raise ConfigError(must)
    return radius


def check_descriptor_sampling(sampling: Any, option: str = "descriptor_sampling") -> str:
    """``sampling`` as one of :data:`DESCRIPTOR_SAMPLINGS` (case-insensitive).

    Raises:
        ConfigError: naming ``option``, for anything else.
    """
    return _one_of(sampling, DESCRIPTOR_SAMPLINGS, option)


def check_interpolation(interpolation: Any, option: str = "interpolation") -> str:
    """``interpolation`` as one of :data:`INTERPOLATIONS` (case-insensitive).

    Raises:
        ConfigError: naming ``option``, for anything else.
    """
    return _one_of(interpolation, INTERPOLATIONS, option)


def model_interpolation(model: object, interpolation: str | None = None) -> str:
    """``interpolation`` when given, else the model's recorded one (``"bilinear"`` without settings)."""
    if interpolation is None:
        settings = getattr(model, "inference_settings", None)
        interpolation = getattr(settings, "interpolation", "bilinear")
    return check_interpolation(interpolation)


def model_descriptor_sampling(model: object) -> str:
    """The model's recorded descriptor sampling (``"original"`` for a module without settings)."""
    settings = getattr(model, "inference_settings", None)
    return check_descriptor_sampling(getattr(settings, "descriptor_sampling", "original"))


def run_score_weight(extra_weight: float, rotation_deg: float) -> float:
    """The factor on an extra run's scores: ``extra_weight`` for an extra scale, 1 for a turned copy.

    A view turned by 50 degrees finds its keypoints only in the copy turned 45, and a lower score would cut
    them from the ``top_k``.
    """
    return 1.0 if rotation_deg else extra_weight


def _one_of(value: Any, choices: tuple[str, ...], option: str) -> str:
    """``value`` as one of ``choices`` (case and surrounding spaces ignored).

    Raises:
        ConfigError: naming ``option`` and the choices, for anything else.
    """
    name = value.strip().lower() if isinstance(value, str) else value
    if name not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")
    return name


def _weight_must(option: str, got: Any) -> str:
    """The one error text of a bad ``extra_weight``, whether given as a value or as an option's text."""
    return f"{option} must be a number in (0, 1] (1: the extra scales' scores as they are), got {got!r}"


def check_precision(precision: Any) -> str:
    """``precision`` as one of :data:`PRECISIONS` (case-insensitive).

    Raises:
        ConfigError: anything else.
    """
    return _one_of(precision, PRECISIONS, "precision")


def model_precision(model: object, precision: str | None = None) -> str:
    """``precision`` when given, else the model's recorded one (``"fp32"`` for a module without settings)."""
    if precision is None:
        settings = getattr(model, "inference_settings", None)
        precision = getattr(settings, "precision", "fp32")
    return check_precision(precision)


def inference_settings_from(entry: Any, path: str | Path) -> InferenceSettings:
    """The file's ``inference`` entry parsed (``None``: absent, the defaults).

    Raises:
        CheckpointError: naming ``path``, for an entry that is not a mapping, an unknown key or a bad value.
    """
    if entry is None:
        return InferenceSettings()
    if not isinstance(entry, dict):
        raise CheckpointError(f"{path}: '{INFERENCE_KEY}' must be a mapping, got {type(entry).__name__}")
    known = [item.name for item in fields(InferenceSettings)]
    unknown = sorted(str(key) for key in entry if key not in known)
    if unknown:
        raise CheckpointError(
            f"{path}: unknown {INFERENCE_KEY} setting {', '.join(unknown)} (known: {', '.join(known)})"
        )
    try:
        return InferenceSettings(**entry)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {INFERENCE_KEY}.{err}") from None


def parse_extra_scales(text: str, option: str = "--extra-scales") -> tuple[float, ...]:
    """``"1"`` or ``"1,0.5"`` → ``(1.0,)`` / ``(1.0, 0.5)``; ``"none"`` → ``()``.

    Raises:
        ConfigError: naming ``option``, for text that is not numbers > 0.
    """
    return _parse_list(text, check_extra_scales, f"{option} must be numbers > 0 separated by commas (e.g. 1 "
                       "or 1,0.5) or none")


def parse_extra_rotations(text: str, option: str = "--extra-rotations") -> tuple[float, ...]:
    """``"45,-45"`` → ``(45.0, -45.0)``; ``"none"`` → ``()``.

    Raises:
        ConfigError: naming ``option``, for text that is not finite numbers.
    """
    return _parse_list(text, check_extra_rotations, f"{option} must be angles in degrees separated by commas "
                       "(e.g. 45,-45) or none")


def parse_extra_weight(text: str, option: str = "--extra-weight") -> float:
    """``"0.9"`` → ``0.9``.

    Raises:
        ConfigError: naming ``option``, for text that is not a number in ``(0, 1]``.
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    try:
        return check_extra_weight(value, option)
    except ConfigError:
        raise ConfigError(_weight_must(option, text)) from None


def parse_extra_suppression(text: str, option: str = "--extra-suppression") -> float:
    """``"4"`` → ``4.0``; ``"none"`` → ``0.0``.

    Raises:
        ConfigError: naming ``option``, for text that is not a distance >= 0.
    """
    if text.strip().lower() == "none":
        return 0.0
    try:
        return check_extra_suppression(float(text), option)
    except (ValueError, ConfigError):
        must = f"{option} must be a distance in pixels >= 0 (0 or none: none), got {text!r}"
        raise ConfigError(must) from None


def _parse_list(text: str, check: Any, must: str) -> tuple[float, ...]:
    """Comma-separated numbers through ``check``; ``"none"`` → ``()``; else ConfigError ``must``."""
    if text.strip().lower() in ("none", ""):
        return ()
    try:
        return check([float(item) for item in text.split(",")])
    except (ValueError, ConfigError):
        raise ConfigError(f"{must}, got {text!r}") from None


def model_extra_rotations(model: object, extra_rotations: Any = None) -> tuple[float, ...]:
    """``extra_rotations`` when given, else the model's recorded ones (none for a module without them)."""
    if extra_rotations is None:
        settings = getattr(model, "inference_settings", None)
        extra_rotations = getattr(settings, "extra_rotations", ())
    return check_extra_rotations(extra_rotations)


def model_extra_scales(
    model: object, extra_scales: Any = None, scale_factor: float | None = None
) -> tuple[float, ...]:
    """``extra_scales`` when given, else the model's recorded ones, checked and without ``scale_factor``.

    A module without settings records none; see :func:`check_extra_scales`.
    """
    if extra_scales is None:
        settings = getattr(model, "inference_settings", None)
        extra_scales = getattr(settings, "extra_scales", ())
    return check_extra_scales(extra_scales, scale_factor)


def model_extra_weight(model: object, extra_weight: float | None = None) -> float:
    """``extra_weight`` when given, else the model's recorded one (1 for a module without settings)."""
    if extra_weight is None:
        settings = getattr(model, "inference_settings", None)
        extra_weight = getattr(settings, "extra_weight", 1.0)
    return check_extra_weight(extra_weight)


def model_extra_suppression(model: object, extra_suppression: float | None = None) -> float:
    """``extra_suppression`` when given, else the model's recorded one (0 for a module without settings)."""
    if extra_suppression is None:
        settings = getattr(model, "inference_settings", None)
        extra_suppression = getattr(settings, "extra_suppression", 0.0)
    return check_extra_suppression(extra_suppression)


def model_scale_factor(model: object, scale_factor: float | None) -> float:
    """``scale_factor`` when given, else the model's recorded one (1 for a module without settings)."""
    if scale_factor is not None:
        return scale_factor
    settings = getattr(model, "inference_settings", None)
    return getattr(settings, "scale_factor", 1.0)
