"""ONNX export: the graph (run by ONNX Runtime) gives KeyPointNet.describe's outputs at any input size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kp2d.cli import main as cli_main
from kp2d.deploy.onnx import DEFAULT_OPSET
from kp2d.io.weights import list_pretrained
from kp2d.models import KeyPointNet

pytestmark = pytest.mark.slow  # every test here runs the ONNX exporter

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _golden_net(golden_forward: dict) -> KeyPointNet:
    net = KeyPointNet(do_upsample=True, do_cross=True)
    net.load_state_dict(golden_forward["state_dict"])
    return net.eval()


@pytest.fixture(scope="module")
def golden_checkpoint(golden_forward, tmp_path_factory) -> Path:
    """The golden weights as an original-format checkpoint file (V4 switches)."""
    path = tmp_path_factory.mktemp("ckpt") / "golden_v4.ckpt"
    params = {"use_color": True, "do_upsample": True, "do_cross": True, "with_io": True}
    torch.save({"config": {"model": {"params": params}}, "state_dict": golden_forward["state_dict"]}, path)
    return path


@pytest.fixture(scope="module")
def exported(golden_checkpoint, tmp_path_factory) -> Path:
    """Exported once through the CLI (``kp2d export --checkpoint ... --onnx ...``), dynamic shapes."""
    path = tmp_path_factory.mktemp("onnx") / "kp2d_v4.onnx"
    argv = ["export", "--checkpoint", str(golden_checkpoint), "--onnx", str(path), "--no-verify"]
    assert cli_main(argv) == 0
    return path


def _run(path: Path, image: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": image.numpy()})


def test_graph_is_valid_with_dynamic_batch_height_width(exported):
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == DEFAULT_OPSET
    (image,) = model.graph.input
    assert image.name == "image"
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    outputs = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output
    }
    assert outputs == {
        "score": ["batch", 1, "height/8", "width/8"],
        "coord": ["batch", 2, "height/8", "width/8"],
        "desc": ["batch", 256, "height/8", "width/8"],
    }
    # BatchNorm folded before export: no BatchNormalization node left
    assert not [node for node in model.graph.node if node.op_type == "BatchNormalization"]


def test_onnx_runtime_matches_golden_outputs(exported, golden_forward):
    """The original's eval-mode numbers (golden, batch 2, 64x96), reproduced by ONNX Runtime."""
    score, coord, desc = _run(exported, golden_forward["image"])
    expected = golden_forward["v4"]
    np.testing.assert_allclose(score, expected["score"].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(coord, expected["coord"].numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(desc, expected["desc"].numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(1, 3, 120, 160), (3, 3, 72, 56)])
def test_onnx_runtime_matches_pytorch_at_other_sizes(exported, golden_forward, shape):
    """Sizes and batch other than the tracing example's: proves B, H, W are really dynamic."""
    net = _golden_net(golden_forward)
    image = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    score, coord, desc = _run(exported, image)
    with torch.inference_mode():
        ref = net.describe(image)
    assert score.shape == tuple(ref.score.shape) and desc.shape == tuple(ref.desc.shape)
    np.testing.assert_allclose(score, ref.score.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(coord, ref.coord.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(desc, ref.desc.numpy(), atol=1e-4, rtol=0)
    assert np.isfinite(desc).all()
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1.0, atol=1e-5)


def test_older_opset_gives_the_same_outputs(exported, golden_forward, tmp_path):
    """Opset 16 (the oldest with GridSample) through the version converter, as ``--opset 16`` does."""
    from kp2d.deploy.onnx import _finalize

    old = tmp_path / "opset16.onnx"
    old.write_bytes(exported.read_bytes())
    _finalize(old, 16)
    onnx.checker.check_model(str(old), full_check=True)
    assert onnx.load(str(old)).opset_import[0].version == 16
    image = golden_forward["image"]
    for got, want in zip(_run(old, image), _run(exported, image), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_export_cli_errors_are_one_line(tmp_path, capsys, golden_checkpoint):
    out = str(tmp_path / "x.onnx")
    ckpt = str(golden_checkpoint)
    cases = [
        (["export", "--model", "no_such_model", "--onnx", out], "unknown model 'no_such_model'"),
        (["export", "--checkpoint", str(tmp_path / "missing.ckpt"), "--onnx", out], "checkpoint not found"),
        (["export", "--checkpoint", ckpt, "--onnx", out, "--opset", "15"], "opset 15"),
        (["export", "--checkpoint", ckpt, "--onnx", out, "--int8"], "--calibration"),
        (["export", "--checkpoint", ckpt, "--onnx", out, "--size", "100x50"], "multiples of 8"),
        (["export", "--checkpoint", ckpt, "--onnx", out, "--size", "16392x64"], "at most 16384 pixels"),
        (
            ["export", "--checkpoint", ckpt, "--onnx", out, "--int8",
             "--calibration", str(tmp_path / "nowhere")],
            "calibration folder not found",
        ),
        (  # a layer without a convolution was only found after the slow export, naming a removed file
            ["export", "--checkpoint", ckpt, "--onnx", out, "--int8", "--calibration", str(tmp_path),
             "--float-layers", "convDb,relu"],
            "--float-layers: no convolution layer named relu in KeyPointNet",
        ),
    ]
    if "v4" not in list_pretrained():  # no shipped weights yet: --model v4 must say so
        cases.append((["export", "--model", "v4", "--onnx", out], "unknown model 'v4'"))
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists()


def test_a_failed_export_leaves_an_existing_file_as_it_was(tmp_path, capsys, golden_checkpoint):
    """The graph is written next to ``--onnx`` and renamed when finished: an opset that the converter
    cannot reach used to leave the exporter's opset-18 graph in place of the user's file."""
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's graph")
    argv = ["export", "--checkpoint", str(golden_checkpoint), "--onnx", str(out), "--opset", "99"]
    assert cli_main(argv) == 2
    assert "cannot write opset 99" in capsys.readouterr().err
    assert out.read_bytes() == b"the user's graph" and sorted(tmp_path.iterdir()) == [out]


def test_export_output_path_is_checked_first(tmp_path, capsys, golden_checkpoint, monkeypatch):
    """--onnx an existing folder, or under a file: one line, before the network is even loaded."""
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded: the check came too late")

    monkeypatch.setattr("kp2d.models.keypoint_net.load_keypoint_net", no_model)
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    base = ["export", "--checkpoint", str(golden_checkpoint), "--onnx"]
    for out, message in (
        (tmp_path / "folder", "is a folder; give a file name"),
        (tmp_path / "notes.txt" / "model.onnx", "notes.txt is a file, not a folder"),
    ):
        assert cli_main([*base, str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def calibration_photos(tmp_path_factory) -> Path:
    """Two photos for --int8 --calibration."""
    import skimage.data
    from PIL import Image

    folder = tmp_path_factory.mktemp("calibration")
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.png")
    Image.fromarray(skimage.data.chelsea()).save(folder / "chelsea.jpg")
    return folder


def test_int8_export_leaves_files_next_to_the_output_alone(tmp_path, golden_checkpoint, calibration_photos):
    """The intermediate fp32 graph goes to a temporary folder, not ``<stem>.fp32.onnx`` next to --onnx."""
    mine = tmp_path / "q.fp32.onnx"
    mine.write_text("the user's own file")
    out = tmp_path / "q.onnx"
    argv = ["export", "--checkpoint", str(golden_checkpoint), "--onnx", str(out), "--int8",
            "--calibration", str(calibration_photos), "--calibration-count", "2", "--no-verify"]
    assert cli_main(argv) == 0
    assert mine.read_text() == "the user's own file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["q.fp32.onnx", "q.onnx"]
    model = onnx.load(str(out))
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 3, 64, 96), np.float32)
    score, coord, desc = session.run(None, {"image": image})
    assert score.shape == (1, 1, 8, 12) and desc.shape == (1, 256, 8, 12) and np.isfinite(desc).all()


def test_int8_export_failure_removes_the_intermediate_graph(
    tmp_path, capsys, golden_checkpoint, calibration_photos, monkeypatch
):
    """Quantisation fails: one error line, no fp32 graph left, --onnx and its neighbours untouched."""
    from kp2d.errors import DataError

    seen = {}

    def failing_quantize(fp32_path, int8_path, *args, **kwargs):
        seen["fp32"] = Path(fp32_path)
        assert seen["fp32"].is_file()  # the real fp32 graph was written
        raise DataError("calibration failed")

    monkeypatch.setattr("kp2d.deploy.int8.quantize_int8", failing_quantize)
    out = tmp_path / "q.onnx"
    out.write_text("previous model")
    (tmp_path / "q.fp32.onnx").write_text("the user's own file")
    argv = ["export", "--checkpoint", str(golden_checkpoint), "--onnx", str(out), "--int8",
            "--calibration", str(calibration_photos), "--calibration-count", "2", "--no-verify"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "calibration failed" in err and err.count("\n") == 1
    assert seen["fp32"].parent != tmp_path and not seen["fp32"].parent.exists()
    assert out.read_text() == "previous model"
    assert (tmp_path / "q.fp32.onnx").read_text() == "the user's own file"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["q.fp32.onnx", "q.onnx"]


def test_export_notes_a_recorded_scale_factor(tmp_path, capsys):
    """The graph is the bare network: a file's recorded scale factor is the caller's to apply, and said so;
    its descriptor sampling is in the graph, and said so too."""
    from kp2d.config import load_config
    from kp2d.io.checkpoint import save_checkpoint

    torch.manual_seed(0)
    net = KeyPointNet()
    for name, entry in (("x2", {"scale_factor": 2.0, "descriptor_sampling": "centred"}), ("plain", None)):
        extra = {} if entry is None else {"inference": entry}
        save_checkpoint(tmp_path / f"{name}.ckpt", load_config("v4"), net, **extra)
        argv = ["export", "--checkpoint", str(tmp_path / f"{name}.ckpt"), "--static", "--size", "64x48",
                "--onnx", str(tmp_path / f"{name}.onnx"), "--no-verify"]
        assert cli_main(argv) == 0
        out = capsys.readouterr().out
        note = f"note: {tmp_path / 'x2.ckpt'} records scale_factor 2: resize images by 2 before the graph"
        assert (note in out) == (name == "x2"), out
        inside = f"note: {tmp_path / 'x2.ckpt'} records descriptor_sampling centred: the graph reads the"
        assert (inside in out) == (name == "x2"), out


@pytest.mark.parametrize("pooling", ["max", "maxblur"])
def test_the_cheaper_layout_exports_from_a_channels_last_network(tmp_path, pooling):
    """A channels-last strided stem was refused by torch.export (a guard on the batch size)."""
    from kp2d.deploy.onnx import export_onnx

    torch.manual_seed(0)
    net = KeyPointNet(width=0.5, do_upsample=False, stem="strided", head_rank=16, pooling=pooling).eval()
    net = net.to(memory_format=torch.channels_last)
    path = export_onnx(net, tmp_path / "fast.onnx")
    image = torch.rand(2, 3, 64, 96)
    score, coord, desc = _run(path, image)
    with torch.no_grad():
        expected = net.describe(image)
    np.testing.assert_allclose(score, expected.score.numpy(), atol=1e-5)
    np.testing.assert_allclose(coord, expected.coord.numpy(), atol=1e-3)
    np.testing.assert_allclose(desc, expected.desc.numpy(), atol=1e-4)
