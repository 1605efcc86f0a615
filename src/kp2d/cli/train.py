"""``kp2d train CONFIG --data DIR``: self-supervised training (single process or under torchrun)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kp2d.config import Config

from kp2d.checks import check_at_least

__all__ = ["add_parser"]

# Steps from random weights after which a V4 checkpoint beat the untrained network on all six HPatches
# numbers (docs/experiments/2026-11-early-training.md); the run's closing line warns below it.
EARLY_STEPS = 2500


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand to ``subparsers``."""
    parser = subparsers.add_parser(
        "train",
        help="train KeyPointNet (+ IO-Net) on a folder of images",
        description="Self-supervised training with random homographies. Multi-GPU: "
        "torchrun --nproc_per_node N -m kp2d train CONFIG --data DIR ...",
    )
    parser.add_argument("config", help="preset name (v0 … v4) or a YAML file")
    parser.add_argument(
        "--data", required=True, type=Path, help="folder of training images (searched recursively)"
    )
    parser.add_argument(
        "--out", type=Path, help="run folder for checkpoints and logs (default: runs/<config name>)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--epochs", type=int, help="number of epochs (default: from the config, 50)")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps in total")
    parser.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this much wall time, with a checkpoint to --resume from (Ctrl-C does the same)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in OUT even though it holds one (its checkpoints are replaced as the new run "
        "writes them); without it or --resume, an OUT with checkpoints/last.ckpt is refused",
    )
    parser.add_argument(
        "--init",
        metavar="MODEL",
        help="start from these weights (a pretrained name such as v4, or a checkpoint) with a fresh "
        "optimizer: fine-tuning",
    )
    parser.add_argument("--hpatches", type=Path, help="HPatches-format folder for periodic validation")
    parser.add_argument("--batch-size", type=int, help="images per process per step (default: 8)")
    parser.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: from the config (auto)"
    )
    parser.add_argument("--workers", type=int, help="data-loading processes (default: from the config)")
    parser.add_argument(
        "--cache-images", action="store_true", help="keep decoded images in memory (small sets)"
    )
    parser.add_argument(
        "--skip-bad", action="store_true", help="log and skip unreadable images instead of stopping"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train a new run over the checkpoints of an earlier one unless asked to."""
    from kp2d.errors import ConfigError

    last = out / "checkpoints" / "last.ckpt"
    if last.exists() and not resume and not overwrite:
        raise ConfigError(
            f"{out} already holds a run ({last}): add --resume to continue it, --overwrite to start a new "
            "run over it, or choose another --out"
        )


def _check_hpatches(root: Path) -> None:
    """Fail now, not after the first epoch, on an HPatches folder that validation could not read.

    Checks the sequences, that every pair's images exist, and reads the homographies (small text files);
    the images themselves are decoded at validation time.
    """
    from kp2d.data.hpatches import find_sequences, read_homography
    from kp2d.errors import DataError

    try:
        pairs = [pair for sequence in find_sequences(root) for pair in sequence.pairs]
        for pair in pairs:
            folder, listed_by = pair.homography_path.parent, pair.homography_path.name
            for stem, image in (("1", pair.image1), (str(pair.index), pair.image2)):
                if image is None:
                    raise DataError(f"{folder / stem}.*: image not found (listed by {listed_by})")
            read_homography(pair.homography_path)
    except DataError as err:
        raise DataError(f"--hpatches: {err}") from None


def run(args: argparse.Namespace) -> int:
    from kp2d.config import check_something_to_learn, load_config
    from kp2d.errors import ConfigError, DataError
    from kp2d.io.weights import resolve_model_path
    from kp2d.train.run_folder import hold_run_folder, is_rank_zero

    for name in ("epochs", "max_steps", "batch_size"):
        check_at_least(name.replace("_", "-"), getattr(args, name), 1)
    check_at_least("workers", args.workers, 0)
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ConfigError(f"--max-minutes must be above 0, got {args.max_minutes}")
    overrides: dict = {"train": {}}
    if args.batch_size:
        overrides["train"]["batch_size"] = args.batch_size
    if args.precision:
        overrides["train"]["precision"] = args.precision
    config = load_config(args.config, overrides)
    check_something_to_learn(config)
    if args.data.is_file():
        raise DataError(f"--data {args.data} is a file; give the folder of training images")
    if not args.data.is_dir():
        raise DataError(f"training data folder not found: {args.data}")
    if args.init is not None and args.resume:
        raise ConfigError("--init starts a new run from other weights; --resume continues this run: use one")
    out = args.out or Path("runs") / config.name
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in OUT; --overwrite starts a new one there: use one")
    if args.init is not None:
        resolve_model_path(args.init)  # a wrong name or path fails here, before any data is read
    if args.hpatches is not None:
        _check_hpatches(args.hpatches)
    # rank 0 holds OUT from here to the end of training: a second run there stops before it writes
    with hold_run_folder(out, enabled=is_rank_zero()):
        _check_run_folder(out, args.resume, args.overwrite)
        return _train(args, config, out)


def _train(args: argparse.Namespace, config: Config, out: Path) -> int:
    from kp2d.train.trainer import TrainOptions, train

    options = TrainOptions(
        config=config,
        data=args.data,
        out=out,
        device=args.device,
        epochs=args.epochs,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        resume=args.resume,
        init=args.init,
        hpatches=args.hpatches,
        skip_bad=args.skip_bad,
        cache_images=args.cache_images,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    summary = train(options)
    status = 130 if summary.stopped_by == "signal" else 0
    if not summary.is_main:  # under torchrun, rank 0 reports for all
        return status
    ended = "done" if summary.stopped_by is None else f"stopped ({summary.stopped_by})"
    # a resumed run that had its steps already trains none: it has no loss of its own to report
    last_loss = "no step taken" if math.isnan(summary.last_loss) else f"last loss {summary.last_loss:.4f}"
    print(
        f"{ended}: {summary.steps} steps, {summary.epochs_completed} epoch(s), {summary.seconds:.0f} s; "
        f"{last_loss}; checkpoint {summary.last_checkpoint}"
    )
    if summary.stopped_by is not None:
        print(f"continue with: kp2d train ... --out {options.out} --resume")
    if summary.from_scratch and summary.steps < EARLY_STEPS:
        print(
            f"note: from random weights, checkpoints of fewer than about {EARLY_STEPS:,} steps (batch 8) can "
            "evaluate below the untrained network: the early objective flattens the score map and draws the "
            "descriptors together (docs/experiments/2026-11-early-training.md)"
        )
    return status
