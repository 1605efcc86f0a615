import os

import numpy as np
import pytest
import skimage.data
from PIL import Image

from cli_output import single_error_line
from kp2d.cli import main
from kp2d.config import load_config
from kp2d.errors import DataError
from kp2d.train.overfit import overfit
from kp2d.train.step import TrainingStep


@pytest.mark.slow
def test_overfit_writes_three_gifs_with_one_frame_per_record(tmp_path):
    config = load_config("v4", {"augmentation": {"image_shape": [64, 96]}, "loss": {"io_top_k": 40},
                                "train": {"precision": "fp32"}})
    result = overfit(skimage.data.coffee(), config, tmp_path, steps=5, every=2, batch_size=2, top_k=20,
                     progress=False)
    assert len(result.losses) == 4  # step 1, 2, 4 and the last, 5 (it was left out: 5 steps gave 1 frame)
    for path in (result.keypoints_gif, result.scores_gif, result.crop_gif):
        with Image.open(path) as gif:
            assert gif.n_frames == 4 and gif.size == (96, 64)


def test_overfit_cli_rejects_bad_values(tmp_path, capsys):
    assert main(["overfit", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert main(["overfit", str(tmp_path / "missing.png"), "--out", str(tmp_path)]) == 2
    assert "missing.png" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["100000x100000", "64x16392"])
def test_overfit_shape_has_eval_s_upper_bound(tmp_path, capsys, size):
    """``--shape 100000x100000`` was a cv2.error traceback (the option is --size WxH now)."""
    assert main(["overfit", "--size", size, "--steps", "1", "--out", str(tmp_path / "o")]) == 2
    assert single_error_line(capsys) == (
        f"kp2d overfit: error: --size {size}: width and height must be at most 16384 pixels"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_overfit_cli_without_progress_bar(tmp_path, capsys):
    out = tmp_path / "gifs"
    assert main(_tiny_run(tmp_path, out, steps=2)) == 0
    captured = capsys.readouterr()
    assert "overfit:" not in captured.err  # the tqdm bar's description
    assert sorted(path.name for path in out.iterdir()) == ["crop.gif", "keypoints.gif", "scores.gif"]
    with Image.open(out / "scores.gif") as gif:
        assert gif.n_frames == 2 and gif.size == (96, 64)  # --size WxH, not the config's image_shape
    assert "-> " in captured.out


def _tiny_run(folder, out, steps: int) -> list[str]:
    """CLI arguments of a 64x96 over-fitting run with a frame every step (IO-Net on 40 cells)."""
    config = folder / "tiny.yaml"
    config.write_text("extends: v4\naugmentation: {image_shape: [240, 320]}\nloss: {io_top_k: 40}\n"
                      "train: {precision: fp32}\n")
    return ["overfit", "--config", str(config), "--size", "96x64", "--steps", str(steps), "--every", "1",
            "--batch-size", "2", "--top-k", "10", "--out", str(out), "--no-progress", "--device", "cpu"]


def test_overfit_takes_width_x_height_and_refuses_the_old_height_x_width_option(tmp_path, capsys):
    """--size is WxH as eval's --shape and export's --size; the old HxW --shape names its replacement."""
    assert main(["overfit", "--shape", "64x96", "--out", str(tmp_path)]) == 2
    assert single_error_line(capsys) == (
        "kp2d overfit: error: overfit's --shape took HEIGHTxWIDTH, unlike eval and export; it is now "
        "--size WIDTHxHEIGHT (--shape 64x96 is --size 96x64)"
    )
    assert main(["overfit", "--size", "96x60", "--out", str(tmp_path)]) == 2
    assert "--size 96x60: width and height must be multiples of 8" in capsys.readouterr().err
    assert main(["overfit", "--size", "wide", "--out", str(tmp_path)]) == 2
    assert "--size must be WIDTHxHEIGHT" in capsys.readouterr().err


def test_overfit_cli_defaults_are_the_original_demo(monkeypatch, tmp_path):
    seen = {}

    def fake_overfit(image, config, out, **kwargs):
        seen.update(config=config, **kwargs)
        raise KeyboardInterrupt  # stop before any work

    monkeypatch.setattr("kp2d.train.overfit.overfit", fake_overfit)
    assert main(["overfit", "--out", str(tmp_path)]) == 130
    config = seen["config"]
    assert config.model == load_config("v4").model
    assert config.augmentation.original_jitter_noop and config.augmentation.image_shape == (120, 160)
    assert (seen["steps"], seen["every"], seen["batch_size"]) == (1500, 50, 4)


@pytest.mark.slow
def test_overfit_ctrl_c_keeps_the_frames_recorded_so_far(monkeypatch, tmp_path, capsys):
    calls = {"n": 0}
    original_call = TrainingStep.__call__

    def interrupted_on_third_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original_call(self, *args, **kwargs)

    monkeypatch.setattr(TrainingStep, "__call__", interrupted_on_third_step)
    out = tmp_path / "gifs"
    assert main(_tiny_run(tmp_path, out, steps=10)) == 130
    assert "interrupted after step 2 of 10" in capsys.readouterr().err
    for name in ("keypoints.gif", "scores.gif", "crop.gif"):
        with Image.open(out / name) as gif:
            assert gif.n_frames == 2  # steps 1 and 2


def _no_training(*args, **kwargs):
    raise AssertionError("training started: the check came too late")


def test_overfit_bad_out_fails_before_training(tmp_path, capsys, monkeypatch):
    """--out an existing file or a path under a file: one line, the file kept, no training done."""
    monkeypatch.setattr(TrainingStep, "__call__", _no_training)
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    for out in (mine, mine / "gifs"):
        assert main(_tiny_run(tmp_path, out, steps=2)) == 2
        assert "notes.txt is a file, not a folder" in single_error_line(capsys)
    assert mine.read_text() == "mine"


def test_overfit_function_checks_the_folder_before_training(tmp_path, monkeypatch):
    """The library call too: the folder is made (or refused with a DataError naming it) before step 1."""
    monkeypatch.setattr(TrainingStep, "__call__", _no_training)
    config = load_config("v4", {"augmentation": {"image_shape": [64, 96]}})
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    for out in (mine, mine / "gifs"):
        with pytest.raises(DataError, match="notes.txt"):
            overfit(skimage.data.coffee(), config, out, steps=2, progress=False)
    assert mine.read_text() == "mine"
    with pytest.raises(AssertionError, match="training started"):
        overfit(skimage.data.coffee(), config, tmp_path / "new" / "gifs", steps=2, progress=False)
    assert (tmp_path / "new" / "gifs").is_dir()  # made before training


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_overfit_unwritable_out_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(TrainingStep, "__call__", _no_training)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(_tiny_run(tmp_path, locked / "gifs", steps=2)) == 2
        assert "no permission to write" in single_error_line(capsys)
        config = load_config("v4", {"augmentation": {"image_shape": [64, 96]}})
        with pytest.raises(DataError, match="gifs"):
            overfit(skimage.data.coffee(), config, locked / "gifs", steps=2, progress=False)
    finally:
        locked.chmod(0o700)


def test_overfit_rejects_a_tiny_image(tmp_path, capsys, monkeypatch):
    """A 1x1 image would train on a blank upscaled picture: refused as ``kp2d detect`` does."""
    monkeypatch.setattr(TrainingStep, "__call__", _no_training)
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(tiny)
    out = tmp_path / "gifs"
    argv = _tiny_run(tmp_path, out, steps=2)
    assert main([*argv[:1], str(tiny), *argv[1:]]) == 2
    line = single_error_line(capsys)
    assert str(tiny) in line and "1x1 pixels" in line and "at least 32" in line
    assert not out.exists()
    config = load_config("v4", {"augmentation": {"image_shape": [64, 96]}})
    with pytest.raises(DataError, match="31x40 pixels"):
        overfit(np.zeros((40, 31, 3), np.uint8), config, out, steps=2, progress=False)
    assert not out.exists()


def test_overfit_refuses_a_config_that_learns_by_distillation_alone(tmp_path, capsys):
    """lite learns from its teacher only; overfit runs no teacher, so it would train nothing."""
    out = tmp_path / "gifs"
    assert main(["overfit", "--config", "lite", "--size", "96x64", "--out", str(out), "--device", "cpu"]) == 2
    assert "lite: nothing to learn (no train.teacher;" in single_error_line(capsys)
    assert not out.exists()
