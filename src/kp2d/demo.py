"""A demo image pair made in memory: a bundled photo and the same photo warped by a known homography.

The photos ship inside the scikit-image wheel, so the demo needs no data folder and no network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kp2d.errors import ConfigError

__all__ = ["DEMO_PHOTOS", "DemoPair", "demo_homography", "demo_pair"]

# photos stored in scikit-image's package folder (loaded without pooch / downloads)
DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")

# where the corners (0,0), (W-1,0), (W-1,H-1), (0,H-1) go, as fractions of (W-1, H-1): a rotation of
# about 8 degrees, a zoom out to ~0.8 and a visible perspective (the right side recedes)
_WARPED_CORNERS = ((0.10, 0.04), (0.90, 0.16), (0.84, 0.86), (0.06, 0.96))


@dataclass(frozen=True)
class DemoPair:
    """Two views of one photo.

    Attributes:
        image0: ``(H, W, 3)`` uint8 RGB, the photo.
        image1: ``(H, W, 3)`` uint8 RGB, the photo warped by ``homography`` (black outside it).
        homography: ``(3, 3)`` float64, image-0 pixels → image-1 pixels.
        name: the scikit-image photo.
    """

    image0: np.ndarray
    image1: np.ndarray
    homography: np.ndarray
    name: str


def demo_homography(width: int, height: int) -> np.ndarray:
    """The demo's ``(3, 3)`` homography for an image of ``width x height`` pixels."""
    import cv2

    size = np.array([width - 1, height - 1], dtype=np.float64)
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64) * size
    warped = np.array(_WARPED_CORNERS, dtype=np.float64) * size
    return cv2.getPerspectiveTransform(corners.astype(np.float32), warped.astype(np.float32)).astype(
        np.float64
    )


def demo_pair(name: str = "astronaut") -> DemoPair:
    """The photo ``name`` (one of :data:`DEMO_PHOTOS`) and its warped copy."""
    import cv2
    from skimage import data

    if name not in DEMO_PHOTOS:
        raise ConfigError(f"unknown demo photo '{name}' (use one of {', '.join(DEMO_PHOTOS)})")
    image0 = np.ascontiguousarray(getattr(data, name)()[..., :3])
    height, width = image0.shape[:2]
    homography = demo_homography(width, height)
    image1 = cv2.warpPerspective(
        image0,
        homography,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return DemoPair(image0, image1, homography, name)
