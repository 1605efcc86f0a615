"""Suppression across scales: an extra scale's keypoint gives way to a main-run keypoint at the same place.

A coarser run finds the structures of a zoomed view that the main run misses, but on a view at the main
run's scale it finds the same structures again, less precisely, and takes their places in the top-k. As
SIFT keeps one scale per structure, an extra scale's keypoint is left out where a keypoint of the main run
lies within ``radius`` pixels and scores at least as much (``extra_suppression`` in the inference settings).
"""

from __future__ import annotations

import math

import torch

__all__ = ["suppressed_across_scales"]


def suppressed_across_scales(
    points: torch.Tensor,
    point_scores: torch.Tensor,
    cell_scores: torch.Tensor,
    cell_coords: torch.Tensor,
    cell_valid: torch.Tensor,
    cell_pitch_xy: tuple[float, float],
    radius: float,
) -> torch.Tensor:
    """``(N,)`` bool: the points with a main-run cell keypoint within ``radius`` px scoring at least theirs.

    Args:
        points: ``(N, 2)`` extra-scale keypoints ``(x, y)`` in pixels of the image.
        point_scores: ``(N,)`` their scores (before any ``extra_weight``).
        cell_scores: ``(Hc, Wc)`` the main run's cell scores.
        cell_coords: ``(2, Hc, Wc)`` each main-run cell's keypoint ``(x, y)`` in pixels of the image; a
            cell's keypoint lies within its cell, so only the cells around a point are searched.
        cell_valid: ``(Hc, Wc)`` bool, the cells that can be keypoints.
        cell_pitch_xy: ``(width, height)`` of a main-run cell in pixels of the image (8 network pixels).
        radius: pixels of the image; 0 suppresses nothing.
    """
    count = points.shape[0]
    if radius <= 0 or count == 0:
        return torch.zeros(count, dtype=torch.bool, device=points.device)
    rows, cols = cell_scores.shape
    pitch_x, pitch_y = cell_pitch_xy
    # one cell more than the radius spans: a keypoint sits up to half a pixel outside its cell's pixels
    reach = math.ceil(radius / min(pitch_x, pitch_y)) + 1
    col = (points[:, 0] / pitch_x).floor().long()
    row = (points[:, 1] / pitch_y).floor().long()
    offsets = torch.arange(-reach, reach + 1, device=points.device)
    near_rows = (row[:, None, None] + offsets[None, :, None]).expand(count, len(offsets), len(offsets))
    near_cols = (col[:, None, None] + offsets[None, None, :]).expand(count, len(offsets), len(offsets))
    inside = (near_rows >= 0) & (near_rows < rows) & (near_cols >= 0) & (near_cols < cols)
    near = (near_rows.clamp(0, rows - 1) * cols + near_cols.clamp(0, cols - 1)).flatten(1)  # (N, k*k)
    near_x = cell_coords[0].flatten()[near] - points[:, :1]
    near_y = cell_coords[1].flatten()[near] - points[:, 1:]
    stronger = cell_scores.flatten()[near] >= point_scores[:, None]
    close = near_x * near_x + near_y * near_y <= radius * radius
    hit = inside.flatten(1) & cell_valid.flatten()[near] & stronger & close
    return hit.any(dim=1)
