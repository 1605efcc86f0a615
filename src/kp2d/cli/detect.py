"""``kp2d detect IMAGE...``: keypoints, score heat map and descriptors of each image, written to a folder.

An argument that is a folder stands for every image under it (searched recursively, as ``kp2d train``'s
``--data``).

For each image ``<stem>``: ``<stem>_keypoints.png`` (keypoints coloured by score), ``<stem>_scores.png``
(cell scores over the image), ``<stem>.npz`` (``keypoints``, ``scores``, ``descriptors``, ``image_size``)
and ``<stem>.json`` (keypoints, scores, image size and the ``scale_factor`` the network ran at: the
model's recorded setting unless ``--scale-factor`` overrides it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kp2d.checks import check_finite, check_output_path, check_scale_factor_option
from kp2d.io.inference import DESCRIPTOR_SAMPLINGS, INTERPOLATIONS
from kp2d.io.weights import DEFAULT_MODEL

__all__ = [
    "add_model_options",
    "add_parser",
    "apply_model_settings",
    "backend_options",
    "model_backend",
    "model_options",
    "run",
]

#: Backends offered on the command line (``ort-int8`` needs calibration photos: build it with
#: :func:`kp2d.deploy.backends.load_backend` in Python).
CLI_BACKENDS = ("torch-fp32", "torch-fold", "torch-fused", "torch-bf16", "ort-fp32")


def add_model_options(parser: argparse.ArgumentParser, extra_scales: bool = True) -> None:
    """Add the options shared with ``match`` and ``track`` (model, selection, device).

    ``extra_scales``: also ``--extra-scales``, ``--extra-rotations``, ``--extra-weight`` and
    ``--extra-suppression`` (``track`` runs one scale, unturned).
    """
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"pretrained name (v0..v4) or checkpoint path (default: the shipped default model, now "
        f"{DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--top-k", type=int, default=1000, help="keypoints per image, 0 for all (default: 1000)"
    )
    parser.add_argument(
        "--score-threshold", type=float, default=1e-4,
        help="keep keypoints with a higher score; 0 keeps every cell (default: 1e-4)",
    )
    parser.add_argument(
        "--nms-radius",
        type=float,
        default=0.0,
        help="non-maximum suppression radius in pixels, 0 for none (default: 0)",
    )
    parser.add_argument(
        "--scale-factor",
        type=float,
        default=None,
        metavar="S",
        help="run the network on the image resized by S; 2 gives finer keypoints for 4x the compute "
        "(default: the model's setting, recorded in its weights file; 1 when it records none)",
    )
    if extra_scales:
        parser.add_argument(
            "--extra-scales",
            default=None,
            metavar="LIST",
            help="more scales to run the network at, keypoints pooled by score (e.g. 1 beside "
            "--scale-factor 2: finds keypoints again across a 2-2.5x zoom; 'none': one scale; default: "
            "the model's setting)",
        )
        parser.add_argument(
            "--extra-rotations",
            default=None,
            metavar="LIST",
            help="angles in degrees of turned copies of the image to run the network on as well, keypoints "
            "pooled by score (e.g. 45,-45: finds keypoints again across a 40-60 degree turn, 3x the "
            "compute; 'none': unturned only; default: the model's setting)",
        )
        parser.add_argument(
            "--extra-weight",
            default=None,
            metavar="W",
            help="multiply the scores of the extra scales' keypoints by W before the pooling (not the turned "
            "copies') "
            "(e.g. 0.9: they fill in where the main scale finds few; default: the model's setting, 1 unless "
            "its weights file records one)",
        )
        parser.add_argument(
            "--extra-suppression",
            default=None,
            metavar="PX",
            help="leave out an extra scale's keypoint where the main scale has one within PX pixels scoring "
            "at least as much ('none' or 0: none left out; default: the model's setting, 0 unless its "
            "weights file records one)",
        )
    parser.add_argument(
        "--descriptor-sampling",
        default=None,
        metavar="{" + ",".join(DESCRIPTOR_SAMPLINGS) + "}",
        help="how descriptors are read from the network's dense map: 'centred' at the pixels each cell "
        "covers, 'original' as the original code (default: the model's setting, 'original' unless its "
        "weights file records one)",
    )
    parser.add_argument(
        "--interpolation",
        default=None,
        metavar="{" + ",".join(INTERPOLATIONS) + "}",
        help="how the image is enlarged to the network's input: 'bicubic' is sharper than 'bilinear' "
        "(default: the model's setting, 'bilinear' unless its weights file records one)",
    )
    parser.add_argument(
        "--fit-memory",
        action="store_true",
        help="run an image too large for the available memory shrunk to the largest size that fits "
        "(keypoints stay in its pixels) instead of refusing it; KP2D_MEMORY_LIMIT sets the budget",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    parser.add_argument(
        "--backend",
        choices=CLI_BACKENDS,
        default=None,
        help="inference backend (default: the model's precision: torch-bf16 where it records auto and the "
        "CPU has AVX512-BF16 / AMX, else torch-fp32; ort-fp32 needs onnxruntime; see the README's Fast CPU "
        "path)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``kp2d detect``."""
    parser = subparsers.add_parser(
        "detect",
        help="detect and describe keypoints in images",
        description="Detect and describe keypoints; write an overlay, a score heat map, .npz and .json "
        "per image.",
    )
    parser.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files (png, jpg, ppm, ...) or folders of them (searched recursively)",
    )
    parser.add_argument("--out", default="kp2d_detect", help="output folder (default: kp2d_detect/)")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="log and skip unreadable or too small images instead of stopping (the rest are written)",
    )
    add_model_options(parser)
    parser.set_defaults(func=run)


def model_options(options: dict, model) -> dict:
    """``options`` with the scale factor and extra runs resolved (each option, else the model's setting)."""
    from kp2d.io.inference import (
        model_extra_rotations,
        model_extra_scales,
        model_extra_suppression,
        model_extra_weight,
        model_scale_factor,
    )

    scale_factor = model_scale_factor(model, options["scale_factor"])
    resolved = {**options, "scale_factor": scale_factor}
    if "extra_scales" in options:
        resolved["extra_scales"] = model_extra_scales(model, options["extra_scales"], scale_factor)
    if "extra_rotations" in options:
        resolved["extra_rotations"] = model_extra_rotations(model, options["extra_rotations"])
    if "extra_weight" in options:
        resolved["extra_weight"] = model_extra_weight(model, options["extra_weight"])
    if "extra_suppression" in options:
        resolved["extra_suppression"] = model_extra_suppression(model, options["extra_suppression"])
    return resolved


def apply_model_settings(args: argparse.Namespace, model) -> None:
    """``--descriptor-sampling`` and ``--interpolation`` into the loaded model's settings (read there).

    :func:`selection_options` has refused a bad value by the option's name before the model loaded; the
    settings check and normalise it again as they are built.
    """
    from dataclasses import replace

    for name in ("descriptor_sampling", "interpolation"):
        if getattr(args, name, None) is not None:
            model.inference_settings = replace(model.inference_settings, **{name: getattr(args, name)})


def model_backend(args: argparse.Namespace, model):
    """The :class:`~kp2d.deploy.backends.Backend` chosen with ``--backend``; ``None``: the plain network.

    Without ``--backend``: the model's own for its recorded precision (:func:`kp2d.features.extraction.
    resolve_backend`).
    """
    if args.backend is None:
        from kp2d.features.extraction import resolve_backend

        return resolve_backend(model)
    if args.backend == "torch-fp32":
        return None
    from kp2d.deploy.backends import load_backend

    return load_backend(args.backend, model)


def backend_options(args: argparse.Namespace, model) -> dict:
    """``extract``'s ``backend`` and ``precision``: :func:`model_backend`, or the plain network in fp32."""
    backend = model_backend(args, model)
    return {"backend": backend, "precision": None if backend is not None else "fp32"}


def selection_options(args: argparse.Namespace) -> dict:
    """``extract`` keyword arguments from the parsed options (``--top-k``, ``--score-threshold``, ...).

    ``scale_factor`` is ``None`` without ``--scale-factor``: the model's setting (:func:`model_options`).
    """
    from kp2d.config import MAX_NETWORK_SIZE, MIN_IMAGE_SIZE
    from kp2d.errors import ConfigError
    from kp2d.io.inference import check_descriptor_sampling, check_interpolation

    if args.top_k < 0:
        raise ConfigError(f"--top-k must be >= 0 (0 keeps all), got {args.top_k}")
    check_finite("--score-threshold", args.score_threshold)
    check_finite("--nms-radius", args.nms_radius, minimum=0)
    if args.scale_factor is not None:
        check_scale_factor_option(args.scale_factor)
        largest = MAX_NETWORK_SIZE // MIN_IMAGE_SIZE  # beyond it even the smallest image is too large
        if args.scale_factor > largest:  # (eval names the shape it would make instead)
            raise ConfigError(f"--scale-factor must be at most {largest}, got {args.scale_factor:g}")
    # the settings apply_model_settings writes into the model, refused before the model loads
    checks = {"descriptor_sampling": check_descriptor_sampling, "interpolation": check_interpolation}
    for name, check in checks.items():
        if getattr(args, name, None) is not None:
            check(getattr(args, name), "--" + name.replace("_", "-"))
    options = {
        "top_k": args.top_k or None,
        "score_threshold": args.score_threshold,
        "nms_radius": args.nms_radius,
        "scale_factor": args.scale_factor,
        "fit_memory": args.fit_memory,
    }
    if hasattr(args, "extra_scales"):
        from kp2d.io.inference import (
            parse_extra_rotations,
            parse_extra_scales,
            parse_extra_suppression,
            parse_extra_weight,
        )

        extra = None if args.extra_scales is None else parse_extra_scales(args.extra_scales)
        options["extra_scales"] = extra
        turns = None if args.extra_rotations is None else parse_extra_rotations(args.extra_rotations)
        options["extra_rotations"] = turns
        options["extra_weight"] = None if args.extra_weight is None else parse_extra_weight(args.extra_weight)
        suppression = args.extra_suppression
        options["extra_suppression"] = None if suppression is None else parse_extra_suppression(suppression)
    return options


_OUTPUT_PICTURES = ("_keypoints.png", "_scores.png")


def _is_detect_output(path: Path) -> bool:
    """Whether ``path`` is a picture of ``kp2d detect`` (``<stem>_scores.png`` beside ``<stem>.npz``, ...)."""
    return any(
        path.name.endswith(suffix) and path.with_name(path.name[: -len(suffix)] + ".npz").is_file()
        for suffix in _OUTPUT_PICTURES
    )


def _image_paths(arguments: list, out: Path | None = None) -> list:
    """The image files named on the command line, each folder replaced by the images under it (sorted).

    A folder's images inside ``out`` (the output folder) are left out, so that a second ``kp2d detect .``
    does not detect in the pictures the first wrote to ``./kp2d_detect/``: all of them when ``out`` is a
    subfolder of the folder, only ``kp2d detect``'s own pictures when ``out`` is the folder or holds it
    (``kp2d detect photos --out .``). An image named explicitly is always kept.
    """
    from kp2d.data.image_folder import list_images
    from kp2d.errors import DataError, ImageNotFoundError

    out_dir = out.resolve() if out is not None else None
    paths = []
    for path in arguments:
        if path.is_dir():
            found = list_images(path)
            if out_dir is not None:
                out_below = out_dir != path.resolve() and out_dir.is_relative_to(path.resolve())
                inside = [image.resolve().is_relative_to(out_dir) for image in found]
                found = [
                    image
                    for image, in_out in zip(found, inside, strict=True)
                    if not (in_out and (out_below or _is_detect_output(image)))
                ]
                if not found:
                    raise DataError(f"no images found under {path} besides the outputs in {out}")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise ImageNotFoundError(f"{path}: image not found")
    return paths


def _unique_stems(paths: list) -> list[str]:
    """File stems, made unique with ``-2``, ``-3``, ... so outputs do not overwrite each other.

    A stem is unique against every stem handed out before it (``a.png a.jpg a-2.png`` give ``a``,
    ``a-2``, ``a-2-2``), ignoring case, for case-insensitive file systems.
    """
    taken: set[str] = set()
    stems = []
    for path in paths:
        stem, count = path.stem, 1
        while stem.casefold() in taken:
            count += 1
            stem = f"{path.stem}-{count}"
        taken.add(stem.casefold())
        stems.append(stem)
    return stems


def _heat_map(image, cell_scores, scale_factor: float):
    """The score picture of ``image`` (H, W, 3); also for cells of an image ``--fit-memory`` shrank."""
    import cv2

    from kp2d.visualization import draw_score_heatmap

    rows, cols = cell_scores.shape
    height, width = image.shape[:2]
    net_height, net_width = max(1, round(height * scale_factor)), max(1, round(width * scale_factor))
    if (rows, cols) == (-(-net_height // 8), -(-net_width // 8)):
        return draw_score_heatmap(image, cell_scores, scale_factor=scale_factor)
    # the shrunk size is not known here: draw over the grid's padded extent, then stretch to the image
    backdrop = cv2.resize(image, (cols * 8, rows * 8), interpolation=cv2.INTER_AREA)
    picture = draw_score_heatmap(backdrop, cell_scores)
    return cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA)


def run(args: argparse.Namespace) -> int:
    """Detect in every image and write the files; returns the exit status."""
    from kp2d.errors import make_folder
    from kp2d.models.keypoint_net import load_keypoint_net
    from kp2d.runtime import resolve_device

    options = selection_options(args)
    out_dir = Path(args.out)
    check_output_path(out_dir, "--out", folder=True)
    paths = _image_paths([Path(p) for p in args.images], out_dir)
    device = resolve_device(args.device)
    model = load_keypoint_net(args.model, device)
    apply_model_settings(args, model)
    options = model_options(options, model)
    options.update(backend_options(args, model))
    created = not out_dir.exists()
    make_folder(out_dir, "output folder")
    try:
        return _detect_all(args, paths, model, options, out_dir)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty folder behind
        raise


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``; an ``OSError`` (disk full, no permission) is a DataError naming it."""
    from kp2d.errors import DataError

    try:
        path.write_bytes(data)
    except OSError as err:
        raise DataError(f"cannot write {path}: {err.strerror or err}") from None


def _detect_all(args: argparse.Namespace, paths: list, model, options: dict, out_dir: Path) -> int:
    """Detect in each image and write its files to ``out_dir``; returns the exit status."""
    import io
    import json
    import logging

    import numpy as np
    from tqdm import tqdm

    from kp2d.errors import DataError
    from kp2d.features.extraction import extract_with_score_map
    from kp2d.io.images import load_image
    from kp2d.visualization import draw_keypoints, save_image

    log = logging.getLogger("kp2d.detect")
    skipped = 0
    for path, stem in tqdm(
        list(zip(paths, _unique_stems(paths), strict=True)), desc="detect", unit="image", disable=None
    ):
        try:
            image = load_image(path)
            keypoints, cell_scores = extract_with_score_map(model, image, **options)
        except DataError as err:
            message = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
            if not args.skip_bad:
                raise type(err)(f"{message} (--skip-bad skips such images)") from None
            log.warning("skipped %s", message)
            skipped += 1
            continue
        arrays = keypoints.numpy()
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        _write_bytes(out_dir / f"{stem}.npz", buffer.getvalue())
        record = {
            "image": str(path),
            "image_size": list(keypoints.image_size),
            "scale_factor": options["scale_factor"],
            "extra_scales": list(options["extra_scales"]),
            "extra_rotations": list(options["extra_rotations"]),
            "extra_weight": options["extra_weight"],
            "extra_suppression": options["extra_suppression"],
            "descriptor_sampling": model.inference_settings.descriptor_sampling,
            "interpolation": model.inference_settings.interpolation,
            "backend": "torch-fp32" if options["backend"] is None else options["backend"].name,
            "keypoints": np.round(arrays["keypoints"].astype(np.float64), 3).tolist(),
            "scores": np.round(arrays["scores"].astype(np.float64), 5).tolist(),
        }
        _write_bytes(out_dir / f"{stem}.json", json.dumps(record).encode())
        save_image(
            out_dir / f"{stem}_keypoints.png", draw_keypoints(image, arrays["keypoints"], arrays["scores"])
        )
        save_image(out_dir / f"{stem}_scores.png", _heat_map(image, cell_scores, options["scale_factor"]))
        log.debug("%s: %d keypoints", path, len(keypoints))
        tqdm.write(f"{path}: {len(keypoints)} keypoints -> {out_dir / stem}.*")
    if skipped:
        print(f"{skipped} of {len(paths)} images skipped (unreadable or too small)")
    return 0
