"""A tiny HPatches-format folder built from scikit-image's bundled photos (shared by the eval tests).

Layout written by :func:`make_tiny_hpatches` (reference images 240x180 unless noted):

- ``v_astronaut`` (.ppm): views 2..4 = rotation+perspective, zoom+shift, identity (exact copy).
- ``v_chelsea`` (.jpg): view 2 = mild perspective.
- ``i_coffee`` (.png): view 2 = same view darker; view 3 = same view, stored 1.25x larger (300x225).
- ``i_camera`` (.pgm, grayscale 240x180): view 2 = same view, gain 1.2.
- ``misc_chelsea`` (.jpeg): view 2 = shift; counts only in subset ``all``.
- ``notes`` (no H files): not a sequence, ignored.

So: subset ``v`` has 4 pairs, ``i`` 3, ``all`` 8.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from skimage import data

SIZE = (240, 180)  # (W, H) of the reference images

ROTATE_PERSPECTIVE = np.array([[0.97, -0.12, 22.0], [0.10, 0.96, -6.0], [2.0e-4, -1.0e-4, 1.0]])
ZOOM_SHIFT = np.array([[0.9, 0.0, 14.0], [0.0, 0.9, 9.0], [0.0, 0.0, 1.0]])
MILD_PERSPECTIVE = np.array([[1.02, 0.03, -5.0], [-0.02, 0.98, 4.0], [1.0e-4, 5.0e-5, 1.0]])
SHIFT = np.array([[1.0, 0.0, 6.0], [0.0, 1.0, -4.0], [0.0, 0.0, 1.0]])
UPSCALE = np.diag([1.25, 1.25, 1.0])

PAIRS_PER_SUBSET = {"v": 4, "i": 3, "all": 8}


def _reference(image: np.ndarray) -> np.ndarray:
    """RGB (or gray) photo → 240x180 BGR (or gray) uint8."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.resize(image, SIZE, interpolation=cv2.INTER_AREA)


def _warp(image: np.ndarray, homography: np.ndarray, size: tuple[int, int] = SIZE) -> np.ndarray:
    return cv2.warpPerspective(image, homography, size, flags=cv2.INTER_LINEAR)


def write_sequence(
    folder: Path, suffix: str, reference: np.ndarray, views: list[tuple[np.ndarray, np.ndarray]]
):
    """Write ``1<suffix>``, then ``k<suffix>`` and ``H_1_k`` for each ``(image, H)``, k = 2, 3, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(folder / f"1{suffix}"), reference)
    for k, (image, homography) in enumerate(views, start=2):
        assert cv2.imwrite(str(folder / f"{k}{suffix}"), image)
        np.savetxt(folder / f"H_1_{k}", homography)


def make_tiny_hpatches(root: Path) -> Path:
    """Write the folder described in the module docstring under ``root``; returns ``root``."""
    astronaut = _reference(data.astronaut())
    write_sequence(
        root / "v_astronaut",
        ".ppm",
        astronaut,
        [
            (_warp(astronaut, ROTATE_PERSPECTIVE), ROTATE_PERSPECTIVE),
            (_warp(astronaut, ZOOM_SHIFT), ZOOM_SHIFT),
            (astronaut.copy(), np.eye(3)),
        ],
    )
    chelsea = _reference(data.chelsea())
    write_sequence(
        root / "v_chelsea", ".jpg", chelsea, [(_warp(chelsea, MILD_PERSPECTIVE), MILD_PERSPECTIVE)]
    )
    coffee = _reference(data.coffee())
    darker = np.clip(coffee.astype(np.float32) * 0.6 + 10, 0, 255).astype(np.uint8)
    larger = cv2.resize(coffee, (300, 225), interpolation=cv2.INTER_LINEAR)
    write_sequence(root / "i_coffee", ".png", coffee, [(darker, np.eye(3)), (larger, UPSCALE)])
    camera = _reference(data.camera())
    brighter = np.clip(camera.astype(np.float32) * 1.2, 0, 255).astype(np.uint8)
    write_sequence(root / "i_camera", ".pgm", camera, [(brighter, np.eye(3))])
    write_sequence(root / "misc_chelsea", ".jpeg", chelsea, [(_warp(chelsea, SHIFT), SHIFT)])
    (root / "notes").mkdir(exist_ok=True)
    (root / "notes" / "README.txt").write_text("not a sequence\n")
    return root
