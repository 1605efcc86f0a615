"""Checks of user options that name the option in a one-line error (CLI, scripts and benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

from kp2d.checks import check_finite
from kp2d.errors import ConfigError

__all__ = [
    "check_at_least",
    "check_finite_option",
    "check_output_path",
    "check_scale_factor_option",
    "parse_size_wh",
]


def check_scale_factor_option(scale_factor: float) -> None:
    """``check_scale_factor`` of :mod:`kp2d.features.extraction`, errors naming ``--scale-factor``."""
    from kp2d.features.extraction import check_scale_factor  # torch: not needed to parse options

    try:
        check_scale_factor(scale_factor)
    except ConfigError:
        raise ConfigError(f"--scale-factor must be a number > 0, got {scale_factor:g}") from None


def check_finite_option(option: str, value: float, minimum: float | None = None) -> None:
    """:class:`~kp2d.errors.ConfigError` naming ``option`` unless ``value`` is finite and >= ``minimum``.

    NaN and infinity fail; without ``minimum`` any finite number passes (:func:`kp2d.checks.check_finite`,
    the check the Python API makes).
    """
    check_finite(option, value, minimum)


def check_output_path(path: Path, option: str, *, folder: bool = False) -> None:
    """Fail early, before any long work, unless ``path`` can be written.

    With ``folder``, ``path`` must be a folder or not exist yet; otherwise it must not be a folder. Either
    way the first existing folder on the way to it must be a writable folder (not a file).

    Raises:
        ConfigError: naming ``option`` and what is in the way.
    """
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder; give a folder")
    if not folder:
        if path.is_dir():
            raise ConfigError(f"{option} {path} is a folder; give a file name")
        if path.exists() and not os.access(path, os.W_OK):
            raise ConfigError(f"{option} {path}: the file is read-only")
    start = path if folder else path.parent
    for candidate in (start, *start.parents):
        if not os.path.lexists(candidate):
            continue
        if not candidate.is_dir():
            raise ConfigError(f"{option} {path}: {candidate} is a file, not a folder")
        if not os.access(candidate, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: no permission to write in {candidate}")
        return


def check_at_least(name: str, value: int | None, minimum: int) -> None:
    """An option given below ``minimum`` is a one-line error naming it."""
    if value is not None and value < minimum:
        raise ConfigError(f"--{name} must be at least {minimum}, got {value}")


def parse_size_wh(text: str, option: str) -> tuple[int, int]:
    """``"WIDTHxHEIGHT"`` (e.g. ``"320x240"``) → ``(width, height)``: every ``--shape`` / ``--size`` order.

    Raises:
        ConfigError: naming ``option``, unless the text is two positive integers joined by ``x``.
    """
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{option} must be WIDTHxHEIGHT (e.g. 320x240), got {text!r}") from None
    if width < 1 or height < 1:
        raise ConfigError(f"{option} must be WIDTHxHEIGHT with positive sides, got {text!r}")
    return width, height
