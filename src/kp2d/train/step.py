"""One training step: augment → KeyPointNet on source and target → losses → backward → optimizer step."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn import functional as F

from kp2d.config import Config, OptimConfig
from kp2d.errors import Kp2dError
from kp2d.features.dense import CELL
from kp2d.io.images import to_network_channels
from kp2d.losses import (
    LossTerms,
    distillation_loss,
    keypoint_net_losses,
    scale_consistency_loss,
    shift_consistency_loss,
    warped_distillation_loss,
    warped_location_loss,
)
from kp2d.models import IONet, KeyPointNet

__all__ = ["NonFiniteLossError", "SiameseLoss", "TrainingStep", "build_optimizer", "learning_rate_at"]


class NonFiniteLossError(Kp2dError):
    """The loss became NaN or infinite."""


class SiameseLoss(nn.Module):
    """KeyPointNet (and IO-Net) with the training losses: ``forward(source, target, H) -> LossTerms``.

    The two images go through the network in two calls, so BatchNorm uses each batch's own statistics,
    as the original does. The network runs under autocast when ``autocast_dtype`` is set; the losses and
    IO-Net always run in fp32. One module call per step keeps DistributedDataParallel simple.
    """

    def __init__(
        self,
        keypoint_net: KeyPointNet,
        io_net: IONet | None,
        config: Config,
        autocast_dtype: torch.dtype | None = None,
        teacher: KeyPointNet | None = None,
    ) -> None:
        super().__init__()
        self.keypoint_net = keypoint_net
        self.io_net = io_net
        self.loss_config = config.loss
        self.autocast_dtype = autocast_dtype
        # a tuple keeps the frozen teacher out of the module tree: not trained, saved or synchronised by DDP
        self._teacher = (teacher.eval().requires_grad_(False),) if teacher is not None else ()

    def forward(self, source: torch.Tensor, target: torch.Tensor, homography: torch.Tensor) -> LossTerms:
        """Losses for ``(B, 3, H, W)`` source/target images in [0, 1] and ``(B, 3, 3)`` homographies.

        A grayscale network (``model.use_color: false``) sees the pair's luma (the augmentation is RGB).
        """
        channels = self.keypoint_net.in_channels
        source, target = to_network_channels(source, channels), to_network_channels(target, channels)
        height, width = source.shape[-2:]
        device_type = source.device.type
        autocast = (
            torch.autocast(device_type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else nullcontext()
        )
        with autocast:
            source_out = self.keypoint_net(source)
            needs_target = self._self_supervised() or self._warped_distillation()
            target_out = self.keypoint_net(target) if needs_target else None
            if self._teacher:
                with torch.no_grad():
                    teacher_out = self._teacher[0](source)
            shift = self._draw_shift() if self.loss_config.shift_consistency_weight > 0 else None
            if shift is not None:
                dx, dy = shift
                cut = source[..., dy : dy + height - CELL, dx : dx + width - CELL]
                shifted_out = self.keypoint_net.forward_cells(cut)
            reduced = self._reduce(source) if self.loss_config.scale_consistency_weight > 0 else None
            if reduced is not None:
                coarse_out = self.keypoint_net.forward_cells(reduced)
        if self._self_supervised():
            terms = keypoint_net_losses(
                source_out, target_out, homography, (height, width), self.loss_config, self.io_net
            )
        else:  # distillation alone: the target image is not needed
            zero = source_out.score.new_zeros((), dtype=torch.float32)
            terms = LossTerms(zero, zero, zero, zero, zero, zero, zero, zero.long(), zero, zero, zero)
        config = self.loss_config
        if shift is not None:
            consistency = config.shift_consistency_weight * shift_consistency_loss(
                source_out, shifted_out, shift, config.location_threshold
            )
            terms = terms._replace(total=terms.total + consistency, shift_consistency=consistency)
        if reduced is not None:
            consistency = config.scale_consistency_weight * scale_consistency_loss(
                source_out, coarse_out, config.location_threshold
            )
            terms = terms._replace(total=terms.total + consistency, scale_consistency=consistency)
        if not self._teacher:
            return terms
        term_weights = (
            config.distill_score_weight, config.distill_location_weight, config.distill_descriptor_weight
        )
        distill = config.distill_weight * distillation_loss(
            source_out, teacher_out, height, width, term_weights
        )
        if self._teacher and config.distill_warped_weight > 0:
            distill = distill + config.distill_warped_weight * warped_distillation_loss(
                target_out, teacher_out, homography, height, width
            )
        if self._teacher and config.distill_warped_location_weight > 0:
            distill = distill + config.distill_warped_location_weight * warped_location_loss(
                target_out, teacher_out, homography, height, width, config.location_threshold
            )
        return terms._replace(total=terms.total + distill, distill=distill)

    @staticmethod
    def _draw_shift() -> tuple[int, int]:
        """A random ``(dx, dy)`` in pixels, each in ``[0, CELL)``, not both 0 (torch's global generator)."""
        phase = int(torch.randint(1, CELL * CELL, ()).item())
        return phase % CELL, phase // CELL

    def _reduce(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images resized by a random factor of ``loss.scale_consistency_factors``.

        Each side is rounded to a multiple of :data:`CELL` (at least one cell), so the two sides' factors
        differ a little. Antialiased, as a coarse run's input holds no finer detail than its pixels.
        """
        low, high = self.loss_config.scale_consistency_factors
        factor = low + (high - low) * float(torch.rand(()).item())
        height, width = images.shape[-2:]
        size = tuple(max(CELL, CELL * round(side * factor / CELL)) for side in (height, width))
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _warped_distillation(self) -> bool:
        """Whether the network also learns the teacher's outputs on the target image at warped points."""
        config = self.loss_config
        warped = config.distill_warped_weight > 0 or config.distill_warped_location_weight > 0
        return bool(self._teacher) and warped

    def _self_supervised(self) -> bool:
        """Whether any self-supervised term counts (with a teacher, all weights 0 trains by distillation)."""
        config = self.loss_config
        weights = (config.keypoint_loss_weight, config.descriptor_loss_weight, config.score_loss_weight)
        return not self._teacher or self.io_net is not None or any(w > 0 for w in weights)


def build_optimizer(keypoint_net: KeyPointNet, io_net: IONet | None, config: OptimConfig) -> torch.optim.Adam:
    """Adam over KeyPointNet (group 0) and IO-Net (group 1), each with its own learning rate."""
    groups = [
        {"params": keypoint_net.parameters(), "lr": config.learning_rate, "base_lr": config.learning_rate}
    ]
    if io_net is not None:
        groups.append(
            {"params": io_net.parameters(), "lr": config.io_learning_rate, "base_lr": config.io_learning_rate}
        )
    return torch.optim.Adam(groups, weight_decay=config.weight_decay)


def learning_rate_at(base_lr: float, epoch: int, config: OptimConfig) -> float:
    """Step decay: ``base_lr * lr_decay ** min(epoch // lr_decay_epochs, max_lr_decays)``."""
    return base_lr * config.lr_decay ** min(epoch // config.lr_decay_epochs, config.max_lr_decays)


class TrainingStep:
    """Callable doing one optimisation step on a batch of raw images.

    Args:
        model: :class:`SiameseLoss`, possibly wrapped in DistributedDataParallel.
        optimizer: from :func:`build_optimizer`.
        augmentation: ``augmentation(images, generator) -> batch`` with ``source``, ``target``,
            ``homography`` (see :mod:`kp2d.augmentation`).
        channels_last: feed the network channels-last tensors (faster convolutions on CPU and GPU).
        scaler: a ``torch.amp.GradScaler`` for fp16, else ``None``.
    """

    def __init__(
        self, model: nn.Module, optimizer, augmentation, channels_last: bool = True, scaler=None
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.augmentation = augmentation
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.scaler = scaler
        self.last_batch = None  # the most recent augmented batch (for pictures)

    def forward_losses(self, images: torch.Tensor, generator: torch.Generator | None = None) -> LossTerms:
        """Augment ``(B, 3, H, W)`` images and compute the losses (no optimizer step)."""
        batch = self.augmentation(images, generator)
        self.last_batch = batch
        source = batch.source.contiguous(memory_format=self.memory_format)
        target = batch.target.contiguous(memory_format=self.memory_format)
        return self.model(source, target, batch.homography)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> LossTerms:
        """One step; returns the detached loss terms. Raises :class:`NonFiniteLossError` before stepping."""
        terms = self.forward_losses(images, generator)
        if not torch.isfinite(terms.total).item():
            raise NonFiniteLossError(
                "loss is " + str(terms.total.item()) + " (" + ", ".join(
                    f"{name}={value.item():.4g}" for name, value in zip(terms._fields, terms, strict=True)
                ) + ")"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(terms.total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            terms.total.backward()
            self.optimizer.step()
        return LossTerms(*(t.detach() for t in terms))
