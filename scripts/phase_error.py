"""How far a model's keypoints move when its cell grid moves under the image: the grid-phase error.

    python scripts/phase_error.py --hpatches ../shared/data/hpatches-synth --model liteslim --limit 24

A network with an 8-px cell is equivariant to shifts of whole cells only. Each sequence's first image, resized
to ``--shape`` (default 320x240) and enlarged by the model's scale factor as its settings do, is cut at
``(8, 8)`` px and at ``(8 + dx, 8 + dy)`` px for several shifts within a cell (and one of a whole cell, the
control, which moves nothing but the borders); the network (fp32, one run at the model's main scale, no
extra runs) gives its ``--top-k`` keypoints of each cut. Each keypoint of the first cut, away from the edges,
is paired with the nearest of the shifted cut's keypoints moved back by the shift, within 4 px. Per shift: the
pairs per image, the RMS and median distance, and the share within 0.5 and 1 px, in pixels of the network's
input (a fixed share of the cell; divide by the scale factor for pixels of the image). An exact detector reads
0; the paired keypoints of a zoomed view and its reference differ by about this much on either side.

``--scales 0.5,0.9,1.12`` adds the scale error: the same first views enlarged by the main factor times each of
these too (the top ``--top-k`` times its square, keypoints mapped to the main input about pixel centres), and
each keypoint of the sparser run paired with the denser run's nearest, within 4 px of the main input. A zoom
of z between two views pairs the reference's main run with the view's run at about ``1/z`` of it (x1.12 of
the reference for the default's x1.25 run and a 2.5x zoom); an exact detector reads 0 here too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from kp2d.data.hpatches import find_sequences
from kp2d.errors import Kp2dError
from kp2d.eval.settings import parse_shapes
from kp2d.features.dense import CELL
from kp2d.features.extraction import rescale_images, to_image_pixels
from kp2d.io.imageio import read_image_rgb
from kp2d.io.images import image_to_tensor, resize_image
from kp2d.io.weights import DEFAULT_MODEL
from kp2d.models.keypoint_net import KeyPointNet, load_keypoint_net

SHIFTS = ((1, 0), (2, 0), (4, 0), (0, 3), (3, 5), (5, 2), (6, 6), (8, 8))
PAIRING_RADIUS = 4.0  # px of the network's input
EDGE = 2 * CELL  # px: keypoints this close to the cut's edge are left out


def keypoints(
    net: KeyPointNet,
    window: torch.Tensor,
    top_k: int,
    sizes: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> np.ndarray:
    """``(K, 2)`` keypoints (x, y) of the ``top_k`` best cells of ``(1, 3, H, W)`` ``window``.

    ``sizes`` = ``((W', H'), (W, H))`` maps them from an input of the first size to one of the second, about
    pixel centres (:func:`~kp2d.features.extraction.to_image_pixels`).
    """
    with torch.no_grad():
        score, coord, _ = net.forward_cells(window.contiguous(memory_format=torch.channels_last))
    if sizes is not None:
        coord = to_image_pixels(coord, *sizes)
    order = score.flatten().argsort(descending=True)[:top_k]
    return coord[0].flatten(1).T[order].numpy()


def paired_distances(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Each ``(N, 2)`` reference keypoint's distance to the nearest of ``other``, where under the radius."""
    distance = np.linalg.norm(reference[:, None, :] - other[None, :, :], axis=2).min(axis=1)
    return distance[distance < PAIRING_RADIUS]


def phase_errors(
    net: KeyPointNet, images: list[np.ndarray], scale_factor: float, interpolation: str, top_k: int
) -> dict[tuple[int, int], tuple[np.ndarray, int]]:
    """Per shift: the paired distances over all ``(H, W, 3)`` RGB ``images`` and the number of images."""
    found: dict[tuple[int, int], list[np.ndarray]] = {shift: [] for shift in SHIFTS}
    for image in images:
        tensor, _ = image_to_tensor(image)
        enlarged = rescale_images(tensor, scale_factor, interpolation)
        height, width = enlarged.shape[-2:]
        cut_h, cut_w = (height - 2 * CELL) // CELL * CELL, (width - 2 * CELL) // CELL * CELL
        base = keypoints(net, enlarged[..., CELL : CELL + cut_h, CELL : CELL + cut_w], top_k)
        inside = (base >= EDGE).all(axis=1) & (base[:, 0] < cut_w - EDGE) & (base[:, 1] < cut_h - EDGE)
        base = base[inside]
        for dx, dy in SHIFTS:
            window = enlarged[..., CELL + dy : CELL + dy + cut_h, CELL + dx : CELL + dx + cut_w]
            moved = keypoints(net, window, top_k) + np.array([dx, dy], dtype=np.float32)
            found[(dx, dy)].append(paired_distances(base, moved))
    return {shift: (np.concatenate(parts), len(parts)) for shift, parts in found.items()}


def _away_from_edges(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """The ``(N, 2)`` points at least :data:`EDGE` px inside a ``width x height`` window."""
    inside = (points >= EDGE).all(axis=1) & (points[:, 0] < width - EDGE) & (points[:, 1] < height - EDGE)
    return points[inside]


def scale_errors(
    net: KeyPointNet,
    images: list[np.ndarray],
    scale_factor: float,
    interpolation: str,
    top_k: int,
    factors: tuple[float, ...],
) -> dict[float, tuple[np.ndarray, int]]:
    """Per factor: the paired distances (px of the main input) over all ``(H, W, 3)`` RGB ``images``."""
    found: dict[float, list[np.ndarray]] = {factor: [] for factor in factors}
    for image in images:
        tensor, _ = image_to_tensor(image)
        main = rescale_images(tensor, scale_factor, interpolation)
        height, width = (side // CELL * CELL for side in main.shape[-2:])
        base = keypoints(net, main[..., :height, :width], top_k)
        for factor in factors:
            other = rescale_images(tensor, scale_factor * factor, interpolation)
            other_h, other_w = (side // CELL * CELL for side in other.shape[-2:])
            sizes = (other.shape[-1], other.shape[-2]), (main.shape[-1], main.shape[-2])
            count = max(1, round(top_k * factor**2))
            moved = keypoints(net, other[..., :other_h, :other_w], count, sizes)
            sparse, dense = (moved, base) if factor < 1 else (base, moved)
            found[factor].append(paired_distances(_away_from_edges(sparse, width, height), dense))
    return {factor: (np.concatenate(parts), len(parts)) for factor, parts in found.items()}


def _table_rows(rows: list[tuple[str, np.ndarray, int]]) -> None:
    """Print one markdown row per ``(name, distances, images)``."""
    for name, distances, count in rows:
        if not len(distances):  # no keypoint away from the edges, or none paired
            print(f"| {name} | 0.0 | – | – | – | – |")
            continue
        print(f"| {name} | {len(distances) / count:.1f} | {np.sqrt(np.mean(distances ** 2)):.3f} | "
              f"{np.median(distances):.3f} | {np.mean(distances < 0.5):.2f} | {np.mean(distances < 1):.2f} |")


def _factors(text: str) -> tuple[float, ...]:
    """``"0.5,1.12"`` → ``(0.5, 1.12)``; each in (0, 4] and not 1 (``""``: none)."""
    try:
        factors = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise Kp2dError(f"--scales must be numbers separated by commas, got {text!r}") from None
    if any(not 0 < factor <= 4 or factor == 1 for factor in factors):
        raise Kp2dError(f"--scales must each lie in (0, 4] and differ from 1, got {text!r}")
    return factors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hpatches", required=True, type=Path, help="HPatches-format folder (first views)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pretrained name or checkpoint")
    parser.add_argument("--shape", default="320x240", help="WxH the images are resized to (default 320x240)")
    parser.add_argument("--limit", type=int, default=24, help="sequences used (default 24)")
    parser.add_argument("--top-k", type=int, default=600, help="keypoints per cut (default 600)")
    parser.add_argument("--scales", default="", help="factors of the main scale (e.g. 0.5,1.12)")
    args = parser.parse_args(argv)
    try:
        ((width, height, _),) = parse_shapes([args.shape], None)
        size_wh = (width, height)
        if args.limit < 1 or args.top_k < 1:
            raise Kp2dError("--limit and --top-k must be at least 1")
        factors = _factors(args.scales)
        torch.set_num_threads(1)
        net = load_keypoint_net(args.model)
        settings = net.inference_settings
        scale = settings.scale_factor
        # only each sequence's first view, resized as the evaluation resizes it
        firsts = [seq.pairs[0].image1 for seq in find_sequences(args.hpatches)[: args.limit] if seq.pairs]
        images = [resize_image(read_image_rgb(path), size_wh) for path in firsts if path is not None]
        if not images:
            raise Kp2dError(f"{args.hpatches}: no sequence has a first view")
        results = phase_errors(net, images, scale, settings.interpolation, args.top_k)
        scaled = scale_errors(net, images, scale, settings.interpolation, args.top_k, factors)
    except (Kp2dError, OSError) as err:
        print(f"phase_error: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.model} at x{scale:g} ({settings.interpolation}), {len(images)} images of {args.shape}, "
          f"top {args.top_k}; distances in px of the network's input")
    print("| shift (dx, dy) | pairs per image | RMS | median | within 0.5 px | within 1 px |")
    print("|---|---|---|---|---|---|")
    within_cell = [distances for shift, (distances, _) in results.items() if shift != (CELL, CELL)]
    rows = [(f"({dx}, {dy})", *results[(dx, dy)]) for dx, dy in SHIFTS]
    rows.append(("all within a cell", np.concatenate(within_cell), len(images) * (len(SHIFTS) - 1)))
    _table_rows(rows)
    if scaled:
        print()
        print("| scale (x the main) | pairs per image | RMS | median | within 0.5 px | within 1 px |")
        print("|---|---|---|---|---|---|")
        _table_rows([(f"x{factor:g}", *scaled[factor]) for factor in factors])
    return 0


if __name__ == "__main__":
    sys.exit(main())
