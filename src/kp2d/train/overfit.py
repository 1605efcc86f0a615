"""The over-fitting demo: train on one image and record how keypoints and scores settle, as GIFs.

Three animations, one frame every ``every`` steps (and at the first and the last): the image with its
detected keypoints (``keypoints.gif``), the score map (``scores.gif``), and the random warped crop the step
trained on (``crop.gif``). From random weights the score map first goes flat (a few hundred steps), then the
detector settles on salient, repeatable structure (edges and corners, after about 1,000 steps at batch 4).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from kp2d.augmentation import HomographicAugmentation
from kp2d.config import Config, check_something_to_learn
from kp2d.errors import DataError, make_folder
from kp2d.features.extraction import check_image_size, extract_with_score_map
from kp2d.models import IONet
from kp2d.models.keypoint_net import build_keypoint_net
from kp2d.runtime import autocast_dtype
from kp2d.train.step import SiameseLoss, TrainingStep, build_optimizer
from kp2d.visualization import draw_keypoints, draw_score_heatmap, save_gif, to_rgb_uint8

__all__ = ["OverfitResult", "overfit"]

log = logging.getLogger(__name__)

_CPU = torch.device("cpu")
_GIF_NAMES = ("keypoints.gif", "scores.gif", "crop.gif")


@dataclass
class OverfitResult:
    """Paths of the written GIFs, the loss at each recorded frame and the steps done."""

    keypoints_gif: Path
    scores_gif: Path
    crop_gif: Path
    losses: list[float]
    steps_done: int
    interrupted: bool = False


def _frames(net, image_rgb: np.ndarray, crop: torch.Tensor, top_k: int) -> tuple[np.ndarray, ...]:
    keypoints, cell_scores = extract_with_score_map(net, image_rgb, top_k=top_k)
    net.train()
    return (
        draw_keypoints(image_rgb, keypoints.keypoints, keypoints.scores),
        draw_score_heatmap(image_rgb, cell_scores),
        to_rgb_uint8(crop),
    )


def _prepare_output_folder(out: Path) -> None:
    """Create ``out`` (before training, so a bad folder loses no work); :class:`DataError` naming it."""
    if out.exists() and not out.is_dir():
        raise DataError(f"output folder {out} is a file, not a folder")
    make_folder(out, "output folder")
    in_the_way = [name for name in _GIF_NAMES if (out / name).is_dir()]
    if in_the_way:
        raise DataError(f"cannot write {out / in_the_way[0]}: it is a folder")


def overfit(
    image_rgb: np.ndarray,
    config: Config,
    out: Path,
    steps: int = 1500,
    every: int = 50,
    batch_size: int = 4,
    top_k: int = 100,
    device: torch.device = _CPU,
    progress: bool = True,
) -> OverfitResult:
    """Train a fresh network on augmented copies of one ``(H, W, 3)`` uint8 RGB image; write three GIFs.

    The image is resized to ``config.augmentation.image_shape``; each step trains on ``batch_size``
    different random homographies of it. Ctrl-C stops the run and still writes the frames
    recorded so far (``interrupted`` is then set).

    Raises:
        DataError: the image has under 32 pixels a side, or ``out`` cannot be made a folder (both checked
            before training).
        ConfigError: no self-supervised loss term has a weight (``lite``'s presets learn by distillation
            alone, which overfit does not run).
    """
    check_image_size(*image_rgb.shape[:2])  # a smaller image is blank once upscaled
    # overfit trains without a teacher: a config that learns by distillation alone would train nothing
    check_something_to_learn(dataclasses.replace(config, train=dataclasses.replace(config.train, teacher="")))
    out = Path(out)
    _prepare_output_folder(out)
    height, width = config.augmentation.image_shape
    resized = cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_AREA)
    images = torch.from_numpy(resized).permute(2, 0, 1).unsqueeze(0).repeat(batch_size, 1, 1, 1).to(device)
    torch.manual_seed(config.train.seed)
    net = build_keypoint_net(config.model).to(device).to(memory_format=torch.channels_last).train()
    io_net = IONet().to(device) if config.model.with_io else None
    dtype = autocast_dtype(config.train.precision, device)
    step = TrainingStep(
        SiameseLoss(net, io_net, config, dtype),
        build_optimizer(net, io_net, config.optim),
        HomographicAugmentation(config.augmentation),
    )
    generator = torch.Generator().manual_seed(config.train.seed)
    recorded: list[tuple[np.ndarray, ...]] = []
    losses: list[float] = []
    steps_done, interrupted = 0, False
    try:
        for index in tqdm(range(1, steps + 1), desc="overfit", unit="step", disable=not progress):
            terms = step(images, generator)
            steps_done = index
            if index % every == 0 or index in (1, steps):
                recorded.append(_frames(net, resized, step.last_batch.source[0], top_k))
                losses.append(terms.total.item())
                log.info("step %d: loss %.4f", index, losses[-1])
    except KeyboardInterrupt:
        if not recorded:
            raise
        interrupted = True
        log.warning("interrupted after step %d: writing the %d frames recorded so far",
                    steps_done, len(recorded))
    paths = [save_gif([frame[i] for frame in recorded], out / name, last_frame_ms=1500)
             for i, name in enumerate(_GIF_NAMES)]
    return OverfitResult(*paths, losses, steps_done, interrupted)
