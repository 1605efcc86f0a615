"""``kp2d export``: write KeyPointNet as an ONNX graph (fp32, or static int8 calibrated on photos).

The graph takes ``image`` ``(B, C, H, W)`` in [0, 1] (C = 3, 1 for a grayscale network; B, H, W dynamic
unless ``--static``; H, W multiples of 8) and returns
``score``, ``coord`` and ``desc`` at ``H/8 x W/8`` (see :mod:`kp2d.deploy.onnx`). After writing, the graph is
run once with ONNX Runtime next to PyTorch and the largest differences are printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
from pathlib import Path

from kp2d.checks import parse_size_wh
from kp2d.errors import ConfigError, Kp2dError, make_folder
from kp2d.io.weights import DEFAULT_MODEL

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``kp2d export``."""
    parser = subparsers.add_parser(
        "export",
        help="export KeyPointNet to ONNX (fp32 or int8)",
        description="Export KeyPointNet.describe (score, keypoints, sampled descriptors) as an ONNX graph.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"pretrained name or checkpoint (default: the shipped default model, now {DEFAULT_MODEL})",
    )
    source.add_argument("--checkpoint", metavar="FILE", help="checkpoint file (same as --model FILE)")
    parser.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18, at least 16)")
    parser.add_argument("--static", action="store_true", help="fixed input size (--size) instead of dynamic")
    parser.add_argument("--size", default="320x240", help="WxH of the tracing example / fixed size (320x240)")
    parser.add_argument("--int8", action="store_true", help="static int8 quantisation (QDQ, per-channel)")
    parser.add_argument("--calibration", metavar="DIR", help="folder of photos to calibrate int8 on")
    parser.add_argument("--calibration-count", type=int, default=32, help="photos used for calibration (32)")
    parser.add_argument(
        "--calibration-method",
        choices=("minmax", "percentile", "entropy"),
        default="percentile",
        help="int8 activation ranges (default percentile: 99.999 %% of the calibration values)",
    )
    parser.add_argument(
        "--float-layers",
        default="convDb,convPb",
        help="int8: comma-separated conv layers kept in float (default convDb,convPb; '' for none)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    parser.set_defaults(func=run)
    return parser


def _parse_size(text: str) -> tuple[int, int]:
    width, height = parse_size_wh(text, "--size")
    if width % 8 or height % 8 or width < 16 or height < 16:
        raise ConfigError(f"--size {text}: width and height must be multiples of 8, at least 16")
    return width, height


def _require_onnx() -> None:
    needed = ("onnx", "onnxruntime", "onnxscript")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise Kp2dError(f"kp2d export needs {', '.join(missing)}: pip install 'kp2d[onnx]'")


def run(args: argparse.Namespace) -> int:
    """Export; print what was written and how close ONNX Runtime is to PyTorch."""
    import torch

    from kp2d.checks import check_output_path
    from kp2d.deploy.int8 import load_calibration_images, quantize_int8
    from kp2d.deploy.onnx import DEFAULT_OPSET, export_onnx
    from kp2d.models.keypoint_net import load_keypoint_net

    width, height = _parse_size(args.size)
    opset = args.opset if args.opset is not None else DEFAULT_OPSET
    if args.int8 and not args.calibration:
        raise ConfigError("--int8 needs --calibration DIR (a folder of training photos)")
    if args.calibration and not args.int8:
        raise ConfigError("--calibration is only used with --int8")
    out = Path(args.onnx)
    check_output_path(out, "--onnx")
    _require_onnx()
    float_layers = [name.strip() for name in args.float_layers.split(",") if name.strip()]
    net = load_keypoint_net(args.checkpoint or args.model, "cpu")
    def has_conv(name: str) -> bool:
        layer = getattr(net, name, None)
        return isinstance(layer, torch.nn.Module) and any(
            isinstance(module, torch.nn.Conv2d) for module in layer.modules()
        )

    unknown = [name for name in float_layers if not has_conv(name)]
    if unknown:  # found before the slow export (they are kept in float by their convolutions)
        raise ConfigError(f"--float-layers: no convolution layer named {', '.join(unknown)} in KeyPointNet")

    if args.int8:
        calibration = load_calibration_images(args.calibration, count=args.calibration_count)
        # the fp32 graph and the int8 one are made in a scratch folder (removed whatever happens): no file
        # next to --onnx is touched, and --onnx itself only once the quantisation has succeeded
        with tempfile.TemporaryDirectory(prefix="kp2d-export-") as scratch:
            fp32_path, int8_path = Path(scratch) / "fp32.onnx", Path(scratch) / "int8.onnx"
            export_onnx(
                net, fp32_path, opset=opset, dynamic=not args.static, example_shape_hw=(height, width)
            )
            quantize_int8(
                fp32_path, int8_path, calibration, float_layers=float_layers, method=args.calibration_method
            )
            make_folder(out.parent)
            shutil.move(int8_path, out)
        print(f"wrote {out} (int8 QDQ, calibrated on {len(calibration)} photos of {args.calibration}; "
              f"float layers: {', '.join(float_layers) or 'none'})")
    else:
        export_onnx(net, out, opset=opset, dynamic=not args.static, example_shape_hw=(height, width))
        print(f"wrote {out} (fp32, opset {opset}, {'fixed' if args.static else 'dynamic'} input size)")
    scale_factor = net.inference_settings.scale_factor
    source = args.checkpoint or args.model
    if scale_factor != 1:  # the graph is the bare network: the resize kp2d.extract does is the caller's
        way = net.inference_settings.interpolation
        print(f"note: {source} records scale_factor {scale_factor:g}: resize images by {scale_factor:g} "
              "before the graph (and keypoints back), as kp2d.extract does"
              + (f" ({way} when enlarging)" if way != "bilinear" else ""))
    extra_scales = net.inference_settings.extra_scales
    if extra_scales:
        scales = ", ".join(f"{scale:g}" for scale in extra_scales)
        print(f"note: {source} records extra scales {scales}: run the graph at each scale too and pool "
              "the keypoints by score, as kp2d.extract does")
    extra_rotations = net.inference_settings.extra_rotations
    if extra_rotations:
        angles = ", ".join(f"{angle:g}" for angle in extra_rotations)
        print(f"note: {source} records extra rotations {angles}: run the graph on the image turned by each "
              "angle too, map the keypoints back and pool them by score, as kp2d.extract does")
    extra_weight = net.inference_settings.extra_weight
    if extra_weight != 1 and extra_scales:
        print(f"note: {source} records extra_weight {extra_weight:g}: multiply the extra scales' scores by "
              f"{extra_weight:g} before pooling (not the turned copies'), as kp2d.extract does")
    extra_suppression = net.inference_settings.extra_suppression
    if extra_suppression and extra_scales:
        print(f"note: {source} records extra_suppression {extra_suppression:g}: leave out an extra scale's "
              f"keypoint where the main scale has one within {extra_suppression:g} px scoring at least as "
              "much, as kp2d.extract does")
    sampling = net.inference_settings.descriptor_sampling
    if sampling != "original":  # unlike the settings above, this one is inside the graph
        print(f"note: {source} records descriptor_sampling {sampling}: the graph reads the descriptors so")

    if not args.no_verify:
        _verify(net, out, height, width)
    return 0


def _verify(net, path: Path, height: int, width: int) -> None:
    """Run the graph and the network on one random image; print the largest differences."""
    import onnxruntime as ort
    import torch

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, net.in_channels, height, width, generator=generator)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, coord, desc = session.run(None, {"image": image.numpy()})
    with torch.inference_mode():
        ref = net.describe(image)
    cosine = (torch.from_numpy(desc) * ref.desc).sum(1).mean().item()
    print(
        f"check at {width}x{height}: max |score diff| {abs(torch.from_numpy(score) - ref.score).max():.2e}, "
        f"max |coord diff| {abs(torch.from_numpy(coord) - ref.coord).max():.2e} px, "
        f"mean descriptor cosine {cosine:.5f}"
    )
