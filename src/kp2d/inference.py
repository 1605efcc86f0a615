"""Keypoints, scores and descriptors of whole images, in original-image pixels.

The user story::

    model = kp2d.KeyPointNet.from_pretrained("v4")
    kpts0, kpts1 = model.extract(image0), model.extract(image1)      # RGB, any size from 32 px
    matches, distances = kp2d.match(kpts0.descriptors, kpts1.descriptors)
    H, inliers = kp2d.estimate_homography(kpts0.keypoints, kpts1.keypoints, matches)

:func:`extract` takes **RGB** images (the order our training pipeline feeds the network), of any size
of at least 32 px a side. Inside, the image is padded at the bottom and right to a multiple of 8 by
*replicating* its last row and column (zero padding would add an artificial edge, which the detector
fires on); the network's coordinates are already in pixels of the padded image, whose top-left corner is
the original's, so keypoints need no rescaling; keypoints that land in the padding are dropped.

Selection, per image: cells with ``score > score_threshold``; then, with ``nms_radius > 0``, greedy
non-maximum suppression (a keypoint is dropped when a kept keypoint with a higher score lies within
``nms_radius`` pixels; the same result as visiting keypoints by decreasing score); then the ``top_k``
highest scores, sorted by decreasing score.

``scale_factor`` runs the network on the image resized by that factor (bilinear; antialiased when
shrinking) and maps the keypoints back to pixels of the original image (pixel centres at integers:
``x = (x' + 0.5) * W / W' - 0.5``). At 2 the grid of cells is 4 px of the original image instead of 8 and
the regressed offsets are twice as fine: on ``hpatches-synth`` at 320×240 the shipped V4's localization
error drops from 0.84 px to 0.54 px (README, Results), for four times the compute. OpenCV's SIFT
doubles its input the same way before building its pyramid.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
import torch.nn.functional as F

from kp2d.augmentation import rgb_to_grayscale
from kp2d.checks import check_finite, check_flag
from kp2d.errors import ConfigError, DataError, InputError, InputTypeError
from kp2d.geometry import cell_centers
from kp2d.imageio import read_image_rgb
from kp2d.models.keypoint_net import CELL, DEFAULT_SCORE_THRESHOLD, sample_descriptors

if TYPE_CHECKING:
    import PIL.Image

    from kp2d.fast import Backend
    from kp2d.models import KeyPointNet

__all__ = [
    "DEFAULT_SCORE_THRESHOLD",
    "MAX_NETWORK_SIZE",
    "MIN_IMAGE_SIZE",
    "ImageLike",
    "Keypoints",
    "check_image_size",
    "check_scale_factor",
    "extract",
    "extract_with_score_map",
    "grid_nms",
    "image_to_tensor",
    "load_image",
    "pad_to_multiple",
    "rescale_images",
    "score_map",
    "select_keypoints",
    "to_image_pixels",
]

MIN_IMAGE_SIZE = 32  # pixels, each side
MAX_NETWORK_SIZE = 16384  # pixels, each side of the network's input (after scale_factor)
ImageLike = Union[np.ndarray, torch.Tensor, "PIL.Image.Image", str, os.PathLike]
FLOAT_RANGE_SLACK = 1e-3  # float images may exceed [0, 1] by this much (resampling overshoot)


@dataclass(eq=False)  # tensors have no single truth value: compare fields with torch.equal
class Keypoints:
    """Keypoints of one image.

    Attributes:
        keypoints: ``(N, 2)`` float ``(x, y)`` in pixels of the original image.
        scores: ``(N,)`` detection scores in (0, 1], sorted in decreasing order by :func:`extract`.
        descriptors: ``(N, D)`` L2-normalised descriptors (``D = 256``).
        image_size: ``(W, H)`` of the original image.
    """

    keypoints: torch.Tensor
    scores: torch.Tensor
    descriptors: torch.Tensor
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        n = self.keypoints.shape[0]
        if self.keypoints.dim() != 2 or self.keypoints.shape[1] != 2:
            raise InputError(f"keypoints must have shape (N, 2), got {tuple(self.keypoints.shape)}")
        if self.scores.shape != (n,):
            raise InputError(f"scores must have shape ({n},), got {tuple(self.scores.shape)}")
        if self.descriptors.dim() != 2 or self.descriptors.shape[0] != n:
            raise InputError(f"descriptors must have shape ({n}, D), got {tuple(self.descriptors.shape)}")
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))

    def __len__(self) -> int:
        return self.keypoints.shape[0]

    def __getitem__(self, index: Any) -> Keypoints:
        """The keypoints at ``index`` (an int, a slice, an index tensor or a boolean mask).

        An integer (Python, numpy, or a 0-d integer tensor / array) gives one keypoint, ``N = 1``.
        """
        if _is_scalar_integer_index(index):
            index = [int(index)]  # keep the leading dimension
        return Keypoints(self.keypoints[index], self.scores[index], self.descriptors[index], self.image_size)

    @property
    def device(self) -> torch.device:
        """Where the tensors are."""
        return self.keypoints.device

    def to(self, device: str | torch.device) -> Keypoints:
        """The same keypoints on ``device``."""
        return Keypoints(
            self.keypoints.to(device), self.scores.to(device), self.descriptors.to(device), self.image_size
        )

    def cpu(self) -> Keypoints:
        """The same keypoints on the CPU."""
        return self.to("cpu")

    def numpy(self) -> dict[str, np.ndarray]:
        """Arrays ``keypoints (N, 2)``, ``scores (N,)``, ``descriptors (N, D)`` (float32), ``image_size``.

        The dict can go straight into ``np.savez(path, **kpts.numpy())``.
        """
        return {
            "keypoints": self.keypoints.detach().cpu().float().numpy(),
            "scores": self.scores.detach().cpu().float().numpy(),
            "descriptors": self.descriptors.detach().cpu().float().numpy(),
            "image_size": np.asarray(self.image_size, dtype=np.int64),
        }

    def to_cv2(self, size: float = 8.0) -> list:
        """OpenCV keypoints (``pt = (x, y)``, ``size`` pixels, ``response`` = score)."""
        import cv2

        points = self.keypoints.detach().cpu().double().tolist()
        scores = self.scores.detach().cpu().double().tolist()
        return [cv2.KeyPoint(x, y, size, -1, s) for (x, y), s in zip(points, scores, strict=True)]


def _is_scalar_integer_index(index: Any) -> bool:
    """Whether ``index`` is one integer (Python / numpy integer, 0-d integer tensor or array; not bool)."""
    if isinstance(index, numbers.Integral):
        return not isinstance(index, bool)
    if isinstance(index, torch.Tensor):
        return index.dim() == 0 and not index.is_floating_point() and not index.is_complex() and (
            index.dtype != torch.bool
        )
    if isinstance(index, np.ndarray):
        return index.ndim == 0 and np.issubdtype(index.dtype, np.integer)
    return False


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 **RGB**: :func:`kp2d.imageio.read_image_rgb`."""
    return read_image_rgb(path)


def _numpy_to_float(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32, copy=False)
    raise DataError(f"unsupported image dtype {array.dtype} (use uint8, uint16 or float in [0, 1])")


def _pil_to_numpy(image: PIL.Image.Image) -> np.ndarray:
    """A PIL image as a numpy image of the same values: uint8 (H, W) / (H, W, 3), uint16 or float32 (H, W).

    16- and 32-bit integer modes (``I;16*``, ``I``) become uint16 (then scaled by 1/65535 like numpy uint16
    input; ``I`` must hold values in [0, 65535]); ``F`` stays float32 (then checked to lie in [0, 1] like
    numpy float input). Converting those with ``convert("L")`` would clip instead of rescaling. The EXIF
    orientation is applied, as OpenCV does when kp2d reads a file: a phone photo gives the same keypoints
    whether its path or ``PIL.Image.open(path)`` is passed.
    """
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)  # also the big-endian I;16B
    if image.mode == "I":
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise DataError(
                f"32-bit integer (mode I) images must hold 16-bit values in [0, 65535], got values in "
                f"[{array.min()}, {array.max()}]"
            )
        return array.astype(np.uint16)
    if image.mode == "F":
        return np.array(image, dtype=np.float32)  # a writable copy
    return np.asarray(image.convert("L" if image.mode in ("1", "L") else "RGB"))


def _as_batch(image: ImageLike) -> tuple[torch.Tensor, bool]:
    """Any supported image → ``(B, C, H, W)`` float tensor (C = 1 or 3), and whether the input was batched."""
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        import PIL.Image

        if isinstance(image, PIL.Image.Image):
            image = _pil_to_numpy(image)
        else:
            raise InputTypeError(
                f"unsupported image type {type(image).__name__} (file path, numpy array, PIL image or tensor)"
            )

    if isinstance(image, np.ndarray):
        array = _numpy_to_float(image)
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]  # drop alpha
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or array.shape[2] not in (1, 3):
            raise DataError(f"numpy images must be (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0), False

    tensor = image
    batched = tensor.dim() == 4
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() == 3:
        tensor = tensor[None]
    if tensor.dim() != 4 or tensor.shape[1] not in (1, 3):
        raise DataError(
            f"tensor images must be (H, W), (C, H, W) or (B, C, H, W) with C = 1 or 3, "
            f"got {tuple(image.shape)}"
        )
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif not tensor.is_floating_point():
        raise DataError(f"unsupported tensor dtype {tensor.dtype} (use uint8 or float in [0, 1])")
    return tensor, batched


def image_to_tensor(
    image: ImageLike, in_channels: int = 3, device: str | torch.device | None = None
) -> tuple[torch.Tensor, bool]:
    """Convert an image for the network.

    Args:
        image: numpy ``(H, W, 3)`` RGB / ``(H, W)`` gray, uint8 or float in [0, 1]; a PIL image; or a
            tensor ``(3, H, W)`` / ``(B, 3, H, W)`` (or 1 channel) in [0, 1] (uint8 tensors: divided by 255).
        in_channels: channels the network takes: RGB → gray with BT.601 weights, gray → replicated to 3.
        device: where the tensor goes (default: where it is).

    Returns:
        ``(B, in_channels, H, W)`` float32 in [0, 1], and whether the input was a batch.
    """
    batch, batched = _as_batch(image)
    batch = batch.to(device=device, dtype=torch.float32)
    if batch.numel():
        low, high = (value.item() for value in torch.aminmax(batch))  # NaN anywhere makes both NaN
        if not (math.isfinite(low) and math.isfinite(high)):
            raise DataError(
                f"float images must be finite and in [0, 1], got NaN or infinite values (values in "
                f"[{low:.3g}, {high:.3g}])"
            )
        if low < -FLOAT_RANGE_SLACK or high > 1 + FLOAT_RANGE_SLACK:
            raise DataError(
                f"float images must be in [0, 1], got values in [{low:.3g}, {high:.3g}] (divide uint8 by 255)"
            )
    return to_network_channels(batch, in_channels).clamp(0.0, 1.0), batched


def to_network_channels(batch: torch.Tensor, in_channels: int) -> torch.Tensor:
    """``(B, C, H, W)`` images with the network's ``in_channels``.

    3 → 1 by BT.601 luma (:func:`kp2d.augmentation.rgb_to_grayscale`, in the channel order given), 1 → 3
    by replication; unchanged otherwise.
    """
    channels = batch.shape[1]
    if in_channels == 1 and channels == 3:
        return rgb_to_grayscale(batch)
    if in_channels == 3 and channels == 1:
        return batch.expand(-1, 3, -1, -1)
    return batch


def pad_to_multiple(images: torch.Tensor, multiple: int = CELL) -> torch.Tensor:
    """Pad ``(B, C, H, W)`` bottom and right to multiples of ``multiple``, replicating the last row/column."""
    height, width = images.shape[-2:]
    pad_h = -height % multiple
    pad_w = -width % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")


def check_image_size(height: int, width: int, scale_factor: float = 1.0) -> None:
    """DataError unless the image and the network's input at ``scale_factor`` fit the network.

    Both need :data:`MIN_IMAGE_SIZE` px a side; the network's input at most :data:`MAX_NETWORK_SIZE`.
    """
    net_height, net_width = round(height * scale_factor), round(width * scale_factor)
    resized = f", {net_width}x{net_height} at scale_factor {scale_factor:g}" if scale_factor != 1 else ""
    if min(height, width, net_height, net_width) < MIN_IMAGE_SIZE:
        raise DataError(
            f"image is {width}x{height} pixels{resized}; kp2d needs at least {MIN_IMAGE_SIZE} pixels on "
            "each side"
        )
    if max(net_height, net_width) > MAX_NETWORK_SIZE:
        raise DataError(
            f"image is {width}x{height} pixels{resized}; the network takes at most {MAX_NETWORK_SIZE} "
            "pixels a side (resize the image, or use a smaller scale_factor)"
        )


def check_scale_factor(scale_factor: float) -> float:
    """``scale_factor`` as a float; :class:`ConfigError` unless it is a finite number > 0."""
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, numbers.Real):
        raise ConfigError(f"scale_factor must be a number > 0, got {scale_factor!r}")
    if not (math.isfinite(scale_factor) and scale_factor > 0):
        raise ConfigError(f"scale_factor must be a finite number > 0, got {scale_factor!r}")
    return float(scale_factor)


def rescale_images(images: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, C, round(H * s), round(W * s))``, bilinear (antialiased when shrinking).

    Returns ``images`` itself when the size does not change. Values stay in the input's range. fp16 / bf16
    images are resized in float32 and cast back (PyTorch has no half-precision antialiased resize on CPU).
    """
    scale_factor = check_scale_factor(scale_factor)
    height, width = images.shape[-2:]
    size = _network_size(height, width, scale_factor)
    if size == (height, width):
        return images
    shrink = size[0] < height or size[1] < width
    reduced = images.dtype in (torch.float16, torch.bfloat16)
    source = images.float() if reduced else images
    resized = F.interpolate(source, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return resized.to(images.dtype) if reduced else resized


def _network_size(height: int, width: int, scale_factor: float) -> tuple[int, int]:
    """``(H', W')`` of an ``H x W`` image resized by ``scale_factor`` (see :func:`rescale_images`)."""
    return max(1, round(height * scale_factor)), max(1, round(width * scale_factor))


def to_image_pixels(
    coords: torch.Tensor, network_size: tuple[int, int], image_size: tuple[int, int]
) -> torch.Tensor:
    """Keypoints ``(B, 2, ...)`` in pixels of the resized ``(W', H')`` image → pixels of the ``(W, H)`` one.

    Pixel centres sit at integer coordinates in both, so ``x = (x' + 0.5) * W / W' - 0.5`` (likewise y),
    the inverse of :func:`rescale_images`' sampling grid. The identity when the sizes are equal.
    """
    if tuple(network_size) == tuple(image_size):
        return coords
    ratio = coords.new_tensor([image_size[0] / network_size[0], image_size[1] / network_size[1]])
    ratio = ratio.view(1, 2, *([1] * (coords.dim() - 2)))
    return (coords + 0.5) * ratio - 0.5


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


def _loaded(image: ImageLike) -> ImageLike:
    """A file path read (uint8 RGB) and a PIL image as numpy; other inputs unchanged."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        import PIL.Image

        if isinstance(image, PIL.Image.Image):
            return _pil_to_numpy(image)
    return image


def _input_size(image: ImageLike) -> tuple[int, int, int] | None:
    """``(B, H, W)`` of a numpy array or tensor image before any conversion; None for other shapes."""
    if isinstance(image, np.ndarray) and image.ndim in (2, 3):
        return 1, image.shape[0], image.shape[1]
    if isinstance(image, torch.Tensor) and image.dim() in (2, 3, 4):
        return (image.shape[0] if image.dim() == 4 else 1), image.shape[-2], image.shape[-1]
    return None


def _shrink_input(image: np.ndarray | torch.Tensor, height: int, width: int) -> np.ndarray | torch.Tensor:
    """The image resized to ``height x width`` in its own dtype (area-averaged), before it becomes float32.

    Resizing first keeps the full-size float copy (12 bytes a pixel) from being made at all.
    """
    if isinstance(image, np.ndarray):
        import cv2

        if image.dtype not in (np.uint8, np.uint16, np.float32):
            if not (image.dtype == np.bool_ or np.issubdtype(image.dtype, np.floating)):
                return image  # an unsupported dtype: image_to_tensor words the error
            image = image.astype(np.float32)
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    tensor = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    shape = tensor.shape
    flat = tensor.reshape(-1, 1, *shape[-2:]) if tensor.dim() < 4 else tensor
    resized = F.interpolate(flat, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized.reshape(*shape[:-2], height, width) if tensor.dim() < 4 else resized


def _fitted_input(
    model: KeyPointNet,
    image: ImageLike,
    scale_factor: float,
    backend: Backend | None,
    fit_memory: bool,
) -> tuple[ImageLike, tuple[int, int] | None]:
    """Check that extracting from ``image`` fits the memory (CPU models; see :mod:`kp2d.memory`).

    Returns the image to run on and, when ``fit_memory`` shrank it, the original ``(W, H)``.
    """
    from kp2d.memory import check_extract_memory

    image = _loaded(image)
    size = _input_size(image)
    if size is None or _model_placement(model)[0].type != "cpu" or min(size) == 0:
        return image, None
    batch, height, width = size
    if min(height, width) < MIN_IMAGE_SIZE or max(height, width) * scale_factor > MAX_NETWORK_SIZE:
        return image, None  # check_image_size words these
    net_size = (max(1, round(height * scale_factor)), max(1, round(width * scale_factor)))
    fitted = check_extract_memory(
        height, width, batch, scale_factor, getattr(backend, "name", None), fit=fit_memory
    )
    if fitted == net_size:
        return image, None
    return _shrink_input(image, *fitted), (width, height)


def _model_placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's parameters (CPU / float32 for a parameterless module)."""
    parameter = next(model.parameters(), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype


def _model_input(model: KeyPointNet, image: ImageLike) -> tuple[torch.Tensor, bool]:
    device, dtype = _model_placement(model)
    batch, batched = image_to_tensor(image, model.in_channels, device)
    return batch.to(dtype), batched


def _run(
    model: KeyPointNet, batch: torch.Tensor, backend: Backend | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network, or ``backend`` (a :class:`kp2d.fast.Backend` built from it), on the padded batch.

    Runs in eval and inference mode. Returns ``score (B, Hc, Wc)``, ``coord (B, 2, Hc, Wc)``,
    ``desc (B, D, Hc, Wc)`` (sampled, unit norm).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            padded = pad_to_multiple(batch, CELL)
            if backend is not None:
                out = backend(padded.float())
                return out.score[:, 0], out.coord, out.desc
            out = model(padded)
            desc = sample_descriptors(out.desc, out.coord, padded.shape[-2], padded.shape[-1])
            return out.score[:, 0], out.coord, desc.float()  # float32 also from a float64 model
    finally:
        model.train(was_training)


def _extract_batch(
    model: KeyPointNet,
    image: ImageLike,
    top_k: int | None,
    score_threshold: float,
    nms_radius: float,
    backend: Backend | None = None,
    scale_factor: float = 1.0,
    fit_memory: bool | None = False,
) -> tuple[list[Keypoints], torch.Tensor, bool]:
    """Keypoints per image, cell scores ``(B, Hc, Wc)`` of the padded (resized) images, whether batched.

    ``fit_memory=None`` skips the memory check (for an image already shrunk to fit).
    """
    _check_selection(top_k, nms_radius, score_threshold)
    if backend is not None and not callable(backend):
        raise ConfigError(
            f"backend must be built once with kp2d.fast.load_backend({backend!r}, model), got "
            f"{type(backend).__name__} {backend!r}"
        )
    scale_factor = check_scale_factor(scale_factor)
    original_size = None
    if fit_memory is not None:
        fit_memory = check_flag("fit_memory", fit_memory)
        image, original_size = _fitted_input(model, image, scale_factor, backend, fit_memory)
    if original_size is not None:
        return _extract_shrunk(model, image, original_size, top_k, score_threshold, nms_radius, backend)
    batch, batched = _model_input(model, image)
    height, width = batch.shape[-2:]
    check_image_size(height, width, scale_factor)
    if batch.shape[0] == 0:  # an empty batch: no images, no keypoints
        net_height, net_width = _network_size(height, width, scale_factor)
        cells = (-(-net_height // CELL), -(-net_width // CELL))
        return [], torch.zeros(0, *cells, device=batch.device), batched
    network_batch = rescale_images(batch, scale_factor)
    net_height, net_width = network_batch.shape[-2:]
    scores, coords, descs = _run(model, network_batch, backend)
    # border cells (score forced to 0) and keypoints in the padding never count, whatever the threshold
    valid = (scores > 0) & (coords[:, 0] <= net_width - 1) & (coords[:, 1] <= net_height - 1)
    nms_radius = nms_radius * net_width / width  # the selection works in pixels of the network's input
    selected = select_keypoints(scores, coords, top_k, score_threshold, nms_radius, valid=valid)
    coords = to_image_pixels(coords, (net_width, net_height), (width, height))
    results = []
    for score, coord, desc, index in zip(scores, coords, descs, selected, strict=True):
        # indexing outside inference mode gives ordinary tensors (the caller may modify them in place)
        results.append(
            Keypoints(
                keypoints=coord.flatten(1)[:, index].t(),
                scores=score.flatten()[index],
                descriptors=desc.flatten(1)[:, index].t(),
                image_size=(width, height),
            )
        )
    return results, scores.clone(), batched


def _extract_shrunk(
    model: KeyPointNet,
    image: np.ndarray | torch.Tensor,
    original_size: tuple[int, int],
    top_k: int | None,
    score_threshold: float,
    nms_radius: float,
    backend: Backend | None,
) -> tuple[list[Keypoints], torch.Tensor, bool]:
    """:func:`_extract_batch` of an image shrunk to fit the memory, keypoints in the original's pixels."""
    shrunk_height, shrunk_width = image.shape[-2:] if isinstance(image, torch.Tensor) else image.shape[:2]
    ratio = shrunk_width / original_size[0]
    results, scores, batched = _extract_batch(
        model, image, top_k, score_threshold, nms_radius * ratio, backend, 1.0, fit_memory=None
    )
    for result in results:
        points = to_image_pixels(result.keypoints.t()[None], (shrunk_width, shrunk_height), original_size)
        result.keypoints = points[0].t().contiguous()
        result.image_size = original_size
    return results, scores, batched


def extract(
    model: KeyPointNet,
    image: ImageLike | list[ImageLike],
    top_k: int | None = 1000,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_radius: float = 0,
    backend: Backend | None = None,
    scale_factor: float = 1.0,
    fit_memory: bool = False,
) -> Keypoints | list[Keypoints]:
    """Detect and describe keypoints (see the module docstring for padding and selection).

    ===============================  =====================================================
    input                            output
    ===============================  =====================================================
    numpy ``(H, W, 3)`` RGB uint8    :class:`Keypoints` (``N <= top_k``)
    numpy ``(H, W)`` gray, float     :class:`Keypoints`
    ``PIL.Image``                    :class:`Keypoints`
    file path (``str``, ``Path``)    :class:`Keypoints` (read with :func:`load_image`)
    tensor ``(3, H, W)`` in [0, 1]   :class:`Keypoints`
    tensor ``(B, 3, H, W)``          ``list[Keypoints]`` (``N`` varies per image; ``[]`` if ``B = 0``)
    list of images (any sizes)       ``list[Keypoints]``
    ===============================  =====================================================

    Args:
        model: a :class:`~kp2d.models.KeyPointNet`; the image goes to its device, and it runs in eval
            mode (its previous mode is restored afterwards).
        image: RGB image(s), at least 32 px a side.
        top_k: most keypoints per image (``None``: all).
        score_threshold: keep keypoints with ``score > score_threshold`` (default
            :data:`DEFAULT_SCORE_THRESHOLD`, 1e-4: no keypoints on a blank image; 0 keeps every cell, as
            the HPatches protocol does; the grid's border cells, whose score is 0, are never kept).
        nms_radius: greedy NMS radius in pixels; 0 turns it off.
        backend: a fast backend built from ``model`` (:func:`kp2d.fast.load_backend`, e.g.
            ``"torch-bf16"`` or ``"ort-int8"``) to run instead of the plain network.
        scale_factor: run the network on the image resized by this factor (e.g. 2 for finer keypoints;
            see the module docstring); keypoints, ``nms_radius`` and ``image_size`` stay in pixels of the
            original image.
        fit_memory: when the image needs more memory than is available (CPU models; see
            :mod:`kp2d.memory`), run it shrunk to the largest size that fits instead of refusing it;
            keypoints and ``image_size`` stay in pixels of the original image.

    Returns:
        Keypoints sorted by decreasing score (float32 keypoints, scores and descriptors, also for a
        fp16 / bf16 model).

    Raises:
        DataError: unsupported image type/shape/range, an image under 32 px a side (before or after
            resizing), or one that needs more memory than is available (without ``fit_memory``; the
            message names the largest size that fits).
        ConfigError: a bad ``top_k`` (not an integer >= 1), ``nms_radius`` (< 0), ``score_threshold``
            (NaN) or ``scale_factor`` (<= 0), or a ``backend`` given by name instead of built.
    """
    if isinstance(image, (list, tuple)):
        for index, item in enumerate(image):
            if isinstance(item, torch.Tensor) and item.dim() == 4:
                raise DataError(
                    f"a list takes single images, item {index} is a batch {tuple(item.shape)} (pass a batch "
                    "on its own, or its images in the list)"
                )
        return [
            extract(model, item, top_k, score_threshold, nms_radius, backend, scale_factor, fit_memory)
            for item in image
        ]
    results, _, batched = _extract_batch(
        model, image, top_k, score_threshold, nms_radius, backend, scale_factor, fit_memory
    )
    return results if batched else results[0]


def extract_with_score_map(
    model: KeyPointNet,
    image: ImageLike,
    top_k: int | None = 1000,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_radius: float = 0,
    backend: Backend | None = None,
    scale_factor: float = 1.0,
    fit_memory: bool = False,
) -> tuple[Keypoints, torch.Tensor]:
    """:func:`extract` for one image, plus its cell scores (see :func:`score_map`) from the same run.

    With ``scale_factor`` (or an image shrunk by ``fit_memory``) the cells are those of the resized
    image: ``(ceil(H'/8), ceil(W'/8))``.
    """
    results, scores, _ = _extract_batch(
        model, image, top_k, score_threshold, nms_radius, backend, scale_factor, fit_memory
    )
    if len(results) != 1:
        raise DataError(f"extract_with_score_map takes one image, got a batch of {len(results)}")
    return results[0], scores[0]


def score_map(model: KeyPointNet, image: ImageLike) -> torch.Tensor:
    """Cell scores of one image: ``(ceil(H/8), ceil(W/8))``, cell ``(i, j)`` covering pixels ``8i..8i+7``.

    Cells of the padded border hold the score of the padded image; crop after upsampling by 8.
    """
    batch, batched = _model_input(model, image)
    if batched and batch.shape[0] != 1:
        raise DataError(f"score_map takes one image, got a batch of {batch.shape[0]}")
    check_image_size(*batch.shape[-2:])
    scores, _, _ = _run(model, batch)
    return scores[0].clone()
