"""Evaluation settings from option text: ``WxH`` shapes with their top-k, baselines, scale factor."""

from __future__ import annotations

from kp2d.checks import check_scale_factor_option, parse_size_wh
from kp2d.config import MAX_NETWORK_SIZE, MIN_IMAGE_SIZE
from kp2d.errors import ConfigError

__all__ = [
    "DEFAULT_SETTINGS",
    "OPENCV_METHODS",
    "check_eval_memory",
    "check_eval_scale_factor",
    "opencv_detector",
    "parse_baselines",
    "parse_shapes",
    "parse_views",
    "pair_view",
]


DEFAULT_SETTINGS = ((320, 240, 300), (640, 480, 1000))  # (W, H, top_k) of the original's two tables

_DEFAULT_TOP_K = {(320, 240): 300, (640, 480): 1000}

_FALLBACK_TOP_K = 1000

OPENCV_METHODS = ("sift", "orb")  # --method / --baselines: OpenCV detectors run through the protocol


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _parse_shape(text: str) -> tuple[int, int]:
    width, height = parse_size_wh(text, "--shape")
    if min(width, height) < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"--shape '{text}': width and height must be from {MIN_IMAGE_SIZE} to {MAX_NETWORK_SIZE} pixels"
        )
    return width, height


def _parse_top_k(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--top-k '{text}': expected a positive integer") from None
    if value <= 0:
        raise ConfigError(f"--top-k '{text}': expected a positive integer")
    return value


def parse_shapes(shapes: list[str] | None, top_ks: list[str] | None) -> list[tuple[int, int, int]]:
    """``--shape`` / ``--top-k`` values → ``[(W, H, top_k), ...]``.

    No shape: the original's two settings (320x240 top 300, 640x480 top 1000). One ``--top-k`` applies
    to every shape; several pair with the shapes in order. A shape without ``--top-k`` gets 300 at
    320x240, else 1000.
    """
    parsed_shapes = [_parse_shape(text) for text in _split(shapes)]
    parsed_top_k = [_parse_top_k(text) for text in _split(top_ks)]
    if not parsed_shapes:
        parsed_shapes = [(w, h) for w, h, _ in DEFAULT_SETTINGS]
        if not parsed_top_k:
            return list(DEFAULT_SETTINGS)
    if not parsed_top_k:
        parsed_top_k = [_DEFAULT_TOP_K.get(shape, _FALLBACK_TOP_K) for shape in parsed_shapes]
    elif len(parsed_top_k) == 1:
        parsed_top_k = parsed_top_k * len(parsed_shapes)
    elif len(parsed_top_k) != len(parsed_shapes):
        raise ConfigError(
            f"--top-k: give one value or one per shape "
            f"({len(parsed_shapes)} shapes, {len(parsed_top_k)} values)"
        )
    return [(w, h, k) for (w, h), k in zip(parsed_shapes, parsed_top_k, strict=True)]


def parse_views(text: str) -> set[int]:
    """``--views`` ``"2-5"`` / ``"2,3,6"`` / ``"2-3,6"`` → the view numbers (pairs ``1-V``; from 2).

    Raises:
        ConfigError: anything else.
    """
    views: set[int] = set()
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            low, high = int(first), int(last if dash else first)
            if not 2 <= low <= high:
                raise ValueError
            views.update(range(low, high + 1))
    except ValueError:
        raise ConfigError(f"--views must be view numbers from 2 or ranges, e.g. 2-5 or 2,3,6, got {text!r}") \
            from None
    return views


def pair_view(name: str) -> int | None:
    """The second view of a pair named ``"sequence:1-V"`` (``None`` for another name)."""
    _, _, views = name.rpartition(":")
    _, _, second = views.partition("-")
    return int(second) if second.isdigit() else None


def check_eval_scale_factor(
    scale_factor: float, settings: list[tuple[int, int, int]], name: str = "--scale-factor"
) -> None:
    """ConfigError unless ``scale_factor`` > 0 resizes every evaluation shape to a size the network takes.

    That is :data:`MIN_IMAGE_SIZE` to :data:`MAX_NETWORK_SIZE` a side (a size off the 8-px grid is padded,
    as :func:`kp2d.extract` pads it). ``name`` says where the value came from (the option, or the model's
    recorded setting).
    """
    check_scale_factor_option(scale_factor)
    for width, height, _ in settings:
        scaled = (round(width * scale_factor), round(height * scale_factor))
        if not MIN_IMAGE_SIZE <= min(scaled) or max(scaled) > MAX_NETWORK_SIZE:
            raise ConfigError(
                f"{name} {scale_factor:g} resizes {width}x{height} to {scaled[0]}x{scaled[1]}; "
                f"KeyPointNet takes {MIN_IMAGE_SIZE} to {MAX_NETWORK_SIZE} px a side"
            )


def check_eval_memory(settings: list[tuple[int, int, int]], scale_factor: float, device) -> None:
    """DataError naming ``--shape`` when a shape needs more memory than is available (CPU only).

    The same estimate as :func:`kp2d.extract` makes (:mod:`kp2d.memory`), before any image is read.
    """
    from kp2d.errors import DataError
    from kp2d.memory import ENV_VAR, available_memory, extract_memory, format_bytes

    if getattr(device, "type", str(device)) != "cpu":
        return
    budget = available_memory()
    for width, height, _ in settings:
        need = extract_memory(round(height * scale_factor), round(width * scale_factor))
        if budget is not None and need > budget:
            raise DataError(
                f"--shape {width}x{height}: evaluating needs about {format_bytes(need)} of memory, "
                f"{format_bytes(budget)} is available; give a smaller --shape ({ENV_VAR} sets the budget)"
            )


def opencv_detector(method: str, top_k: int):
    """The OpenCV baseline as ``kp2d eval`` runs it (``2 * top_k`` candidates for the selection)."""
    from kp2d.eval.hpatches import OpenCVDetector

    return OpenCVDetector(method, nfeatures=2 * top_k)


def parse_baselines(text: str | None, method: str | None) -> list[str]:
    """``--baselines sift,orb`` → ``["sift", "orb"]``, without ``method`` (already run) or repeats."""
    names = _split([text] if text else None)
    unknown = [name for name in names if name not in OPENCV_METHODS]
    if unknown:
        raise ConfigError(
            f"--baselines: unknown method {', '.join(unknown)} (choose from {', '.join(OPENCV_METHODS)})"
        )
    return [name for name in dict.fromkeys(names) if name != method]
