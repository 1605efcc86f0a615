"""Fast inference backends: BatchNorm folding exact, bf16 / ONNX Runtime / int8 close to describe()."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from torch import nn

from kp2d.deploy.backends import BACKENDS, load_backend
from kp2d.deploy.fold import fold_batchnorm, fold_conv_bn
from kp2d.deploy.int8 import _iter_images, load_calibration_images, quantize_int8
from kp2d.errors import ConfigError, DataError
from kp2d.eval.hpatches import KeyPointNetDetector
from kp2d.features.dense import conv3x3_at, padded_cells
from kp2d.features.extraction import extract
from kp2d.models import KeyPointNet, fast
from kp2d.models.fast import (
    ConvLeakyReLU,
    Float32Conv,
    ImageConvLeakyReLU,
    PairMaxPool,
    _fused_activation_works,
    conv3x3_by_matmul,
)


def _golden_net(golden_forward: dict, **switches) -> KeyPointNet:
    net = KeyPointNet(**switches)
    net.load_state_dict(golden_forward["state_dict"])
    return net.eval()


def _astronaut(size: tuple[int, int] = (320, 240)) -> torch.Tensor:
    """A real photo, ``(1, 3, H, W)`` in [0, 1] at ``size = (W, H)``."""
    rgb = cv2.resize(skimage.data.astronaut(), size, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def _randomize_bn(bn: nn.BatchNorm2d, generator: torch.Generator) -> None:
    channels = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=generator))
        bn.running_var.copy_(torch.rand(channels, generator=generator) * 2 + 0.1)
        bn.weight.copy_(torch.randn(channels, generator=generator))
        bn.bias.copy_(torch.randn(channels, generator=generator))


# --- BatchNorm folding -----------------------------------------------------------------------------


@pytest.mark.parametrize("conv_bias", [False, True])
def test_fold_conv_bn_equals_conv_then_bn(conv_bias):
    generator = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=conv_bias)
    bn = nn.BatchNorm2d(7, eps=1e-3)
    _randomize_bn(bn, generator)
    bn.eval()
    fused = fold_conv_bn(conv, bn)
    x = torch.randn(2, 5, 9, 11, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_fold_conv_bn_by_hand():
    """One 1x1 channel: w' = w·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε)."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=0.0)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(5.0)
        bn.bias.fill_(7.0)
    fused = fold_conv_bn(conv, bn.eval())
    assert fused.weight.item() == pytest.approx(2.0 * 5.0 / 2.0)
    assert fused.bias.item() == pytest.approx(7.0 - 3.0 * 5.0 / 2.0)


@pytest.mark.parametrize(
    ("variant", "switches"), [("v4", {}), ("v0", {"do_upsample": False, "do_cross": False})]
)
def test_folded_network_matches_golden(golden_forward, variant, switches):
    """The golden weights have non-trivial BN statistics, so eval-mode BN matters."""
    net = _golden_net(golden_forward, **switches)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 13  # the original is untouched
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])
    with torch.inference_mode():
        ref = net.describe(golden_forward["image"])
        out = folded.describe(golden_forward["image"])
    expected = golden_forward[variant]
    for got in (out, ref):
        torch.testing.assert_close(got.score, expected["score"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got.coord, expected["coord"], atol=1e-5, rtol=0)
        torch.testing.assert_close(got.desc, expected["desc"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.score, ref.score, atol=1e-5, rtol=0)


# --- torch backends --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["torch-fp32", "torch-fold", "torch-fused"])
def test_fp32_torch_backends_match_golden(golden_forward, name):
    backend = load_backend(name, _golden_net(golden_forward))
    out = backend(golden_forward["image"])
    expected = golden_forward["v4"]
    torch.testing.assert_close(out.score, expected["score"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.coord, expected["coord"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.desc, expected["desc"], atol=1e-4, rtol=0)
    assert all(t.dtype == torch.float32 for t in out)


@pytest.mark.slow
def test_bf16_backend_is_close_and_keeps_fp32_outputs(golden_forward):
    net = _golden_net(golden_forward)
    image = _astronaut()
    with torch.inference_mode():
        ref = net.describe(image)
    out = load_backend("torch-bf16", net)(image)
    assert all(t.dtype == torch.float32 for t in out)
    assert out.desc.shape == ref.desc.shape == (1, 256, 30, 40)
    torch.testing.assert_close(out.score, ref.score, atol=2e-3, rtol=0)
    assert (out.score[..., 0, :] == 0).all() and (out.score[..., :, -1] == 0).all()  # border still exactly 0
    assert (out.coord - ref.coord).abs().max() < 0.05  # pixels: coordinates are computed in fp32
    cosine = (out.desc * ref.desc).sum(1)
    assert cosine.mean() > 0.999 and cosine.min() > 0.99


# --- the CPU's faster layers ------------------------------------------------------------------------


def test_conv3x3_by_matmul_by_hand():
    """A kernel with one tap (row 0, column 2) reads the pixel up and to the right, zero past the edge."""
    x = torch.arange(12.0).view(1, 1, 3, 4)
    weight = torch.zeros(1, 1, 3, 3)
    weight[0, 0, 0, 2] = 2.0
    out = conv3x3_by_matmul(x, weight, torch.tensor([1.0]))
    want = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 5.0, 7.0, 1.0], [11.0, 13.0, 15.0, 1.0]])
    torch.testing.assert_close(out[0, 0], want, atol=0, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("outputs", "with_bias"), [(1, True), (2, True), (3, False)])
def test_conv3x3_by_matmul_equals_the_conv(channels_last, outputs, with_bias):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 16, 7, 9, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(outputs, 16, 3, 3, generator=generator)
    bias = torch.randn(outputs, generator=generator) if with_bias else None
    want = F.conv2d(x, weight, bias, padding=1)
    torch.testing.assert_close(conv3x3_by_matmul(x, weight, bias), want, atol=1e-4, rtol=1e-5)


def test_float32_conv_takes_the_matmul_only_for_a_narrow_3x3():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(1, 8, 6, 5, generator=generator).bfloat16()
    for conv in (nn.Conv2d(8, 2, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 2, 1)):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = Float32Conv(conv)(x)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, conv(x.float()), atol=1e-5, rtol=1e-5)


def test_pair_max_pool_is_max_pool_2x2():
    generator = torch.Generator().manual_seed(6)
    for shape in ((2, 3, 8, 10), (1, 4, 7, 9)):  # odd sides drop the last row / column, as MaxPool2d does
        x = torch.randn(*shape, generator=generator).contiguous(memory_format=torch.channels_last)
        out = PairMaxPool()(x)
        assert torch.equal(out, nn.MaxPool2d(2, 2)(x))


@pytest.mark.skipif(not _fused_activation_works(torch.float32), reason="no fused oneDNN convolution here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_leaky_relu_equals_the_two_steps(dtype):
    if not _fused_activation_works(dtype):  # oneDNN's bf16 convolution needs AVX-512 (or AVX-NE-CONVERT)
        pytest.skip(f"no fused oneDNN convolution in {dtype} on this CPU")
    generator = torch.Generator().manual_seed(7)
    conv = nn.Conv2d(6, 5, 4, stride=2, padding=1)
    x = torch.randn(2, 6, 12, 14, generator=generator).contiguous(memory_format=torch.channels_last)
    fused = ConvLeakyReLU(conv, 0.01, dtype)
    with torch.inference_mode():
        want = F.leaky_relu(conv(x), 0.01)
        out = fused(x)
        assert out.dtype == dtype and out.shape == want.shape
        tolerance = 1e-5 if dtype == torch.float32 else 0.05
        torch.testing.assert_close(out.float(), want, atol=tolerance, rtol=tolerance)
        # the layer's parts, as conv3x3_at reads them at a few cells, give the same activated values
        conv3 = nn.Conv2d(6, 5, 3, padding=1)
        cells = torch.tensor([0, 1]), torch.tensor([0, 5]), torch.tensor([13, 7])
        inner = conv3x3_at(ConvLeakyReLU(conv3, 0.01, dtype), padded_cells(x), *cells)
        torch.testing.assert_close(inner, F.leaky_relu(conv3(x), 0.01)[cells[0], :, cells[1], cells[2]])


def test_fast_layers_fall_back_without_the_fused_convolution(golden_forward, monkeypatch):
    monkeypatch.setattr(fast, "_CONV_POINTWISE", None)
    fast._fused_activation_works.cache_clear()
    try:
        net = fast._fast_layers(fold_batchnorm(_golden_net(golden_forward)), torch.float32)
    finally:
        fast._fused_activation_works.cache_clear()
    assert isinstance(net.relu, nn.LeakyReLU) and net.relu.inplace and net.normalizes_input
    assert not any(isinstance(module, ConvLeakyReLU) for module in net.modules())
    assert isinstance(net.pool, PairMaxPool) and isinstance(net.convDb, Float32Conv)
    with torch.inference_mode():
        out = net.describe(golden_forward["image"])
    torch.testing.assert_close(out.score, golden_forward["v4"]["score"], atol=1e-5, rtol=0)


@pytest.mark.skipif(not _fused_activation_works(torch.float32), reason="no fused oneDNN convolution here")
def test_fused_backend_fuses_every_activation(golden_forward):
    """Twelve layers activate their own outputs; the network's own LeakyReLU and normalisation go."""
    out = load_backend("torch-fused", _golden_net(golden_forward))(golden_forward["image"])
    torch.testing.assert_close(out.desc, golden_forward["v4"]["desc"], atol=1e-4, rtol=0)
    copy = fast._fast_layers(fold_batchnorm(_golden_net(golden_forward)), torch.float32)
    assert sum(isinstance(module, ConvLeakyReLU) for module in copy.modules()) == 12
    assert isinstance(copy.relu, nn.Identity)
    # the first layer takes the image as it is, the normalisation in its weights
    assert isinstance(copy.conv1a, ImageConvLeakyReLU) and not copy.normalizes_input


# --- ONNX Runtime backends -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden_onnx(golden_forward, tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from kp2d.deploy.onnx import export_onnx

    return export_onnx(_golden_net(golden_forward), tmp_path_factory.mktemp("onnx") / "golden.onnx")


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory) -> Path:
    """Six photos (bundled with scikit-image, not the test photo) written as files, various sizes."""
    folder = tmp_path_factory.mktemp("calibration")
    photos = [skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
              skimage.data.immunohistochemistry(), skimage.data.camera(), skimage.data.coins()]
    for index, photo in enumerate(photos):
        code = cv2.COLOR_GRAY2BGR if photo.ndim == 2 else cv2.COLOR_RGB2BGR
        bgr = cv2.cvtColor(photo, code)
        cv2.imwrite(str(folder / f"photo_{index}.{'png' if index % 2 else 'jpg'}"), bgr)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.slow
def test_ort_fp32_backend_matches_pytorch(golden_forward, golden_onnx):
    net = _golden_net(golden_forward)
    backend = load_backend("ort-fp32", net, onnx_model=golden_onnx, threads=1)
    image = _astronaut((160, 120))
    with torch.inference_mode():
        ref = net.describe(image)
    out = backend(image)
    torch.testing.assert_close(out.score, ref.score, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.coord, ref.coord, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.desc, ref.desc, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_ort_backend_leaves_no_temporary_files(golden_forward, golden_onnx, tmp_path, monkeypatch):
    """Without work_dir the graph goes to a temporary folder that is gone once the session holds it."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    net = _golden_net(golden_forward)
    exported = load_backend("ort-fp32", net, threads=1)
    given = load_backend("ort-fp32", net, onnx_model=golden_onnx, threads=1)
    assert list(tmp_path.iterdir()) == []
    assert exported.details["onnx"] is None and given.details["onnx"] == str(golden_onnx)
    image = _astronaut((160, 120))
    torch.testing.assert_close(exported(image).score, given(image).score, atol=1e-5, rtol=0)


def test_calibration_images_are_read_resized_rgb(calibration_folder):
    images = load_calibration_images(calibration_folder, count=4)
    assert images.shape == (4, 3, 240, 320) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    first = cv2.resize(skimage.data.coffee(), (320, 240), interpolation=cv2.INTER_LINEAR)  # photo_0: jpg
    assert (images[0].permute(1, 2, 0).numpy() * 255 - first).__abs__().mean() < 4  # RGB order, JPEG loss


@pytest.mark.slow
def test_int8_backend_is_close_on_a_real_photo(golden_forward, golden_onnx, calibration_folder, tmp_path):
    net = _golden_net(golden_forward)
    backend = load_backend(
        "ort-int8", net, calibration_folder, onnx_model=golden_onnx, work_dir=tmp_path, calibration_count=6
    )
    assert backend.details["float_layers"] == ["convDb", "convPb"]
    image = _astronaut()
    with torch.inference_mode():
        ref = net.describe(image)
    out = backend(image)
    assert out.desc.shape == ref.desc.shape and all(t.dtype == torch.float32 for t in out)
    cosine = (out.desc * ref.desc).sum(1)
    assert cosine.mean() > 0.98  # measured 0.9999 (AVX512-VNNI, ORT 1.32)
    assert (out.score - ref.score).abs().max() < 0.01
    assert (out.score[..., 0, :] == 0).all()
    # coordinates stay float: only the sub-pixel offsets carry int8 noise (a quantised (x, y) stack would
    # be off by up to half a 1/255-of-the-width step, ~0.6 px)
    assert (out.coord - ref.coord).abs().mean() < 0.05
    assert (out.coord - ref.coord).abs().max() < 0.5

    import onnx

    graph = onnx.load(str(backend.details["onnx"])).graph
    weights = {tensor.name for tensor in graph.initializer}
    float_convs = [node for node in graph.node if node.op_type == "Conv" and node.input[1] in weights]
    assert len(float_convs) == 2  # convDb and convPb kept in float; the other 14 take dequantised weights
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 10


def test_backend_detector_gives_every_interior_cell_in_raster_order(golden_forward):
    net = _golden_net(golden_forward)
    detector = KeyPointNetDetector(load_backend("torch-fp32", net))
    bgr = cv2.cvtColor(cv2.resize(skimage.data.astronaut(), (96, 64)), cv2.COLOR_RGB2BGR)
    images = np.stack([bgr, bgr[:, ::-1]])
    detections = detector(images)
    assert len(detections) == 2
    with torch.inference_mode():
        ref = net.describe(torch.from_numpy(images.copy()).permute(0, 3, 1, 2).float() / 255.0)
    prob, desc = detections[0]
    assert prob.shape == (6 * 10, 3) and desc.shape == (60, 256) and prob.dtype == np.float32
    interior = ref.score[0, 0, 1:-1, 1:-1]
    np.testing.assert_allclose(prob[:, 2], interior.flatten().numpy(), atol=1e-6)
    np.testing.assert_allclose(prob[:, 0], ref.coord[0, 0, 1:-1, 1:-1].flatten().numpy(), atol=1e-5)
    np.testing.assert_allclose(prob[:, 1], ref.coord[0, 1, 1:-1, 1:-1].flatten().numpy(), atol=1e-5)
    np.testing.assert_allclose(desc, ref.desc[0, :, 1:-1, 1:-1].flatten(1).T.numpy(), atol=1e-5)


def test_errors(golden_forward, tmp_path):
    net = _golden_net(golden_forward)
    with pytest.raises(ConfigError, match="unknown backend"):
        load_backend("tensorrt", net)
    with pytest.raises(ConfigError, match="calibration"):
        load_backend("ort-int8", net, onnx_model=tmp_path / "missing.onnx")
    with pytest.raises(DataError, match="no images"):
        load_calibration_images(tmp_path)
    assert set(BACKENDS) >= {"torch-fp32", "torch-fused", "torch-bf16", "ort-fp32", "ort-int8"}


def test_a_backend_refuses_what_it_cannot_run_and_extract_refuses_a_backend_name(golden_forward):
    """A uint8 tensor ran on values 0-255 (scores off by up to 0.99), a (3, H, W) tensor was a raw
    RuntimeError, and ``backend="torch-bf16"`` a TypeError ('str' object is not callable)."""
    net = _golden_net(golden_forward)
    fast = load_backend("torch-fused", net)
    image = torch.rand(1, 3, 32, 32)
    with pytest.raises(DataError, match=r"got torch.uint8 \(divide by 255, or use extract\)"):
        fast((image * 255).to(torch.uint8))
    with pytest.raises(DataError, match=r"float images \(B, 3, H, W\) in \[0, 1\], got \(3, 32, 32\)"):
        fast(image[0])
    torch.testing.assert_close(fast(image).score, net.describe(image).score, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match=r"built once with "
                       r"kp2d.deploy.backends.load_backend\('torch-bf16', model\)"):
        extract(net, image, backend="torch-bf16")


@pytest.mark.slow
def test_extract_through_a_backend_gives_the_plain_networks_keypoints(golden_forward):
    """``extract(..., backend=)`` pads, selects and maps back exactly as without one (fp32 backends).

    All keypoints are kept (near-equal scores may swap places in a top-k), then paired by position.
    """
    net = _golden_net(golden_forward, do_upsample=True, do_cross=True)
    image = _astronaut((203, 150))[0]  # not a multiple of 8: padded inside
    plain = extract(net, image, top_k=None)
    for name in ("torch-fold", "torch-fused"):
        fast = extract(net, image, top_k=None, backend=load_backend(name, net))
        assert fast.image_size == plain.image_size == (203, 150)
        assert len(fast) == len(plain) > 100
        distance = torch.cdist(fast.keypoints, plain.keypoints, compute_mode="donot_use_mm_for_euclid_dist")
        nearest = distance.min(dim=1)
        assert nearest.values.max() < 1e-3
        torch.testing.assert_close(fast.scores, plain.scores[nearest.indices], atol=1e-4, rtol=0)
        torch.testing.assert_close(fast.descriptors, plain.descriptors[nearest.indices], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["torch-fp32", "torch-fold", "torch-fused", "torch-bf16", "ort-fp32"])
def test_backends_run_a_half_precision_model(golden_forward, name, dtype):
    """The input takes the weights' dtype (a float32 input into fp16 weights raised a dtype mismatch);
    torch-bf16 and the ONNX export take float32 copies (they raised a dtype mismatch and an export error)."""
    if name.startswith("ort"):
        pytest.importorskip("onnxruntime")
    net = _golden_net(golden_forward)
    image = _astronaut((96, 64))
    with torch.inference_mode():
        ref = net.describe(image)
    out = load_backend(name, net.to(dtype))(image)
    assert all(t.dtype == torch.float32 and bool(torch.isfinite(t).all()) for t in out)
    assert (out.score - ref.score).abs().max() < 0.05
    assert (out.coord - ref.coord).abs().max() < 1.0  # pixels
    assert float((out.desc * ref.desc).sum(1).mean()) > 0.99


def test_calibration_images_are_uint8_or_floats_in_0_1(golden_forward):
    generator = torch.Generator().manual_seed(0)
    uint8 = torch.randint(0, 256, (2, 3, 16, 24), dtype=torch.uint8, generator=generator)
    arrays = list(_iter_images(uint8))
    assert len(arrays) == 2 and all(a.shape == (1, 3, 16, 24) and a.dtype == np.float32 for a in arrays)
    np.testing.assert_allclose(np.concatenate(arrays), uint8.float().numpy() / 255.0, rtol=1e-6)
    floats = uint8.float() / 255.0
    same = list(_iter_images([floats[0], floats[1:]]))  # (3, H, W) and (1, 3, H, W) items
    np.testing.assert_array_equal(np.concatenate(same), np.concatenate(arrays))
    nan = floats.clone()
    nan[1, 0, 0, 0] = float("nan")
    for bad, message in (
        (floats * 255.0, r"calibration image 0: float values must be in \[0, 1\], got \[0, 255\]"),
        (nan, "calibration image 1: float values must be in"),
        (uint8.int(), "unsupported dtype torch.int32"),
    ):
        with pytest.raises(ConfigError, match=message):
            list(_iter_images(bad))
        with pytest.raises(ConfigError, match=message):  # checked before the graph is exported
            load_backend("ort-int8", _golden_net(golden_forward), calibration_images=bad)
        if importlib.util.find_spec("onnxruntime") is not None:
            with pytest.raises(ConfigError, match=message):
                quantize_int8("unused.onnx", "unused.int8.onnx", bad)


@pytest.mark.slow
def test_a_grayscale_network_gets_the_luma_in_every_backend(golden_forward, calibration_folder):
    """``use_color: false`` networks take one channel: the int8 calibration and the HPatches detector fed
    them RGB (an ONNX Runtime dimension error)."""
    pytest.importorskip("onnxruntime")
    from kp2d.io.images import to_network_channels

    color = _golden_net(golden_forward)
    gray = KeyPointNet(in_channels=1).eval()
    state = dict(golden_forward["state_dict"])
    state["conv1a.0.weight"] = state["conv1a.0.weight"].sum(dim=1, keepdim=True)
    gray.load_state_dict(state)
    image = _astronaut((96, 64))
    with torch.inference_mode():
        ref = gray.describe(to_network_channels(image, 1))
    for name in ("torch-fused", "ort-fp32"):
        out = load_backend(name, gray)(image)  # RGB in, luma to the network
        assert (out.score - ref.score).abs().max() < 1e-3, name
    int8 = load_backend("ort-int8", gray, calibration_images=calibration_folder, calibration_count=3)
    rows, _ = KeyPointNetDetector(int8)(np.zeros((1, 64, 96, 3), np.uint8))[0]
    assert rows.shape[1] == 3 and color.in_channels == 3


@pytest.mark.slow
def test_int8_calibration_fits_a_fixed_size_graph(golden_forward, calibration_folder, tmp_path):
    """``kp2d export --static --size 200x152 --int8``: the 320x240 calibration photos did not fit."""
    pytest.importorskip("onnxruntime")
    from kp2d.deploy.onnx import export_onnx

    fixed = export_onnx(_golden_net(golden_forward), tmp_path / "fixed.onnx", dynamic=False,
                        example_shape_hw=(152, 200))
    photos = load_calibration_images(calibration_folder, count=2)
    assert tuple(photos.shape[-2:]) == (240, 320)
    int8 = quantize_int8(fixed, tmp_path / "fixed.int8.onnx", photos)
    assert int8.is_file()
