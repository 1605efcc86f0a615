"""HPatches metrics of one pair: repeatability, localization error, homography correctness, matching score.

Pure functions over numpy arrays; they reproduce the original KP2D protocol exactly (checked against
``golden/hpatches_metrics.pt``). Conventions shared by every function:

- ``prob1`` / ``prob2``: ``(N, 3)`` float32 rows ``(x, y, score)`` in pixels of image 1 / image 2.
- ``desc1`` / ``desc2``: ``(N, D)`` descriptors, one row per keypoint (float32 for L2, uint8 for Hamming).
- ``homography``: ``(3, 3)`` float64, image-1 pixels → image-2 pixels.
- ``size_wh``: ``(W, H)`` of both images (they are resized to the same evaluation shape).
- ``top_k``: keypoints kept per image, the highest scores (:func:`select_k_best`).

Warped coordinates are computed in float64 (``H @ [x, y, 1]``, divided by the third coordinate).

Conventions checked against the golden cases: the inside tests compare ``x`` with ``W`` and ``y`` with
``H`` everywhere (swapping them breaks repeatability in all 7 cases and the matching score in 6), the
repeatability/correctness test is strict (``x < W``) and the matching-score test inclusive
(``x <= W - 1``). The golden C1/C3/C5 do not pin down every detail of the RANSAC input: truncating the
keypoints to integers before ``cv2.findHomography`` gives the same 7 outcomes (only the corner error
moves, within the same threshold bands); we pass the float coordinates, as the spec states.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from kp2d.geometry import warp_points_numpy

__all__ = [
    "CORRECTNESS_THRESHOLDS",
    "DISTANCE_THRESHOLD",
    "HomographyCorrectness",
    "Repeatability",
    "corner_error",
    "evaluate_pair",
    "homography_correctness",
    "inside_image",
    "match_descriptors",
    "matching_score",
    "nearest_distances",
    "protocol_homography",
    "repeatability",
    "protocol_matches",
    "ransac_homography",
    "select_k_best",
]

DISTANCE_THRESHOLD = 3.0  # px: repeatability, matching score and the RANSAC reprojection threshold
CORRECTNESS_THRESHOLDS = (1.0, 3.0, 5.0)  # px: C1, C3, C5
RANSAC_MAX_ITERS = 5000


class Repeatability(NamedTuple):
    """Result of :func:`repeatability` (a tuple ``(n1, n2, repeatability, localization_error)``)."""

    n1: int
    n2: int
    repeatability: float
    localization_error: float


class HomographyCorrectness(NamedTuple):
    """Result of :func:`homography_correctness`: 1.0 when the mean corner error is within 1 / 3 / 5 px."""

    c1: float
    c3: float
    c5: float


def select_k_best(prob: np.ndarray, k: int, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """The ``min(k, N)`` rows of highest score, in ascending score order (the original's ordering).

    Sorts by ``prob[:, 2]`` with ``np.argsort`` (default quicksort, so ties fall as numpy places them)
    and keeps the last rows. That order decides the order of the matches given to RANSAC.

    Args:
        prob: ``(N, 3)`` rows ``(x, y, score)``.
        k: how many rows to keep.
        columns: arrays with ``N`` rows (e.g. descriptors) reordered and cut the same way.

    Returns:
        ``(prob_k, *columns_k)``.
    """
    order = np.argsort(prob[:, 2])
    keep = order[len(order) - min(k, len(order)) :]
    return (prob[keep], *(column[keep] for column in columns))


def inside_image(points: np.ndarray, size_wh: tuple[int, int], inclusive: bool = False) -> np.ndarray:
    """``(N,)`` mask of points ``(N, 2)`` ``(x, y)`` inside an image of shape ``(W, H)``.

    ``inclusive=False``: ``0 <= x < W`` and ``0 <= y < H`` (repeatability, homography correctness);
    ``inclusive=True``: ``0 <= x <= W - 1`` and ``0 <= y <= H - 1`` (matching score).
    """
    width, height = size_wh
    x, y = points[:, 0], points[:, 1]
    if inclusive:
        return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def _pairwise_distances(points1: np.ndarray, points2: np.ndarray) -> np.ndarray:
    """``(N1, N2)`` Euclidean distances between ``(N1, 2)`` and ``(N2, 2)`` points, in float64."""
    diff = points1[:, None, :].astype(np.float64) - points2[None, :, :]
    return np.sqrt(np.sum(diff * diff, axis=-1))


def nearest_distances(
    prob1: np.ndarray,
    prob2: np.ndarray,
    homography: np.ndarray,
    size_wh: tuple[int, int],
    top_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each keypoint both images see to the nearest one of the other image, in image-2 pixels.

    Image-2 keypoints whose ``inv(H)``-warp falls outside image 1 are dropped; image-1 keypoints are
    warped by ``H`` into image 2 (keeping their scores) and those outside are dropped; each set keeps
    its ``top_k`` best.

    Returns:
        ``(nearest1 (N1,), nearest2 (N2,))`` float64; ``inf`` for every point when the other set is empty.
    """
    back_warped2 = warp_points_numpy(prob2[:, :2], np.linalg.inv(homography))
    kept2 = prob2[inside_image(back_warped2, size_wh)]
    warped1 = np.concatenate([warp_points_numpy(prob1[:, :2], homography), prob1[:, 2:]], axis=1)
    kept1 = warped1[inside_image(warped1, size_wh)]
    (kept1,) = select_k_best(kept1, top_k)
    (kept2,) = select_k_best(kept2, top_k)
    if len(kept1) == 0 or len(kept2) == 0:  # nothing to be near: no point is repeated
        return np.full(len(kept1), np.inf), np.full(len(kept2), np.inf)
    distances = _pairwise_distances(kept1[:, :2], kept2[:, :2])
    return distances.min(axis=1), distances.min(axis=0)


def repeatability(
    prob1: np.ndarray,
    prob2: np.ndarray,
    homography: np.ndarray,
    size_wh: tuple[int, int],
    top_k: int,
    threshold: float = DISTANCE_THRESHOLD,
) -> Repeatability:
    """Repeatability and localization error of the keypoints both images see.

    With the nearest distances of :func:`nearest_distances`: ``count1`` counts image-1 points whose
    nearest image-2 point is within ``threshold`` px (``<=``), ``count2`` the reverse; repeatability =
    ``(count1 + count2) / (N1 + N2)`` and localization error = the mean of those nearest distances.

    Edge cases: no repeated keypoint (``count1 + count2 == 0``) gives a NaN localization error (as the
    original); the evaluation loop leaves such pairs out of the localization-error mean. No keypoint at
    all (``N1 + N2 == 0``, where the original returns -1 for both) gives repeatability 0 and NaN.

    Returns:
        :class:`Repeatability` ``(n1, n2, repeatability, localization_error)``.
    """
    nearest1, nearest2 = nearest_distances(prob1, prob2, homography, size_wh, top_k)
    n1, n2 = len(nearest1), len(nearest2)
    if n1 == 0 or n2 == 0:
        return Repeatability(n1, n2, 0.0, float("nan"))

    repeated1 = nearest1 <= threshold
    repeated2 = nearest2 <= threshold
    count = int(repeated1.sum()) + int(repeated2.sum())
    error_sum = nearest1[repeated1].sum() + nearest2[repeated2].sum()
    localization_error = float(error_sum / count) if count else float("nan")
    return Repeatability(n1, n2, count / (n1 + n2), localization_error)


def match_descriptors(
    desc1: np.ndarray, desc2: np.ndarray, norm: int = cv2.NORM_L2, cross_check: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force nearest-neighbour matching with OpenCV (the original's matcher, ties included).

    Args:
        desc1, desc2: ``(N1, D)`` and ``(N2, D)`` descriptors.
        norm: ``cv2.NORM_L2`` (float descriptors) or ``cv2.NORM_HAMMING`` (binary uint8).
        cross_check: keep mutual nearest neighbours only.

    Returns:
        ``(query_idx, train_idx)`` int arrays in the order OpenCV returns the matches.
    """
    if len(desc1) == 0 or len(desc2) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    matcher = cv2.BFMatcher(norm, crossCheck=cross_check)
    matches = matcher.match(np.ascontiguousarray(desc1), np.ascontiguousarray(desc2))
    query = np.fromiter((m.queryIdx for m in matches), dtype=np.int64, count=len(matches))
    train = np.fromiter((m.trainIdx for m in matches), dtype=np.int64, count=len(matches))
    return query, train


def _shared_keypoints(
    prob: np.ndarray, desc: np.ndarray, homography: np.ndarray, size_wh: tuple[int, int], top_k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints whose ``homography``-warp lands inside the other image, top_k of them, with descriptors."""
    keep = inside_image(warp_points_numpy(prob[:, :2], homography), size_wh)
    return select_k_best(prob[keep], top_k, desc[keep])


def corner_error(estimate: np.ndarray | None, homography: np.ndarray, size_wh: tuple[int, int]) -> float:
    """Mean distance between the image corners warped by ``estimate`` and by the true ``homography``.

    Corners ``(0, 0), (0, H-1), (W-1, 0), (W-1, H-1)``; ``inf`` when there is no estimate.
    """
    if estimate is None:
        return float("inf")
    width, height = size_wh
    corners = np.array([[0, 0], [0, height - 1], [width - 1, 0], [width - 1, height - 1]], dtype=np.float64)
    distances = np.linalg.norm(
        warp_points_numpy(corners, estimate) - warp_points_numpy(corners, homography), axis=1
    )
    return float(np.mean(distances))


def protocol_matches(
    prob1: np.ndarray,
    desc1: np.ndarray,
    prob2: np.ndarray,
    desc2: np.ndarray,
    homography: np.ndarray,
    size_wh: tuple[int, int],
    top_k: int,
    norm: int = cv2.NORM_L2,
) -> tuple[np.ndarray, np.ndarray]:
    """The matches the protocol fits its homography to: ``(M, 2)`` points of image 1 and of image 2.

    Image-1 keypoints whose ``H``-warp is inside image 2 and image-2 keypoints whose ``inv(H)``-warp is
    inside image 1, ``top_k`` of each; cross-checked brute-force matching, in OpenCV's match order.
    """
    kept1, kept_desc1 = _shared_keypoints(prob1, desc1, homography, size_wh, top_k)
    kept2, kept_desc2 = _shared_keypoints(prob2, desc2, np.linalg.inv(homography), size_wh, top_k)
    query, train = match_descriptors(kept_desc1, kept_desc2, norm, cross_check=True)
    return np.ascontiguousarray(kept1[query, :2]), np.ascontiguousarray(kept2[train, :2])


def protocol_homography(
    prob1: np.ndarray,
    desc1: np.ndarray,
    prob2: np.ndarray,
    desc2: np.ndarray,
    homography: np.ndarray,
    size_wh: tuple[int, int],
    top_k: int,
    norm: int = cv2.NORM_L2,
) -> np.ndarray | None:
    """The protocol's RANSAC homography from two detections; ``None`` if < 4 matches or failure.

    Not :func:`kp2d.estimate_homography`, which fits matched keypoints the user gives: this one chooses
    the keypoints (those both images share under the true ``homography``) and matches them itself
    (:func:`protocol_matches`), then fits them with ``cv2.findHomography`` and RANSAC (3 px, 5000
    iterations).
    """
    points1, points2 = protocol_matches(prob1, desc1, prob2, desc2, homography, size_wh, top_k, norm)
    return ransac_homography(points1, points2)


def ransac_homography(points1: np.ndarray, points2: np.ndarray) -> np.ndarray | None:
    """The protocol's fit of ``(M, 2)`` matched points: RANSAC, 3 px, 5000 iterations; ``None`` under 4."""
    if len(points1) < 4:
        return None
    estimate, _ = cv2.findHomography(
        points1, points2, cv2.RANSAC, DISTANCE_THRESHOLD, maxIters=RANSAC_MAX_ITERS
    )
    return estimate


def homography_correctness(
    prob1: np.ndarray,
    desc1: np.ndarray,
    prob2: np.ndarray,
    desc2: np.ndarray,
    homography: np.ndarray,
    size_wh: tuple[int, int],
    top_k: int,
    norm: int = cv2.NORM_L2,
) -> HomographyCorrectness:
    """C1 / C3 / C5: 1.0 when the estimated homography's mean corner error is ``<=`` 1 / 3 / 5 px.

    See :func:`protocol_homography` and :func:`corner_error`; no estimate gives 0 for all three.
    """
    estimate = protocol_homography(prob1, desc1, prob2, desc2, homography, size_wh, top_k, norm)
    error = corner_error(estimate, homography, size_wh)
    return HomographyCorrectness(*(float(error <= t) for t in CORRECTNESS_THRESHOLDS))


def _one_way_matching_score(
    prob_a: np.ndarray,
    desc_a: np.ndarray,
    prob_b: np.ndarray,
    desc_b: np.ndarray,
    homography_b_to_a: np.ndarray,
    size_wh: tuple[int, int],
    threshold: float,
    norm: int,
) -> float:
    """Fraction of a's nearest-neighbour matches, among those visible in a, that land within threshold."""
    query, train = match_descriptors(desc_a, desc_b, norm, cross_check=False)
    if len(query) == 0:
        return 0.0
    warped_b = warp_points_numpy(prob_b[train, :2], homography_b_to_a)
    visible = inside_image(warped_b, size_wh, inclusive=True)
    correct = np.linalg.norm(warped_b - prob_a[query, :2], axis=-1) < threshold
    return float(np.sum(correct & visible) / max(int(np.sum(visible)), 1))


def matching_score(
    prob1: np.ndarray,
    desc1: np.ndarray,
    prob2: np.ndarray,
    desc2: np.ndarray,
    homography: np.ndarray,
    size_wh: tuple[int, int],
    top_k: int,
    threshold: float = DISTANCE_THRESHOLD,
    norm: int = cv2.NORM_L2,
) -> float:
    """Matching score: mean over both directions of the fraction of correct nearest-neighbour matches.

    The ``top_k`` best keypoints of each image (no visibility filtering) are matched by brute-force
    nearest neighbour (no cross check). For image 1 → 2, each matched image-2 point is warped by
    ``inv(H)``; it is *visible* when ``0 <= x <= W-1`` and ``0 <= y <= H-1`` (inclusive) and *correct*
    when within ``threshold`` px (strict ``<``) of its image-1 point; score1 = #(correct & visible) /
    max(#visible, 1). Image 2 → 1 likewise with ``H``; the result is the mean of the two.
    """
    kept1, kept_desc1 = select_k_best(prob1, top_k, desc1)
    kept2, kept_desc2 = select_k_best(prob2, top_k, desc2)
    score1 = _one_way_matching_score(
        kept1, kept_desc1, kept2, kept_desc2, np.linalg.inv(homography), size_wh, threshold, norm
    )
    score2 = _one_way_matching_score(
        kept2, kept_desc2, kept1, kept_desc1, homography, size_wh, threshold, norm
    )
    return (score1 + score2) / 2


def evaluate_pair(
    prob1: np.ndarray,
    desc1: np.ndarray,
    prob2: np.ndarray,
    desc2: np.ndarray,
    homography: np.ndarray,
    size_wh: tuple[int, int],
    top_k: int,
    norm: int = cv2.NORM_L2,
) -> dict[str, float]:
    """All metrics of one pair.

    Returns:
        ``{"n1", "n2", "repeatability", "localization_error", "c1", "c3", "c5", "corner_error",
        "mscore"}``; ``localization_error`` is NaN when no keypoint is repeated, ``corner_error`` is
        ``inf`` when no homography could be estimated.
    """
    homography = np.asarray(homography, dtype=np.float64)
    rep = repeatability(prob1, prob2, homography, size_wh, top_k)
    estimate = protocol_homography(prob1, desc1, prob2, desc2, homography, size_wh, top_k, norm)
    error = corner_error(estimate, homography, size_wh)
    c1, c3, c5 = (float(error <= t) for t in CORRECTNESS_THRESHOLDS)
    return {
        "n1": rep.n1,
        "n2": rep.n2,
        "repeatability": rep.repeatability,
        "localization_error": rep.localization_error,
        "c1": c1,
        "c3": c3,
        "c5": c5,
        "corner_error": error,
        "mscore": matching_score(prob1, desc1, prob2, desc2, homography, size_wh, top_k, norm=norm),
    }
