"""Keypoints picked from dense maps: score threshold, grid NMS, top-k."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from kp2d.checks import check_finite
from kp2d.errors import ConfigError, InputError
from kp2d.features.dense import CELL
from kp2d.geometry import cell_centers

__all__ = ["grid_nms", "select_keypoints"]


def _check_selection(top_k: int | None, nms_radius: float, score_threshold: float = 0.0) -> None:
    """ConfigError unless the selection options are usable.

    ``top_k``: None or an integer >= 1 (numpy integers too; not bool); ``nms_radius``: a number >= 0
    (infinity keeps the best keypoint alone); ``score_threshold``: a finite number, as ``--score-threshold``
    (NaN would select nothing, infinity nothing or everything).
    """
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1
    ):
        raise ConfigError(f"top_k must be a positive integer or None, got {top_k!r}")
    if isinstance(nms_radius, bool) or not isinstance(nms_radius, numbers.Real) or not nms_radius >= 0:
        raise ConfigError(f"nms_radius must be >= 0 pixels, got {nms_radius!r}")
    check_finite("score_threshold", score_threshold)


def grid_nms(
    scores: torch.Tensor,
    coords: torch.Tensor,
    candidates: torch.Tensor,
    radius: float,
    cell: int = CELL,
) -> torch.Tensor:
    """Greedy non-maximum suppression of one keypoint per grid cell, vectorised over the grid.

    A keypoint is kept when no *kept* keypoint with a higher score (ties: lower flat cell index) lies within
    ``radius`` pixels; this equals visiting keypoints by decreasing score. Each round keeps every candidate
    that has no undecided higher-scoring neighbour and removes the candidates near them, so a round costs
    one ``unfold`` of the grid; chains of overlapping keypoints need a few rounds.

    Neighbours are searched in a window of cells wide enough for any keypoint offset present in
    ``coords`` (keypoints may sit up to ``2 * 3.5`` px from their cell centre), so the result is exact.

    Args:
        scores: ``(B, Hc, Wc)``.
        coords: ``(B, 2, Hc, Wc)`` keypoint ``(x, y)`` in pixels, one per ``cell``-pixel cell.
        candidates: ``(B, Hc, Wc)`` bool, the keypoints taking part (e.g. score above threshold).
        radius: suppression radius in pixels (> 0).

    Returns:
        ``(B, Hc, Wc)`` bool, the kept keypoints (a subset of ``candidates``).
    """
    batch, rows, cols = scores.shape
    if coords.shape != (batch, 2, rows, cols) or candidates.shape != scores.shape:
        raise InputError(
            f"expected scores (B, Hc, Wc), coords (B, 2, Hc, Wc), candidates (B, Hc, Wc); got "
            f"{tuple(scores.shape)}, {tuple(coords.shape)}, {tuple(candidates.shape)}"
        )
    if batch * rows * cols == 0 or not candidates.any():
        return candidates.clone()
    centers = cell_centers(batch, rows, cols, cell, device=coords.device, dtype=coords.dtype)
    max_offset = float((coords - centers).abs().amax())
    reach = (radius + 2 * max_offset) / cell  # cells
    if reach >= max(rows, cols):  # the window would cover the whole grid (or radius = inf)
        if radius >= math.hypot(rows * cell, cols * cell) + 2 * max_offset:
            return _best_candidate(scores, candidates)  # every keypoint suppresses every other
        reach = max(rows, cols)
    span = int(math.floor(reach))
    if span == 0:  # no two keypoints of different cells can be that close
        return candidates.clone()
    window = 2 * span + 1
    center_index = window * window // 2

    def neighbours(grid: torch.Tensor) -> torch.Tensor:
        """``(B, C, Hc, Wc)`` → ``(B, C, K, Hc*Wc)``: the ``K = window²`` neighbours of each cell."""
        unfolded = F.unfold(grid.float(), kernel_size=window, padding=span)
        return unfolded.view(batch, grid.shape[1], window * window, rows * cols)

    flat_scores = scores.reshape(batch, 1, rows * cols)
    flat_coords = coords.reshape(batch, 2, 1, rows * cols)
    exists = neighbours(torch.ones_like(scores[:, None]))[:, 0] > 0
    nb_coords = neighbours(coords)
    distance = (nb_coords - flat_coords).norm(dim=1)  # (B, K, L)
    close = exists & (distance <= radius)
    close[:, center_index] = False
    nb_scores = neighbours(scores[:, None])[:, 0]
    earlier = torch.arange(window * window, device=scores.device).view(1, -1, 1) < center_index
    beaten = close & ((nb_scores > flat_scores) | ((nb_scores == flat_scores) & earlier))

    alive = candidates.reshape(batch, rows * cols).clone()
    kept = torch.zeros_like(alive)
    while alive.any():
        alive_nb = neighbours(alive.view(batch, 1, rows, cols))[:, 0] > 0
        newly_kept = alive & ~(alive_nb & beaten).any(dim=1)
        kept |= newly_kept
        kept_nb = neighbours(newly_kept.view(batch, 1, rows, cols))[:, 0] > 0
        suppressed = (kept_nb & close).any(dim=1)
        alive &= ~(newly_kept | suppressed)
    return kept.view(batch, rows, cols)


def _best_candidate(scores: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``(B, Hc, Wc)`` bool: per image the highest-scoring candidate alone (ties: lower flat index)."""
    batch = scores.shape[0]
    flat = scores.reshape(batch, -1).masked_fill(~candidates.reshape(batch, -1), -math.inf)
    kept = torch.zeros_like(candidates.reshape(batch, -1))
    kept.scatter_(1, flat.argmax(dim=1, keepdim=True), True)
    return (kept & candidates.reshape(batch, -1)).view_as(candidates)


def select_keypoints(
    scores: torch.Tensor,
    coords: torch.Tensor,
    top_k: int | None = 1000,
    score_threshold: float = 0.0,
    nms_radius: float = 0,
    valid: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Pick keypoints from dense maps: threshold, optional NMS, then the ``top_k`` best.

    Args:
        scores: ``(B, Hc, Wc)`` scores.
        coords: ``(B, 2, Hc, Wc)`` keypoint ``(x, y)`` in pixels.
        top_k: keep at most this many per image (``None``: all).
        score_threshold: keep cells with ``score > score_threshold``.
        nms_radius: pixels; 0 disables NMS (see :func:`grid_nms`).
        valid: optional ``(B, Hc, Wc)`` bool mask of usable cells (e.g. keypoint inside the image).

    Returns:
        Per image, the flat cell indices (into ``Hc * Wc``) of the kept keypoints, by decreasing score.
    """
    _check_selection(top_k, nms_radius, score_threshold)
    if scores.dim() != 3:
        raise InputError(f"scores must have shape (B, Hc, Wc), got {tuple(scores.shape)}")
    keep = scores > score_threshold
    if valid is not None:
        keep &= valid
    if nms_radius > 0:
        keep = grid_nms(scores, coords, keep, float(nms_radius))
    flat = scores.reshape(scores.shape[0], -1).masked_fill(~keep.reshape(scores.shape[0], -1), -math.inf)
    count = flat.shape[1] if top_k is None else min(int(top_k), flat.shape[1])
    values, indices = flat.topk(count, dim=1, largest=True, sorted=True)
    return [idx[val > -math.inf] for idx, val in zip(indices, values, strict=True)]
