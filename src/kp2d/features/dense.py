"""The network's dense output format: cell size, score / coordinate / descriptor maps, descriptor sampling.

Extraction and the losses are written against this format, not against one network class.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kp2d.config import DESCRIPTOR_SAMPLINGS
from kp2d.geometry import normalize_points

__all__ = [
    "CELL",
    "DEFAULT_SCORE_THRESHOLD",
    "DESCRIPTOR_DIM",
    "CellOutput",
    "KeyPointNetOutput",
    "MapPoints",
    "conv3x3_at",
    "descriptor_grid",
    "gather_patches",
    "interior_mask",
    "map_points",
    "normalize_image",
    "padded_cells",
    "read_map",
    "sample_descriptors",
    "window_inside",
]


CELL = 8  # pixels per output cell (three 2x poolings)

DESCRIPTOR_DIM = 256

IMAGE_MEAN = 0.5
IMAGE_SCALE = 0.225  # the published weights expect (img - 0.5) * 0.225 (multiplied, not divided)


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """Map an image in [0, 1] to the network's input range: ``(image - 0.5) * 0.225``."""
    return (image - IMAGE_MEAN) * IMAGE_SCALE


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


class CellOutput(NamedTuple):
    """What a network computes before its descriptor head (``KeyPointNet.forward_cells``).

    Attributes:
        score: ``(B, 1, Hc, Wc)`` as :class:`KeyPointNetOutput`.
        coord: ``(B, 2, Hc, Wc)`` as :class:`KeyPointNetOutput`.
        features: ``(B, C, Hd, Wd)`` the descriptor head's input, on the descriptor map's grid.
    """

    score: torch.Tensor
    coord: torch.Tensor
    features: torch.Tensor


class MapPoints(NamedTuple):
    """Pixel positions on a descriptor map's grid, as :func:`sample_descriptors`' ``grid_sample`` reads them.

    Attributes:
        left, top: ``(N,)`` int64 column / row of each point's upper-left map cell.
        weights: ``(N, 1, 2, 2)`` float32 bilinear weights of the cells ``(top + i, left + j)``.
    """

    left: torch.Tensor
    top: torch.Tensor
    weights: torch.Tensor


def map_points(
    points: torch.Tensor, height: int, width: int, rows: int, cols: int, sampling: str = "original"
) -> MapPoints:
    """Pixel ``points (N, 2)`` ``(x, y)`` of an ``height x width`` image on a ``rows x cols`` map's cells.

    The same positions as :func:`sample_descriptors` with the same ``sampling``; a point on the last row or
    column gets weight 0 on the cell beyond it.
    """
    _check_sampling(sampling)
    if sampling == "centred":  # grid_sample(align_corners=False, padding_mode="border"): clamped to the map
        x = ((points[:, 0].float() + 0.5) * (cols / width) - 0.5).clamp(0, cols - 1)
        y = ((points[:, 1].float() + 0.5) * (rows / height) - 0.5).clamp(0, rows - 1)
    else:
        grid = normalize_points(points.float(), height, width)
        x = (grid[:, 0] + 1.0) / 2.0 * (cols - 1)
        y = (grid[:, 1] + 1.0) / 2.0 * (rows - 1)
    left, top = x.floor(), y.floor()
    fx, fy = x - left, y - top
    weights = torch.stack([1.0 - fy, fy], dim=1)[:, :, None] * torch.stack([1.0 - fx, fx], dim=1)[:, None, :]
    return MapPoints(left.long(), top.long(), weights[:, None])


def window_inside(top: torch.Tensor, left: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """``(N, size, size)`` bool: which cells of the windows at ``top``, ``left`` (``(N,)``) lie on the map."""
    offsets = torch.arange(size, device=top.device)
    rows, cols = top[:, None] + offsets, left[:, None] + offsets  # (N, size) each
    return ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]


def gather_patches(
    maps: torch.Tensor, batch_index: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int
) -> torch.Tensor:
    """``(N, C, size, size)`` windows of ``maps (B, C, H, W)`` at rows ``top + i``, columns ``left + j``.

    ``batch_index``, ``top``, ``left``: ``(N,)`` int64; rows and columns outside the map read 0, as a
    convolution's zero padding does.
    """
    height, width = maps.shape[-2:]
    offsets = torch.arange(size, device=maps.device)
    rows, cols = top[:, None] + offsets, left[:, None] + offsets  # (N, size) each
    inside = window_inside(top, left, size, height, width)
    rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
    # (B, H, W, C) is a view of a channels-last map, so each window gathers whole channel vectors
    windows = maps.permute(0, 2, 3, 1)[batch_index[:, None, None], rows[:, :, None], cols[:, None, :]]
    return (windows * inside[..., None].to(windows.dtype)).permute(0, 3, 1, 2)


def padded_cells(maps: torch.Tensor) -> torch.Tensor:
    """``(B, H + 2, W + 2, C)``: ``maps (B, C, H, W)`` as a channel vector per cell, in a border of zeros."""
    batch, channels, height, width = maps.shape
    padded = maps.new_zeros(batch, height + 2, width + 2, channels)
    padded[:, 1:-1, 1:-1] = maps.permute(0, 2, 3, 1)
    return padded


def conv3x3_at(
    layer: nn.Module, padded: torch.Tensor, batch_index: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``(M, C')``: a 3×3 zero-padded convolution layer's output at cells ``(rows, cols)`` of a map only.

    ``layer``: a ``Conv2d`` (3×3, stride 1, padding 1) or a ``Sequential`` starting with one, whose other
    modules act per cell (BatchNorm in eval mode, an activation). ``padded``: the map as
    :func:`padded_cells` holds it; ``batch_index``, ``rows``, ``cols``: ``(M,)`` int64 cells of the
    unpadded map. Each cell's 3×3 neighbourhood times the weights is one row of a matrix product, so the
    cost follows the cells asked for, not the map.
    """
    conv, rest = (layer[0], list(layer)[1:]) if isinstance(layer, nn.Sequential) else (layer, [])
    if not (
        isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
        and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
        and conv.padding_mode == "zeros"
    ):
        raise TypeError(f"not a 3x3 zero-padded convolution layer: {conv}")
    offsets = torch.arange(3, device=padded.device)
    taps = padded[  # (M, 3, 3, C): rows - 1 .. rows + 1 of the map are rows .. rows + 2 of padded
        batch_index[:, None, None], rows[:, None, None] + offsets[:, None], cols[:, None, None] + offsets
    ]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # taps in the same order
    out = F.linear(taps.flatten(1), weight, conv.bias)
    for module in rest:
        out = module(out[:, :, None, None])[:, :, 0, 0]
    return out


def _check_sampling(sampling: str) -> None:
    """ValueError unless ``sampling`` is one of :data:`~kp2d.config.DESCRIPTOR_SAMPLINGS`."""
    if sampling not in DESCRIPTOR_SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(DESCRIPTOR_SAMPLINGS)}, got {sampling!r}")


def descriptor_grid(
    points: torch.Tensor, height: int, width: int, sampling: str = "original"
) -> torch.Tensor:
    """Pixel ``(..., 2)`` ``(x, y)`` → the ``grid_sample`` grid that reads the map as ``sampling`` says.

    ``"original"``: :func:`~kp2d.geometry.normalize_points`, for ``align_corners=True``; ``"centred"``:
    ``(x + 0.5) / (W / 2) - 1``, for ``align_corners=False`` (see
    :data:`~kp2d.config.DESCRIPTOR_SAMPLINGS`). Sizes stay plain numbers, so an ONNX export keeps them
    symbolic.
    """
    _check_sampling(sampling)
    if sampling == "original":
        return normalize_points(points, height, width)
    x, y = points.unbind(-1)
    return torch.stack([(x + 0.5) / (width / 2.0) - 1.0, (y + 0.5) / (height / 2.0) - 1.0], dim=-1)


def read_map(desc: torch.Tensor, grid: torch.Tensor, sampling: str = "original") -> torch.Tensor:
    """``grid_sample`` of ``desc (B, C, Hd, Wd)`` at a :func:`descriptor_grid` ``(B, h, w, 2)``, bilinear."""
    _check_sampling(sampling)
    if sampling == "centred":
        return F.grid_sample(desc, grid, mode="bilinear", align_corners=False, padding_mode="border")
    return F.grid_sample(desc, grid, mode="bilinear", align_corners=True)


def sample_descriptors(
    desc: torch.Tensor, coord: torch.Tensor, height: int, width: int, sampling: str = "original"
) -> torch.Tensor:
    """Bilinearly sample a dense descriptor map at pixel positions and L2-normalise.

    Args:
        desc: ``(B, C, Hd, Wd)`` dense descriptors covering an ``height x width`` image.
        coord: ``(B, 2, h, w)`` pixel positions ``(x, y)`` (e.g. :attr:`KeyPointNetOutput.coord`).
        height, width: input image size in pixels.
        sampling: one of :data:`~kp2d.config.DESCRIPTOR_SAMPLINGS` (the original code's by default).

    Returns:
        ``(B, C, h, w)`` unit-norm descriptors; float32 for fp16 / bf16 ``desc``, which is sampled in float32
        (PyTorch's CPU ``grid_sample`` in half precision gives wrong values, even NaN, on channels-last maps).
    """
    if desc.dtype in (torch.float16, torch.bfloat16):
        desc = desc.float()
    grid = descriptor_grid(coord.permute(0, 2, 3, 1), height, width, sampling)
    sampled = read_map(desc, grid.to(desc.dtype), sampling)
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
