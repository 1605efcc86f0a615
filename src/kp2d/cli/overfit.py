"""``kp2d overfit IMAGE``: the over-fitting demo (train on one image, write three animated GIFs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["DEFAULT_SIZE", "add_parser"]

DEFAULT_SIZE = "160x120"  # WxH, small so that the default 1,500 steps finish on a laptop CPU


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``overfit`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "overfit",
        help="train on a single image and write GIFs of keypoints, score map and training crops",
    )
    parser.add_argument("image", nargs="?", help="an image file (default: scikit-image's astronaut photo)")
    parser.add_argument("--out", type=Path, default=Path("kp2d_overfit"), help="folder for the GIFs")
    parser.add_argument(
        "--config", help="preset name or YAML file (default: v4 with the original's no-op colour jitter, "
        "augmentation.original_jitter_noop, as the original's demo)",
    )
    parser.add_argument(
        "--size", default=DEFAULT_SIZE, metavar="WxH",
        help=f"width x height the image is resized to for training and frames (default: {DEFAULT_SIZE}; "
        "the config's image_shape is not used)",
    )
    parser.add_argument("--shape", help=argparse.SUPPRESS)  # the old HxW option, refused in run()
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default: 1500)")
    parser.add_argument("--every", type=int, default=50, help="record a frame every N steps (default: 50)")
    parser.add_argument("--batch-size", type=int, default=4, help="augmented copies per step (default: 4)")
    parser.add_argument("--top-k", type=int, default=100, help="keypoints drawn per frame (default: 100)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the options, train on the image and write the GIFs; returns the exit status."""
    from kp2d.checks import check_at_least, check_output_path, parse_size_wh
    from kp2d.config import load_config, parse_image_shape
    from kp2d.errors import ConfigError, DataError
    from kp2d.features.extraction import check_image_size
    from kp2d.io.images import load_image
    from kp2d.runtime import resolve_device
    from kp2d.train.overfit import overfit

    for name in ("steps", "every", "batch_size", "top_k"):
        check_at_least(name.replace("_", "-"), getattr(args, name), 1)
    if args.shape is not None:
        height, _, width = args.shape.lower().partition("x")
        raise ConfigError(
            f"overfit's --shape took HEIGHTxWIDTH, unlike eval and export; it is now --size WIDTHxHEIGHT "
            f"(--shape {args.shape} is --size {width}x{height})"
        )
    width, height = parse_size_wh(args.size, "--size")
    try:
        shape = {"image_shape": list(parse_image_shape(f"{height}x{width}"))}
    except ConfigError:
        raise ConfigError(
            f"--size {args.size}: width and height must be multiples of 8, at least 32 (e.g. 160x120)"
        ) from None
    check_output_path(args.out, "--out", folder=True)
    if args.config is None:  # the original's demo: its colour jitter is a no-op
        config = load_config("v4", {"augmentation": {**shape, "original_jitter_noop": True}})
    else:
        config = load_config(args.config, {"augmentation": shape})
    if args.image is None:
        import skimage.data

        image = skimage.data.astronaut()
    else:
        image = load_image(args.image)
        try:
            check_image_size(*image.shape[:2])
        except DataError as err:
            raise DataError(f"{args.image}: {err}") from None
    result = overfit(
        image, config, args.out, steps=args.steps, every=args.every,
        batch_size=args.batch_size, top_k=args.top_k, device=resolve_device(args.device),
        progress=not args.no_progress,
    )
    print(f"wrote {result.keypoints_gif}, {result.scores_gif}, {result.crop_gif}")
    print(f"loss: {result.losses[0]:.4f} (first frame) -> {result.losses[-1]:.4f} (last frame)")
    if result.interrupted:
        print(f"interrupted after step {result.steps_done} of {args.steps}", file=sys.stderr)
        return 130
    return 0
