"""``kp2d match A B`` / ``kp2d match --demo``: match two images, fit a homography, draw the matches.

Prints the number of keypoints, matches and inliers and the 3x3 homography (image A pixels → image B
pixels); writes a side-by-side picture with inliers in green and outliers in red, and with ``--json`` the
same results for scripts (see :func:`match_record`). ``--demo`` uses a scikit-image photo and a copy warped
by a known homography (made in memory, no files needed) and also prints the mean corner error of the
estimate.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from kp2d.cli.detect import add_model_options
from kp2d.demo import DEMO_PHOTOS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from kp2d.features.keypoints import Keypoints

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``kp2d match``."""
    parser = subparsers.add_parser(
        "match",
        help="match two images and estimate a homography",
        description="Match the keypoints of two images (mutual nearest neighbours, optional ratio test), "
        "estimate the homography A -> B and draw inliers (green) and outliers (red).",
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="the two images A and B")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="use a bundled photo and a copy warped by a known homography instead of A B",
    )
    parser.add_argument(
        "--demo-photo", choices=DEMO_PHOTOS, default="astronaut", help="photo for --demo (default: astronaut)"
    )
    parser.add_argument("--out", default="matches.png", help="picture to write (default: matches.png)")
    parser.add_argument(
        "--json",
        metavar="FILE",
        default=None,
        help="also write the homography, the matches and their inliers as JSON",
    )
    parser.add_argument(
        "--ratio", type=float, default=None, help="Lowe ratio test threshold in (0, 1] (default: off)"
    )
    parser.add_argument("--no-mutual", action="store_true", help="plain nearest neighbours, no mutual check")
    parser.add_argument(
        "--method",
        choices=("usac", "ransac"),
        default="usac",
        help="robust estimator: usac (MAGSAC++) or ransac (default: usac)",
    )
    parser.add_argument(
        "--threshold", type=float, default=3.0, help="inlier threshold in pixels (default: 3)"
    )
    add_model_options(parser)
    parser.set_defaults(func=run)


#: Extensions ``--out`` may have (Pillow writes each of them as an RGB picture).
PICTURE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm")


def _check_picture_path(path: Path) -> None:
    """ConfigError unless ``--out`` names a picture file that can be written (before any matching)."""
    from kp2d.checks import check_output_path
    from kp2d.errors import ConfigError

    check_output_path(path, "--out")
    if path.suffix.lower() not in PICTURE_EXTENSIONS:
        found = f"'{path.suffix}'" if path.suffix else "none"
        choices = ", ".join(PICTURE_EXTENSIONS)
        raise ConfigError(f"--out {path}: unsupported picture extension ({found}); use one of {choices}")


def match_record(
    names: list[str],
    kpts0: Keypoints,
    kpts1: Keypoints,
    matches: torch.Tensor,
    inliers: np.ndarray,
    homography: np.ndarray | None,
    args: argparse.Namespace,
    corner_error_px: float | None = None,
) -> dict:
    """What ``--json`` writes.

    ``image_a``/``image_b`` (paths or demo names), ``image_size_a``/``image_size_b`` ``[W, H]``,
    ``keypoints`` ``[N_a, N_b]``, ``method`` and ``threshold`` of the robust fit, ``homography`` (3x3, image A
    pixels → image B pixels, ``null`` when none was found), ``matches`` (``[i_a, i_b]`` keypoint indices),
    ``points_a``/``points_b`` (their ``[x, y]`` pixels), ``inliers`` (one bool per match), and with
    ``--demo`` the ``corner_error`` of the estimate in pixels (``null`` without one). ``matches`` is
    ``(M, 2)``, ``inliers`` ``(M,)``.
    """
    pairs = matches.tolist()
    record = {
        "image_a": names[0],
        "image_b": names[1],
        "image_size_a": list(kpts0.image_size),
        "image_size_b": list(kpts1.image_size),
        "keypoints": [len(kpts0), len(kpts1)],
        "method": args.method,
        "threshold": args.threshold,
        "homography": None if homography is None else [[float(v) for v in row] for row in homography],
        "matches": pairs,
        "points_a": kpts0.keypoints[matches[:, 0]].tolist() if pairs else [],
        "points_b": kpts1.keypoints[matches[:, 1]].tolist() if pairs else [],
        "inliers": [bool(v) for v in inliers],
    }
    if corner_error_px is not None:
        record["corner_error"] = corner_error_px  # inf (no estimate) is written as null
    return record


def _format_homography(homography) -> str:
    return "\n".join("  [" + "  ".join(f"{value: .6g}" for value in row) + "]" for row in homography)


def run(args: argparse.Namespace) -> int:
    """Match, estimate, print and draw; returns the exit status."""
    from kp2d.checks import check_finite, check_unit_interval
    from kp2d.cli.detect import apply_model_settings, backend_options, model_options, selection_options
    from kp2d.errors import ConfigError, DataError
    from kp2d.eval.metrics import corner_error
    from kp2d.features.extraction import extract
    from kp2d.features.matching import estimate_homography, match
    from kp2d.io.images import load_image
    from kp2d.models.keypoint_net import load_keypoint_net
    from kp2d.runtime import resolve_device
    from kp2d.visualization import draw_matches, save_image

    options = selection_options(args)
    if args.ratio is not None:
        check_unit_interval("--ratio", args.ratio)
    check_finite("--threshold", args.threshold, above=0, unit="pixels")
    if args.demo and args.images:
        raise ConfigError("give either two images A B or --demo, not both")
    if not args.demo and len(args.images) != 2:
        raise ConfigError(f"give two images A B (got {len(args.images)}), or --demo")
    out = Path(args.out)
    _check_picture_path(out)
    if args.json is not None:
        from kp2d.checks import check_output_path

        check_output_path(Path(args.json), "--json")
    model = load_keypoint_net(args.model, resolve_device(args.device))
    apply_model_settings(args, model)
    options = model_options(options, model)
    options.update(backend_options(args, model))
    if args.demo:
        from kp2d.demo import demo_pair

        pair = demo_pair(args.demo_photo)
        images, true_homography = [pair.image0, pair.image1], pair.homography
        names = [pair.name, f"{pair.name} (warped)"]
    else:
        images = [load_image(path) for path in args.images]
        names, true_homography = list(args.images), None

    keypoints = []
    for image, name in zip(images, names, strict=True):
        try:
            keypoints.append(extract(model, image, **options))
        except DataError as err:
            raise DataError(f"{name}: {err}") from None
    kpts0, kpts1 = keypoints
    matches, _ = match(kpts0.descriptors, kpts1.descriptors, mutual=not args.no_mutual, ratio=args.ratio)
    homography, inliers = estimate_homography(
        kpts0.keypoints, kpts1.keypoints, matches, method=args.method, threshold=args.threshold
    )

    print(f"keypoints: {len(kpts0)} in {names[0]}, {len(kpts1)} in {names[1]}")
    share = f" ({100.0 * inliers.sum() / len(matches):.1f}%)" if len(matches) else ""
    print(f"matches: {len(matches)}")
    print(f"inliers: {int(inliers.sum())}{share}")
    caption = f"{len(matches)} matches, {int(inliers.sum())} inliers"
    if homography is None:
        print("homography: not found (fewer than 4 matches or no consensus)")
    else:
        print(f"homography ({args.method}, {names[0]} -> {names[1]}):")
        print(_format_homography(homography))
    error = None
    if true_homography is not None:
        error = corner_error(homography, true_homography, kpts0.image_size)
        print(f"mean corner error: {error:.2f} px")
        caption += f", corner error {error:.2f} px"

    picture = draw_matches(
        images[0], images[1], kpts0.keypoints, kpts1.keypoints, matches, inliers, text=caption
    )
    save_image(out, picture)
    print(f"picture: {out}")
    if args.json is not None:
        from kp2d.io.files import write_json

        record = match_record(names, kpts0, kpts1, matches, inliers, homography, args, error)
        write_json(Path(args.json), record)
        print(f"results: {args.json}")
    return 0
