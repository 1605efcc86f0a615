"""Suppression across scales: an extra scale's keypoint gives way to a main-run keypoint at the same place.

A coarser run finds the structures of a zoomed view that the main run misses, but on a view at the main
run's scale it finds the same structures again, less precisely, and takes their places in the top-k. As
SIFT keeps one scale per structure, an extra scale's keypoint is left out where a keypoint of the main run
lies within ``radius`` pixels and scores at least as much (``extra_suppression`` in the inference settings).
"""

from __future__ import annotations

import math

import torch

from kp2d.features.dense import CELL

__all__ = ["cell_pitch_xy", "suppressed_across_scales"]


def cell_pitch_xy(image_wh: tuple[int, int], network_wh: tuple[int, int]) -> tuple[float, float]:
    """``(width, height)`` in pixels of a ``W x H`` image of one cell of the main run at ``W' x H'``."""
    return (CELL * image_wh[0] / network_wh[0], CELL * image_wh[1] / network_wh[1])


def suppressed_across_scales(
    points: torch.Tensor,
    point_scores: torch.Tensor,
    image_index: torch.Tensor,
    cell_scores: torch.Tensor,
    cell_coords: torch.Tensor,
    cell_valid: torch.Tensor,
    cell_pitch: tuple[float, float],
    radius: float,
) -> torch.Tensor:
    """``(N,)`` bool: the points a main-run keypoint of their image within ``radius`` px outscores or ties.

    The points of all the batch's images come in one set, ``image_index`` says whose each is.

    Args:
        points: ``(N, 2)`` extra-scale keypoints ``(x, y)`` in pixels of the image, of all images at once.
        point_scores: ``(N,)`` their scores (before any ``extra_weight``).
        image_index: ``(N,)`` int, which image of the batch each point belongs to.
        cell_scores: ``(B, Hc, Wc)`` the main run's cell scores.
        cell_coords: ``(B, 2, Hc, Wc)`` each main-run cell's keypoint ``(x, y)`` in pixels of the image; a
            cell's keypoint lies within its cell, so only the cells around a point are searched.
        cell_valid: ``(B, Hc, Wc)`` bool, the cells that can be keypoints.
        cell_pitch: ``(width, height)`` of a main-run cell in pixels of the image (:func:`cell_pitch_xy`).
        radius: pixels of the image; 0 suppresses nothing.
    """
    count = points.shape[0]
    if radius <= 0 or count == 0:
        return torch.zeros(count, dtype=torch.bool, device=points.device)
    _, rows, cols = cell_scores.shape
    pitch_x, pitch_y = cell_pitch
    # one cell more than the radius spans: a keypoint sits up to half a pixel outside its cell's pixels
    reach = math.ceil(radius / min(pitch_x, pitch_y)) + 1
    col = (points[:, 0] / pitch_x).floor().long()
    row = (points[:, 1] / pitch_y).floor().long()
    offsets = torch.arange(-reach, reach + 1, device=points.device)
    near_rows = (row[:, None, None] + offsets[None, :, None]).expand(count, len(offsets), len(offsets))
    near_cols = (col[:, None, None] + offsets[None, None, :]).expand(count, len(offsets), len(offsets))
    inside = (near_rows >= 0) & (near_rows < rows) & (near_cols >= 0) & (near_cols < cols)
    in_image = near_rows.clamp(0, rows - 1) * cols + near_cols.clamp(0, cols - 1)
    near = (image_index.long()[:, None, None] * (rows * cols) + in_image).flatten(1)  # (N, k*k)
    near_x = cell_coords[:, 0].flatten()[near] - points[:, :1]
    near_y = cell_coords[:, 1].flatten()[near] - points[:, 1:]
    stronger = cell_scores.flatten()[near] >= point_scores[:, None]
    close = near_x * near_x + near_y * near_y <= radius * radius
    hit = inside.flatten(1) & cell_valid.flatten()[near] & stronger & close
    return hit.any(dim=1)
