"""Inference settings a weights file records for its network (``"inference": {"scale_factor": 2.0}``).

A shipped model may be meant to run differently from the defaults, e.g. on images resized by 2; the file
says so in its ``inference`` entry, which the checkpoint's checksum covers like every other entry. Files
without the entry (the original's, older kp2d files) get the defaults. ``extract``, ``kp2d.track``, the
HPatches detector and the CLIs use a loaded network's settings unless an explicit option overrides them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kp2d.checks import check_scale_factor
from kp2d.errors import CheckpointError, ConfigError

__all__ = ["INFERENCE_KEY", "InferenceSettings", "inference_settings_from", "model_scale_factor"]

#: The checkpoint entry that holds the settings.
INFERENCE_KEY = "inference"


@dataclass(frozen=True)
class InferenceSettings:
    """How a network is meant to run.

    Attributes:
        scale_factor: the network runs on images resized by this factor (see :func:`kp2d.extract`).
    """

    scale_factor: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale_factor", check_scale_factor(self.scale_factor))

    def to_entry(self) -> dict[str, float]:
        """The checkpoint entry: ``{"scale_factor": 2.0}``."""
        return {"scale_factor": self.scale_factor}

    def label(self) -> str:
        """The settings that differ from the defaults, for a table row: ``" (input x2)"`` or ``""``."""
        return "" if self.scale_factor == 1 else f" (input x{self.scale_factor:g})"


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


def model_scale_factor(model: object, scale_factor: float | None) -> float:
    """``scale_factor`` when given, else the model's recorded one (1 for a module without settings)."""
    if scale_factor is not None:
        return scale_factor
    settings = getattr(model, "inference_settings", None)
    return getattr(settings, "scale_factor", 1.0)
