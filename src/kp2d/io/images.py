"""Images in: files, numpy arrays, PIL images and tensors to ``(B, C, H, W)`` float in [0, 1]."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
import torch

from kp2d.errors import DataError, InputTypeError
from kp2d.io.imageio import read_image_rgb

if TYPE_CHECKING:
    import PIL.Image

__all__ = [
    "FLOAT_RANGE_SLACK",
    "GRAY_WEIGHTS",
    "ImageLike",
    "image_to_tensor",
    "load_image",
    "resize_image",
    "rgb_to_grayscale",
    "to_network_channels",
]


ImageLike = Union[np.ndarray, torch.Tensor, "PIL.Image.Image", str, os.PathLike]

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # OpenCV's RGB -> gray
FLOAT_RANGE_SLACK = 1e-3  # float images may exceed [0, 1] by this much (resampling overshoot)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 **RGB**: :func:`kp2d.io.imageio.read_image_rgb`."""
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


def rgb_to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB → ``(B, 1, H, W)`` luma with OpenCV's weights (0.299, 0.587, 0.114)."""
    red, green, blue = images.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * red + GRAY_WEIGHTS[1] * green + GRAY_WEIGHTS[2] * blue).unsqueeze(1)


def resize_image(
    image: np.ndarray, size_wh: tuple[int, int], *, area_when_shrinking: bool = False
) -> np.ndarray:
    """Resize ``(h, w, C)`` to ``size_wh = (W, H)``, OpenCV's order; bilinear.

    With ``area_when_shrinking``, area averaging when neither side grows (training photos, where bilinear
    would alias). Returns ``image`` itself when the size does not change.
    """
    import cv2

    width, height = size_wh
    if image.shape[:2] == (height, width):
        return image
    shrinking = height <= image.shape[0] and width <= image.shape[1]
    interpolation = cv2.INTER_AREA if area_when_shrinking and shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)
