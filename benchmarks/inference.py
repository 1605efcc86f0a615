"""Inference backends side by side: ms/image at 320x240 and 640x480, and HPatches accuracy at 320x240.

Every backend of :mod:`kp2d.deploy.backends` is
built from the same weights, timed at batch 1 (warm-up, then the
median of ``--repeats`` runs; the backends take turns run by run, so a disturbance hits them all alike),
and evaluated on an HPatches-format set (default ``../shared/data/hpatches-synth``, 500 pairs) with
:func:`kp2d.eval.hpatches.evaluate_hpatches` at 320x240, top 300.

    python benchmarks/inference.py --checkpoint runs/v4/checkpoints/last.ckpt
    python benchmarks/inference.py --random-init --max-sequences 10      # quick look, no trained weights
    python benchmarks/inference.py --versus-original                     # the default model's cost
    python benchmarks/inference.py --versus-original --settings x2:fp32 x2+1:r45:bf16   # and other settings

``--versus-original`` times, side by side at each size, the original network (V4's architecture) in fp32
at 1x, its whole ``extract``, and the default model's ``extract`` with its shipped settings (input scale)
and the default backend: what a user pays per image, against the paper's network; for a model that runs
at one scale above 1, also its ``extract`` with ``extra_scales=(1,)`` (multi-scale, opt-in) and with
``extra_rotations=(45, -45)`` (turned copies, opt-in); for a model that runs in bf16 here (``precision:
auto`` on a CPU with AVX512-BF16 / AMX), also its settings in fp32, as a CPU without native bf16 runs them
(``auto`` there: BatchNorm folded), and in plain fp32.
``--keep-freed-memory`` first turns on :func:`kp2d.memory.keep_freed_memory`, as the CLI does.
``--settings`` adds a row for each SETTING: ``xS[+E...]`` (the input scale and extra scales), then
``:rA[/B...]`` for turned copies (degrees) and ``:fp32`` / ``:bf16`` / ``:auto`` for the precision, e.g.
``x2+1:r45:bf16``.

``--random-init`` uses a seeded random network whose BatchNorm statistics are estimated on the
calibration photos (so activations have the ranges a trained network's have); its matching score says
nothing about KeyPointNet, only how far each backend moves from fp32. Rerun with trained weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HPATCHES = REPO_ROOT.parent / "shared" / "data" / "hpatches-synth"
DEFAULT_CALIBRATION = REPO_ROOT.parent / "shared" / "data" / "train" / "bsds500"
SIZES = ((320, 240), (640, 480))

log = logging.getLogger("benchmarks.inference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from kp2d.deploy.backends import BACKENDS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default=None, help="pretrained name (v0..v4) or checkpoint path")
    source.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (same as --model FILE)")
    source.add_argument("--random-init", action="store_true", help="seeded random weights (see above)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated (default: all)")
    parser.add_argument("--hpatches", default=str(DEFAULT_HPATCHES), help="HPatches-format folder")
    parser.add_argument("--calibration", default=str(DEFAULT_CALIBRATION), help="photos for int8 calibration")
    parser.add_argument("--calibration-count", type=int, default=32, help="calibration photos (32)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads (default: all)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per backend and size (15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (3)")
    parser.add_argument("--max-sequences", type=int, default=None, help="evaluate the first N sequences only")
    parser.add_argument("--subset", choices=("all", "i", "v"), default="all", help="HPatches subset")
    parser.add_argument("--no-accuracy", action="store_true", help="timing only")
    parser.add_argument("--no-timing", action="store_true", help="accuracy only")
    parser.add_argument("--seed", type=int, default=0, help="--random-init seed")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--versus-original", action="store_true",
                        help="only time the default model (or --model; its settings, default backend) "
                             "against the original network's fp32 forward at 1x")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="first turn on kp2d.memory.keep_freed_memory(), as the kp2d CLI's inference "
                             "commands do (for every row alike)")
    parser.add_argument("--settings", nargs="+", metavar="SETTING", default=(),
                        help="with --versus-original: also time extract at these settings, e.g. x2:fp32 "
                             "x3:bf16 x2+1:r45:bf16 (see above)")
    return parser.parse_args(argv)


def parse_setting(text: str):
    """``"x2+1:r45:bf16"`` → ``InferenceSettings(2.0, (1.0,), (45.0,), "bf16")``; ConfigError if malformed."""
    from kp2d.errors import ConfigError
    from kp2d.io.inference import InferenceSettings, parse_extra_rotations, parse_extra_scales

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


def load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    from kp2d.deploy.int8 import load_calibration_images
    from kp2d.models import KeyPointNet
    from kp2d.models.keypoint_net import load_keypoint_net

    if not args.random_init:
        name = args.checkpoint or args.model or "v4"
        return load_keypoint_net(name, "cpu"), name
    torch.manual_seed(args.seed)
    net = KeyPointNet()
    photos = load_calibration_images(args.calibration, count=32)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches below
    net.train()
    with torch.no_grad():
        for batch in photos.split(4):
            net(batch)
    return net.eval(), f"random init (seed {args.seed}), BN statistics from {len(photos)} photos"


def time_backends(backends: dict, sizes, warmup: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median ms per image at batch 1; backends take turns within each repeat."""
    generator = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, float]] = {name: {} for name in backends}
    for width, height in sizes:
        image = torch.rand(1, 3, height, width, generator=generator)
        for backend in backends.values():
            for _ in range(warmup):
                backend(image)
        samples: dict[str, list[float]] = {name: [] for name in backends}
        for _ in range(repeats):
            for name, backend in backends.items():
                start = time.perf_counter()
                backend(image)
                samples[name].append((time.perf_counter() - start) * 1000.0)
        for name, values in samples.items():
            results[name][f"{width}x{height}"] = statistics.median(values)
            log.info("%-12s %dx%d: median %.1f ms (min %.1f, max %.1f)", name, width, height,
                     statistics.median(values), min(values), max(values))
    return results


def time_versus_original(
    sizes, warmup: int, repeats: int, model: str | None = None, extra_settings: tuple = ()
) -> list[tuple[str, dict[str, float]]]:
    """Median ms per image of the original network and of the default model (or ``model``) in ``extract``.

    ``extra_settings``: ``(text, InferenceSettings)`` pairs (:func:`parse_setting`), a row each.
    """
    from kp2d import extract
    from kp2d.io.weights import DEFAULT_MODEL
    from kp2d.models.keypoint_net import load_keypoint_net

    # the original network as it ran there: plain fp32 and contiguous (kp2d loads CPU models channels-last)
    original = load_keypoint_net("v4").to(memory_format=torch.contiguous_format)
    loaded = load_keypoint_net("v4")
    from kp2d.features.extraction import resolved_precision

    label = model or DEFAULT_MODEL
    default = load_keypoint_net(label)
    settings = default.inference_settings
    precision = resolved_precision(default)
    tops = {(320, 240): 300, (640, 480): 1000}
    runs = {
        "v4 network, fp32, 1x (the original's forward)": lambda image, top_k: original(image),
        "v4 extract, fp32, 1x (kp2d's default)": lambda image, top_k: extract(loaded, image, top_k=top_k),
        f"{label} extract{settings.label(precision) or ' (input x1)'}, its settings, default backend":
            lambda image, top_k: extract(default, image, top_k=top_k),
    }
    if precision == "bf16":  # what a CPU without native bf16 runs: the same settings in fp32
        fp32_label = f"{label} extract{settings.label('fp32') or ' (input x1)'}"
        if settings.precision == "auto":  # "auto" there: BatchNorm folded (the torch-fused backend)
            from kp2d.deploy.backends import load_backend

            fused = load_backend("torch-fused", default)
            runs[f"{fp32_label}, fp32 folded (auto without native bf16)"] = (
                lambda image, top_k: extract(default, image, top_k=top_k, backend=fused)
            )
        runs[f"{fp32_label}, precision fp32"] = (
            lambda image, top_k: extract(default, image, top_k=top_k, precision="fp32")
        )
    if settings.scale_factor > 1 and not settings.extra_scales:  # what the opt-in extra scale x1 adds
        pooled = dataclasses.replace(settings, extra_scales=(1.0,))
        runs[f"{label} extract{pooled.label(precision)}, extra_scales=(1,)"] = (
            lambda image, top_k: extract(default, image, top_k=top_k, extra_scales=(1,))
        )
    if not settings.extra_rotations:  # what the opt-in turned copies add
        turned = dataclasses.replace(settings, extra_rotations=(45.0, -45.0))
        runs[f"{label} extract{turned.label(precision)}, extra_rotations=(45, -45)"] = (
            lambda image, top_k: extract(default, image, top_k=top_k, extra_rotations=(45, -45))
        )
    for text, item in extra_settings:
        runs[f"{label} extract{item.label()}, --settings {text}"] = lambda image, top_k, item=item: extract(
            default, image, top_k=top_k, scale_factor=item.scale_factor, extra_scales=item.extra_scales,
            extra_rotations=item.extra_rotations, precision=item.precision, extra_weight=item.extra_weight,
            extra_suppression=item.extra_suppression, interpolation=item.interpolation,
        )
    results: dict[str, dict[str, float]] = {name: {} for name in runs}
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for width, height in sizes:
            image = torch.rand(1, 3, height, width, generator=generator)
            top_k = tops.get((width, height), 1000)
            samples: dict[str, list[float]] = {name: [] for name in runs}
            for index in range(warmup + repeats):
                for name, run_one in runs.items():
                    start = time.perf_counter()
                    run_one(image, top_k)
                    if index >= warmup:
                        samples[name].append((time.perf_counter() - start) * 1000.0)
            for name, values in samples.items():
                results[name][f"{width}x{height}"] = statistics.median(values)
    return list(results.items())


def print_versus_original(rows: list[tuple[str, dict[str, float]]], sizes) -> None:
    size_names = [f"{w}x{h}" for w, h in sizes]
    base = rows[0][1]
    print("| what | " + " | ".join(f"ms {s} | vs original" for s in size_names) + " |")
    print("|---|" + "---|---|" * len(size_names))
    for name, ms in rows:
        cells = " | ".join(f"{ms[s]:.1f} | {ms[s] / base[s]:.2f}x" for s in size_names)
        print(f"| {name} | {cells} |")


def check_args(args: argparse.Namespace) -> tuple[list[str], list[Path]]:
    """Refuse what would fail or do nothing, before any backend is built (a ``Kp2dError`` naming the option).

    Returns:
        The backend names and, unless ``--no-accuracy``, the HPatches sequence folders of ``--subset``.
    """
    from kp2d.checks import check_at_least, check_output_path
    from kp2d.data.hpatches import find_sequences
    from kp2d.deploy.backends import BACKENDS
    from kp2d.errors import ConfigError, DataError

    minimums = {"threads": 1, "repeats": 1, "warmup": 0, "calibration-count": 1, "max-sequences": 1}
    for name, minimum in minimums.items():
        check_at_least(name, getattr(args, name.replace("-", "_")), minimum)
    if args.no_accuracy and args.no_timing:
        raise ConfigError("--no-accuracy and --no-timing leave nothing to do; give at most one")
    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        what = f"unknown backend {', '.join(unknown)}" if unknown else "no backend named"
        raise ConfigError(f"--backends {args.backends!r}: {what} (choose from {', '.join(BACKENDS)})")
    if args.json:
        check_output_path(Path(args.json), "--json")
    if args.no_accuracy:
        return names, []
    if Path(args.hpatches).is_file():
        raise DataError(f"--hpatches {args.hpatches} is a file; give an HPatches-format folder")
    try:
        return names, [sequence.folder for sequence in find_sequences(args.hpatches, args.subset)]
    except DataError as err:
        raise DataError(f"--hpatches: {err}") from None


def subset_root(root: Path, folders: list[Path], max_sequences: int | None, scratch: Path) -> Path:
    """``root`` itself, or a folder of links to the first ``max_sequences`` of its sequence ``folders``.

    ``i_`` and ``v_`` sequences alternate, so a few cover both kinds; other names come last.
    """
    if max_sequences is None:
        return root
    illumination = [path for path in folders if path.name.startswith("i_")]
    viewpoint = [path for path in folders if path.name.startswith("v_")]
    rest = [path for path in folders if path not in illumination and path not in viewpoint]
    pairs = itertools.zip_longest(illumination, viewpoint)
    mixed = [path for pair in pairs for path in pair if path is not None] + rest
    folder = scratch / "hpatches-subset"
    folder.mkdir()
    for path in mixed[:max_sequences]:
        (folder / path.name).symlink_to(path.resolve())
    return folder


def print_table(rows: list[dict], sizes) -> None:
    size_names = [f"{w}x{h}" for w, h in sizes]
    header = ["backend"] + [f"ms {s}" for s in size_names] + ["MScore", "C3", "Rep", "speed-up 320x240"]
    lines = [header]
    base = next((r for r in rows if r["backend"] == "torch-fp32"), None)
    for row in rows:
        cells = [row["backend"]]
        for s in size_names:
            cells.append(f"{row['ms'][s]:.1f}" if s in row.get("ms", {}) else "-")
        acc = row.get("accuracy")
        for key in ("mscore", "c3", "repeatability"):
            cells.append(f"{acc[key]:.3f}" if acc else "-")
        if base and "ms" in base and "ms" in row and size_names[0] in row["ms"]:
            cells.append(f"{base['ms'][size_names[0]] / row['ms'][size_names[0]]:.2f}x")
        else:
            cells.append("-")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for index, line in enumerate(lines):
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            print("-+-".join("-" * width for width in widths))


def main(argv: list[str] | None = None) -> int:
    """Build, time and evaluate the backends and print the table; a user mistake exits with status 2."""
    from kp2d.errors import Kp2dError, user_message

    args = parse_args(argv)
    if args.settings and not args.versus_original:
        print("inference benchmark: error: --settings goes with --versus-original", file=sys.stderr)
        return 2
    try:  # before the logging is set up: a user mistake is one line
        extra = tuple((text, parse_setting(text)) for text in args.settings)
    except Kp2dError as error:
        print(f"inference benchmark: error: {user_message(error)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    kept = False
    if args.keep_freed_memory:
        from kp2d.memory import keep_freed_memory

        kept = keep_freed_memory()
        if not kept:
            log.warning("--keep-freed-memory: not glibc here, the allocator is left as it is")
    if args.versus_original:
        torch.set_num_threads(args.threads)
        rows = time_versus_original(SIZES, args.warmup, args.repeats, args.checkpoint or args.model, extra)
        print(f"\nthreads {args.threads}; batch 1; median of {args.repeats} (after {args.warmup} warm-up); "
              f"torch {torch.__version__}; freed memory kept: {'yes' if kept else 'no'}; "
              f"load average at end {os.getloadavg()[0]:.2f}")
        print_versus_original(rows, SIZES)
        return 0
    try:
        names, folders = check_args(args)
        weights, rows = run(args, names, folders)
    except Kp2dError as err:
        print(f"inference benchmark: error: {user_message(err)}", file=sys.stderr)
        return 2

    load = os.getloadavg()[0]
    print(f"\nweights: {weights}; threads {args.threads}; batch 1; median of {args.repeats} "
          f"(after {args.warmup} warm-up); torch {torch.__version__}; load average at end {load:.2f}")
    if not args.no_accuracy:
        pairs = rows[0]["accuracy"]["pairs"]
        print(f"accuracy: {args.hpatches} ({args.subset}, {pairs} pairs) at 320x240, top 300")
    print_table(rows, SIZES)
    if args.json:
        from kp2d.io.files import write_json

        out = Path(args.json)
        try:
            write_json(out, {"weights": weights, "threads": args.threads, "rows": rows})
        except OSError as err:
            print(f"inference benchmark: error: --json {out}: {err.strerror or err}", file=sys.stderr)
            return 2
    return 0


def run(args: argparse.Namespace, names: list[str], folders: list[Path]) -> tuple[str, list[dict]]:
    """The weights' description and one row per backend (``"ms"`` and/or ``"accuracy"``)."""
    import cv2

    from kp2d.deploy.backends import load_backend
    from kp2d.deploy.int8 import load_calibration_images
    from kp2d.errors import DataError
    from kp2d.eval.hpatches import KeyPointNetDetector, evaluate_hpatches

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    net, weights = load_model(args)
    calibration = None
    if "ort-int8" in names:
        calibration = load_calibration_images(args.calibration, count=args.calibration_count)
    with tempfile.TemporaryDirectory(prefix="kp2d-bench-") as scratch:
        backends = {}
        for name in names:
            start = time.perf_counter()
            backends[name] = load_backend(
                name, net, calibration, threads=args.threads, work_dir=Path(scratch) / "onnx"
            )
            log.info("built %s in %.1f s %s", name, time.perf_counter() - start, backends[name].details)
        rows = [{"backend": name} for name in names]
        if not args.no_timing:
            timings = time_backends(backends, SIZES, args.warmup, args.repeats)
            for row in rows:
                row["ms"] = timings[row["backend"]]
        if args.no_accuracy:
            return weights, rows
        root = subset_root(Path(args.hpatches), folders, args.max_sequences, Path(scratch))
        for row in rows:
            try:
                result = evaluate_hpatches(
                    KeyPointNetDetector(backends[row["backend"]]), root, size_wh=(320, 240), top_k=300,
                    subset=args.subset, progress=sys.stderr.isatty(), num_workers=0,
                    # no reader processes: forking after ONNX Runtime has started its threads can hang
                )
            except DataError as err:  # name the user's folder, not the temporary one of links
                raise DataError(str(err).replace(str(root), args.hpatches)) from None
            row["accuracy"] = {k: v for k, v in result.items() if k != "per_pair" and k != "skipped"}
            log.info("%s: %s", row["backend"], {k: round(v, 4) for k, v in row["accuracy"].items()
                                                if isinstance(v, float)})
    return weights, rows


if __name__ == "__main__":
    sys.exit(main())
