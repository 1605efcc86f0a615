"""``kp2d eval``: HPatches metrics of a checkpoint, a pretrained model, SIFT/ORB or a random network.

Prints one markdown table per evaluation shape in the original README's layout and optionally writes
``{"320x240": {"repeatability", "localization_error", "c1", "c3", "c5", "mscore", "pairs", ...}, ...}``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

__all__ = [
    "add_parser",
    "check_eval_memory",
    "check_eval_scale_factor",
    "json_ready",
    "opencv_detector",
    "parse_baselines",
    "parse_shapes",
    "run",
    "write_json",
]

DEFAULT_SETTINGS = ((320, 240, 300), (640, 480, 1000))  # (W, H, top_k) of the original's two tables
_DEFAULT_TOP_K = {(320, 240): 300, (640, 480): 1000}
_FALLBACK_TOP_K = 1000
OPENCV_METHODS = ("sift", "orb")  # --method / --baselines: OpenCV detectors run through the protocol


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``kp2d eval``."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate on HPatches (repeatability, localization, C1/C3/C5, matching score)",
        description="Evaluate keypoints on HPatches-format sequences with the original KP2D protocol.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="FILE", help="KeyPointNet checkpoint file")
    source.add_argument("--model", metavar="NAME", help="shipped pretrained name (v0..v4) or checkpoint path")
    source.add_argument("--method", choices=OPENCV_METHODS, help="classical OpenCV baseline")
    source.add_argument(
        "--random-init", action="store_true", help="untrained network built from --config (seed 0)"
    )
    parser.add_argument("--config", default=None, help="preset or YAML for --random-init (default v4)")
    parser.add_argument("--hpatches", required=True, metavar="DIR", help="folder of HPatches sequences")
    parser.add_argument(
        "--shape",
        action="append",
        metavar="WxH",
        help="evaluation size, repeatable or comma-separated (default: 320x240 and 640x480)",
    )
    parser.add_argument(
        "--top-k",
        action="append",
        metavar="K",
        help="keypoints per image, one for all shapes or one per shape (default 300 at 320x240, else 1000)",
    )
    parser.add_argument(
        "--subset", choices=("all", "i", "v"), default="all", help="sequences: i_*, v_* or all"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument(
        "--json", metavar="OUT", help="write the results as JSON (the means and each pair's metrics)"
    )
    parser.add_argument("--skip-bad", action="store_true", help="skip pairs with missing or corrupt files")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="image reader threads (0: none)"
    )
    parser.add_argument(
        "--baselines",
        metavar="LIST",
        help="also run these OpenCV methods (sift,orb) in the same run: one more table row each",
    )
    parser.add_argument(
        "--scale-factor",
        type=float,
        default=1.0,
        metavar="S",
        help="run the network on the evaluation images resized by S (e.g. 2: keypoints on a 4-px grid, "
        "4x the compute) and map its keypoints back; default 1, the original protocol",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _split(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _parse_shape(text: str) -> tuple[int, int]:
    from kp2d.errors import ConfigError

    parts = text.lower().split("x")
    try:
        width, height = (int(part) for part in parts)
    except ValueError:
        raise ConfigError(f"--shape '{text}': expected WIDTHxHEIGHT, e.g. 320x240") from None
    from kp2d.inference import MAX_NETWORK_SIZE, MIN_IMAGE_SIZE

    if not MIN_IMAGE_SIZE <= min(width, height) <= max(width, height) <= MAX_NETWORK_SIZE:
        raise ConfigError(
            f"--shape '{text}': width and height must be from {MIN_IMAGE_SIZE} to {MAX_NETWORK_SIZE} pixels"
        )
    return width, height


def _parse_top_k(text: str) -> int:
    from kp2d.errors import ConfigError

    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"--top-k '{text}': expected a positive integer") from None
    if value <= 0:
        raise ConfigError(f"--top-k '{text}': expected a positive integer")
    return value


def parse_shapes(shapes: list[str] | None, top_ks: list[str] | None) -> list[tuple[int, int, int]]:
    """``--shape`` / ``--top-k`` values → ``[(W, H, top_k), ...]``.

    No shape: the original's two settings (320x240 top 300, 640x480 top 1000). One ``--top-k`` applies
    to every shape; several pair with the shapes in order. A shape without ``--top-k`` gets 300 at
    320x240, else 1000.
    """
    from kp2d.errors import ConfigError

    parsed_shapes = [_parse_shape(text) for text in _split(shapes)]
    parsed_top_k = [_parse_top_k(text) for text in _split(top_ks)]
    if not parsed_shapes:
        parsed_shapes = [(w, h) for w, h, _ in DEFAULT_SETTINGS]
        if not parsed_top_k:
            return list(DEFAULT_SETTINGS)
    if not parsed_top_k:
        parsed_top_k = [_DEFAULT_TOP_K.get(shape, _FALLBACK_TOP_K) for shape in parsed_shapes]
    elif len(parsed_top_k) == 1:
        parsed_top_k = parsed_top_k * len(parsed_shapes)
    elif len(parsed_top_k) != len(parsed_shapes):
        raise ConfigError(
            f"--top-k: give one value or one per shape "
            f"({len(parsed_shapes)} shapes, {len(parsed_top_k)} values)"
        )
    return [(w, h, k) for (w, h), k in zip(parsed_shapes, parsed_top_k, strict=True)]


def _build_network(args: argparse.Namespace, device):
    """The KeyPointNet to evaluate and its table label."""
    from kp2d.checkpoint import load_keypoint_net, untrained_keypoint_net
    from kp2d.errors import CheckpointError

    if args.random_init:
        config_name = args.config or "v4"
        label = f"random-init ({Path(config_name).stem})"
        return untrained_keypoint_net(config_name).to(device).eval(), label
    if args.checkpoint is not None:
        path = Path(args.checkpoint)
        if not path.is_file():
            from kp2d.checkpoint import list_pretrained

            hint = f" (shipped weights: --model {path})" if str(path) in list_pretrained() else ""
            raise CheckpointError(f"checkpoint not found: {path}{hint}")
        return load_keypoint_net(path, device), path.stem
    return load_keypoint_net(args.model, device), Path(args.model).stem


def check_eval_scale_factor(scale_factor: float, settings: list[tuple[int, int, int]]) -> None:
    """ConfigError unless ``scale_factor`` > 0 resizes every evaluation shape to multiples of 8."""
    from kp2d.cli.detect import check_scale_factor_option
    from kp2d.errors import ConfigError
    from kp2d.inference import MAX_NETWORK_SIZE, MIN_IMAGE_SIZE
    from kp2d.models.keypoint_net import CELL

    check_scale_factor_option(scale_factor)
    for width, height, _ in settings:
        scaled = (round(width * scale_factor), round(height * scale_factor))
        fits = MIN_IMAGE_SIZE <= min(scaled) and max(scaled) <= MAX_NETWORK_SIZE
        if scaled[0] % CELL or scaled[1] % CELL or not fits:
            raise ConfigError(
                f"--scale-factor {scale_factor:g} resizes {width}x{height} to {scaled[0]}x{scaled[1]}; "
                f"KeyPointNet needs multiples of {CELL}, from {MIN_IMAGE_SIZE} to {MAX_NETWORK_SIZE} a side"
            )


def check_eval_memory(settings: list[tuple[int, int, int]], scale_factor: float, device) -> None:
    """DataError naming ``--shape`` when a shape needs more memory than is available (CPU only).

    The same estimate as :func:`kp2d.extract` makes (:mod:`kp2d.memory`), before any image is read.
    """
    from kp2d.errors import DataError
    from kp2d.memory import ENV_VAR, available_memory, extract_memory, format_bytes

    if getattr(device, "type", str(device)) != "cpu":
        return
    budget = available_memory()
    for width, height, _ in settings:
        need = extract_memory(round(height * scale_factor), round(width * scale_factor))
        if budget is not None and need > budget:
            raise DataError(
                f"--shape {width}x{height}: evaluating needs about {format_bytes(need)} of memory, "
                f"{format_bytes(budget)} is available; give a smaller --shape ({ENV_VAR} sets the budget)"
            )


def opencv_detector(method: str, top_k: int):
    """The OpenCV baseline as ``kp2d eval`` runs it (``2 * top_k`` candidates for the selection)."""
    from kp2d.eval.hpatches import OpenCVDetector

    return OpenCVDetector(method, nfeatures=2 * top_k)


def _make_detector(args: argparse.Namespace, network, label: str, device, top_k: int):
    from kp2d.eval.hpatches import KeyPointNetDetector

    if args.method is not None:
        return opencv_detector(args.method, top_k)
    return KeyPointNetDetector(network, device, name=label, scale_factor=args.scale_factor)


def parse_baselines(text: str | None, method: str | None) -> list[str]:
    """``--baselines sift,orb`` → ``["sift", "orb"]``, without ``method`` (already run) or repeats."""
    from kp2d.errors import ConfigError

    names = _split([text] if text else None)
    unknown = [name for name in names if name not in OPENCV_METHODS]
    if unknown:
        raise ConfigError(
            f"--baselines: unknown method {', '.join(unknown)} (choose from {', '.join(OPENCV_METHODS)})"
        )
    return [name for name in dict.fromkeys(names) if name != method]


def _fmt(value: float) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:.3f}"


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The original README's markdown table (3 decimals) for one evaluation shape, a row per method."""
    width, height = rows[0][1]["shape"]
    lines = [
        f"Evaluation for ({width}, {height}):",
        "",
        "| Model | Repeatability | Localization | C1 | C3 | C5 | MScore |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, result in rows:
        row = [result[name] for name in ("repeatability", "localization_error", "c1", "c3", "c5", "mscore")]
        lines.append(f"| {label} | " + " | ".join(_fmt(v) for v in row) + " |")
    lines.append("")
    for label, result in rows:
        lines.append(
            f"{label}: top {result['top_k']}, {result['pairs']} pairs evaluated ({len(result['skipped'])} "
            f"skipped) in {result['seconds']:.1f} s ({result['pairs_per_second']:.1f} pairs/s)"
        )
    return "\n".join(lines)


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (a pair without repeated keypoints) as ``None``, for JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON (non-finite floats as ``null``) at ``path``, its folder created.

    Written to ``<path>.partial`` first and renamed, so ``path`` is never half written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(json.dumps(json_ready(value), indent=2) + "\n")
        partial.replace(path)
    except OSError as err:  # named after the file asked for, not the temporary one
        partial.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the tables, write the JSON; returns the exit status."""
    from kp2d.errors import ConfigError
    from kp2d.eval.hpatches import evaluate_hpatches
    from kp2d.runtime import resolve_device

    if args.config is not None and not args.random_init:
        raise ConfigError("--config only applies with --random-init")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    settings = parse_shapes(args.shape, args.top_k)
    hpatches = Path(args.hpatches)
    if not hpatches.is_dir():
        from kp2d.errors import DataError

        raise DataError(f"HPatches folder not found: {hpatches}")
    json_out = Path(args.json) if args.json else None
    if json_out is not None:
        from kp2d.cli.detect import check_output_path

        check_output_path(json_out, "--json")  # before the evaluation, so that its results are not lost

    network, label, device = None, (args.method or "").upper(), None
    if args.method is None:
        device = resolve_device(args.device)
        network, label = _build_network(args, device)
        bad = [f"{w}x{h}" for w, h, _ in settings if w % 8 or h % 8]
        if bad:
            raise ConfigError(f"--shape {', '.join(bad)}: KeyPointNet needs width and height multiples of 8")
        if args.scale_factor != 1:
            check_eval_scale_factor(args.scale_factor, settings)
            label = f"{label} (input x{args.scale_factor:g})"
        check_eval_memory(settings, args.scale_factor, device)
    elif args.scale_factor != 1:
        raise ConfigError("--scale-factor applies to KeyPointNet, not to --method")

    baselines = parse_baselines(args.baselines, args.method)

    def evaluate(detector, shape: tuple[int, int], top_k: int) -> dict[str, Any]:
        return evaluate_hpatches(
            detector,
            hpatches,
            shape=shape,
            top_k=top_k,
            subset=args.subset,
            skip_bad=args.skip_bad,
            progress=not args.no_progress,
            num_workers=args.workers,
        )

    results: dict[str, Any] = {}
    for width, height, top_k in settings:
        key = f"{width}x{height}"
        result = evaluate(_make_detector(args, network, label, device, top_k), (width, height), top_k)
        results[key] = {**result, "model": label, "device": str(device or "cpu")}
        rows = [(label, result)]
        for method in baselines:
            baseline = evaluate(opencv_detector(method, top_k), (width, height), top_k)
            results.setdefault("baselines", {}).setdefault(method, {})[key] = {
                **baseline, "model": method.upper(), "device": "cpu"
            }
            rows.append((method.upper(), baseline))
        print(format_table(rows), flush=True)
        print(flush=True)

    if json_out is not None:
        write_json(json_out, results)
    return 0


