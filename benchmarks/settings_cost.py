"""What inference settings cost: ``extract`` of one model at several settings, against the original network.

    python benchmarks/settings_cost.py --model lite x2:fp32 x2:bf16 x3:bf16 x2+1:r45:bf16

Each SETTING is ``xS[+E...]`` (the input scale and extra scales), then ``:rA[/B...]`` for turned copies
(degrees) and ``:fp32`` / ``:bf16`` for the precision, e.g. ``x2+1:r45:bf16``. The runs take turns image by
image (warm-up, then the median of ``--repeats``) on random 320x240 and 640x480 images, top 300 and 1000,
batch 1, with ``--threads`` threads; the first row is V4's architecture in fp32 at 1x as the original code
runs it, the yardstick of issue #23's budget. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from kp2d import extract
from kp2d.errors import ConfigError, Kp2dError, user_message
from kp2d.io.inference import InferenceSettings, parse_extra_rotations, parse_extra_scales
from kp2d.io.weights import DEFAULT_MODEL
from kp2d.models.keypoint_net import load_keypoint_net

SIZES = (((320, 240), 300), ((640, 480), 1000))


def parse_setting(text: str) -> InferenceSettings:
    """``"x2+1:r45:bf16"`` → ``InferenceSettings(2.0, (1.0,), (45.0,), "bf16")``; ConfigError if malformed."""
    scales, *rest = text.split(":")
    if not scales.startswith("x"):
        raise ConfigError(f"a setting starts with x and the input scale (e.g. x2:bf16), got {text!r}")
    main, *extra = scales[1:].split("+")
    turns, precision = (), "fp32"
    for part in rest:
        if part.startswith("r"):
            turns = parse_extra_rotations(part[1:].replace("/", ","), f"setting {text!r}")
        else:
            precision = part
    try:
        scale = float(main)
    except ValueError:
        raise ConfigError(f"the input scale of setting {text!r} is not a number") from None
    return InferenceSettings(scale, parse_extra_scales(",".join(extra)), turns, precision)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", metavar="SETTING", help="e.g. x2:fp32 x3:bf16 x2+1:r45:bf16")
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"pretrained name or checkpoint (default {DEFAULT_MODEL})"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        settings = [(text, parse_setting(text)) for text in args.settings]
        torch.set_num_threads(args.threads)
        original = load_keypoint_net("v4").to(memory_format=torch.contiguous_format)
        model = load_keypoint_net(args.model)
    except (Kp2dError, OSError) as error:
        print(f"settings_cost: error: {user_message(error)}", file=sys.stderr)
        return 2
    runs = {"original network, fp32, 1x": lambda image, top_k: original(image)}
    for text, item in settings:
        runs[f"{args.model} {text}"] = lambda image, top_k, item=item: extract(
            model, image, top_k=top_k, scale_factor=item.scale_factor, extra_scales=item.extra_scales,
            extra_rotations=item.extra_rotations, precision=item.precision,
        )
    generator = torch.Generator().manual_seed(0)
    medians: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for (width, height), top_k in SIZES:
            image = torch.rand(1, 3, height, width, generator=generator)
            samples: dict[str, list[float]] = {name: [] for name in runs}
            for index in range(args.warmup + args.repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run(image, top_k)
                    if index >= args.warmup:
                        samples[name].append((time.perf_counter() - start) * 1000.0)
            for name, values in samples.items():
                medians[name].append(statistics.median(values))
    base = medians["original network, fp32, 1x"]
    print(f"threads {args.threads}; batch 1; median of {args.repeats}; torch {torch.__version__}")
    print("| what | ms 320x240 | vs original | ms 640x480 | vs original |")
    print("|---|---|---|---|---|")
    for name, values in medians.items():
        cells = " | ".join(f"{ms:.1f} | {ms / ref:.2f}x" for ms, ref in zip(values, base, strict=True))
        print(f"| {name} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
