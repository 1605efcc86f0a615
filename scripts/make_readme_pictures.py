"""Regenerate the README pictures (default folder ``docs/images/``).

    python scripts/make_readme_pictures.py --model v4 [--hpatches-dir ../shared/data/hpatches] [--overfit]
        [--progress random CKPT ...]

Writes
- ``graffiti_1_4_matches.png``: matches on the real HPatches pair v_graffiti 1 -> 4, RANSAC/USAC inliers
  green, outliers red, with the corner error against the ground-truth homography in the caption;
- ``graffiti_1_scores.png`` / ``graffiti_1_keypoints.png``: score heat map and keypoints of image 1;
- ``demo_matches.png``: the in-memory demo pair (``kp2d match --demo``);
- with ``--overfit``: the over-fitting GIFs, by running ``kp2d overfit --out <folder>/overfit``;
- with ``--progress``: ``training_progress.gif``, one frame per checkpoint of a training run (``random``: a
  fresh network): keypoints (left) and score map (right) of v_graffiti image 1, captioned with the step.

Images are resized to ``--width`` pixels wide (aspect kept) before detection, and the ground-truth
homography is rescaled to match.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from kp2d.checks import check_at_least, check_finite, check_output_path
from kp2d.demo import demo_pair
from kp2d.errors import DataError, Kp2dError
from kp2d.eval.metrics import corner_error
from kp2d.features.extraction import extract, extract_with_score_map
from kp2d.features.matching import estimate_homography, match
from kp2d.geometry import scale_homography
from kp2d.io.checkpoint import load_checkpoint, training_steps
from kp2d.io.images import load_image
from kp2d.io.inference import model_scale_factor
from kp2d.io.weights import DEFAULT_MODEL, resolve_model_path
from kp2d.models.keypoint_net import keypoint_net_from, load_keypoint_net, untrained_keypoint_net
from kp2d.runtime import resolve_device
from kp2d.visualization import (
    draw_caption,
    draw_keypoints,
    draw_matches,
    draw_score_heatmap,
    save_gif,
    save_image,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HPATCHES = REPO_ROOT.parent / "shared" / "data" / "hpatches"
log = logging.getLogger("make_readme_pictures")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"pretrained name or checkpoint path (default: the shipped default model, now {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--hpatches-dir", type=Path, default=DEFAULT_HPATCHES, help="folder holding v_graffiti/"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images", help="output folder")
    parser.add_argument("--width", type=int, default=640, help="resize images to this width (0: keep)")
    parser.add_argument(
        "--top-k", type=int, default=1000, help="keypoints per image, 0 for all (default: 1000)"
    )
    parser.add_argument("--nms-radius", type=float, default=0.0)
    parser.add_argument("--method", choices=("usac", "ransac"), default="usac")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--max-lines", type=int, default=300, help="match lines drawn at most, 0 for none (default: 300)"
    )
    parser.add_argument("--ext", choices=("png", "jpg"), default="png", help="picture format (default: png)")
    parser.add_argument(
        "--overfit", action="store_true", help="also make the over-fitting GIFs (kp2d overfit)"
    )
    parser.add_argument(
        "--progress",
        nargs="+",
        metavar="CKPT",
        help="checkpoints of one run, in order ('random': a fresh network; a pretrained name works too), "
        "for training_progress.gif",
    )
    parser.add_argument(
        "--progress-width", type=int, default=320, help="image width in training_progress.gif (default: 320)"
    )
    return parser.parse_args(argv)


def check_options(args: argparse.Namespace) -> None:
    """ConfigError for a negative size or count (or a 0 where 0 means nothing), or an unwritable ``--out``."""
    for name, minimum in (("width", 0), ("progress_width", 1), ("max_lines", 0), ("top_k", 0)):
        check_at_least(name.replace("_", "-"), getattr(args, name), minimum)
    check_finite("--nms-radius", args.nms_radius, minimum=0)
    check_output_path(args.out, "--out", folder=True)


def _resize(image: np.ndarray, width: int) -> np.ndarray:
    if width <= 0 or image.shape[1] == width:
        return image
    height = round(image.shape[0] * width / image.shape[1])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _image_file(sequence: Path, index: int) -> Path:
    for suffix in (".ppm", ".png", ".jpg"):
        if (sequence / f"{index}{suffix}").is_file():
            return sequence / f"{index}{suffix}"
    raise DataError(f"{sequence}: no image {index}.ppm/.png/.jpg")


def match_picture(image0, image1, kpts0, kpts1, true_homography, label: str, args) -> np.ndarray:
    """Mutual-NN matches, a homography with inliers/outliers drawn, and the corner error in the caption."""
    matches, _ = match(kpts0.descriptors, kpts1.descriptors)
    homography, inliers = estimate_homography(kpts0.keypoints, kpts1.keypoints, matches, method=args.method)
    error = corner_error(homography, true_homography, kpts0.image_size)
    caption = f"{label}{len(matches)} matches, {int(inliers.sum())} inliers, corner error {error:.1f} px"
    log.info(caption)
    return draw_matches(
        image0,
        image1,
        kpts0.keypoints,
        kpts1.keypoints,
        matches,
        inliers,
        text=caption,
        max_lines=args.max_lines,
    )


def graffiti_pictures(model, args: argparse.Namespace, target: int = 4) -> None:
    sequence = args.hpatches_dir / "v_graffiti"
    if not sequence.is_dir():
        raise DataError(f"HPatches sequence not found: {sequence} (use --hpatches-dir)")
    original0 = load_image(_image_file(sequence, 1))
    original1 = load_image(_image_file(sequence, target))
    image0, image1 = _resize(original0, args.width), _resize(original1, args.width)
    size = lambda image: (image.shape[1], image.shape[0])  # noqa: E731
    true_homography = scale_homography(
        np.loadtxt(sequence / f"H_1_{target}"), size(original0), size(original1), size(image0)
    )
    if size(image0) != size(image1):
        raise DataError("v_graffiti images of different sizes are not supported by this script")

    options = {"top_k": args.top_k or None, "nms_radius": args.nms_radius}
    kpts0, cell_scores = extract_with_score_map(model, image0, **options)
    kpts1 = extract(model, image1, **options)
    picture = match_picture(
        image0, image1, kpts0, kpts1, true_homography, f"v_graffiti 1 -> {target}: ", args
    )
    save_image(args.out / f"graffiti_1_{target}_matches.{args.ext}", picture)
    save_image(args.out / f"graffiti_1_scores.{args.ext}", draw_score_heatmap(
        image0, cell_scores, scale_factor=model_scale_factor(model, None)
    ))
    keypoints = kpts0.numpy()
    save_image(
        args.out / f"graffiti_1_keypoints.{args.ext}",
        draw_keypoints(image0, keypoints["keypoints"], keypoints["scores"]),
    )


def demo_picture(model, args: argparse.Namespace) -> None:
    pair = demo_pair()
    options = {"top_k": args.top_k or None, "nms_radius": args.nms_radius}
    kpts0, kpts1 = extract(model, pair.image0, **options), extract(model, pair.image1, **options)
    picture = match_picture(pair.image0, pair.image1, kpts0, kpts1, pair.homography, "demo: ", args)
    save_image(args.out / f"demo_matches.{args.ext}", picture)


def _progress_frame_net(name: str, device):
    """``(network, caption)`` of one frame: a checkpoint file or pretrained name, or ``random`` (fresh V4).

    The caption counts all training steps behind the weights, those of a run it was fine-tuned from included.

    The fresh network is seeded as ``kp2d eval --random-init`` (seed 0).
    """
    if name == "random":
        return untrained_keypoint_net("v4").to(device).eval(), "random init"
    checkpoint = load_checkpoint(resolve_model_path(name))
    net = keypoint_net_from(checkpoint, name)
    step = training_steps(checkpoint)
    return net.to(device).eval(), f"step {step:,}" if isinstance(step, int) else Path(name).stem


def progress_gif(args: argparse.Namespace) -> None:
    """``training_progress.gif``: keypoints | score map of v_graffiti 1 after each given checkpoint."""
    image = _resize(load_image(_image_file(args.hpatches_dir / "v_graffiti", 1)), args.progress_width)
    device = resolve_device(args.device)
    frames = []
    for name in args.progress:
        net, caption = _progress_frame_net(name, device)
        kpts, cell_scores = extract_with_score_map(net, image, top_k=args.top_k // 4 or None)
        keypoints = kpts.numpy()
        frames.append(
            np.concatenate(
                [
                    draw_caption(draw_keypoints(image, keypoints["keypoints"], keypoints["scores"]), caption),
                    draw_score_heatmap(image, cell_scores, scale_factor=model_scale_factor(net, None)),
                ],
                axis=1,
            )
        )
        log.info("progress frame: %s", caption)
    save_gif(frames, args.out / "training_progress.gif", duration_ms=700, last_frame_ms=2500)


def overfit_gifs(args: argparse.Namespace) -> None:
    """The over-fitting GIFs of the original README: ``kp2d overfit --out <out>/overfit``."""
    import subprocess
    import sys

    # run as a command, as a user would: scripts sit beside the CLI, not on top of it
    status = subprocess.call([sys.executable, "-m", "kp2d", "overfit", "--out", str(args.out / "overfit")])
    if status:
        raise Kp2dError(f"kp2d overfit failed with status {status}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        check_options(args)
        model = load_keypoint_net(args.model, resolve_device(args.device))
        graffiti_pictures(model, args)
        demo_picture(model, args)
        if args.overfit:
            overfit_gifs(args)
        if args.progress:
            progress_gif(args)
    except Kp2dError as err:
        print(f"make_readme_pictures: error: {err}", file=sys.stderr)
        return 2
    log.info("pictures in %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
