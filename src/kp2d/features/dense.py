"""The network's dense output format: cell size, score / coordinate / descriptor maps, descriptor sampling.

Extraction and the losses are written against this format, not against one network class.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from kp2d.geometry import normalize_points

__all__ = [
    "CELL",
    "DEFAULT_SCORE_THRESHOLD",
    "DESCRIPTOR_DIM",
    "KeyPointNetOutput",
    "interior_mask",
    "sample_descriptors",
]


CELL = 8  # pixels per output cell (three 2x poolings)

DESCRIPTOR_DIM = 256


#: ``extract``'s default: cells scoring at most this are no keypoints, so that a blank or featureless image
#: has none (its scores lie far below; the numbers are in docs/notes-from-code.md).
DEFAULT_SCORE_THRESHOLD = 1e-4


class KeyPointNetOutput(NamedTuple):
    """Dense outputs of :class:`KeyPointNet` for ``(B, C, H, W)`` input, ``Hc = H/8``, ``Wc = W/8``.

    Attributes:
        score: ``(B, 1, Hc, Wc)`` keypoint score in [0, 1]; 0 on the border cells.
        coord: ``(B, 2, Hc, Wc)`` keypoint position ``(x, y)`` in input pixels.
        desc: ``(B, 256, Hd, Wd)`` dense descriptor map, ``(Hd, Wd) = (H/4, W/4)`` with upsampling,
            else ``(Hc, Wc)``. Not normalised; see :func:`sample_descriptors`.
    """

    score: torch.Tensor
    coord: torch.Tensor
    desc: torch.Tensor


def sample_descriptors(desc: torch.Tensor, coord: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinearly sample a dense descriptor map at pixel positions and L2-normalise.

    Args:
        desc: ``(B, C, Hd, Wd)`` dense descriptors covering an ``height x width`` image.
        coord: ``(B, 2, h, w)`` pixel positions ``(x, y)`` (e.g. :attr:`KeyPointNetOutput.coord`).
        height, width: input image size in pixels.

    Returns:
        ``(B, C, h, w)`` unit-norm descriptors; float32 for fp16 / bf16 ``desc``, which is sampled in float32
        (PyTorch's CPU ``grid_sample`` in half precision gives wrong values, even NaN, on channels-last maps).
    """
    if desc.dtype in (torch.float16, torch.bfloat16):
        desc = desc.float()
    grid = normalize_points(coord.permute(0, 2, 3, 1), height, width)
    sampled = F.grid_sample(desc, grid.to(desc.dtype), mode="bilinear", align_corners=True)
    return sampled / sampled.norm(p=2, dim=1, keepdim=True)


def interior_mask(
    rows: int, cols: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.bool
) -> torch.Tensor:
    """``(rows, cols)`` mask of the cell grid: 0 (False) on the first/last row and column, else 1 (True).

    The network zeroes the border cells' scores with it and the losses leave those cells out.
    """
    mask = torch.zeros(rows, cols, dtype=dtype, device=device)
    mask[1:-1, 1:-1] = 1
    return mask
