"""Which kind of view change costs a detector most? HPatches-format sets of one warp each, growing.

    python scripts/warp_sweep.py ../shared/data/hpatches-synth --out warps
    kp2d eval --model v4 --hpatches warps/zoom --shape 320x240 --top-k 300 --baselines sift --json zoom.json
    python scripts/hpatches_breakdown.py zoom.json

For every photo (the reference view ``1.*`` of each sequence of an HPatches-format folder, or every image of
any other folder) and every kind, a sequence ``v_<photo>`` whose views 2, 3, … are the photo warped about its
centre by one homography, each level stronger than the last:

- ``zoom``: magnified by s (view k shows the central 1/s of the photo); default 1.25, 1.5, 2, 2.5, 3;
- ``rotation``: turned by a degrees; default 10, 20, 30, 40, 50;
- ``perspective``: tilted about the vertical axis, the left edge scaled by 1/(1 - t) and the right edge
  by 1/(1 + t); default t = 0.1, 0.2, 0.3, 0.4, 0.5;
- ``zoomturn``: magnified by s and turned by a degrees, levels written ``s@a``; default 1.5@20, 2@30,
  2@-30, 2.5@45, 2.5@-45 (a camera that zooms and rolls, in both directions).

Views are lossless PNGs of the photo's size (pixels warped in from outside the photo are black); ``H_1_k``
maps photo pixels to view-k pixels. The sequences are named ``v_*`` so that ``hpatches_breakdown.py`` gives
one row per level (``v 1-2`` is the first level).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from kp2d.checks import check_output_path
from kp2d.data.hpatches import find_sequences, read_image
from kp2d.data.image_folder import list_images
from kp2d.errors import ConfigError, DataError, Kp2dError, user_message

Level = float | tuple[float, float]  # one number, or (zoom, degrees) for zoomturn

DEFAULT_LEVELS: dict[str, tuple[Level, ...]] = {
    "zoom": (1.25, 1.5, 2.0, 2.5, 3.0),
    "rotation": (10.0, 20.0, 30.0, 40.0, 50.0),
    "perspective": (0.1, 0.2, 0.3, 0.4, 0.5),
    "zoomturn": ((1.5, 20.0), (2.0, 30.0), (2.0, -30.0), (2.5, 45.0), (2.5, -45.0)),
}


def warp_about_center(kind: str, level: Level, width: int, height: int) -> np.ndarray:
    """``(3, 3)`` homography, photo pixels → view pixels, of one ``kind`` at ``level``, about the centre."""
    if kind == "zoomturn":
        if not isinstance(level, tuple) or len(level) != 2:
            raise ValueError(f"zoomturn levels must be (zoom, degrees) pairs, got {level!r}")
        zoom, angle = level
        turned = warp_about_center("rotation", angle, width, height) @ warp_about_center(
            "zoom", zoom, width, height
        )
        return turned / turned[2, 2]
    if not isinstance(level, (int, float)):
        raise ValueError(f"{kind} levels must be numbers, got {level!r}")
    if not math.isfinite(level):
        raise ValueError(f"{kind} levels must be finite numbers, got {level}")
    if kind == "zoom":
        if level <= 0:
            raise ValueError(f"zoom must be positive, got {level}")
        about_origin = np.diag([level, level, 1.0])
    elif kind == "rotation":
        angle = math.radians(level)
        cos, sin = math.cos(angle), math.sin(angle)
        about_origin = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    elif kind == "perspective":
        if not 0 <= level < 1:
            raise ValueError(f"perspective t must be in [0, 1), got {level}")
        about_origin = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2 * level / width, 0.0, 1.0]])
    else:
        raise ValueError(f"unknown warp kind {kind!r} (known: {', '.join(DEFAULT_LEVELS)})")
    center = np.array([[1.0, 0.0, width / 2], [0.0, 1.0, height / 2], [0.0, 0.0, 1.0]])
    homography = center @ about_origin @ np.linalg.inv(center)
    return homography / homography[2, 2]


def source_photos(root: Path) -> list[tuple[str, Path]]:
    """``(name, path)`` of the photos: each sequence's ``1.*`` (HPatches folder), else every image.

    Names lose an ``i_``/``v_`` prefix and are made unique.
    """
    try:
        sequences = find_sequences(root)
    except DataError:
        sequences = []
    if sequences:
        photos = [(seq.name, seq.pairs[0].image1) for seq in sequences if seq.pairs and seq.pairs[0].image1]
    else:
        photos = [
            (path.relative_to(root).with_suffix("").as_posix().replace("/", "_"), path)
            for path in list_images(root)
        ]
    named, taken = [], set()
    for name, path in photos:
        unique = name = name[2:] if name[:2] in ("i_", "v_") else name
        while unique in taken:  # i_x and v_x, or x.png and x.jpg
            unique = f"{unique}_{name}"
        taken.add(unique)
        named.append((unique, path))
    return named


def check_levels(levels: dict[str, Sequence[Level]]) -> None:
    """ConfigError naming the option (``--zoom``, ...) unless every level gives a finite homography."""
    for kind, kind_levels in levels.items():
        for level in kind_levels:
            try:
                warp_about_center(kind, level, 2, 2)
            except ValueError as error:
                raise ConfigError(f"--{kind}: {error}") from None


def _write_png(path: Path, image: np.ndarray) -> None:
    """``cv2.imwrite``, with a DataError where OpenCV only returns ``False``."""
    if not cv2.imwrite(str(path), image):
        raise DataError(f"cannot write image {path}")


def write_sweeps(root: Path, out: Path, levels: dict[str, Sequence[Level]], limit: int | None = None) -> int:
    """Write ``out/<kind>/v_<photo>/`` for every kind in ``levels``; returns the number of photos used."""
    photos = source_photos(root)[:limit]
    for name, path in photos:
        photo = read_image(path)
        height, width = photo.shape[:2]
        for kind, kind_levels in levels.items():
            folder = out / kind / f"v_{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob("H_1_*"):  # views of an earlier sweep with more levels
                stale.unlink()
            _write_png(folder / "1.png", photo)
            for view, level in enumerate(kind_levels, start=2):
                homography = warp_about_center(kind, level, width, height)
                view_image = cv2.warpPerspective(photo, homography, (width, height))
                _write_png(folder / f"{view}.png", view_image)
                np.savetxt(folder / f"H_1_{view}", homography)
    return len(photos)


def _levels(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one level")
    return values


def _zoom_turn_levels(text: str) -> tuple[tuple[float, float], ...]:
    """``"2@30,2.5@-45"`` → ``((2.0, 30.0), (2.5, -45.0))``."""
    try:
        pairs = tuple(v.split("@") for v in text.split(",") if v.strip())
        values = tuple((float(zoom), float(angle)) for zoom, angle in pairs)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ZOOM@DEGREES, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one level")
    return values


def _level_text(level: Level) -> str:
    return "@".join(f"{v:g}" for v in level) if isinstance(level, tuple) else f"{level:g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, help="HPatches folder (its 1.* views) or image folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for <kind>/v_<photo>/ sequences")
    parser.add_argument("--kinds", default=",".join(DEFAULT_LEVELS), help="default: all four")
    for kind, default in DEFAULT_LEVELS.items():
        parser.add_argument(
            f"--{kind}",
            type=_zoom_turn_levels if kind == "zoomturn" else _levels,
            default=default,
            metavar="S@A,..." if kind == "zoomturn" else "L1,L2,...",
            help=f"levels (default {','.join(_level_text(v) for v in default)})",
        )
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N photos")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in DEFAULT_LEVELS]
    if unknown or not kinds:
        known = ", ".join(DEFAULT_LEVELS)
        parser.error(f"--kinds: unknown {', '.join(unknown) or '(none given)'}; known: {known}")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    levels = {kind: getattr(args, kind) for kind in kinds}
    try:
        check_levels(levels)  # the levels and the output folder before writing anything
        check_output_path(args.out, "--out", folder=True)
        count = write_sweeps(args.images, args.out, levels, args.limit)
    except (Kp2dError, OSError) as error:
        print(f"warp_sweep: error: {user_message(error)}", file=sys.stderr)
        return 2
    print(f"{count} photos × {len(levels)} kinds → {args.out}/{{{','.join(levels)}}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
