"""Benchmarks: a user mistake is one line `<name> benchmark: error: ...` and status 2, before any timing."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli_output import single_error_line
from hpatches_tiny import make_tiny_hpatches

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _benchmark(name: str):
    """``benchmarks/<name>.py`` imported as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A folder of two small photos."""
    folder = tmp_path_factory.mktemp("photos")
    for index in range(2):
        cv2.imwrite(str(folder / f"{index}.png"), np.full((40, 48, 3), 60 * index, np.uint8))
    return folder


@pytest.fixture(scope="module")
def hpatches(tmp_path_factory) -> Path:
    return make_tiny_hpatches(tmp_path_factory.mktemp("hpatches"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--workers", "-1"], "--workers must be at least 0, got -1"),
        (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
        (["--config", "nope"], "unknown config 'nope'"),
        (["--precision", "fp8"], "train.precision must be"),
        (["--device", "foo"], "unknown device 'foo'"),
        (["--device", "cpu", "--precision", "fp16"], "precision fp16 needs a CUDA device"),
        (["--batch-size", "3"], "--batch-size 3 needs at least 3 images"),
        (["--data", "{tmp}/missing"], "image folder not found"),
        (["--data", "{tmp}/empty"], "no images"),
        (["--data", "{tmp}/bad", "--batch-size", "1"], "cannot decode image"),
    ],
)
def test_train_step_errors(argv, expected, photos, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "0.png").write_bytes(b"not a png")
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    if "--data" not in argv:
        argv += ["--data", str(photos)]
    assert _benchmark("train_step").main(argv) == 2
    line = single_error_line(capsys)
    assert line.startswith("train_step benchmark: error: ") and expected in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
        (["--batch", "0"], "--batch must be at least 1, got 0"),
        (["--batch", "-1"], "--batch must be at least 1, got -1"),
        (["--threads", "-1"], "--threads must be at least 0, got -1"),
        (
            ["--height", "10", "--width", "16"],
            "--height 10 --width 16: both must be multiples of 8, at least 32",
        ),
    ],
)
def test_augmentation_errors(argv, expected, capsys):
    assert _benchmark("augmentation").main(argv) == 2
    assert single_error_line(capsys) == f"augmentation benchmark: error: {expected}"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
        (["--threads", "-1"], "--threads must be at least 0, got -1"),
        (["--shape", "32x"], "--shape must be WIDTHxHEIGHT (e.g. 320x240), got '32x'"),
        (["--counts", "x"], "--counts 'x': give whole numbers, e.g. 300,1000"),
        (["--counts", "300,0"], "--counts '300,0': give at least one count, each at least 1"),
        (["--model", "nosuch"], "unknown model 'nosuch'"),
    ],
)
def test_descriptor_head_errors(argv, expected, capsys):
    assert _benchmark("descriptor_head").main(argv) == 2
    assert single_error_line(capsys).startswith(f"descriptor_head benchmark: error: {expected}")


def test_descriptor_head_prints_a_row_per_count(capsys):
    assert _benchmark("descriptor_head").main(["--counts", "5,40", "--repeats", "1", "--shape", "64x48"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("torch-") and "astronaut 64x48 at x2.8 (176x128, 352 cells)" in lines[0]
    assert [line.split(" | ")[0] for line in lines[3:]] == ["| 5", "| 40"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--max-sequences", "0"], "--max-sequences must be at least 1, got 0"),
        (["--max-sequences", "-1"], "--max-sequences must be at least 1, got -1"),
        (["--no-accuracy", "--no-timing"], "leave nothing to do"),
        (["--backends", ","], "no backend named"),
        (["--backends", "torch-fp32,nope"], "unknown backend nope"),
        (["--json", "{tmp}"], "is a folder"),
        (["--json", "{tmp}/file/out.json"], "is a file, not a folder"),
        (["--hpatches", "{tmp}/missing", "--max-sequences", "2"], "--hpatches: HPatches folder not found"),
        (["--hpatches", "{tmp}/file"], "is a file; give an HPatches-format folder"),
        (["--hpatches", "{hpatches}/i_coffee", "--subset", "v"], "no sequences of subset 'v'"),
    ],
)
def test_inference_errors(argv, expected, hpatches, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: None)  # leave pytest's logging alone
    (tmp_path / "file").write_text("x")
    argv = [arg.format(tmp=tmp_path, hpatches=hpatches) for arg in argv]
    if "--hpatches" not in argv:
        argv += ["--hpatches", str(hpatches)]
    assert _benchmark("inference").main(["--random-init", *argv]) == 2
    line = single_error_line(capsys)
    assert line.startswith("inference benchmark: error: ") and expected in line
    assert "kp2d-bench-" not in line  # never the temporary folder


def test_inference_subset_alternates_kinds(hpatches, tmp_path):
    inference = _benchmark("inference")
    folders = sorted(path for path in hpatches.iterdir() if path.name != "notes")
    root = inference.subset_root(hpatches, folders, 3, tmp_path)
    assert sorted(path.name for path in root.iterdir()) == ["i_camera", "i_coffee", "v_astronaut"]
    assert inference.subset_root(hpatches, folders, None, tmp_path) == hpatches


def test_versus_original_times_the_default_model_with_its_settings(capsys):
    inference = _benchmark("inference")
    rows = inference.time_versus_original([(64, 48)], warmup=0, repeats=1)
    names = [name for name, _ in rows]
    assert names[0] == "v4 network, fp32, 1x (the original's forward)"
    import dataclasses

    from kp2d.features.extraction import resolved_precision
    from kp2d.io.checkpoint import load_checkpoint
    from kp2d.io.weights import DEFAULT_MODEL, resolve_model_path
    from kp2d.models.keypoint_net import load_keypoint_net

    settings = load_checkpoint(resolve_model_path(DEFAULT_MODEL)).inference
    precision = resolved_precision(load_keypoint_net(DEFAULT_MODEL))
    own = settings.label(precision) or " (input x1)"
    assert names[2].startswith(f"{DEFAULT_MODEL} extract{own}, its settings")
    extra = []
    if precision == "bf16":  # what a CPU without native bf16 runs
        fp32 = f"{DEFAULT_MODEL} extract{settings.label('fp32') or ' (input x1)'}"
        if settings.precision == "auto":
            extra.append(f"{fp32}, fp32 folded (auto without native bf16)")
        extra.append(f"{fp32}, precision fp32")
    if settings.scale_factor > 1 and not settings.extra_scales:  # the opt-in second scale
        pooled = dataclasses.replace(settings, extra_scales=(1.0,))
        extra.append(f"{DEFAULT_MODEL} extract{pooled.label(precision)}, extra_scales=(1,)")
    if not settings.extra_rotations:  # the opt-in turned copies
        turned = dataclasses.replace(settings, extra_rotations=(45.0, -45.0))
        extra.append(f"{DEFAULT_MODEL} extract{turned.label(precision)}, extra_rotations=(45, -45)")
    assert names[3:] == extra
    assert all(ms["64x48"] > 0 for _, ms in rows)
    inference.print_versus_original(rows, [(64, 48)])
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| what | ms 64x48 | vs original |" and table[2].endswith("| 1.00x |")


def test_versus_original_reads_settings(capsys):
    from kp2d.errors import ConfigError
    from kp2d.io.inference import InferenceSettings

    inference = _benchmark("inference")
    assert inference.parse_setting("x3:bf16") == InferenceSettings(3.0, precision="bf16")
    pooled = InferenceSettings(2.0, (1.0,), (45.0, -45.0), "auto")
    assert inference.parse_setting("x2+1:r45/-45:auto") == pooled
    assert inference.parse_setting("x2") == InferenceSettings(2.0)
    for bad, message in (("2", "starts with x"), ("xa", "not a number"), ("x2:half", "precision must be")):
        with pytest.raises(ConfigError, match=message):
            inference.parse_setting(bad)
    assert inference.main(["--versus-original", "--settings", "y2"]) == 2
    assert inference.main(["--settings", "x2"]) == 2
    assert "--settings goes with --versus-original" in capsys.readouterr().err
    rows = inference.time_versus_original([(64, 48)], 0, 1, extra_settings=(("x2:fp32", pooled),))
    assert rows[-1][0].endswith("extract (input x2+x1, turned 0/45/-45, auto), --settings x2:fp32")
