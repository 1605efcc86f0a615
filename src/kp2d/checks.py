"""Checks of option values, output paths and input arrays, shared by the Python API, the CLI and scripts.

Each check takes the ``name`` to put in its message: the API passes the argument's name (``threshold``),
the CLI the option's (``--threshold``), so both refuse the same values with the same words. Bad options
are :class:`~kp2d.errors.ConfigError`; bad input values (NaN, infinity) :class:`~kp2d.errors.DataError`.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np
import torch

from kp2d.config import MAX_NETWORK_SIZE
from kp2d.errors import ConfigError, DataError

__all__ = [
    "check_at_least",
    "check_finite",
    "check_finite_rows",
    "check_flag",
    "check_integer",
    "check_output_path",
    "check_scale_factor",
    "check_scale_factor_option",
    "check_unit_interval",
    "parse_size_wh",
    "show",
]


def show(value: object) -> str:
    """A value for a message: numbers as ``%g`` (``nan``, ``-1``, ``0.5``), anything else as its repr."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return f"{float(value):g}"
    return repr(value)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_finite(
    name: str,
    value: object,
    minimum: float | None = None,
    *,
    above: float | None = None,
    maximum: float | None = None,
    unit: str = "",
) -> float:
    """``value`` as a float; ConfigError unless a finite number ``>= minimum``, ``> above``, ``<= maximum``.

    The message reads ``<name> must be a finite number[ >= minimum][ > above][ <= maximum][ (unit)], got
    <value>``.
    """
    bound = "" if minimum is None else f" >= {minimum:g}"
    bound += "" if above is None else f" > {above:g}"
    bound += "" if maximum is None else f"{' and' if bound else ''} <= {maximum:g}"
    unit = f" ({unit})" if unit else ""
    fails = not _is_number(value) or not math.isfinite(value)
    fails = fails or (minimum is not None and value < minimum) or (above is not None and not value > above)
    if fails or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be a finite number{bound}{unit}, got {show(value)}")
    return float(value)


def check_unit_interval(name: str, value: object, *, include_one: bool = True) -> float:
    """``value`` as a float; ConfigError unless it lies in (0, 1] (with ``include_one``) or (0, 1)."""
    upper = "]" if include_one else ")"
    inside = _is_number(value) and 0.0 < value and (value <= 1.0 if include_one else value < 1.0)
    if not inside:  # NaN fails the comparisons too
        raise ConfigError(f"{name} must be a number in (0, 1{upper}, got {show(value)}")
    return float(value)


def check_integer(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int; ConfigError unless it is an integer (numpy's too, not bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {show(value)}")
    return int(value)


def check_flag(name: str, value: object) -> bool:
    """``value`` as a bool; ConfigError for anything but ``True`` / ``False`` (numpy's too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {show(value)}")
    return bool(value)


def check_finite_rows(name: str, array: torch.Tensor | np.ndarray) -> None:
    """DataError naming ``name`` and the rows that hold NaN or infinity, for ``(N, ...)`` float input.

    Such rows would silently change the result (one NaN descriptor makes every distance to it NaN, and
    ``argmin`` then picks it), so they are refused rather than skipped.
    """
    if isinstance(array, torch.Tensor):
        if not (array.is_floating_point() or array.is_complex()) or array.numel() == 0:
            return
        bad = ~torch.isfinite(array.reshape(array.shape[0], -1)).all(dim=1)
        if not bool(bad.any()):
            return
        rows = torch.nonzero(bad).squeeze(1).cpu().numpy()
    else:
        array = np.asarray(array)
        if not np.issubdtype(array.dtype, np.inexact) or array.size == 0:
            return
        bad = ~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1)
        if not bad.any():
            return
        rows = np.flatnonzero(bad)
    first = ", ".join(str(int(row)) for row in rows[:5]) + (", ..." if len(rows) > 5 else "")
    raise DataError(
        f"{name} has NaN or infinite values in {len(rows)} of {array.shape[0]} rows (rows {first})"
    )


def check_scale_factor(scale_factor: float) -> float:
    """``scale_factor`` as a float; :class:`ConfigError` unless it is a finite number > 0."""
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, numbers.Real):
        raise ConfigError(f"scale_factor must be a number > 0, got {scale_factor!r}")
    if not (math.isfinite(scale_factor) and scale_factor > 0):
        raise ConfigError(f"scale_factor must be a finite number > 0, got {scale_factor!r}")
    return float(scale_factor)


def check_scale_factor_option(scale_factor: float) -> None:
    """:func:`check_scale_factor` with errors naming ``--scale-factor``."""
    try:
        check_scale_factor(scale_factor)
    except ConfigError:
        raise ConfigError(f"--scale-factor must be a number > 0, got {scale_factor:g}") from None


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

    Callers add their own lower bound or multiple; the upper bound, :data:`~kp2d.config.MAX_NETWORK_SIZE`,
    is the network's for all of them.

    Raises:
        ConfigError: naming ``option``, unless the text is two integers from 1 to ``MAX_NETWORK_SIZE``
            joined by ``x``.
    """
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{option} must be WIDTHxHEIGHT (e.g. 320x240), got {text!r}") from None
    if width < 1 or height < 1:
        raise ConfigError(f"{option} must be WIDTHxHEIGHT with positive sides, got {text!r}")
    if max(width, height) > MAX_NETWORK_SIZE:  # cv2.resize and the network fail far past this
        raise ConfigError(f"{option} {text}: width and height must be at most {MAX_NETWORK_SIZE} pixels")
    return width, height
