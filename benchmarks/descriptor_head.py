"""Descriptors at a few keypoints: the head run cell by cell against the whole map, on a photo.

``KeyPointNet.descriptors_at`` runs the descriptor head's two 3×3 layers only at the map cells its keypoints
read (and the first layer at the cells around those), each cell once, or computes the whole map and reads
it, whichever is less work by its rule (a matrix product per cell taken as half a dense convolution's speed).
This prints both ways' time, and the time as it picks, on the default model's own backend (bf16 where the
CPU has it natively, else folded fp32) for the best N cells of scikit-image's astronaut at the model's input
scale, so the rule can be checked on a CPU:

    python benchmarks/descriptor_head.py --threads 2
    python benchmarks/descriptor_head.py --threads 2 --counts 100,300,1000,3000 --shape 640x480
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import skimage.data
import torch

from kp2d.checks import check_at_least
from kp2d.errors import ConfigError, Kp2dError, user_message
from kp2d.eval.settings import parse_shapes
from kp2d.features.dense import CELL
from kp2d.features.extraction import rescale_images
from kp2d.io.images import image_to_tensor, resize_image
from kp2d.models import KeyPointNet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="pretrained name or weights file")
    parser.add_argument("--shape", default="320x240", help="image size WxH before the input scale (320x240)")
    parser.add_argument("--counts", default="100,300,565,1000,2000", help="keypoints, comma-separated")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs each (9)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    return parser.parse_args(argv)


def checked(args: argparse.Namespace) -> tuple[tuple[int, int], list[int]]:
    """``(W, H)`` and the keypoint counts, every option checked (a ``Kp2dError`` naming it)."""
    check_at_least("repeats", args.repeats, 1)
    check_at_least("threads", args.threads, 0)
    ((width, height, _),) = parse_shapes([args.shape], None)
    try:
        counts = [int(text) for text in args.counts.split(",") if text.strip()]
    except ValueError:
        raise ConfigError(f"--counts {args.counts!r}: give whole numbers, e.g. 300,1000") from None
    if not counts or min(counts) < 1:
        raise ConfigError(f"--counts {args.counts!r}: give at least one count, each at least 1")
    return (width, height), counts


def median_ms(run, repeats: int) -> float:
    """Median wall time of ``run()`` in milliseconds, after one untimed call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Print one table row per keypoint count; a user mistake exits with status 2."""
    args = parse_args(argv)
    try:
        (width, height), counts = checked(args)
        model = KeyPointNet.from_pretrained(args.model) if args.model else KeyPointNet.from_pretrained()
    except Kp2dError as err:
        print(f"descriptor_head benchmark: error: {user_message(err)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = model.default_backend()
    settings = model.inference_settings
    photo = resize_image(skimage.data.astronaut(), (width, height), area_when_shrinking=True)
    image, _ = image_to_tensor(photo, model.in_channels)
    image = rescale_images(image, settings.scale_factor, settings.interpolation)
    net_height, net_width = (size // CELL * CELL for size in image.shape[-2:])  # whole cells only
    image = image[..., :net_height, :net_width]
    with torch.inference_mode():
        score, coord, features = backend.cells(image)
    print(f"{backend.name}, {torch.get_num_threads()} threads, astronaut {width}x{height} at "
          f"x{settings.scale_factor:g} ({net_width}x{net_height}, {score.numel()} cells), "
          f"median of {args.repeats}")
    print("| keypoints | by cell, ms | whole map, ms | as `descriptors_at` picks, ms |")
    print("|---|---|---|---|")
    order = score.flatten().argsort(descending=True)
    for count in counts:
        best = order[:count]
        points = coord.flatten(2)[0][:, best].t().contiguous()
        batch_index = torch.zeros(len(points), dtype=torch.long)

        def describe(dense: bool | None, points=points, batch_index=batch_index) -> None:
            with torch.inference_mode():
                backend.descriptors_at(features, batch_index, points, net_height, net_width, dense=dense)

        ways = (False, True, None)
        times = [median_ms(lambda dense=dense: describe(dense), args.repeats) for dense in ways]
        print(f"| {len(points)} | " + " | ".join(f"{ms:.1f}" for ms in times) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
