"""A folder of training photos (any layout, searched recursively) as resized uint8 RGB tensors.

Items are ``(3, H, W)`` uint8 so that the DataLoader workers only decode and resize and the collate and
host→device copy stay cheap; the augmentation (:mod:`kp2d.augmentation`) runs batched on the training
device.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from kp2d.errors import DataError
from kp2d.io.imageio import read_image_rgb  # re-exported: the one image reader
from kp2d.io.images import resize_image

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "list_images", "read_image_rgb"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root`` (recursive, symlinks followed), sorted by path.

    Extensions: :data:`IMAGE_EXTENSIONS`, case-insensitive. Hidden files and folders (names starting with
    ``.``, e.g. macOS ``._photo.jpg`` companions) are skipped.

    Raises:
        DataError: ``root`` is missing, not a folder, or holds no image.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    paths = []
    visited: set[tuple[int, int]] = set()  # (device, inode) of each folder: a link back up is walked once
    for folder, subfolders, files in os.walk(root, followlinks=True):
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in visited:
            subfolders[:] = []
            continue
        visited.add((status.st_dev, status.st_ino))
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        paths.extend(
            Path(folder) / name
            for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        )
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return sorted(paths)




class ImageFolderDataset(Dataset):
    """Every image under ``root``, as ``(3, H, W)`` uint8 RGB tensors resized to ``image_shape``.

    Args:
        root: folder searched recursively (see :func:`list_images`).
        image_shape: ``(H, W)`` of the items.
        skip_bad: on an unreadable file, log a warning (once per file and process), remember it in
            :attr:`bad_files` and return the next readable image instead (deterministic). Without it, an
            unreadable file raises :class:`~kp2d.errors.DataError` naming it.
        cache: keep decoded, resized items in memory (400 photos at 240×320 ≈ 92 MB). With DataLoader
            workers each worker holds its own cache; call :meth:`preload` before creating the loader to
            fill it once in the parent process.

    Attributes:
        paths: the image files, sorted. bad_files: unreadable files met so far (in this process).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_shape: tuple[int, int] = (240, 320),
        skip_bad: bool = False,
        cache: bool = False,
    ) -> None:
        self.root = Path(root)
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        if min(self.image_shape) < 1:
            raise ValueError(f"image_shape must be positive (H, W), got {image_shape}")
        self.skip_bad = skip_bad
        self.cache = cache
        self.paths = list_images(self.root)
        self.bad_files: list[Path] = []
        self._cached: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> torch.Tensor:
        """Read, convert and resize image ``index`` (no cache, no skipping): ``(3, H, W)`` uint8."""
        height, width = self.image_shape
        image = resize_image(read_image_rgb(self.paths[index]), (width, height), area_when_shrinking=True)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))

    def __getitem__(self, index: int) -> torch.Tensor:
        """Image ``index`` as ``(3, H, W)`` uint8 RGB (or, with ``skip_bad``, the next readable one)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        if index in self._cached:
            return self._cached[index].clone()
        item = self._load_or_skip(index)
        if self.cache:
            self._cached[index] = item.clone()
        return item

    def preload(self) -> None:
        """Fill the cache with every item (sets ``cache=True``)."""
        self.cache = True
        for index in range(len(self)):
            self[index]

    def _load_or_skip(self, index: int) -> torch.Tensor:
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            try:
                return self.load(candidate)
            except DataError as err:
                if not self.skip_bad:
                    hint = "skip_bad (kp2d train --skip-bad) skips unreadable images"
                    raise type(err)(f"{err}; {hint}") from None
                path = self.paths[candidate]
                if path not in self.bad_files:
                    self.bad_files.append(path)
                    logger.warning("skipping unreadable image: %s", err)
        raise DataError(f"no readable image under {self.root} ({len(self.bad_files)} unreadable files)")
