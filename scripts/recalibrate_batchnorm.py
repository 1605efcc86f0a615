"""Re-estimate a KeyPointNet's BatchNorm statistics on training pairs of another size.

    python scripts/recalibrate_batchnorm.py v4 --images ../shared/data/train/bsds500 --shape 240x320 \
        --out v4_bn240.ckpt
    kp2d eval --checkpoint v4_bn240.ckpt --hpatches ../shared/data/hpatches-synth --shape 320x240 --top-k 300

A training run leaves BatchNorm's running statistics as an exponential average of its last batches, at its
training size (the shipped V4's last 9,484 steps were at 480×640). This runs the network (dropout off, no
gradients) on the augmented source and target images of every photo once, in batches of ``--batch-size``,
with the training augmentation of ``v4`` + ``original_jitter_noop`` at ``--shape`` (seed ``--seed``), and sets
every BatchNorm's running mean and variance to the plain average of those batches' statistics. Everything else
in the checkpoint stays as it was (original ``{'config', 'state_dict'}`` format, the same dtypes).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from kp2d.augmentation import HomographicAugmentation
from kp2d.checks import check_output_path
from kp2d.config import load_config, parse_image_shape
from kp2d.data.image_folder import ImageFolderDataset
from kp2d.errors import ConfigError, DataError, Kp2dError, user_message
from kp2d.io.checkpoint import load_checkpoint
from kp2d.io.files import atomic_torch_save
from kp2d.io.weights import resolve_model_path
from kp2d.models import KeyPointNet
from kp2d.models.keypoint_net import keypoint_net_from


def recalibrate(network: KeyPointNet, batches: Iterable[torch.Tensor]) -> int:
    """Set every BatchNorm's running statistics to the average over ``batches`` of ``(B, 3, H, W)`` images.

    Returns the number of batches; the network is left in eval mode.
    """
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    network.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average instead of an exponential one
        norm.train()
    count = 0
    with torch.no_grad():
        for images in batches:
            network(images)
            count += 1
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
        norm.eval()
    return count


def training_pairs(
    dataset: ImageFolderDataset, augmentation: HomographicAugmentation, batch_size: int, seed: int
) -> Iterable[torch.Tensor]:
    """Source, then target, images of each batch of a shuffled pass over ``dataset`` (full batches only)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    for start in range(0, len(order) - batch_size + 1, batch_size):
        batch = augmentation(torch.stack([dataset[i] for i in order[start:start + batch_size]]), generator)
        yield batch.source
        yield batch.target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", metavar="MODEL", help="checkpoint path or pretrained name")
    parser.add_argument("--images", required=True, metavar="DIR", help="training photos")
    parser.add_argument("--shape", default="240x320", metavar="HxW", help="default 240x320")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint to write")
    parser.add_argument("--batch-size", type=int, default=8, help="default 8 (training's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        height, width = parse_image_shape(args.shape)
    except ConfigError as error:
        parser.error(f"--shape: {error}")
    if args.batch_size < 2:
        parser.error(f"--batch-size must be at least 2 (BatchNorm statistics), got {args.batch_size}")
    try:
        check_output_path(args.out, "--out")  # before the work, so that its result is not lost
        path = resolve_model_path(args.model)
        checkpoint = load_checkpoint(path)
        network = keypoint_net_from(checkpoint, path).float()
        augmentation_config = load_config("v4", {"augmentation": {"original_jitter_noop": True}}).augmentation
        augmentation = HomographicAugmentation(
            dataclasses.replace(augmentation_config, image_shape=(height, width))
        )
        dataset = ImageFolderDataset(args.images, (height, width))
        if len(dataset) < args.batch_size:
            raise DataError(f"{args.images}: {len(dataset)} images, fewer than a batch of {args.batch_size}")
        batches = recalibrate(network, training_pairs(dataset, augmentation, args.batch_size, args.seed))
        state = network.state_dict()
        io_net = checkpoint.io_net_state_dict
        payload = {
            "config": checkpoint.raw_config,
            "state_dict": {k: state[k].to(v.dtype) for k, v in checkpoint.state_dict.items()},
            **({} if io_net is None else {"io_net_state_dict": io_net}),
            # a shipped file's reference outputs describe the statistics replaced here
            **{key: value for key, value in checkpoint.extra.items() if key != "reference"},
            "batchnorm_recalibrated": {
                "images": str(args.images), "shape": [height, width], "batches": batches, "seed": args.seed
            },
        }
        atomic_torch_save(payload, args.out)
    except (Kp2dError, OSError) as error:
        print(f"recalibrate_batchnorm: error: {user_message(error)}", file=sys.stderr)
        return 2
    print(f"{args.out}: BatchNorm statistics averaged over {batches} batches at {height}x{width}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
