"""Descriptor matching (pure tensor functions) and robust homography estimation (OpenCV).

Matchers take ``desc0 (N0, D)`` and ``desc1 (N1, D)`` on any device and return ``matches (M, 2)``
(long; column 0 indexes ``desc0``, column 1 ``desc1``, sorted by column 0) and ``distances (M,)`` (L2).
Distances are computed in float32 at least (float64 when either input is): fp16 / bf16 descriptors, or
two of different dtypes, match as their float32 values would.
:func:`kp2d.eval.metrics.corner_error` measures an estimated homography against a known one.
"""

from __future__ import annotations

import numpy as np
import torch

from kp2d.checks import check_finite, check_finite_rows, check_flag, check_integer, check_unit_interval
from kp2d.errors import ConfigError, InputError, InputTypeError

DescriptorsLike = torch.Tensor | np.ndarray

__all__ = [
    "HOMOGRAPHY_METHODS",
    "as_match_pairs",
    "as_numpy",
    "descriptor_distances",
    "estimate_homography",
    "match",
    "match_mutual_nn",
    "match_nn",
]


def _as_descriptors(desc0: DescriptorsLike, desc1: DescriptorsLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as tensors, shapes checked; DataError for rows holding NaN or infinity.

    Numpy arrays (e.g. from ``kp2d detect``'s ``.npz``) are converted; of a :class:`~kp2d.Keypoints`
    its ``descriptors`` are taken.
    """
    desc0, desc1 = (getattr(d, "descriptors", d) for d in (desc0, desc1))
    desc0, desc1 = (
        d if isinstance(d, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(as_numpy(d, name)))
        for d, name in ((desc0, "desc0"), (desc1, "desc1"))
    )
    if desc0.dim() != 2 or desc1.dim() != 2 or desc0.shape[1] != desc1.shape[1]:
        raise InputError(
            "descriptors must have shapes (N0, D) and (N1, D), "
            f"got {tuple(desc0.shape)} and {tuple(desc1.shape)}"
        )
    check_finite_rows("desc0", desc0)
    check_finite_rows("desc1", desc1)
    return desc0, desc1


def _distance_dtype(desc0: torch.Tensor, desc1: torch.Tensor) -> torch.dtype:
    """The dtype distances are computed in: the inputs' common dtype, at least float32."""
    return torch.promote_types(torch.promote_types(desc0.dtype, desc1.dtype), torch.float32)


def _empty(desc0: torch.Tensor, desc1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.empty(0, 2, dtype=torch.long, device=desc0.device),
        torch.empty(0, dtype=_distance_dtype(desc0, desc1), device=desc0.device),
    )


def descriptor_distances(desc0: DescriptorsLike, desc1: DescriptorsLike) -> torch.Tensor:
    """``(N0, N1)`` Euclidean distances between ``desc0 (N0, D)`` and ``desc1 (N1, D)``.

    Computed in the inputs' common dtype, at least float32 (``torch.cdist`` has no fp16 / bf16 CPU kernel
    for small inputs, and half precision would round the distances).
    """
    desc0, desc1 = _as_descriptors(desc0, desc1)
    dtype = _distance_dtype(desc0, desc1)
    return torch.cdist(desc0.to(dtype)[None], desc1.to(dtype)[None])[0]


def match_nn(desc0: DescriptorsLike, desc1: DescriptorsLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Each descriptor of ``desc0`` with its nearest neighbour in ``desc1``: ``M = N0`` (0 if ``N1 = 0``)."""
    return match(desc0, desc1, mutual=False, ratio=None)


def match_mutual_nn(desc0: DescriptorsLike, desc1: DescriptorsLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs that are each other's nearest neighbour (a one-to-one matching)."""
    return match(desc0, desc1, mutual=True, ratio=None)


def _passes_ratio(distances: torch.Tensor, ratio: float, dim: int) -> torch.Tensor:
    """Along ``dim``: nearest < ``ratio`` × second nearest (always true with a single candidate)."""
    if distances.shape[dim] < 2:
        return torch.ones(distances.shape[1 - dim], dtype=torch.bool, device=distances.device)
    two = distances.topk(2, dim=dim, largest=False).values
    first, second = two.unbind(dim=dim)
    return first < ratio * second


def match(
    desc0: DescriptorsLike, desc1: DescriptorsLike, mutual: bool = True, ratio: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour matching with an optional mutual check and Lowe's ratio test.

    Args:
        desc0: ``(N0, D)`` descriptors (tensor or numpy array), or the :class:`~kp2d.Keypoints`
            of an ``extract`` (its ``descriptors``).
        desc1: ``(N1, D)`` descriptors.
        mutual: keep a pair only if each is the other's nearest neighbour.
        ratio: in (0, 1]; keep a pair only if nearest distance < ``ratio`` × second-nearest distance.
            With ``mutual`` the test applies in both directions (so ``match(d0, d1)`` and ``match(d1, d0)``
            give the same pairs); otherwise only for ``desc0``'s neighbours in ``desc1``.

    Returns:
        ``matches (M, 2)`` long indices ``(i0, i1)``, sorted by ``i0``, and ``distances (M,)``, each
        ``|desc0[i0] - desc1[i1]|`` (float32, or float64 for float64 input), on ``desc0``'s device (tensors
        also for numpy input).

    Raises:
        DataError: descriptors holding NaN or infinity (naming the argument and its rows).
        ConfigError: ``mutual`` not a bool, ``ratio`` outside (0, 1].
    """
    mutual = check_flag("mutual", mutual)
    if ratio is not None:
        ratio = check_unit_interval("ratio", ratio)
    desc0, desc1 = _as_descriptors(desc0, desc1)
    if desc0.shape[0] == 0 or desc1.shape[0] == 0:
        return _empty(desc0, desc1)
    distances = descriptor_distances(desc0, desc1)
    nearest = distances.argmin(dim=1)
    keep = torch.ones_like(nearest, dtype=torch.bool)
    if ratio is not None:
        keep &= _passes_ratio(distances, ratio, dim=1)
    if mutual:
        index0 = torch.arange(desc0.shape[0], device=desc0.device)
        keep &= distances.argmin(dim=0)[nearest] == index0
        if ratio is not None:
            keep &= _passes_ratio(distances, ratio, dim=0)[nearest]
    index0 = torch.nonzero(keep).squeeze(1)
    matches = torch.stack([index0, nearest[index0]], dim=1)
    # The matches' own distances, from their differences: cdist's matrix-product form for many descriptors
    # is off by up to ~1e-3 near 0 (identical descriptors gave 9e-4), which is fine for choosing neighbours.
    distance = (desc0[index0].to(distances.dtype) - desc1[nearest[index0]].to(distances.dtype)).norm(dim=1)
    return matches, distance


HOMOGRAPHY_METHODS = ("usac", "ransac")
_SINGULAR_RATIO = 1e-9  # σ_min / σ_max of a normalised homography below which it counts as singular


def as_numpy(array: torch.Tensor | np.ndarray, name: str = "input") -> np.ndarray:
    """A tensor or array-like as numpy (bf16 tensors, which numpy lacks, via float32).

    Raises:
        InputTypeError: ``array`` is not numbers (``None``, a string, a list of objects).
    """
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        return (array.float() if array.dtype == torch.bfloat16 else array).numpy()
    try:
        result = np.asarray(array)
    except ValueError:  # ragged nested lists
        result = np.empty(0, dtype=object)
    if not (np.issubdtype(result.dtype, np.number) or result.dtype == np.bool_):
        raise InputTypeError(f"{name} must be a tensor or a numeric array, got {type(array).__name__}")
    return result


def as_match_pairs(pairs: np.ndarray, num_keypoints: tuple[int, int] | None = None) -> np.ndarray:
    """``matches`` as ``(M, 2)`` int64; ValueError for any other shape (an empty list counts as ``M = 0``).

    With ``num_keypoints = (N0, N1)``, also a ValueError for an index outside ``[0, N0)`` / ``[0, N1)``
    (numpy would take a negative one silently from the end).
    """
    if pairs.ndim == 1 and pairs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise InputError(f"matches must have shape (M, 2) (index pairs (i0, i1)), got {pairs.shape}")
    pairs = pairs.astype(np.int64)
    for column, count in enumerate(num_keypoints or ()):
        outside = (pairs[:, column] < 0) | (pairs[:, column] >= count)
        if outside.any():
            raise InputError(
                f"matches column {column} indexes kpts{column}, which has {count} keypoints; "
                f"got index {pairs[outside, column][0]}"
            )
    return pairs


def _is_degenerate(homography: np.ndarray, src: np.ndarray, dst: np.ndarray) -> bool:
    """Whether ``homography`` (3, 3) is non-finite or (nearly) singular, e.g. fitted to collinear points.

    Judged in Hartley-normalised coordinates (``src`` and ``dst`` ``(M, 2)`` moved to their centroid and
    scaled to a mean distance of √2), where a proper homography's singular values are of similar size
    whatever the image size and the translation; a rank-deficient one has ``σ_min / σ_max`` near 1e-16.
    """
    if not np.isfinite(homography).all():
        return True

    def normalizer(points: np.ndarray) -> np.ndarray:
        center = points.mean(axis=0)
        spread = np.linalg.norm(points - center, axis=1).mean()
        scale = np.sqrt(2.0) / spread if spread > 0 else 1.0
        return np.array([[scale, 0.0, -scale * center[0]], [0.0, scale, -scale * center[1]], [0.0, 0.0, 1.0]])

    normalized = normalizer(dst) @ homography @ np.linalg.inv(normalizer(src))
    singular = np.linalg.svd(normalized, compute_uv=False)
    return not singular[0] > 0 or singular[-1] / singular[0] < _SINGULAR_RATIO


def estimate_homography(
    kpts0: torch.Tensor | np.ndarray,
    kpts1: torch.Tensor | np.ndarray,
    matches: torch.Tensor | np.ndarray,
    method: str = "usac",
    threshold: float = 3.0,
    max_iters: int = 5000,
    confidence: float = 0.999,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Robust homography mapping image-0 pixels to image-1 pixels from matched keypoints.

    Args:
        kpts0: ``(N0, 2)`` ``(x, y)`` pixels (tensor or array), or :class:`~kp2d.Keypoints`.
        kpts1: ``(N1, 2)``.
        matches: ``(M, 2)`` indices ``(i0, i1)`` from :func:`match` (any other shape: ValueError).
        method: ``"usac"`` (``cv2.USAC_MAGSAC``) or ``"ransac"`` (``cv2.RANSAC``, as the HPatches evaluation).
        threshold: inlier reprojection threshold in pixels, finite and > 0.
        max_iters: the robust fit's iterations (OpenCV's ``maxIters``), an integer >= 1.
        confidence: OpenCV's ``confidence`` in (0, 1) (stops earlier once this sure of the consensus).

    Returns:
        ``H`` (3, 3) float64 numpy array, or ``None`` with fewer than 4 matches, when OpenCV finds none,
        or when its estimate is degenerate (non-finite, or singular: e.g. from collinear points);
        ``inlier_mask`` (M,) bool numpy array (all False without ``H``).

    Raises:
        DataError: keypoints holding NaN or infinity (naming ``kpts0`` / ``kpts1`` and the rows).
        ConfigError: a bad ``method``, ``threshold``, ``max_iters`` or ``confidence``.
    """
    import cv2

    flags = {"usac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC}
    if not isinstance(method, str) or method not in flags:
        raise ConfigError(
            f"unknown homography method '{method}' (use one of {', '.join(HOMOGRAPHY_METHODS)})"
        )
    threshold = check_finite("threshold", threshold, above=0, unit="pixels")
    max_iters = check_integer("max_iters", max_iters)
    confidence = check_unit_interval("confidence", confidence, include_one=False)
    points0, points1 = (
        as_numpy(getattr(k, "keypoints", k), name) for k, name in ((kpts0, "kpts0"), (kpts1, "kpts1"))
    )
    for name, points in (("kpts0", points0), ("kpts1", points1)):
        if points.ndim != 2 or points.shape[1] != 2:
            raise InputError(f"{name} must have shape (N, 2), got {points.shape}")
        check_finite_rows(name, points)
    pairs = as_match_pairs(as_numpy(matches, "matches"), (len(points0), len(points1)))
    no_inliers = np.zeros(len(pairs), dtype=bool)
    if len(pairs) < 4:
        return None, no_inliers
    src = points0[pairs[:, 0]].astype(np.float64)
    dst = points1[pairs[:, 1]].astype(np.float64)
    homography, mask = cv2.findHomography(
        src, dst, flags[method], threshold, maxIters=max_iters, confidence=confidence
    )
    if homography is None or mask is None or _is_degenerate(homography, src, dst):
        return None, no_inliers
    return homography, mask.ravel().astype(bool)
