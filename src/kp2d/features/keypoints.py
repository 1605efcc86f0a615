"""The result type of extraction: keypoints, scores and descriptors of one image."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kp2d.errors import InputError

__all__ = ["Keypoints"]


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
