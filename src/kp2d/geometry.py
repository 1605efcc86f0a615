"""Coordinates, homographies and warping.

One convention everywhere: points are ``(x, y)`` in the last dimension. Pixel coordinates run from 0 to
``W - 1`` / ``H - 1``; normalised coordinates run from -1 to 1 over the same range (the
``align_corners=True`` convention of :func:`torch.nn.functional.grid_sample`), so
``x_norm = x / ((W - 1) / 2) - 1``.

Homographies are ``(3, 3)`` or batched ``(B, 3, 3)``; :func:`warp_points` maps ``(B, N, 2)`` points.

Image sizes: a name ending in ``_wh`` (or ``size`` alone: ``Keypoints.image_size``, ``--size``, every
``--shape`` option) holds ``(W, H)``, OpenCV's and PIL's order; one ending in ``_hw`` (or ``shape``:
``augmentation.image_shape``, tensor shapes) holds ``(H, W)``. Functions take ``height, width`` apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from kp2d.errors import InputError

__all__ = [
    "HomographySamplerConfig",
    "cell_centers",
    "denormalize_points",
    "normalize_points",
    "rotation_about_center",
    "sample_homographies",
    "scale_homography",
    "warp_points",
    "warp_points_numpy",
]


def normalize_points(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel ``(..., 2)`` ``(x, y)`` → normalised ``[-1, 1]`` (align_corners=True): ``x / ((W - 1) / 2) - 1``.

    The one pixel → grid conversion of the package. Written per coordinate with the sizes as plain numbers
    so that an ONNX export keeps them symbolic (a constant tensor would freeze the example's size).
    """
    x, y = points.unbind(-1)
    return torch.stack([x / ((width - 1) / 2.0) - 1.0, y / ((height - 1) / 2.0) - 1.0], dim=-1)


def denormalize_points(points: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Normalised ``(..., 2)`` ``(x, y)`` in ``[-1, 1]`` → pixels (inverse of :func:`normalize_points`)."""
    x, y = points.unbind(-1)
    return torch.stack([(x + 1.0) * ((width - 1) / 2.0), (y + 1.0) * ((height - 1) / 2.0)], dim=-1)


def warp_points(points: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """Apply homographies to points.

    Args:
        points: ``(B, N, 2)`` or ``(N, 2)`` ``(x, y)``.
        homography: ``(B, 3, 3)`` or ``(3, 3)``.

    Returns:
        Warped points: ``points``' shape, broadcast against the homographies' batch (``(N, 2)`` points and
        ``(B, 3, 3)`` homographies give ``(B, N, 2)``).
    """
    if points.shape[-1] != 2:
        raise InputError(f"points must have shape (..., 2), got {tuple(points.shape)}")
    if homography.shape[-2:] != (3, 3):
        raise InputError(f"homography must have shape (..., 3, 3), got {tuple(homography.shape)}")
    linear = homography[..., :, :2].transpose(-1, -2)  # (B, 2, 3)
    offset = homography[..., :, 2].unsqueeze(-2)  # (B, 1, 3)
    projected = points @ linear + offset
    return projected[..., :2] / projected[..., 2:]


def warp_points_numpy(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """Apply one ``(3, 3)`` homography to ``(N, 2)`` ``(x, y)`` points in float64 (evaluation path)."""
    homogeneous = np.concatenate([points, np.ones((points.shape[0], 1))], axis=1)
    projected = homogeneous @ homography.T
    return projected[:, :2] / projected[:, 2:]


def cell_centers(
    batch: int, rows: int, cols: int, cell: int = 8, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """Pixel centres of the cells of a ``rows x cols`` grid of ``cell``-pixel cells.

    Returns:
        ``(B, 2, rows, cols)``: ``x = cell * j + (cell - 1) / 2``, ``y = cell * i + (cell - 1) / 2``.
    """
    ys = torch.arange(rows, device=device, dtype=dtype)
    xs = torch.arange(cols, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    centers = torch.stack([grid_x, grid_y], dim=0) * cell + (cell - 1) / 2.0
    return centers.unsqueeze(0).expand(batch, 2, rows, cols)


def rotation_about_center(
    angle_deg: float, height: int, width: int, *, device=None, dtype=torch.float32
) -> torch.Tensor:
    """``(3, 3)`` pixel homography that turns an ``H x W`` image by ``angle_deg`` about its centre.

    Positive angles turn the picture counter-clockwise as displayed (``y`` down), OpenCV's
    ``getRotationMatrix2D`` convention; the centre is ``((W - 1) / 2, (H - 1) / 2)``.
    """
    angle = math.radians(angle_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
    return torch.tensor(
        [
            [cos, sin, center_x - cos * center_x - sin * center_y],
            [-sin, cos, center_y + sin * center_x - cos * center_y],
            [0.0, 0.0, 1.0],
        ],
        device=device,
        dtype=dtype,
    )


def scale_homography(
    homography: np.ndarray,
    size1: tuple[int, int],
    size2: tuple[int, int],
    new_size: tuple[int, int],
) -> np.ndarray:
    """Rescale a pixel homography image 1 → image 2 to images resized to ``new_size``.

    ``H' = S2 @ H @ inv(S1)`` with ``S_i = diag(new_w / w_i, new_h / h_i, 1)``. Sizes are ``(W, H)``.
    """
    scale1 = np.diag([new_size[0] / size1[0], new_size[1] / size1[1], 1.0])
    scale2 = np.diag([new_size[0] / size2[0], new_size[1] / size2[1], 1.0])
    return scale2 @ homography @ np.linalg.inv(scale1)


@dataclass(frozen=True)
class HomographySamplerConfig:
    """Parameters of the random homography of self-supervised training (SPEC appendix A)."""

    patch_ratio: float = 0.7
    perspective_amplitude: float = 0.4
    scaling_amplitude: float = 0.2
    max_angle: float = math.pi / 4
    n_angles: int = 100
    perspective: bool = True
    scaling: bool = True
    translation: bool = True
    rotation: bool = True


_UNIT_CORNERS = ((-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0))


def _homography_from_corners(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Solve the 4-point DLT: ``(B, 4, 2)`` → ``(B, 4, 2)``, returns ``(B, 3, 3)`` with ``h33 = 1``."""
    x, y = src.unbind(-1)
    u, v = dst.unbind(-1)
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -x * u, -y * u], dim=-1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -x * v, -y * v], dim=-1)
    system = torch.stack([rows_u, rows_v], dim=2).reshape(-1, 8, 8)
    rhs = torch.stack([u, v], dim=2).reshape(-1, 8, 1)
    solution = torch.linalg.solve(system, rhs).squeeze(-1)
    return torch.cat([solution, torch.ones_like(solution[:, :1])], dim=1).view(-1, 3, 3)


def _uniform(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    draw = torch.rand(low.shape, generator=generator, dtype=low.dtype, device=low.device)
    return low + (high - low) * draw


def sample_homographies(
    batch: int,
    height: int,
    width: int,
    config: HomographySamplerConfig = HomographySamplerConfig(),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw random homographies, source-normalised → target-normalised (SPEC appendix A).

    The unit square's corners map to a random patch of the target (perspective, scale, translation and
    rotation that keep the patch inside). Computed in float64 on the CPU (tiny), returned as float32.

    Returns:
        ``(B, 3, 3)`` float32.
    """
    f64 = torch.float64
    ratio = height / width
    bounds = torch.tensor([1.0, ratio], dtype=f64)
    corners = torch.tensor(_UNIT_CORNERS, dtype=f64)
    patch = (corners * config.patch_ratio).repeat(batch, 1, 1)
    patch[..., 1] *= ratio

    def normal(std: float, shape) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=f64) * std

    if config.perspective:
        half = config.perspective_amplitude / 2
        dx = normal(half, (batch, 2)).clamp(-half, half)
        dy = normal(ratio * half, (batch, 2)).clamp(-ratio * half, ratio * half)
        patch[:, 0, 0] -= dx[:, 1]
        patch[:, 0, 1] -= dy[:, 1]
        patch[:, 1, 0] -= dx[:, 0]
        patch[:, 1, 1] += dy[:, 1]
        patch[:, 2, 0] += dx[:, 1]
        patch[:, 2, 1] -= dy[:, 0]
        patch[:, 3, 0] += dx[:, 0]
        patch[:, 3, 1] += dy[:, 0]

    if config.scaling:
        half = config.scaling_amplitude / 2
        scale = (1.0 + normal(half, (batch, 1, 1))).clamp(1 - half, 1 + half)
        center = patch.mean(dim=1, keepdim=True)
        patch = (patch - center) * scale + center

    if config.translation:
        t_min = (patch + bounds).amin(dim=1)  # room towards -1 / -r, (B, 2)
        t_max = (bounds - patch).amin(dim=1)  # room towards +1 / +r
        patch = patch + _uniform(-t_min, t_max, generator).unsqueeze(1)

    if config.rotation:
        candidates = torch.linspace(-config.max_angle, config.max_angle, config.n_angles, dtype=f64)
        angles = torch.cat([torch.zeros(1, dtype=f64), candidates])
        cos, sin = angles.cos(), angles.sin()
        rotation = torch.stack([cos, -sin, sin, cos], dim=1).view(1, -1, 2, 2)  # (1, A, 2, 2)
        center = patch.mean(dim=1, keepdim=True)  # (B, 1, 2)
        rotated = ((patch - center).unsqueeze(1) @ rotation) + center.unsqueeze(1)  # (B, A, 4, 2)
        inside = ((rotated >= -bounds) & (rotated < bounds)).flatten(2).all(dim=2)  # (B, A)
        inside[:, 0] = True  # the unrotated patch is always allowed
        choice = torch.multinomial(inside.to(f64), 1, generator=generator).squeeze(1)
        patch = rotated[torch.arange(batch), choice]

    patch[..., 1] /= ratio
    return _homography_from_corners(corners.expand(batch, 4, 2), patch).float()
