"""Time one training-batch augmentation (SPEC §3 steps 1–3): batch 8 at 240×320, CPU and CUDA if present.

Usage: /work/quiet.sh /work/venv/bin/python benchmarks/augmentation.py [--batch 8] [--repeats 20]
Prints the median and min wall time of the whole call and of its pieces, and the median process CPU time
(summed over threads: on a machine shared with other jobs, CPU time / threads bounds the unloaded wall time).
"""

from __future__ import annotations

import argparse
import statistics
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
from kp2d.config import AugmentationConfig
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


def run(device: torch.device, batch: int, height: int, width: int, repeats: int) -> None:
    config = AugmentationConfig(image_shape=(height, width))
    noop_config = AugmentationConfig(image_shape=(height, width), original_jitter_noop=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        run(device, args.batch, args.height, args.width, args.repeats)


if __name__ == "__main__":
    main()
