"""Time one training-batch augmentation (SPEC §3 steps 1–3): batch 8 at 240×320, CPU and CUDA if present.

Usage: python benchmarks/augmentation.py [--batch 8] [--height 240] [--width 320] [--repeats 20] [--threads 0]
Prints the median and min wall time of the whole call and of its pieces, and the median process CPU time
(summed over threads: on a machine shared with other jobs, CPU time / threads bounds the unloaded wall time).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable

import torch

from kp2d.augmentation import (
    HomographicAugmentation,
    apply_photometric,
    sample_photometric_params,
    sample_spatial_transforms,
    warp_pair,
)
from kp2d.checks import check_at_least
from kp2d.config import AugmentationConfig
from kp2d.errors import ConfigError, Kp2dError, user_message
from kp2d.geometry import sample_homographies


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float, float]:
    """Median and min wall time, and median process CPU time (all threads; robust to other load)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # warm-up
        fn()
    sync()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return statistics.median(times), min(times), statistics.median(cpu_times)


def run(device: torch.device, batch: int, config: AugmentationConfig, repeats: int) -> None:
    """Time the whole augmentation and its pieces on ``device`` and print one line each."""
    height, width = config.image_shape
    noop_config = dataclasses.replace(config, original_jitter_noop=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, device=device)
    unit = images.float() / 255
    augment = HomographicAugmentation(config)
    augment_noop = HomographicAugmentation(noop_config)
    augment_geometric = HomographicAugmentation(config, photometric=False)
    affine = sample_spatial_transforms(batch, height, width, config, generator)
    homography = sample_homographies(batch, height, width, augment.sampler_config, generator)
    params = sample_photometric_params(batch, config, generator)
    target, source = warp_pair(unit, affine, homography)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("full call (uint8 in, jitter on)", lambda: augment(images, generator)),
        ("full call, original_jitter_noop", lambda: augment_noop(images, generator)),
        ("full call, photometric off", lambda: augment_geometric(images, generator)),
        ("  sample flips+affine+homography", lambda: (
            sample_spatial_transforms(batch, height, width, config, generator),
            sample_homographies(batch, height, width, augment.sampler_config, generator),
        )),
        ("  warp_pair (target+source)", lambda: warp_pair(unit, affine, homography)),
        ("  photometric (jitter on)", lambda: apply_photometric(target, source, params, config)),
        ("  photometric (jitter noop)", lambda: apply_photometric(target, source, params, noop_config)),
    ]  # fmt: skip
    threads = torch.get_num_threads()
    print(f"device {device}, batch {batch} pairs at {height}x{width}, torch threads {threads}")
    for name, fn in cases:
        median, best, cpu = timed(fn, device, repeats)
        print(
            f"  {name:36s} median {median * 1e3:6.1f} ms  min {best * 1e3:6.1f} ms  cpu {cpu * 1e3:6.1f} ms"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (checked by :func:`checked_config`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="image pairs per call (8)")
    parser.add_argument("--height", type=int, default=240, help="image height, a multiple of 8, >= 32 (240)")
    parser.add_argument("--width", type=int, default=320, help="image width, a multiple of 8, >= 32 (320)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per line (20)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    return parser.parse_args(argv)


def checked_config(args: argparse.Namespace) -> AugmentationConfig:
    """The augmentation config for ``--height``/``--width``, all options checked (a ``ConfigError``)."""
    for name, minimum in (("batch", 1), ("repeats", 1), ("threads", 0)):
        check_at_least(name, getattr(args, name), minimum)
    try:
        return AugmentationConfig(image_shape=(args.height, args.width))
    except ConfigError:  # the defaults are valid: only the image shape can be wrong
        raise ConfigError(
            f"--height {args.height} --width {args.width}: both must be multiples of 8, at least 32"
        ) from None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark on the CPU and on CUDA if present; a user mistake exits with status 2."""
    args = parse_args(argv)
    try:
        config = checked_config(args)
    except Kp2dError as err:
        print(f"augmentation benchmark: error: {user_message(err)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        run(device, args.batch, config, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
