"""Keypoint tracks through a video: persistent ids from frame-to-frame matching.

The user story::

    for frame in kp2d.track(frames, top_k=1000):      # frames: RGB (H, W, 3) uint8 arrays, any iterable
        frame.keypoints, frame.track_ids, frame.is_new  # (N, 2) pixels, (N,) ids, (N,) bool

Each frame's keypoints are matched to the previous processed frame's by mutual nearest neighbours on
descriptors; the matches are then checked against one robust two-view model (``geometry``):

* ``"homography"`` (default): a RANSAC homography, inliers within ``threshold`` px. Between consecutive
  video frames the camera moves little, so a panning / zooming / rotating camera or a mostly distant or
  planar scene maps frame t−1 onto frame t by a homography; it checks each match's *position* (2
  constraints per match), so a wrong match is caught wherever it lands. It also holds when the camera
  does not move at all, where a fundamental matrix is undefined.
* ``"fundamental"``: a RANSAC fundamental matrix, for a moving camera in a deep 3-D scene (parallax); it only
  checks that a match lies on its epipolar line (1 constraint), so wrong matches along that line pass.
* ``"none"``: every mutual match is kept (objects moving independently of the camera keep their ids).

A keypoint whose match passes inherits its predecessor's track id; every other keypoint starts a new track.
``None`` in ``frames`` stands for a frame that could not be read: it is skipped (its index still counts) and
the next frame is matched to the last good one, so ids stay consistent.

By default :func:`track` tracks *guided* (:class:`GuidedTracker`, homography only): tracks moved by the
frame-to-frame homography continue at any cell keypoint of the network's output near the prediction, not
only at the top-k keypoints.

:class:`Tracker` holds the plain logic for any features (:meth:`Tracker.step` for descriptors,
:meth:`Tracker.link` for correspondences found otherwise, e.g. optical flow), so baselines run through the
same code (``benchmarks/track.py``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from kp2d.checks import check_finite, check_integer
from kp2d.errors import ConfigError, DataError
from kp2d.geometry import warp_points_numpy
from kp2d.io.inference import model_interpolation, model_scale_factor

if TYPE_CHECKING:
    from kp2d.features.extraction import Backend
    from kp2d.models import KeyPointNet

__all__ = [
    "GEOMETRIES",
    "DenseFrame",
    "GuidedTracker",
    "TrackedFrame",
    "Tracker",
    "check_geometric",
    "dense_frame",
    "mutual_nearest",
    "track",
]

log = logging.getLogger(__name__)

GEOMETRIES = ("homography", "fundamental", "none")
_MIN_MATCHES = {"homography": 4, "fundamental": 8, "none": 0}


@dataclass(eq=False)
class TrackedFrame:
    """The tracked keypoints of one frame (numpy arrays, on the CPU).

    Attributes:
        index: position of the frame in the input (counting skipped and unreadable frames).
        keypoints: ``(N, 2)`` float32 ``(x, y)`` in pixels of the frame.
        scores: ``(N,)`` float32 detection scores.
        track_ids: ``(N,)`` int64 persistent ids (0, 1, 2, ... in order of appearance).
        is_new: ``(N,)`` bool, True where the track starts in this frame.
        previous: ``(N,)`` int64 index of the keypoint in the previous tracked frame, -1 for new tracks
            and for tracks resumed after frames in which they were not found.
        num_matches: mutual matches with the previous tracked frame (before the geometric check).
        num_inliers: matches that passed the geometric check (= tracks continued; guided tracking
            continues more, through the dense output).
        image_size: ``(W, H)``.
        seconds: time spent on this frame (extraction, matching, check).
        image: the frame as given to :func:`track` (``None`` from :meth:`Tracker.link`), for drawing.
    """

    index: int
    keypoints: np.ndarray
    scores: np.ndarray
    track_ids: np.ndarray
    is_new: np.ndarray
    previous: np.ndarray
    num_matches: int
    num_inliers: int
    image_size: tuple[int, int]
    seconds: float = 0.0
    image: np.ndarray | torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.track_ids)


def mutual_nearest(desc0: torch.Tensor, desc1: torch.Tensor) -> torch.Tensor:
    """``(M, 2)`` pairs ``(i0, i1)`` of ``desc0 (N0, D)`` and ``desc1 (N1, D)`` that are each other's nearest.

    Euclidean nearest neighbours from one matrix product (``|a - b|² = |a|² + |b|² - 2 a·b``; the row's own
    ``|a|²`` does not change its nearest), the same pairs as :func:`kp2d.match` for a fraction of the work.
    """
    if len(desc0) == 0 or len(desc1) == 0:
        return torch.zeros((0, 2), dtype=torch.long, device=desc0.device)
    desc0, desc1 = desc0.float(), desc1.float()
    score = 2.0 * desc0 @ desc1.T  # larger is nearer, after subtracting the other side's squared norm
    nearest1 = (score - desc1.square().sum(1)[None]).argmax(1)
    nearest0 = (score - desc0.square().sum(1)[:, None]).argmax(0)
    index0 = torch.arange(len(desc0), device=desc0.device)
    mutual = nearest0[nearest1] == index0
    return torch.stack([index0[mutual], nearest1[mutual]], dim=1)


def _fit(
    points0: np.ndarray, points1: np.ndarray, geometry: str, threshold: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Inlier mask ``(M,)`` and the fitted model (3x3 homography / fundamental matrix, or ``None``)."""
    import cv2

    if geometry not in GEOMETRIES:
        raise ConfigError(f"unknown geometry '{geometry}' (choose from {', '.join(GEOMETRIES)})")
    count = len(points0)
    if geometry == "none":
        return np.ones(count, dtype=bool), None
    if count < _MIN_MATCHES[geometry]:
        return np.zeros(count, dtype=bool), None
    src, dst = points0.astype(np.float64), points1.astype(np.float64)
    if geometry == "homography":
        model, mask = cv2.findHomography(src, dst, cv2.RANSAC, threshold, maxIters=2000, confidence=0.995)
    else:
        model, mask = cv2.findFundamentalMat(src, dst, cv2.FM_RANSAC, threshold, 0.995, 2000)
    if model is None or mask is None or model.shape != (3, 3) or not np.isfinite(model).all():
        return np.zeros(count, dtype=bool), None
    return mask.ravel()[:count].astype(bool), model


def check_geometric(
    points0: np.ndarray, points1: np.ndarray, geometry: str = "homography", threshold: float = 3.0
) -> np.ndarray:
    """``(M,)`` bool: which correspondences ``points0[i] -> points1[i]`` (each ``(M, 2)``) fit one model.

    ``geometry``: see the module docstring. Too few correspondences for the model (4 / 8) or no consensus
    gives all False.
    """
    return _fit(points0, points1, geometry, threshold)[0]


class Tracker:
    """Persistent track ids over a stream of frames' features (see the module docstring).

    Args:
        geometry: ``"homography"``, ``"fundamental"`` or ``"none"``.
        threshold: inlier threshold of the geometric check, pixels.
        memory: with descriptors and ``"homography"``, a track not found in a frame is kept this many
            frames (its position carried by the estimated homographies) and resumed when an unmatched
            keypoint is its mutual nearest neighbour within ``threshold`` of that position; a detector
            misses a point in one frame and finds it again in the next, which would otherwise end the track.
    """

    def __init__(self, geometry: str = "homography", threshold: float = 3.0, memory: int = 5) -> None:
        if geometry not in GEOMETRIES:
            raise ConfigError(f"unknown geometry '{geometry}' (choose from {', '.join(GEOMETRIES)})")
        self.geometry = geometry
        self.threshold = check_finite("threshold", threshold, above=0, unit="pixels")
        self.memory = check_integer("memory", memory, minimum=0)
        self.next_id = 0
        self._points: np.ndarray | None = None  # previous tracked frame's (N, 2), ids (N,), descriptors
        self._ids = np.zeros(0, dtype=np.int64)
        self._descriptors: torch.Tensor | None = None
        # lost tracks: position in the previous frame's pixels, id, last descriptor, frames since seen
        self._lost_points = np.zeros((0, 2), dtype=np.float32)
        self._lost_ids = np.zeros(0, dtype=np.int64)
        self._lost_descriptors: torch.Tensor | None = None
        self._lost_age = np.zeros(0, dtype=np.int64)

    def step(
        self,
        index: int,
        keypoints: np.ndarray,
        scores: np.ndarray,
        descriptors: torch.Tensor,
        image_size: tuple[int, int],
    ) -> TrackedFrame:
        """Track one frame: mutual nearest neighbours on ``descriptors (N, D)``, then :meth:`link`."""
        if self._descriptors is None:
            matches = np.zeros((0, 2), dtype=np.int64)
        else:
            matches = mutual_nearest(self._descriptors, descriptors).cpu().numpy()
        return self.link(index, keypoints, scores, matches, image_size, descriptors)

    def link(
        self,
        index: int,
        keypoints: np.ndarray,
        scores: np.ndarray,
        matches: np.ndarray,
        image_size: tuple[int, int],
        descriptors: torch.Tensor | None = None,
    ) -> TrackedFrame:
        """Track one frame given ``matches (M, 2)``: ``(i_prev, i_cur)`` pairs with the previous frame.

        Pairs that fail the geometric check are dropped; ``keypoints[i_cur]`` of the others inherit the
        previous keypoint's id; with ``descriptors (N, D)``, lost tracks may be resumed (see ``memory``);
        every other keypoint gets a new id.
        """
        keypoints = np.asarray(keypoints, dtype=np.float32).reshape(-1, 2)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        matches = np.asarray(matches, dtype=np.int64).reshape(-1, 2)
        previous = np.full(len(keypoints), -1, dtype=np.int64)
        inliers, model = np.zeros(len(matches), dtype=bool), None
        if self._points is not None and len(matches):
            inliers, model = _fit(
                self._points[matches[:, 0]], keypoints[matches[:, 1]], self.geometry, self.threshold
            )
            previous[matches[inliers, 1]] = matches[inliers, 0]
        ids = np.full(len(keypoints), -1, dtype=np.int64)
        ids[previous >= 0] = self._ids[previous[previous >= 0]]
        if descriptors is not None and self.memory and self.geometry == "homography":
            self._resume(ids, keypoints, descriptors, model)
        is_new = ids < 0
        ids[is_new] = self.next_id + np.arange(int(is_new.sum()))
        self.next_id += int(is_new.sum())
        self._points, self._ids, self._descriptors = keypoints, ids, descriptors
        return TrackedFrame(
            index=index,
            keypoints=keypoints,
            scores=scores,
            track_ids=ids,
            is_new=is_new,
            previous=previous,
            num_matches=len(matches),
            num_inliers=int(inliers.sum()),
            image_size=(int(image_size[0]), int(image_size[1])),
        )

    def _resume(
        self, ids: np.ndarray, keypoints: np.ndarray, descriptors: torch.Tensor, homography: np.ndarray | None
    ) -> None:
        """Give unmatched keypoints (``ids < 0``, set in place) the id of a lost track found again.

        Then update the lost tracks: the previous frame's tracks not continued join them, all move to this
        frame's pixels by ``homography`` (none: the buffer is dropped, positions cannot be carried), and
        those older than ``memory`` frames are forgotten.
        """
        if homography is None or self._descriptors is None:
            self._lost_points = np.zeros((0, 2), dtype=np.float32)
            self._lost_ids = np.zeros(0, dtype=np.int64)
            self._lost_descriptors, self._lost_age = None, np.zeros(0, dtype=np.int64)
            return
        continued = np.isin(self._ids, ids)
        points = np.concatenate([self._lost_points, self._points[~continued]])
        lost_ids = np.concatenate([self._lost_ids, self._ids[~continued]])
        age = np.concatenate([self._lost_age, np.zeros(int((~continued).sum()), dtype=np.int64)]) + 1
        mask = torch.as_tensor(~continued, device=self._descriptors.device)
        parts = [self._descriptors[mask]]
        if self._lost_descriptors is not None:
            parts.insert(0, self._lost_descriptors.to(self._descriptors.device))
        lost_descriptors = torch.cat(parts)
        with np.errstate(divide="ignore", invalid="ignore"):  # a point sent to infinity is simply not resumed
            points = warp_points_numpy(points, homography).astype(np.float32)
        unmatched = np.flatnonzero(ids < 0)
        found = np.zeros(len(lost_ids), dtype=bool)
        if len(unmatched) and len(lost_ids):
            pairs = mutual_nearest(
                lost_descriptors, descriptors[torch.as_tensor(unmatched, device=descriptors.device)]
            ).cpu().numpy()
            near = np.linalg.norm(points[pairs[:, 0]] - keypoints[unmatched[pairs[:, 1]]], axis=1)
            pairs = pairs[near <= self.threshold]
            ids[unmatched[pairs[:, 1]]] = lost_ids[pairs[:, 0]]
            found[pairs[:, 0]] = True
        keep = ~found & (age <= self.memory) & np.isfinite(points).all(1)
        self._lost_points, self._lost_ids, self._lost_age = points[keep], lost_ids[keep], age[keep]
        self._lost_descriptors = lost_descriptors[torch.as_tensor(keep, device=lost_descriptors.device)]

    def keep(self, mask: np.ndarray) -> None:
        """Forget the last frame's keypoints outside ``mask (N,)``: the next frame cannot continue them."""
        self._points, self._ids = self._points[mask], self._ids[mask]
        if self._descriptors is not None:
            self._descriptors = self._descriptors[torch.as_tensor(mask, device=self._descriptors.device)]


class DenseFrame(NamedTuple):
    """Every cell's keypoint of one frame, the network's dense output in frame pixels.

    Attributes:
        coords: ``(C, 2)`` float32 keypoint ``(x, y)`` of each of the ``C = Hc * Wc`` cells.
        scores: ``(C,)`` float32 scores.
        descriptors: ``(C, D)`` unit-norm descriptors (torch, on the model's device).
        valid: ``(C,)`` bool, cells that hold a usable keypoint (not a border cell, inside the image).
        grid: ``(Hc, Wc)``.
        cell: ``(sx, sy)``, frame pixels per network pixel times the cell size: one cell's extent.
        selected: ``(K,)`` int64 cell indices of the frame's top-k keypoints, by decreasing score.
    """

    coords: np.ndarray
    scores: np.ndarray
    descriptors: torch.Tensor
    valid: np.ndarray
    grid: tuple[int, int]
    cell: tuple[float, float]
    selected: np.ndarray


def dense_frame(
    model: KeyPointNet,
    frame: np.ndarray | torch.Tensor,
    backend: Backend | None,
    scale_factor: float,
    top_k: int | None,
    score_threshold: float,
    nms_radius: float,
    interpolation: str = "bilinear",
) -> DenseFrame:
    """One network run on ``frame``: all cells' keypoints plus the top-k selection of :func:`kp2d.extract`."""
    from kp2d.features.dense import CELL
    from kp2d.features.extraction import check_image_size, check_scale_factor, dense_keypoints, model_input

    batch, _ = model_input(model, frame)
    height, width = batch.shape[-2:]
    check_image_size(height, width, check_scale_factor(scale_factor))
    cells, selected = dense_keypoints(
        model, batch[:1], top_k, score_threshold, nms_radius, backend, scale_factor, 0.0, interpolation
    )
    net_width, net_height = cells.network_size_wh
    scores = cells.scores
    return DenseFrame(
        coords=cells.coords[0].flatten(1).t().float().cpu().numpy(),
        scores=scores[0].flatten().float().cpu().numpy(),
        descriptors=cells.descriptors[0].flatten(1).t().contiguous(),
        valid=cells.valid[0].flatten().cpu().numpy(),
        grid=(int(scores.shape[1]), int(scores.shape[2])),
        cell=(CELL * width / net_width, CELL * height / net_height),
        selected=selected[0].cpu().numpy().astype(np.int64),
    )


class GuidedTracker:
    """Tracks continued through the network's dense output, not only through the top-k keypoints.

    Each frame: the tracks' descriptors are matched to the top-k keypoints (mutual nearest neighbours) and
    a RANSAC homography (``threshold`` px) is fitted; its inlier matches continue their tracks. Every other
    track, also one lost for up to ``memory`` frames, is moved by the homography and continues at the cell
    keypoint within ``search_radius`` px of that prediction whose descriptor is nearest its own (distance
    at most ``max_distance``), whether the detector ranked that cell in its top-k or not: a detector
    re-finds only part of last frame's top-k, which would end those tracks. A cell goes to at most one
    track. A track's predicted position is its first detection carried by the homographies, so the
    detector's jitter does not add up along it. Top-k keypoints farther than ``search_radius`` from every
    continued track start new ones, up to ``top_k`` tracked keypoints per frame.
    """

    def __init__(
        self,
        threshold: float = 3.0,
        memory: int = 5,
        max_distance: float = 1.0,
        top_k: int | None = None,
        search_radius: float = 2.0,
    ) -> None:
        self.threshold = check_finite("threshold", threshold, above=0, unit="pixels")
        self.memory = check_integer("memory", memory, minimum=0)
        self.max_distance = check_finite("max_distance", max_distance, above=0)
        self.search_radius = check_finite("search_radius", search_radius, above=0, unit="pixels")
        self.top_k = top_k
        self.next_id = 0
        # tracks: position in the last frame's pixels, id, descriptor, frames since seen, row in last frame
        self._points = np.zeros((0, 2), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._descriptors: torch.Tensor | None = None
        self._age = np.zeros(0, dtype=np.int64)
        self._row = np.zeros(0, dtype=np.int64)

    def _motion(self, dense: DenseFrame) -> tuple[np.ndarray, np.ndarray, int]:
        """Frame-to-frame homography (identity without consensus), inlier pairs (track, cell), matches."""
        none = np.zeros((0, 2), dtype=np.int64)
        if self._descriptors is None or not len(self._ids) or not len(dense.selected):
            return np.eye(3), none, 0
        selected = torch.as_tensor(dense.selected, device=dense.descriptors.device)
        pairs = mutual_nearest(self._descriptors, dense.descriptors[selected]).cpu().numpy()
        inliers, model = _fit(
            self._points[pairs[:, 0]], dense.coords[dense.selected[pairs[:, 1]]], "homography", self.threshold
        )
        if model is None:
            return np.eye(3), none, len(pairs)
        matched = pairs[inliers]
        return model, np.stack([matched[:, 0], dense.selected[matched[:, 1]]], 1), len(pairs)

    def _search(self, dense: DenseFrame, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per track ``(N,)``: the cell it continues at (-1: none) and the descriptor distance."""
        rows, cols = dense.grid
        # a cell's keypoint may lie outside its cell: one more ring of cells
        reach = int(math.ceil(self.search_radius / min(dense.cell))) + 1
        offsets = np.arange(-reach, reach + 1)
        with np.errstate(invalid="ignore"):
            col = np.floor((predicted[:, 0] + 0.5) / dense.cell[0]).astype(np.int64, copy=False)
            row = np.floor((predicted[:, 1] + 0.5) / dense.cell[1]).astype(np.int64, copy=False)
        cand_row = (row[:, None, None] + offsets[None, :, None]).reshape(len(row), 1, -1)
        cand_col = (col[:, None, None] + offsets[None, None, :]).reshape(len(col), 1, -1)
        cand_row, cand_col = np.broadcast_arrays(cand_row, cand_col)
        cand_row, cand_col = cand_row[:, 0], cand_col[:, 0]
        inside = (cand_row >= 0) & (cand_row < rows) & (cand_col >= 0) & (cand_col < cols)
        flat = np.where(inside, cand_row * cols + cand_col, 0)
        near = np.linalg.norm(dense.coords[flat] - predicted[:, None], axis=2) <= self.search_radius
        usable = inside & dense.valid[flat] & near
        device = dense.descriptors.device
        index = torch.as_tensor(flat, device=device)
        similarity = torch.einsum("nd,nkd->nk", self._descriptors.float(), dense.descriptors[index].float())
        distance = (2.0 - 2.0 * similarity).clamp_min(0).sqrt().cpu().numpy()
        distance[~usable] = np.inf
        best = distance.argmin(1)
        best_distance = distance[np.arange(len(best)), best]
        cell = np.where(best_distance <= self.max_distance, flat[np.arange(len(best)), best], -1)
        # a cell continues one track: the nearest descriptor wins
        order = np.argsort(best_distance, kind="stable")
        taken = cell[order]
        _, first = np.unique(taken, return_index=True)
        keep = np.zeros(len(cell), dtype=bool)
        keep[order[first]] = True
        return np.where(keep, cell, -1), best_distance

    def step(self, index: int, dense: DenseFrame, image_size: tuple[int, int]) -> TrackedFrame:
        """Track one frame's :class:`DenseFrame`."""
        homography, matched, num_matches = self._motion(dense)
        predicted = (
            warp_points_numpy(self._points, homography).astype(np.float32) if len(self._ids) else self._points
        )
        if len(self._ids):
            cell, _ = self._search(dense, predicted)
            # the top-k matches that passed the check continue their tracks if they lie within the search
            # radius of the prediction too (RANSAC's threshold is looser); the search takes the rest
            close = np.linalg.norm(dense.coords[matched[:, 1]] - predicted[matched[:, 0]], axis=1)
            matched = matched[close <= self.search_radius]
            cell[np.isin(cell, matched[:, 1])] = -1
            cell[matched[:, 0]] = matched[:, 1]
        else:
            cell = np.zeros(0, dtype=np.int64)
        found = cell >= 0
        continued_cells = cell[found]
        fresh = dense.selected[~np.isin(dense.selected, continued_cells)]
        if len(fresh) and len(continued_cells):
            # neighbouring cells' keypoints often sit on one corner: no second track where one continues
            gap = torch.cdist(
                torch.from_numpy(dense.coords[fresh]), torch.from_numpy(dense.coords[continued_cells])
            )
            fresh = fresh[(gap.min(1).values > self.search_radius).numpy()]
        if self.top_k is not None:
            fresh = fresh[: max(0, self.top_k - len(continued_cells))]
        cells = np.concatenate([continued_cells, fresh])
        ids = np.concatenate([self._ids[found], self.next_id + np.arange(len(fresh))])
        self.next_id += len(fresh)
        previous = np.concatenate([np.where(self._age[found] == 0, self._row[found], -1),
                                   np.full(len(fresh), -1, dtype=np.int64)])
        is_new = np.r_[np.zeros(len(continued_cells), dtype=bool), np.ones(len(fresh), dtype=bool)]
        keypoints = dense.coords[cells]
        # tracks not found are carried by the homography and kept ``memory`` frames
        width, height = image_size
        lost = ~found & (self._age < self.memory) & np.isfinite(predicted).all(1)
        lost &= (predicted[:, 0] > -1) & (predicted[:, 0] < width) & (predicted[:, 1] > -1)
        lost &= predicted[:, 1] < height
        device = dense.descriptors.device
        cell_index = torch.as_tensor(cells, device=device)
        parts = [dense.descriptors[cell_index]]
        if self._descriptors is not None:
            parts.append(self._descriptors[torch.as_tensor(lost, device=self._descriptors.device)].to(device))
        self._descriptors = torch.cat(parts)
        # a continued track keeps its position carried by the homographies, not the detection's: the
        # detector's jitter would otherwise add up frame after frame
        carried = predicted[found]
        self._points = np.concatenate([carried, keypoints[len(continued_cells):], predicted[lost]])
        self._points = self._points.astype(np.float32)
        self._ids = np.concatenate([ids, self._ids[lost]])
        self._age = np.concatenate([np.zeros(len(cells), dtype=np.int64), self._age[lost] + 1])
        self._row = np.concatenate([np.arange(len(cells)), np.full(int(lost.sum()), -1)])
        return TrackedFrame(
            index=index,
            keypoints=keypoints.astype(np.float32),
            scores=dense.scores[cells].astype(np.float32),
            track_ids=ids.astype(np.int64),
            is_new=is_new,
            previous=previous.astype(np.int64),
            num_matches=num_matches,
            num_inliers=len(matched),
            image_size=(int(image_size[0]), int(image_size[1])),
        )


def _frame_size(frame: np.ndarray | torch.Tensor, index: int) -> tuple[int, int]:
    """``(W, H)`` of an ``(H, W[, C])`` array or ``(C, H, W)`` tensor; DataError for anything else."""
    if isinstance(frame, torch.Tensor) and frame.dim() == 3:
        return int(frame.shape[2]), int(frame.shape[1])
    if isinstance(frame, np.ndarray) and frame.ndim in (2, 3):
        return int(frame.shape[1]), int(frame.shape[0])
    shape = getattr(frame, "shape", type(frame).__name__)
    raise DataError(f"frame {index}: expected an (H, W, 3) RGB image, got {shape}")


def track(
    frames: Iterable[np.ndarray | torch.Tensor | None],
    model: KeyPointNet | None = None,
    backend: Backend | str | None = None,
    top_k: int | None = 1000,
    *,
    geometry: str = "homography",
    threshold: float = 3.0,
    memory: int = 5,
    every: int = 1,
    max_frames: int | None = None,
    scale_factor: float | None = None,
    score_threshold: float | None = None,
    nms_radius: float = 0.0,
    guided: bool = True,
    max_distance: float = 1.0,
    search_radius: float = 2.0,
    interpolation: str | None = None,
) -> Iterator[TrackedFrame]:
    """Track keypoints through ``frames``, yielding one :class:`TrackedFrame` per processed frame.

    Args:
        frames: RGB ``(H, W, 3)`` uint8 arrays (or anything :func:`kp2d.extract` takes), all of one size; a
            ``None`` is an unreadable frame, skipped. Any iterable: a list, a reader, a webcam loop.
        model: a :class:`~kp2d.models.KeyPointNet` (default: the shipped default model, now ``lite``, on the
            CPU).
        backend: a :class:`kp2d.deploy.backends.Backend` or a backend name (built once from ``model``;
            ``"torch-fp32"``: the plain network). ``None``: the model's own for its recorded precision.
        top_k: keypoints per frame (``None``: all).
        geometry: the matches' robust check, ``"homography"``, ``"fundamental"`` or ``"none"``.
        threshold: its inlier threshold in pixels.
        memory: frames a lost track may be resumed after (homography only; see :class:`Tracker`).
        every: track every ``every``-th frame (the others are read and skipped).
        max_frames: stop after reading this many frames (``None``: all).
        scale_factor: run the network on frames resized by this factor (keypoints stay in frame pixels);
            0.5 runs about four times faster for coarser keypoints. ``None``: the model's
            ``inference_settings`` (1 unless its weights file records one).
        score_threshold, nms_radius: keypoint selection, as :func:`kp2d.extract`.
        guided: with ``"homography"``, continue tracks through every cell of the network's dense output
            near their predicted position (:class:`GuidedTracker`), not only through the top-k keypoints.
        max_distance: guided: the largest descriptor distance (unit descriptors, 0..2) that continues a track.
        search_radius: guided: pixels around a track's predicted position searched for its keypoint.
        interpolation: how frames are enlarged to the network's input, ``"bilinear"`` or ``"bicubic"``
            (see :func:`kp2d.extract`). ``None``: the model's ``inference_settings``.

    Raises:
        DataError: a frame of another size than the first (tracks live in one image plane) or not an image.
        ConfigError: bad options.
    """
    from kp2d.checks import check_flag
    from kp2d.features.dense import DEFAULT_SCORE_THRESHOLD
    from kp2d.features.extraction import extract, resolve_backend

    every = check_integer("every", every)
    max_frames = None if max_frames is None else check_integer("max_frames", max_frames)
    tracker = Tracker(geometry, threshold, memory)
    guided = check_flag("guided", guided) and geometry == "homography"
    guided_tracker = GuidedTracker(threshold, memory, max_distance, top_k, search_radius) if guided else None
    if model is None:
        from kp2d.models import KeyPointNet

        model = KeyPointNet.from_pretrained().eval()
    scale_factor = model_scale_factor(model, scale_factor)
    interpolation = model_interpolation(model, interpolation)
    if backend is None:
        backend = resolve_backend(model)  # the model's recorded precision
    elif isinstance(backend, str):
        from kp2d.deploy.backends import load_backend

        backend = None if backend == "torch-fp32" else load_backend(backend, model)
    options = {
        "precision": "fp32" if backend is None else None,
        "top_k": top_k,
        "score_threshold": DEFAULT_SCORE_THRESHOLD if score_threshold is None else score_threshold,
        "nms_radius": nms_radius,
        "backend": backend,
        "scale_factor": scale_factor,
        "interpolation": interpolation,
    }
    size = None
    for index, frame in enumerate(frames):
        if max_frames is not None and index >= max_frames:
            break
        if index % every or frame is None:
            continue
        frame_size = _frame_size(frame, index)
        if size is None:
            size = frame_size
        elif frame_size != size:
            raise DataError(
                f"frame {index} is {frame_size[0]}x{frame_size[1]}, the frames before it are "
                f"{size[0]}x{size[1]}; tracking needs frames of one size"
            )
        start = time.perf_counter()
        if guided_tracker is not None:
            dense = dense_frame(
                model, frame, backend, scale_factor, top_k, options["score_threshold"], nms_radius,
                interpolation,
            )
            result = guided_tracker.step(index, dense, size)
        else:
            kpts = extract(model, frame, **options)
            result = tracker.step(
                index, kpts.keypoints.cpu().numpy(), kpts.scores.cpu().numpy(), kpts.descriptors, size
            )
        result.seconds = time.perf_counter() - start
        result.image = frame
        yield result
