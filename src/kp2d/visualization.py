"""Pictures: keypoints, score heat maps, matches (inliers / outliers), animated GIFs.

Every function takes and returns ``(H, W, 3)`` uint8 **RGB** arrays (inputs may also be gray, float in
[0, 1], or ``(3, H, W)`` tensors) and draws with OpenCV; :func:`save_image` and :func:`save_gif` write
files with Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from kp2d.checks import check_finite, check_finite_rows, check_flag, check_integer
from kp2d.errors import InputError
from kp2d.features.matching import as_match_pairs, as_numpy
from kp2d.io.images import FLOAT_RANGE_SLACK

__all__ = [
    "INLIER_COLOR",
    "draw_caption",
    "OUTLIER_COLOR",
    "draw_keypoints",
    "draw_matches",
    "draw_score_heatmap",
    "save_gif",
    "save_image",
    "to_rgb_uint8",
]

INLIER_COLOR = (40, 220, 60)  # RGB
OUTLIER_COLOR = (235, 50, 40)
KEYPOINT_COLOR = (255, 210, 0)
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_SCALE = 1 << _SHIFT


def to_rgb_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB copy of an image.

    Takes numpy / tensor images ``(H, W)``, ``(H, W, 1|3|4)`` (numpy) or ``(1|3, H, W)`` (tensor):
    uint8 as is, uint16 scaled to 8 bits (``round(v / 257)``), float (any precision) in [0, 1] (values
    below 0 clipped, NaN as 0); a float image with values above 1 (e.g. 0–255) is a ``ValueError``
    (``extract`` refuses it too, with a ``DataError``) rather than a white picture.
    """
    if isinstance(image, torch.Tensor):
        tensor = image
        if tensor.dim() == 3:
            tensor = tensor.permute(1, 2, 0)
        array = as_numpy(tensor)
    else:
        array = as_numpy(image, "image")
    if array.dtype == np.uint16:  # v / 257 rounded half up, as kp2d reads 16-bit files
        array = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
        if array.size and np.nanmax(array) > 1.0 + FLOAT_RANGE_SLACK:
            raise InputError(
                f"float images must be in [0, 1], got values up to {np.nanmax(array):g} (divide uint8 by 255)"
            )
        array = (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise InputError(f"expected an image (H, W), (H, W, 1|3|4) or (1|3, H, W), got {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def _points(points: np.ndarray | torch.Tensor, name: str = "keypoints") -> np.ndarray:
    """Keypoints (or a :class:`~kp2d.Keypoints`' ``keypoints``) as ``(N, 2)`` float64 ``(x, y)``.

    ValueError for another shape (e.g. ``(x, y, score)`` rows, which a reshape would have scrambled);
    DataError naming ``name`` for rows holding NaN or infinity (which have no pixel to draw at).
    """
    points = np.asarray(as_numpy(getattr(points, "keypoints", points)), dtype=np.float64)
    if points.size == 0:
        return points.reshape(0, 2)
    if points.ndim == 1 and points.shape[0] == 2:  # a single keypoint
        points = points.reshape(1, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise InputError(f"{name} must have shape (N, 2) ((x, y) rows), got {points.shape}")
    check_finite_rows(name, points)
    return points


def _fixed(point: np.ndarray) -> tuple[int, int]:
    return int(round(point[0] * _SCALE)), int(round(point[1] * _SCALE))


def _score_colors(scores: np.ndarray) -> np.ndarray:
    """``(N,)`` scores → ``(N, 3)`` RGB colours (turbo colour map over the scores' range)."""
    low, high = float(scores.min()), float(scores.max())
    scaled = (scores - low) / (high - low) if high > low else np.ones_like(scores)
    gray = (scaled * 255.0 + 0.5).astype(np.uint8).reshape(-1, 1)
    return cv2.applyColorMap(gray, cv2.COLORMAP_TURBO).reshape(-1, 3)[:, ::-1]


def draw_keypoints(
    image: np.ndarray | torch.Tensor,
    keypoints: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor | None = None,
    radius: float = 3.0,
    color: tuple[int, int, int] = KEYPOINT_COLOR,
) -> np.ndarray:
    """Circles at ``keypoints (N, 2)`` ``(x, y)``; coloured by ``scores (N,)`` (turbo map) when given.

    ``keypoints`` may also be what ``extract`` returns (a :class:`~kp2d.Keypoints`).
    """
    radius = check_finite("radius", radius, above=0, unit="pixels")
    canvas = to_rgb_uint8(image).copy()
    points = _points(keypoints)
    if scores is not None and len(points):
        score_array = as_numpy(scores)
        check_finite_rows("scores", score_array.reshape(-1, 1))
        colors = [tuple(int(c) for c in rgb) for rgb in _score_colors(score_array.astype(np.float64))]
    else:
        colors = [tuple(color)] * len(points)
    for point, rgb in zip(points, colors, strict=True):
        cv2.circle(canvas, _fixed(point), int(radius * _SCALE), rgb, 1, cv2.LINE_AA, _SHIFT)
    return canvas


def draw_score_heatmap(
    image: np.ndarray | torch.Tensor,
    cell_scores: np.ndarray | torch.Tensor,
    alpha: float = 0.6,
    cell: int = 8,
    colormap: int = cv2.COLORMAP_INFERNO,
    scale_factor: float = 1.0,
) -> np.ndarray:
    """Overlay cell scores ``(Hc, Wc)`` in [0, 1] on the image, each cell covering ``cell × cell`` pixels.

    The score map covers the padded image, ``Hc = ceil(H / cell)`` (what
    :func:`~kp2d.features.extraction.score_map` gives); it is upsampled by ``cell`` (nearest: one block per
    cell, as the network sees it) and cropped to the image. A score map of
    :func:`~kp2d.features.extraction.extract_with_score_map` with ``scale_factor`` belongs
    to the resized image: pass the same ``scale_factor`` (the picture is drawn at that size and resized
    back). Colours use the fixed range [0, 1], so pictures of different images compare. The image is shown
    in gray under the colours.
    """
    alpha = check_finite("alpha", alpha, minimum=0, maximum=1)
    cell = check_integer("cell", cell)
    scale_factor = check_finite("scale_factor", scale_factor, above=0)
    canvas = to_rgb_uint8(image)
    cell_scores = np.asarray(as_numpy(cell_scores), dtype=np.float32)
    if cell_scores.ndim != 2:
        raise InputError(f"cell_scores must have shape (Hc, Wc), got {cell_scores.shape}")
    check_finite_rows("cell_scores", cell_scores)
    height, width = canvas.shape[:2]
    if scale_factor != 1:
        size = (max(1, round(width * scale_factor)), max(1, round(height * scale_factor)))
        resized = cv2.resize(canvas, size)
        picture = draw_score_heatmap(resized, cell_scores, alpha, cell, colormap)
        return cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)
    rows, cols = cell_scores.shape
    expected = (-(-height // cell), -(-width // cell))
    if (rows, cols) != expected:
        raise InputError(
            f"a {rows}x{cols} score grid does not match a {height}x{width} image with {cell}-px cells "
            f"({expected[0]}x{expected[1]}); a score map of a resized image needs its scale_factor"
        )
    dense = np.repeat(np.repeat(cell_scores, cell, axis=0), cell, axis=1)[:height, :width]
    gray = (np.clip(dense, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    heat = cv2.applyColorMap(gray, colormap)[..., ::-1]
    backdrop = cv2.cvtColor(cv2.cvtColor(canvas, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(heat, alpha, backdrop, 1.0 - alpha, 0.0)


def _put_text(canvas: np.ndarray, text: str) -> None:
    """White text on a dark box at the top-left corner (in place)."""
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1
    for row, line in enumerate(text.splitlines()):
        (w, h), baseline = cv2.getTextSize(line, font, scale, thickness)
        y = 8 + row * (h + baseline + 6)
        cv2.rectangle(canvas, (4, y - 2), (12 + w, y + h + baseline + 2), (0, 0, 0), -1)
        cv2.putText(canvas, line, (8, y + h), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def draw_caption(image: np.ndarray | torch.Tensor, text: str) -> np.ndarray:
    """A copy of the image with ``text`` (may hold several lines) in white on a dark box, top-left."""
    canvas = to_rgb_uint8(image).copy()
    _put_text(canvas, text)
    return canvas


def draw_matches(
    image0: np.ndarray | torch.Tensor,
    image1: np.ndarray | torch.Tensor,
    kpts0: np.ndarray | torch.Tensor,
    kpts1: np.ndarray | torch.Tensor,
    matches: np.ndarray | torch.Tensor,
    inlier_mask: np.ndarray | torch.Tensor | None = None,
    gap: int = 10,
    text: str | None = None,
    draw_keypoints_too: bool = True,
    max_lines: int | None = None,
) -> np.ndarray:
    """Side-by-side picture with a line per match: inliers green, outliers red (drawn first, below).

    Args:
        image0, image1: the two images (heights may differ; the shorter is padded with white).
        kpts0: ``(N0, 2)``, kpts1: ``(N1, 2)`` ``(x, y)`` pixels.
        matches: ``(M, 2)`` indices ``(i0, i1)`` (any other shape: ValueError).
        inlier_mask: ``(M,)`` bool; ``None`` draws every match as an inlier.
        gap: white pixels between the images.
        text: optional caption (may hold several lines) drawn at the top-left.
        draw_keypoints_too: also mark every keypoint with a small circle.
        max_lines: draw at most this many matches, an evenly spaced subset (``None``: all).
    """
    gap = check_integer("gap", gap, minimum=0)
    draw_keypoints_too = check_flag("draw_keypoints_too", draw_keypoints_too)
    if max_lines is not None:
        max_lines = check_integer("max_lines", max_lines)
    left, right = to_rgb_uint8(image0), to_rgb_uint8(image1)
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    offset = left.shape[1] + gap
    canvas[: right.shape[0], offset:] = right

    points0, points1 = _points(kpts0, "kpts0"), _points(kpts1, "kpts1") + np.array([offset, 0.0])
    pairs = as_match_pairs(as_numpy(matches), (len(points0), len(points1)))
    if inlier_mask is None:
        inliers = np.ones(len(pairs), dtype=bool)
    else:
        inliers = np.asarray(as_numpy(inlier_mask), dtype=bool).reshape(-1)
        if inliers.shape[0] != pairs.shape[0]:
            raise InputError(f"inlier_mask has {inliers.shape[0]} entries for {pairs.shape[0]} matches")

    if max_lines is not None and len(pairs) > max_lines:
        subset = np.unique(np.linspace(0, len(pairs) - 1, max_lines).round().astype(np.int64))
        pairs, inliers = pairs[subset], inliers[subset]
    if draw_keypoints_too:
        for point in np.concatenate([points0, points1]):
            cv2.circle(canvas, _fixed(point), 2 * _SCALE, KEYPOINT_COLOR, 1, cv2.LINE_AA, _SHIFT)
    for is_inlier in (False, True):  # outliers underneath
        color = INLIER_COLOR if is_inlier else OUTLIER_COLOR
        for i0, i1 in pairs[inliers == is_inlier]:
            start, end = _fixed(points0[i0]), _fixed(points1[i1])
            cv2.line(canvas, start, end, color, 1, cv2.LINE_AA, _SHIFT)
            cv2.circle(canvas, start, 3 * _SCALE, color, -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(canvas, end, 3 * _SCALE, color, -1, cv2.LINE_AA, _SHIFT)
    if text:
        _put_text(canvas, text)
    return canvas


def save_image(path: str | Path, image: np.ndarray | torch.Tensor) -> Path:
    """Write an RGB image (PNG, JPEG, ... by suffix), creating the folder."""
    from PIL import Image

    from kp2d.errors import DataError

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(to_rgb_uint8(image)).save(path)
    except (OSError, ValueError) as err:  # e.g. unknown suffix, read-only folder
        raise DataError(f"cannot write image {path}: {getattr(err, 'strerror', None) or err}") from None
    return path


def save_gif(
    frames: Sequence[np.ndarray | torch.Tensor],
    path: str | Path,
    duration_ms: int = 200,
    loop: int = 0,
    last_frame_ms: int | None = None,
) -> Path:
    """Write frames (same size, RGB) as an animated GIF with Pillow (adaptive palette per frame).

    Args:
        frames: at least one ``(H, W, 3)`` image.
        duration_ms: display time of each frame.
        loop: 0 loops forever.
        last_frame_ms: longer pause on the last frame (default: ``duration_ms``).
    """
    from PIL import Image

    from kp2d.errors import DataError

    images = [to_rgb_uint8(frame) for frame in frames]
    if not images:
        raise InputError("save_gif needs at least one frame")
    sizes = {image.shape for image in images}
    if len(sizes) != 1:
        raise InputError(f"all GIF frames must have the same size, got {sorted(sizes)}")
    path = Path(path)
    durations = [duration_ms] * len(images)
    if last_frame_ms is not None:
        durations[-1] = last_frame_ms
    first, *rest = (Image.fromarray(image) for image in images)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        first.save(
            path, format="GIF", save_all=True, append_images=rest, duration=durations, loop=loop,
            optimize=False,
        )
    except OSError as err:  # e.g. a read-only folder, a file where a folder should be
        raise DataError(f"cannot write GIF {path}: {err.strerror or err}") from None
    return path
