"""Have a run's descriptors collapsed? The mean cosine between descriptors of the same image, per checkpoint.

    python scripts/descriptor_spread.py --random-init runs/v4/checkpoints/last.ckpt \
        --images ../shared/data/train/bsds500

For each checkpoint (or pretrained name) and, with ``--random-init``, an untrained V4 (``kp2d eval
--random-init``'s seed 0), runs the network on the first ``--count`` training photos at ``--shape`` and prints
the mean cosine similarity between every two descriptor-map cells of an image (1.0: every descriptor is the
same vector; about 0.03 for the shipped V4) and the spread (std) of the score over the inner cells. Both with
BatchNorm on the batch's statistics, as in a training step (dropout off), and on the running statistics, as
``kp2d eval`` runs the network (an untrained network's running statistics are BatchNorm's defaults).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from kp2d.config import parse_image_shape
from kp2d.data.image_folder import ImageFolderDataset
from kp2d.errors import ConfigError, Kp2dError
from kp2d.models import KeyPointNet
from kp2d.models.keypoint_net import load_keypoint_net, untrained_keypoint_net


def spread(network: KeyPointNet, images: torch.Tensor, batch_statistics: bool) -> tuple[float, float]:
    """Mean descriptor cosine and inner-cell score std for ``(B, 3, H, W)`` images in [0, 1]."""
    network.eval()
    if batch_statistics:
        for module in network.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.train()
    with torch.no_grad():
        output = network(images)
    descriptors = F.normalize(output.desc.flatten(2), dim=1)  # (B, D, N)
    cosine = (descriptors.transpose(1, 2) @ descriptors).mean().item()
    score_std = output.score[:, :, 1:-1, 1:-1].flatten(1).std(dim=1).mean().item()  # border cells are 0
    return cosine, score_std


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", metavar="MODEL", help="checkpoint paths or pretrained names")
    parser.add_argument("--random-init", action="store_true", help="also an untrained V4 (seed 0)")
    parser.add_argument("--images", required=True, metavar="DIR", help="training photos (first --count)")
    parser.add_argument("--count", type=int, default=8, help="photos in the batch (default 8)")
    parser.add_argument("--shape", default="240x320", metavar="HxW", help="default 240x320 (training)")
    args = parser.parse_args(argv)
    try:
        height, width = parse_image_shape(args.shape)
    except ConfigError as error:
        parser.error(f"--shape: {error}")
    if args.count < 1:
        parser.error(f"--count must be at least 1, got {args.count}")
    if not args.models and not args.random_init:
        parser.error("give at least one MODEL or --random-init")
    try:
        dataset = ImageFolderDataset(args.images, (height, width))
        images = torch.stack([dataset[i] for i in range(min(args.count, len(dataset)))]).float() / 255
        networks: list[tuple[str, KeyPointNet]] = []
        if args.random_init:
            networks.append(("random-init (v4)", untrained_keypoint_net("v4")))
        networks += [(name, load_keypoint_net(name)) for name in args.models]
        columns = ["model", "cosine, batch stats", "cosine, running stats", "score std, batch",
                   "score std, running"]
        print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
        for name, network in networks:
            batch = spread(network, images, batch_statistics=True)
            running = spread(network, images, batch_statistics=False)
            print(f"| {name} | {batch[0]:.3f} | {running[0]:.3f} | {batch[1]:.3f} | {running[1]:.3f} |")
    except Kp2dError as error:
        print(f"descriptor_spread: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
