"""Time one training step, side by side with the network's own cost (the floor).

(a) floor: KeyPointNet forward on two batches (source, target) + a trivial loss + backward + Adam step.
(b) full:  augmentation + forward + all losses (incl. IO-Net) + backward + step, i.e. ``TrainingStep``.
(c) loader: time to fetch one batch from the DataLoader as training does (runs in parallel with (b)
    when workers > 0; shown to check the loader keeps up).

Both (a) and (b) use the same precision, channels-last layout and images. Usage:
    python benchmarks/train_step.py [--config v4] [--batch-size 8] [--precision auto|fp32|bf16]
        [--device auto] [--data ../shared/data/train/bsds500] [--steps 5] [--warmup 2] [--profile]

``--profile`` adds the operators that take the most time in the full step (torch.profiler), to show where
a step's time goes (kernel launches and synchronisations on a GPU, arithmetic on a CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from kp2d.augmentation import HomographicAugmentation
from kp2d.checks import check_at_least
from kp2d.config import load_config
from kp2d.errors import DataError, Kp2dError, user_message
from kp2d.models import IONet
from kp2d.models.keypoint_net import build_keypoint_net
from kp2d.runtime import autocast_dtype, resolve_device
from kp2d.train.step import SiameseLoss, TrainingStep, build_optimizer

REPO = Path(__file__).resolve().parents[1]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _images(data: Path, batch: int, shape: tuple[int, int]) -> tuple[torch.Tensor, object]:
    """The first ``batch`` images of ``data`` stacked, and the dataset (a ``DataError`` if too few)."""
    from kp2d.data.image_folder import ImageFolderDataset

    dataset = ImageFolderDataset(data, image_shape=shape)
    if len(dataset) < batch:
        raise DataError(f"--batch-size {batch} needs at least {batch} images; {data} holds {len(dataset)}")
    return torch.stack([dataset[i] for i in range(batch)]), dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (checked by :func:`benchmark` before any work)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="v4")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "train" / "bsds500")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print the top operators of (b)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; a user mistake is one line on stderr and exit status 2."""
    args = parse_args(argv)
    try:
        benchmark(args)
    except Kp2dError as err:
        print(f"train_step benchmark: error: {user_message(err)}", file=sys.stderr)
        return 2
    return 0


def benchmark(args: argparse.Namespace) -> None:
    """Time (a), (b) and (c) and print the table (and the profile with ``--profile``)."""
    for name, minimum in (("batch-size", 1), ("steps", 1), ("warmup", 0), ("workers", 0)):
        check_at_least(name, getattr(args, name.replace("-", "_")), minimum)
    config = load_config(args.config, {"train": {"batch_size": args.batch_size, "precision": args.precision}})
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as kp2d.train does
    dtype = autocast_dtype(config.train.precision, device)
    torch.manual_seed(0)
    images, dataset = _images(args.data, args.batch_size, config.augmentation.image_shape)
    images = images.to(device)

    net = build_keypoint_net(config.model).to(device).train().to(memory_format=torch.channels_last)
    io_net = IONet().to(device).train() if config.model.with_io else None
    optimizer = build_optimizer(net, io_net, config.optim)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    model = SiameseLoss(net, io_net, config, dtype)
    step = TrainingStep(model, optimizer, HomographicAugmentation(config.augmentation), scaler=scaler)
    generator = torch.Generator().manual_seed(0)

    floats = images.float().div(255).contiguous(memory_format=torch.channels_last)
    source, target = floats, floats.flip(-1).contiguous(memory_format=torch.channels_last)

    def floor_step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = (*net(source), *net(target))
        # sums, not means: a mean's 1/numel gradients shrink into denormals on the way back, which x86
        # computes slowly (an fp32 floor then took longer than the full step, whose gradients are normal)
        loss = sum(t.float().sum() for t in outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def full_step() -> None:
        step(images, generator)

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    batches = iter(loader)

    def fetch() -> None:
        nonlocal batches
        try:
            next(batches)
        except StopIteration:
            batches = iter(loader)
            next(batches)

    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    print(f"device {device}, {torch.get_num_threads()} threads, {precision}, {config.name}, "
          f"batch {args.batch_size}, "
          f"{config.augmentation.image_shape[0]}x{config.augmentation.image_shape[1]}, "
          f"median of {args.steps} steps")
    floor = _time(floor_step, device, args.warmup, args.steps)
    full = _time(full_step, device, args.warmup, args.steps)
    fetch_times = _time(fetch, device, 1, args.steps)
    floor_s, full_s = statistics.median(floor), statistics.median(full)
    print(f"| {'what':<58} | {'s/step':>8} | {'steps/s':>8} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 10}|")
    print(f"| {'(a) network fwd+bwd+Adam on two batches (floor)':<58} | "
          f"{floor_s:8.3f} | {1 / floor_s:8.2f} |")
    print(f"| {'(b) full step: augmentation+fwd+losses+IO+bwd+Adam':<58} | "
          f"{full_s:8.3f} | {1 / full_s:8.2f} |")
    print(f"| {'(c) data loader, one batch (' + str(args.workers) + ' workers)':<58} | "
          f"{statistics.median(fetch_times):8.3f} | {1 / statistics.median(fetch_times):8.2f} |")
    print(f"(b)/(a) = {full_s / floor_s:.3f}")
    if args.profile:
        _profile(full_step, device, args.steps)


def _profile(fn, device: torch.device, steps: int) -> None:
    """Print the operators taking the most (self) time over ``steps`` calls of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        _synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=25))
    if device.type == "cuda":
        events = prof.key_averages()
        launch_calls = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
        launches = sum(e.count for e in events if e.key in launch_calls)
        syncs = sum(e.count for e in events if "Synchronize" in e.key or e.key == "aten::item")
        print(f"per step: {launches / steps:.0f} kernel launches, {syncs / steps:.1f} syncs or item() calls")


if __name__ == "__main__":
    sys.exit(main())
