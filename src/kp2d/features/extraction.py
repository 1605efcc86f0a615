"""Keypoints, scores and descriptors of whole images, in original-image pixels.

The user story::

    model = kp2d.KeyPointNet.from_pretrained()                        # the default model
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
the regressed offsets are twice as fine (lower localization error, for four times the compute; see
docs/notes-from-code.md). OpenCV's SIFT doubles its input the same way before building its pyramid.
``scale_factor=None`` (the default) takes the model's ``inference_settings`` (recorded in its weights file,
see :mod:`kp2d.io.inference`; 1 for a file or module without them); a number overrides them.

``extra_scales`` runs the network at more factors as well; each scale's keypoints are selected as above,
then the scales are pooled and the ``top_k`` best scores kept (a keypoint of each scale may sit at the same
place, with that scale's descriptor: what a view zoomed 2-2.5x needs to match).

``extra_rotations`` (degrees) runs the network, at ``scale_factor``, on copies of the image turned about its
centre by those angles, and pools their keypoints the same way, mapped back to the unturned image: the
network's descriptors are not rotation invariant, so a view turned by 40-60 degrees finds its keypoints in
the copy turned back towards it. Keypoints within :data:`TURNED_MARGIN` pixels of the turned copy's empty
corners (where the network would fire on the edge of the picture) are dropped.

``extra_weight`` multiplies the scores of the extra scales' keypoints before the pooling (they keep the
weighted scores): below 1 the main run keeps its best keypoints and the coarser runs fill in where it finds
few. The turned copies keep their scores: a view turned by 50 degrees finds its keypoints only in the copy
turned 45, and a lower score would cut them from the ``top_k``.

``extra_suppression`` (pixels) leaves out an extra scale's keypoint where a keypoint of the main run lies
within that distance and scores at least as much (:mod:`kp2d.features.scale_suppression`): on a view at the
main scale the extra scale's keypoints repeat the main run's less precisely and crowd them out of the
``top_k``; on a zoomed view the main run has nothing there to suppress them with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from kp2d.checks import check_flag, check_scale_factor
from kp2d.config import MAX_NETWORK_SIZE, MIN_IMAGE_SIZE
from kp2d.errors import ConfigError, DataError
from kp2d.features.dense import (
    CELL,
    DEFAULT_SCORE_THRESHOLD,
    CellOutput,
    KeyPointNetOutput,
    sample_descriptors,
)
from kp2d.features.keypoints import Keypoints
from kp2d.features.scale_suppression import cell_pitch_xy, suppressed_across_scales
from kp2d.features.selection import _check_selection, select_keypoints
from kp2d.geometry import rotation_about_center, warp_points
from kp2d.io.images import ImageLike, _pil_to_numpy, image_to_tensor, load_image
from kp2d.io.inference import (
    check_interpolation,
    model_descriptor_sampling,
    model_extra_rotations,
    model_extra_scales,
    model_extra_suppression,
    model_extra_weight,
    model_interpolation,
    model_precision,
    model_scale_factor,
    run_score_weight,
)

#: What ``extract`` runs instead of the plain network (a :class:`kp2d.deploy.backends.Backend`).
Backend = Callable[[torch.Tensor], KeyPointNetOutput]

__all__ = [
    "MAX_NETWORK_SIZE",
    "MIN_IMAGE_SIZE",
    "TURNED_MARGIN",
    "DenseCells",
    "DenseKeypoints",
    "backend_precision",
    "check_image_size",
    "dense_cells",
    "dense_keypoints",
    "check_scale_factor",
    "extract",
    "extract_with_score_map",
    "model_input",
    "pad_to_multiple",
    "rescale_images",
    "resolve_backend",
    "resolved_precision",
    "rotate_images",
    "score_map",
    "to_image_pixels",
    "unturn_coords",
    "usable_cells",
]



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


def rescale_images(
    images: torch.Tensor, scale_factor: float, interpolation: str = "bilinear"
) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, C, round(H * s), round(W * s))``, bilinear (antialiased when shrinking).

    ``interpolation="bicubic"`` enlarges with bicubic interpolation instead, clamped to ``[0, 1]`` (the
    network's input range; bicubic overshoots at edges); shrinking stays bilinear and antialiased.
    Returns ``images`` itself when the size does not change. Bilinear values stay in the input's range.
    fp16 / bf16 images are resized in float32 and cast back (PyTorch has no half-precision antialiased
    resize on CPU).
    """
    scale_factor = check_scale_factor(scale_factor)
    interpolation = check_interpolation(interpolation)
    height, width = images.shape[-2:]
    size = _network_size(height, width, scale_factor)
    if size == (height, width):
        return images
    shrink = size[0] < height or size[1] < width
    reduced = images.dtype in (torch.float16, torch.bfloat16)
    source = images.float() if reduced else images
    if interpolation == "bicubic" and not shrink:
        if _opencv_samples(source):
            resized = _opencv_bicubic(source, size)
        else:
            resized = F.interpolate(source, size=size, mode="bicubic", align_corners=False).clamp_(0, 1)
    else:
        resized = F.interpolate(source, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return resized.to(images.dtype) if reduced else resized


#: Keypoints of a turned copy whose place in the original image lies closer than this to its edge (pixels
#: of the original) are dropped: there the network sees the copy's empty corners.
TURNED_MARGIN = 8.0


def rotate_images(
    images: torch.Tensor,
    angle_deg: float,
    size_hw: tuple[int, int] | None = None,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """``(B, C, H, W)`` turned by ``angle_deg`` about the centre (bilinear unless told), zeros outside.

    Pixel ``p`` of the result shows pixel ``R^-1 p`` of the input, ``R`` being
    :func:`~kp2d.geometry.rotation_about_center` (counter-clockwise as displayed for positive angles).
    ``size_hw=(H', W')`` samples the turned picture onto that grid instead of ``H x W`` (pixel centres as in
    :func:`rescale_images`): turning and enlarging in one interpolation, not two (no antialiasing, so not for
    shrinking). ``interpolation="bicubic"`` samples bicubic, clamped to ``[0, 1]``.
    """
    interpolation = check_interpolation(interpolation)
    height, width = images.shape[-2:]
    out_height, out_width = (height, width) if size_hw is None else size_hw
    # R^-1 in grid_sample's [-1, 1] coordinates (align_corners=False): about the centre, so linear
    linear = rotation_about_center(-angle_deg, height, width, dtype=torch.float64)[:2, :2]
    half = torch.tensor([width / 2.0, height / 2.0], dtype=torch.float64)
    (xx, xy), (yx, yy) = (linear * half[None, :] / half[:, None]).tolist()
    reduced = images.dtype in (torch.float16, torch.bfloat16)
    source = images.float() if reduced else images
    if interpolation == "bicubic" and _opencv_samples(source):
        # output pixel -> normalised output -> normalised input (the linear map) -> input pixel
        to_input = np.array([[width / 2, 0, width / 2 - 0.5], [0, height / 2, height / 2 - 0.5], [0, 0, 1]])
        turn = np.array([[xx, xy, 0], [yx, yy, 0], [0, 0, 1]])
        from_output = np.array(
            [[2 / out_width, 0, 1 / out_width - 1], [0, 2 / out_height, 1 / out_height - 1], [0, 0, 1]]
        )
        turned = _opencv_bicubic(source, (out_height, out_width), (to_input @ turn @ from_output)[:2])
        return turned.to(images.dtype) if reduced else turned
    # built from its rows and columns: a tenth of affine_grid's time at the network's input size
    xs = torch.arange(out_width, device=images.device, dtype=source.dtype) * (2 / out_width)
    xs += 1 / out_width - 1
    ys = torch.arange(out_height, device=images.device, dtype=source.dtype) * (2 / out_height)
    ys += 1 / out_height - 1
    grid = torch.empty(1, out_height, out_width, 2, device=images.device, dtype=source.dtype)
    torch.add(ys[:, None] * xy, xs[None, :] * xx, out=grid[0, ..., 0])
    torch.add(ys[:, None] * yy, xs[None, :] * yx, out=grid[0, ..., 1])
    turned = F.grid_sample(
        source, grid.expand(images.shape[0], -1, -1, -1), mode=interpolation, padding_mode="zeros",
        align_corners=False,
    )
    if interpolation == "bicubic":
        turned.clamp_(0, 1)
    return turned.to(images.dtype) if reduced else turned


def _opencv_samples(images: torch.Tensor) -> bool:
    """Whether :func:`_opencv_bicubic` can sample ``images``: float CPU tensors, no autograd, 1-4 channels.

    OpenCV's bicubic warp takes at most 4 channels; elsewhere PyTorch samples.
    """
    return (
        images.device.type == "cpu"
        and images.dtype in (torch.float32, torch.float64)
        and not images.requires_grad
        and images.shape[1] <= 4
    )


def _opencv_bicubic(
    images: torch.Tensor, size_hw: tuple[int, int], output_to_input: np.ndarray | None = None
) -> torch.Tensor:
    """``(B, C, H, W)`` sampled bicubic onto ``(H', W')`` by OpenCV, clamped to ``[0, 1]``.

    Resized (pixel centres as :func:`rescale_images`), or through the ``(2, 3)`` affine map from output to
    input pixels, zeros outside. PyTorch's bicubic (``a = -0.75``) to within 2e-4 (OpenCV's warp places
    samples on a 1/32-pixel grid) at a third to a fifth of its time on a CPU.
    """
    import cv2

    out_height, out_width = size_hw
    out = torch.empty(images.shape[0], out_height, out_width, images.shape[1], dtype=images.dtype)
    # one call per image: OpenCV's bicubic warp takes at most 4 channels
    for index, image in enumerate(images.permute(0, 2, 3, 1).numpy()):
        image = np.ascontiguousarray(image)
        if output_to_input is None:
            sampled = cv2.resize(image, (out_width, out_height), interpolation=cv2.INTER_CUBIC)
        else:
            sampled = cv2.warpAffine(
                image, output_to_input, (out_width, out_height), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT, borderValue=0,
            )
        out[index] = torch.from_numpy(sampled.reshape(out_height, out_width, -1))
    return out.permute(0, 3, 1, 2).clamp_(0, 1)


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
    model: torch.nn.Module,
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


def model_input(model: torch.nn.Module, image: ImageLike) -> tuple[torch.Tensor, bool]:
    """``(B, C, H, W)`` on the model's device and dtype, and whether ``image`` was a batch."""
    device, dtype = _model_placement(model)
    batch, batched = image_to_tensor(image, model.in_channels, device)
    return batch.to(dtype), batched


def resolve_backend(
    model: torch.nn.Module, backend: Backend | None = None, precision: str | None = None
) -> Backend | None:
    """What runs the network: ``backend`` when given, else the model's own for ``precision``.

    ``precision=None`` takes the model's recorded ``inference_settings.precision``; a KeyPointNet returns
    its cached bf16 copy where that resolves to bf16 here, its fused fp32 copy for ``"auto"`` on a CPU
    without native bf16 (:meth:`~kp2d.models.KeyPointNet.default_backend`), otherwise ``None``: the plain
    network.

    Raises:
        ConfigError: both ``backend`` and ``precision`` given, or an unknown ``precision``.
    """
    if backend is not None:
        if precision is not None:
            raise ConfigError("give a backend or a precision, not both (a backend fixes its own precision)")
        return backend
    precision = model_precision(model, precision)
    default_backend = getattr(model, "default_backend", None)
    if precision == "fp32" or not callable(default_backend):
        return None
    return default_backend(precision)


def resolved_precision(model: torch.nn.Module, precision: str | None = None) -> str:
    """What ``precision`` (``None``: the model's recorded one) runs as here: ``"bf16"`` or ``"fp32"``."""
    return backend_precision(resolve_backend(model, None, precision))


def backend_precision(backend: Callable | None) -> str:
    """``"bf16"`` for a ``torch-bf16`` backend, else ``"fp32"`` (``None``: the plain network)."""
    return "bf16" if getattr(backend, "name", None) == "torch-bf16" else "fp32"


def usable_cells(scores: torch.Tensor, coords: torch.Tensor, net_width: int, net_height: int) -> torch.Tensor:
    """``(B, Hc, Wc)`` bool: cells of ``scores (B, Hc, Wc)`` that can be keypoints.

    Border cells (score forced to 0) and keypoints ``coords (B, 2, Hc, Wc)`` in the padding beyond the
    network's ``net_width x net_height`` input never count, whatever the threshold.
    """
    return (scores > 0) & (coords[:, 0] <= net_width - 1) & (coords[:, 1] <= net_height - 1)


def _run(
    model: torch.nn.Module | None, batch: torch.Tensor, backend: Backend | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network, or ``backend`` (a :class:`kp2d.deploy.backends.Backend` built from it), on the padded batch.

    Runs in eval and inference mode; ``model`` may be ``None`` with a backend. Returns
    ``score (B, Hc, Wc)``, ``coord (B, 2, Hc, Wc)``, ``desc (B, D, Hc, Wc)`` (sampled, unit norm).
    """
    if backend is not None:
        with torch.inference_mode():
            out = backend(pad_to_multiple(batch, CELL).float())
            return out.score[:, 0], out.coord, out.desc
    assert model is not None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            padded = pad_to_multiple(batch, CELL)
            if _channels_last(model):
                padded = padded.contiguous(memory_format=torch.channels_last)
            out = model(padded)
            sampling = model_descriptor_sampling(model)
            desc = sample_descriptors(out.desc, out.coord, padded.shape[-2], padded.shape[-1], sampling)
            return out.score[:, 0], out.coord, desc.float()  # float32 also from a float64 model
    finally:
        model.train(was_training)


def _channels_last(model: torch.nn.Module) -> bool:
    """Whether the model's first 4-D weight is channels-last (then its input is made so too)."""
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    return weight is not None and not weight.is_contiguous() and weight.is_contiguous(
        memory_format=torch.channels_last
    )


class DenseCells(NamedTuple):
    """Every cell's keypoint of a batch (:func:`dense_cells`)."""

    scores: torch.Tensor  #: (B, Hc, Wc) cell scores of the padded (resized) images
    coords: torch.Tensor  #: (B, 2, Hc, Wc) each cell's keypoint (x, y) in pixels of the input images
    network_coords: torch.Tensor  #: (B, 2, Hc, Wc) the same in pixels of the network's input
    descriptors: torch.Tensor  #: (B, D, Hc, Wc) float32 descriptors
    valid: torch.Tensor  #: (B, Hc, Wc) cells that can be keypoints
    network_size_wh: tuple[int, int]  #: (W', H') of the network's input before padding


class DenseKeypoints(NamedTuple):
    """Every cell's keypoint of a batch and the selection among them (:func:`dense_keypoints`)."""

    cells: DenseCells  #: every cell's score, keypoint and descriptor
    selected: list[torch.Tensor]  #: per image, flat cell indices of the selected keypoints, best first


def dense_cells(
    model: torch.nn.Module | None,
    batch: torch.Tensor,
    backend: Backend | None = None,
    scale_factor: float = 1.0,
    rotation_deg: float = 0.0,
    interpolation: str = "bilinear",
) -> DenseCells:
    """Run the network (or ``backend``) on ``(B, C, H, W)`` resized by ``scale_factor``; every cell.

    With ``rotation_deg`` the network runs on the batch turned by that angle (:func:`rotate_images`);
    ``coords`` are mapped back to the unturned images and cells within :data:`TURNED_MARGIN` of their
    edges are not valid. ``interpolation``: how the batch is enlarged (:func:`rescale_images`).
    """
    network_batch = _network_batch(batch, scale_factor, rotation_deg, interpolation)
    net_height, net_width = network_batch.shape[-2:]
    scores, coords, descs = _run(model, network_batch, backend)
    image_coords, valid = _image_cells(
        scores, coords, (net_width, net_height), batch.shape[-2:], rotation_deg
    )
    return DenseCells(scores, image_coords, coords, descs, valid, (net_width, net_height))


def _network_batch(
    batch: torch.Tensor, scale_factor: float, rotation_deg: float, interpolation: str = "bilinear"
) -> torch.Tensor:
    """``(B, C, H, W)`` turned by ``rotation_deg`` and resized by ``scale_factor``: the network's input.

    An enlarged turned copy is sampled from the image in one step (with ``interpolation``), so that it is
    as sharp as the unturned run's input; a shrunk one is turned, then resized with antialiasing.
    """
    if not rotation_deg:
        return rescale_images(batch, scale_factor, interpolation)
    scale_factor = check_scale_factor(scale_factor)
    if scale_factor < 1:
        return rescale_images(rotate_images(batch, rotation_deg), scale_factor)
    size = _network_size(*batch.shape[-2:], scale_factor)
    return rotate_images(batch, rotation_deg, size, interpolation)


def _image_cells(
    scores: torch.Tensor,
    coords: torch.Tensor,
    network_size_wh: tuple[int, int],
    image_size_hw: tuple[int, int],
    rotation_deg: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``coords (B, 2, Hc, Wc)`` in pixels of the unturned ``H x W`` images; ``(B, Hc, Wc)`` usable cells."""
    height, width = image_size_hw
    valid = usable_cells(scores, coords, *network_size_wh)
    image_coords = to_image_pixels(coords, network_size_wh, (width, height))
    if rotation_deg:
        image_coords, inside = unturn_coords(image_coords, rotation_deg, height, width)
        valid &= inside
    return image_coords, valid


def dense_keypoints(
    model: torch.nn.Module,
    batch: torch.Tensor,
    top_k: int | None,
    score_threshold: float,
    nms_radius: float,
    backend: Backend | None = None,
    scale_factor: float = 1.0,
    rotation_deg: float = 0.0,
    interpolation: str = "bilinear",
) -> DenseKeypoints:
    """:func:`dense_cells` and the top-k selection among them.

    ``nms_radius`` is in pixels of ``batch``; options are checked by the caller.
    """
    cells = dense_cells(model, batch, backend, scale_factor, rotation_deg, interpolation)
    # the selection works in pixels of the network's input
    nms_radius = nms_radius * cells.network_size_wh[0] / batch.shape[-1]
    selected = select_keypoints(
        cells.scores, cells.network_coords, top_k, score_threshold, nms_radius, valid=cells.valid
    )
    return DenseKeypoints(cells, selected)


def unturn_coords(
    coords: torch.Tensor, rotation_deg: float, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 2, Hc, Wc)`` points of ``H x W`` images turned by ``rotation_deg`` (:func:`rotate_images`).

    Returns the points in pixels of the unturned images and ``(B, Hc, Wc)``: those at least
    :data:`TURNED_MARGIN` pixels inside them.
    """
    inverse = rotation_about_center(-rotation_deg, height, width, device=coords.device)
    batch, _, rows, cols = coords.shape
    points = warp_points(coords.float().flatten(2).transpose(1, 2), inverse)
    points = points.transpose(1, 2).reshape(batch, 2, rows, cols).to(coords.dtype)
    x, y = points[:, 0], points[:, 1]
    inside = (x >= TURNED_MARGIN) & (x <= width - 1 - TURNED_MARGIN)
    inside &= (y >= TURNED_MARGIN) & (y <= height - 1 - TURNED_MARGIN)
    return points, inside


def _extract_batch(
    model: torch.nn.Module,
    image: ImageLike,
    top_k: int | None,
    score_threshold: float,
    nms_radius: float,
    backend: Backend | None = None,
    scale_factor: float | None = None,
    fit_memory: bool | None = False,
    extra_scales: tuple[float, ...] | list[float] | None = None,
    extra_rotations: tuple[float, ...] | list[float] | None = None,
    extra_weight: float | None = None,
    extra_suppression: float | None = None,
    interpolation: str | None = None,
) -> tuple[list[Keypoints], torch.Tensor, bool]:
    """Keypoints per image, cell scores ``(B, Hc, Wc)`` of the padded (resized) images, whether batched.

    ``scale_factor=None`` / ``extra_scales=None`` / ``extra_rotations=None`` / ``extra_weight=None`` /
    ``extra_suppression=None`` / ``interpolation=None``: the model's settings.
    ``fit_memory=None`` skips the memory check (for an image already shrunk to fit). The cell scores are
    the main scale's.
    """
    _check_selection(top_k, nms_radius, score_threshold)
    if backend is not None and not callable(backend):
        raise ConfigError(
            f"backend must be built once with kp2d.deploy.backends.load_backend({backend!r}, model), got "
            f"{type(backend).__name__} {backend!r}"
        )
    scale_factor = check_scale_factor(model_scale_factor(model, scale_factor))
    extra_scales = model_extra_scales(model, extra_scales, scale_factor)
    extra_rotations = model_extra_rotations(model, extra_rotations)
    extra_weight = model_extra_weight(model, extra_weight)
    extra_suppression = model_extra_suppression(model, extra_suppression)
    interpolation = model_interpolation(model, interpolation)
    original_size = None
    if fit_memory is not None:
        fit_memory = check_flag("fit_memory", fit_memory)
        largest = max((scale_factor, *extra_scales))
        image, original_size = _fitted_input(model, image, largest, backend, fit_memory)
    if original_size is not None:
        return _extract_shrunk(model, image, original_size, top_k, score_threshold, nms_radius, backend)
    batch, batched = model_input(model, image)
    height, width = batch.shape[-2:]
    check_image_size(height, width, scale_factor)
    if batch.shape[0] == 0:  # an empty batch: no images, no keypoints
        net_height, net_width = _network_size(height, width, scale_factor)
        cells = (-(-net_height // CELL), -(-net_width // CELL))
        return [], torch.zeros(0, *cells, device=batch.device), batched
    main = _run_keypoints(
        model, batch, top_k, score_threshold, nms_radius, backend, scale_factor, 0.0, interpolation
    )
    fitting = [scale for scale in extra_scales if _fits(height, width, scale)]
    if not (fitting or extra_rotations):
        return _described(main, (width, height)), main.cells.scores.clone(), batched
    runs = [(scale, 0.0) for scale in fitting] + [(scale_factor, angle) for angle in extra_rotations]
    pitch = cell_pitch_xy((width, height), _network_size(height, width, scale_factor)[::-1])
    found = [main]
    for scale, angle in runs:
        run = _run_keypoints(
            model, batch, top_k, score_threshold, nms_radius, backend, scale, angle, interpolation
        )
        if not angle:
            run = _unsuppressed(run, main.cells, pitch, extra_suppression)
        found.append(_weighted(run, run_score_weight(extra_weight, angle)))
    return _pooled(found, top_k, (width, height)), main.cells.scores.clone(), batched


def _unsuppressed(
    run: _RunKeypoints, main_cells: _RunCells, pitch: tuple[float, float], radius: float
) -> _RunKeypoints:
    """An extra scale's keypoints without those the main run's cells suppress (:mod:`.scale_suppression`)."""
    if not radius or not run.scores:
        return run
    counts = [len(scores) for scores in run.scores]
    image_index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    drop = suppressed_across_scales(
        torch.cat(run.keypoints), torch.cat(run.scores), image_index.to(main_cells.scores.device),
        main_cells.scores, main_cells.coords, main_cells.valid, pitch, radius,
    )
    kept = [(~dropped).nonzero()[:, 0] for dropped in drop.split(counts)]
    return run._replace(
        keypoints=[points[index] for points, index in zip(run.keypoints, kept, strict=True)],
        scores=[scores[index] for scores, index in zip(run.scores, kept, strict=True)],
        ranks=[ranks[index] for ranks, index in zip(run.ranks, kept, strict=True)],
    )


def _weighted(run: _RunKeypoints, weight: float) -> _RunKeypoints:
    """The run with its keypoints' scores multiplied by ``weight`` (1 leaves them as they are)."""
    return run if weight == 1 else run._replace(scores=[scores * weight for scores in run.scores])


def _pooled(runs: list[_RunKeypoints], top_k: int | None, image_size: tuple[int, int]) -> list[Keypoints]:
    """Each image's keypoints of several runs in one set: the ``top_k`` best scores, best first.

    Only the keypoints kept are described, each by its own run (one call per run for the whole batch).
    """
    kept = []  # per image: the pooled order and scores, each kept keypoint's run and place in that run's list
    for image in range(len(runs[0].scores)):
        scores = torch.cat([run.scores[image] for run in runs])
        counts = torch.tensor([len(run.scores[image]) for run in runs], device=scores.device)
        order = scores.argsort(descending=True, stable=True)[:top_k]
        run_of = torch.repeat_interleave(torch.arange(len(runs), device=scores.device), counts)[order]
        kept.append((order, scores[order], run_of, order - (counts.cumsum(0) - counts)[run_of]))
    described = [
        run.describe([
            ranks[place[run_of == number]] for ranks, (*_, run_of, place) in zip(run.ranks, kept, strict=True)
        ])
        for number, run in enumerate(runs)
    ]
    results = []
    for image, (order, scores, run_of, _) in enumerate(kept):
        descriptors = described[0][image].new_empty((len(order), described[0][image].shape[1]))
        for number in range(len(runs)):
            descriptors[run_of == number] = described[number][image]
        keypoints = torch.cat([run.keypoints[image] for run in runs])[order]
        results.append(Keypoints(keypoints, scores, descriptors, image_size))
    return results


def _fits(height: int, width: int, scale_factor: float) -> bool:
    """Whether an ``H x W`` image resized by ``scale_factor`` fits the network (:func:`check_image_size`)."""
    try:
        check_image_size(height, width, scale_factor)
    except DataError:
        return False
    return True


class _RunCells(NamedTuple):
    """One run's cells (inference tensors).

    Scores ``(B, Hc, Wc)``, keypoints ``(B, 2, Hc, Wc)`` in pixels of the image, which cells can be
    keypoints ``(B, Hc, Wc)``.
    """

    scores: torch.Tensor
    coords: torch.Tensor
    valid: torch.Tensor


class _RunKeypoints(NamedTuple):
    """One run's keypoints of a batch, best first, described on demand (:func:`_run_keypoints`).

    Per image: ``keypoints (N, 2)`` in pixels of the image, ``scores (N,)``, and ``ranks (N,)`` each one's
    place in the run's selection, which ``describe`` takes (a list of rank tensors, one per image) to give
    their ``(n, D)`` float32 descriptors, so that keypoints pooled away are never described.
    """

    keypoints: list[torch.Tensor]
    scores: list[torch.Tensor]
    ranks: list[torch.Tensor]
    describe: Callable[[list[torch.Tensor]], list[torch.Tensor]]
    cells: _RunCells


def _run_keypoints(
    model: torch.nn.Module,
    batch: torch.Tensor,
    top_k: int | None,
    score_threshold: float,
    nms_radius: float,
    backend: Backend | None,
    scale_factor: float,
    rotation_deg: float = 0.0,
    interpolation: str = "bilinear",
) -> _RunKeypoints:
    """Keypoints per image of ``(B, C, H, W)`` at one scale and turn; every cell's score and keypoint.

    A network that can run in two stages (``forward_cells`` / ``descriptors_at``, also through a torch
    backend) computes descriptors at the described keypoints only; others give the dense map.
    """
    stages = _two_stages(model, backend)
    if stages is None:
        cells, selected = dense_keypoints(
            model, batch, top_k, score_threshold, nms_radius, backend, scale_factor, rotation_deg,
            interpolation,
        )
        run_cells = _RunCells(cells.scores, cells.coords, cells.valid)

        def describe(ranks: list[torch.Tensor]) -> list[torch.Tensor]:
            return [
                desc.flatten(1)[:, index[rank]].t()
                for desc, index, rank in zip(cells.descriptors, selected, ranks, strict=True)
            ]
    else:
        network = model if backend is None else None  # the plain network runs in eval mode, a backend as is
        run_cells, selected, describe = _selected_keypoints(
            network, stages, batch, top_k, score_threshold, nms_radius, scale_factor, rotation_deg,
            interpolation,
        )
    # indexing outside inference mode gives ordinary tensors (the caller may modify them in place)
    keypoints = [
        coord.flatten(1)[:, index].t() for coord, index in zip(run_cells.coords, selected, strict=True)
    ]
    scores = [score.flatten()[index] for score, index in zip(run_cells.scores, selected, strict=True)]
    ranks = [torch.arange(len(index), device=index.device) for index in selected]
    return _RunKeypoints(keypoints, scores, ranks, describe, run_cells)


def _described(run: _RunKeypoints, image_size: tuple[int, int]) -> list[Keypoints]:
    """Every keypoint of one run, described: :class:`Keypoints` per image."""
    descriptors = run.describe(run.ranks)
    return [
        Keypoints(keypoints=points, scores=scores, descriptors=desc, image_size=image_size)
        for points, scores, desc in zip(run.keypoints, run.scores, descriptors, strict=True)
    ]


_Stages = tuple[Callable[[torch.Tensor], CellOutput], Callable[..., torch.Tensor]]


def _two_stages(model: torch.nn.Module | None, backend: Backend | None) -> _Stages | None:
    """``(cells, descriptors_at)`` of the backend or network, or ``None`` where it only runs whole."""
    if backend is not None:
        cells, describe = getattr(backend, "cells", None), getattr(backend, "descriptors_at", None)
        return (cells, describe) if cells is not None and describe is not None else None
    if not (hasattr(model, "forward_cells") and hasattr(model, "descriptors_at")):
        return None
    channels_last = _channels_last(model)

    def cells(padded: torch.Tensor) -> CellOutput:
        if channels_last:
            padded = padded.contiguous(memory_format=torch.channels_last)
        score, coord, features = model.forward_cells(padded)
        return CellOutput(score.float(), coord.float(), features)  # float32 also from a float64 model

    return cells, model.descriptors_at


def _selected_keypoints(
    model: torch.nn.Module | None,
    stages: _Stages,
    batch: torch.Tensor,
    top_k: int | None,
    score_threshold: float,
    nms_radius: float,
    scale_factor: float,
    rotation_deg: float,
    interpolation: str = "bilinear",
) -> tuple[_RunCells, list[torch.Tensor], Callable[[list[torch.Tensor]], list[torch.Tensor]]]:
    """:func:`dense_keypoints` with descriptors computed later, at the keypoints asked for only.

    ``model``: the plain network (put in eval mode meanwhile), ``None`` for a backend. Returns the run's
    cells (keypoints in pixels of ``batch``), per image the selected flat cell indices, and ``describe``:
    per image ranks into that selection → their ``(n, D)`` float32 descriptors.
    """
    cells, describe_at = stages
    network_batch = _network_batch(batch, scale_factor, rotation_deg, interpolation)
    net_height, net_width = network_batch.shape[-2:]
    with _inference(model):
        padded = pad_to_multiple(network_batch, CELL)
        score, coords, features = cells(padded if model is not None else padded.float())
        scores = score[:, 0]
        image_coords, valid = _image_cells(
            scores, coords, (net_width, net_height), batch.shape[-2:], rotation_deg
        )
        # the selection works in pixels of the network's input
        radius = nms_radius * net_width / batch.shape[-1]
        selected = select_keypoints(scores, coords, top_k, score_threshold, radius, valid=valid)
    padded_size = padded.shape[-2:]

    def describe(ranks: list[torch.Tensor]) -> list[torch.Tensor]:
        counts = [len(rank) for rank in ranks]
        with _inference(model):
            batch_index = torch.arange(len(ranks), device=scores.device).repeat_interleave(
                torch.tensor(counts, device=scores.device)
            )
            points = torch.cat([
                coord.flatten(1)[:, index[rank]].t()
                for coord, index, rank in zip(coords, selected, ranks, strict=True)
            ])
            descriptors = describe_at(features, batch_index, points, *padded_size)
        # cloned outside inference mode: ordinary tensors (the caller may modify them in place)
        return [part.clone() for part in descriptors.split(counts)]

    return _RunCells(scores, image_coords, valid), selected, describe


@contextlib.contextmanager
def _inference(model: torch.nn.Module | None) -> Iterator[None]:
    """Inference mode, and eval mode for ``model`` (``None``: a backend) with its mode restored after."""
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if model is not None:
            model.train(was_training)


def _extract_shrunk(
    model: torch.nn.Module,
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
        model, image, top_k, score_threshold, nms_radius * ratio, backend, 1.0, fit_memory=None,
        extra_scales=(), extra_rotations=(),
    )
    for result in results:
        points = to_image_pixels(result.keypoints.t()[None], (shrunk_width, shrunk_height), original_size)
        result.keypoints = points[0].t().contiguous()
        result.image_size = original_size
    return results, scores, batched


def extract(
    model: torch.nn.Module,
    image: ImageLike | list[ImageLike],
    top_k: int | None = 1000,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_radius: float = 0,
    backend: Backend | None = None,
    scale_factor: float | None = None,
    fit_memory: bool = False,
    extra_scales: tuple[float, ...] | list[float] | None = None,
    extra_rotations: tuple[float, ...] | list[float] | None = None,
    precision: str | None = None,
    extra_weight: float | None = None,
    extra_suppression: float | None = None,
    interpolation: str | None = None,
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
        backend: a fast backend built from ``model`` (:func:`kp2d.deploy.backends.load_backend`, e.g.
            ``"torch-bf16"`` or ``"ort-int8"``) to run instead of the plain network.
        scale_factor: run the network on the image resized by this factor (e.g. 2 for finer keypoints;
            see the module docstring); keypoints, ``nms_radius`` and ``image_size`` stay in pixels of the
            original image. ``None``: the model's ``inference_settings.scale_factor`` (1 unless its
            weights file records one).
        fit_memory: when the image needs more memory than is available (CPU models; see
            :mod:`kp2d.memory`), run it shrunk to the largest size that fits instead of refusing it;
            keypoints and ``image_size`` stay in pixels of the original image.
        extra_scales: more factors to run the network at (e.g. ``(1,)`` beside ``scale_factor=2``): each
            scale's keypoints are selected as above, then pooled and the ``top_k`` best scores kept, so
            an image met again zoomed 2-2.5x finds its keypoints at the other scale. ``None``: the
            model's ``inference_settings.extra_scales`` (none unless its weights file records some);
            ``()``: one scale. Scales at which the image would be under 32 px (or over the network's
            largest size) are left out; an image shrunk by ``fit_memory`` runs at one scale.
        extra_rotations: angles in degrees (e.g. ``(45, -45)``) of turned copies of the image the network
            also runs on, at ``scale_factor``; their keypoints are mapped back and pooled like
            ``extra_scales``' (a view turned by 40-60 degrees finds its keypoints again; each angle costs
            one more run of the network). ``None``: the model's ``inference_settings.extra_rotations``
            (none unless its weights file records some); ``()``: none. An image shrunk by
            ``fit_memory`` runs unturned.
        precision: without a ``backend``: ``"fp32"`` (the plain network), ``"bf16"`` (a folded copy of
            it under bf16 autocast, score and location heads in fp32; built once and cached) or
            ``"auto"`` (bf16 where the CPU has AVX512-BF16 / AMX or the GPU bf16, else fp32). ``None``:
            the model's ``inference_settings.precision`` (fp32 unless its weights file records one).
        extra_weight: the scores of ``extra_scales``' keypoints are multiplied by this (in ``(0, 1]``)
            before the pooling, and kept so (below 1 they fill in where the main run finds few
            keypoints); ``score_threshold`` applies to each run's own scores, before it. The turned
            copies' scores are not weighted.
            ``None``: the model's ``inference_settings.extra_weight`` (1 unless its weights file records
            one).
        extra_suppression: an extra scale's keypoint is left out where the main run has a keypoint
            within this many pixels of the image that scores at least as much (before ``extra_weight``),
            so that a view at the main scale keeps the main run's more precise keypoints and a zoomed
            one the extra scale's. 0: none left out. ``None``: the model's
            ``inference_settings.extra_suppression`` (0 unless its weights file records one).
        interpolation: how the image is enlarged to the network's input and its turned copies sampled:
            ``"bilinear"`` or ``"bicubic"`` (sharper, clamped to ``[0, 1]``); shrinking is always
            bilinear and antialiased. ``None``: the model's ``inference_settings.interpolation``
            (bilinear unless its weights file records one).

    Returns:
        Keypoints sorted by decreasing score (float32 keypoints, scores and descriptors, also for a
        fp16 / bf16 model).

    Raises:
        DataError: unsupported image type/shape/range, an image under 32 px a side (before or after
            resizing), or one that needs more memory than is available (without ``fit_memory``; the
            message names the largest size that fits).
        ConfigError: a bad ``top_k`` (not an integer >= 1), ``nms_radius`` (< 0), ``score_threshold``
            (NaN) or ``scale_factor`` (<= 0), a ``backend`` given by name instead of built, or both a
            ``backend`` and a ``precision``; an ``extra_weight`` outside ``(0, 1]``, an
            ``extra_suppression`` below 0, an unknown ``interpolation``.
    """
    if isinstance(image, (list, tuple)):
        for index, item in enumerate(image):
            if isinstance(item, torch.Tensor) and item.dim() == 4:
                raise DataError(
                    f"a list takes single images, item {index} is a batch {tuple(item.shape)} (pass a batch "
                    "on its own, or its images in the list)"
                )
        return [
            extract(
                model, item, top_k, score_threshold, nms_radius, backend, scale_factor, fit_memory,
                extra_scales, extra_rotations, precision, extra_weight, extra_suppression, interpolation,
            )
            for item in image
        ]
    backend = resolve_backend(model, backend, precision)
    results, _, batched = _extract_batch(
        model, image, top_k, score_threshold, nms_radius, backend, scale_factor, fit_memory, extra_scales,
        extra_rotations, extra_weight, extra_suppression, interpolation,
    )
    return results if batched else results[0]


def extract_with_score_map(
    model: torch.nn.Module,
    image: ImageLike,
    top_k: int | None = 1000,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_radius: float = 0,
    backend: Backend | None = None,
    scale_factor: float | None = None,
    fit_memory: bool = False,
    extra_scales: tuple[float, ...] | list[float] | None = None,
    extra_rotations: tuple[float, ...] | list[float] | None = None,
    precision: str | None = None,
    extra_weight: float | None = None,
    extra_suppression: float | None = None,
    interpolation: str | None = None,
) -> tuple[Keypoints, torch.Tensor]:
    """:func:`extract` for one image, plus its cell scores (see :func:`score_map`) from the same run.

    With ``scale_factor`` (or an image shrunk by ``fit_memory``) the cells are those of the resized
    image: ``(ceil(H'/8), ceil(W'/8))``; with ``extra_scales`` or ``extra_rotations``, those of the main
    ``scale_factor``, unturned.
    """
    backend = resolve_backend(model, backend, precision)
    results, scores, _ = _extract_batch(
        model, image, top_k, score_threshold, nms_radius, backend, scale_factor, fit_memory, extra_scales,
        extra_rotations, extra_weight, extra_suppression, interpolation,
    )
    if len(results) != 1:
        raise DataError(f"extract_with_score_map takes one image, got a batch of {len(results)}")
    return results[0], scores[0]


def score_map(model: torch.nn.Module, image: ImageLike) -> torch.Tensor:
    """Cell scores of one image: ``(ceil(H/8), ceil(W/8))``, cell ``(i, j)`` covering pixels ``8i..8i+7``.

    Cells of the padded border hold the score of the padded image; crop after upsampling by 8.
    """
    batch, batched = model_input(model, image)
    if batched and batch.shape[0] != 1:
        raise DataError(f"score_map takes one image, got a batch of {batch.shape[0]}")
    check_image_size(*batch.shape[-2:])
    scores, _, _ = _run(model, batch)
    return scores[0].clone()
