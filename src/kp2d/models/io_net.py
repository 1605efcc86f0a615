"""IO-Net: point-wise inlier/outlier scoring of putative correspondences (SPEC §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IONet"]

IO_INPUT_DIM = 5  # (x_s, y_s, x_t, y_t, descriptor distance)


class IONet(nn.Module):
    """Residual network of 1x1 convolutions over N correspondences.

    Args:
        blocks: number of residual blocks (4 in the paper).
        width: channels of every hidden layer.

    Input: ``(B, 5, N, 1)`` rows ``(x_s, y_s, x_t, y_t, d)``, coordinates normalised to [-1, 1],
    ``d`` the descriptor distance. Output: ``(B, 1, N, 1)``, one inlier score per correspondence
    (trained towards +1 for inliers and -1 for outliers).

    Parameter names follow the original checkpoints: ``p_in.*``, ``{i}s0 … {i}s3`` per block, ``p_out``.
    """

    def __init__(self, blocks: int = 4, width: int = 128) -> None:
        super().__init__()
        self.blocks = blocks
        self.p_in = nn.Sequential(
            nn.Conv2d(IO_INPUT_DIM, width, kernel_size=1, bias=False),
            nn.BatchNorm2d(width, momentum=0.9),
            nn.ReLU(),
        )
        for i in range(blocks):
            self.add_module(f"{i}s0", nn.Conv2d(width, width, kernel_size=1))
            self.add_module(f"{i}s1", nn.BatchNorm2d(width, momentum=0.1))
            self.add_module(f"{i}s2", nn.Conv2d(width, width, kernel_size=1))
            self.add_module(f"{i}s3", nn.BatchNorm2d(width, momentum=0.1))
        self.p_out = nn.Conv2d(width, 1, kernel_size=1)

    def _layer(self, x: torch.Tensor, conv: nn.Module, norm: nn.Module) -> torch.Tensor:
        return F.relu(norm(F.instance_norm(conv(x))))

    def forward(self, correspondences: torch.Tensor) -> torch.Tensor:
        """Score ``(B, 5, N, 1)`` correspondences; returns ``(B, 1, N, 1)``."""
        if correspondences.dim() != 4 or correspondences.shape[1] != IO_INPUT_DIM:
            raise ValueError(
                f"expected correspondences of shape (B, {IO_INPUT_DIM}, N, 1), "
                f"got {tuple(correspondences.shape)}"
            )
        x = self.p_in(correspondences)
        for i in range(self.blocks):
            residual = x
            x = self._layer(x, getattr(self, f"{i}s0"), getattr(self, f"{i}s1"))
            x = self._layer(x, getattr(self, f"{i}s2"), getattr(self, f"{i}s3"))
            x = x + residual
        return self.p_out(x)
