"""One error hierarchy: every kp2d error is a Kp2dError and the built-in a Python caller would catch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import kp2d
from cli_output import single_error_line
from kp2d.cli import main
from kp2d.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ImageNotFoundError,
    InputError,
    InputTypeError,
    Kp2dError,
    RunFolderInUse,
)
from kp2d.models import KeyPointNet
from kp2d.visualization import draw_keypoints, draw_matches, draw_score_heatmap, save_gif, to_rgb_uint8


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ConfigError, ValueError),
        (DataError, ValueError),
        (CheckpointError, ValueError),
        (InputError, ValueError),
        (InputTypeError, TypeError),
        (ImageNotFoundError, FileNotFoundError),
        (ImageNotFoundError, DataError),
        (RunFolderInUse, OSError),
    ],
)
def test_each_class_is_a_kp2d_error_and_its_builtin(error, builtin):
    assert issubclass(error, Kp2dError) and issubclass(error, builtin)
    assert getattr(kp2d, error.__name__) is error  # exported at the top level


def test_the_docs_table_lists_every_class():
    table = (Path(__file__).parents[2] / "docs" / "errors.md").read_text()
    names = ("Kp2dError", "ConfigError", "DataError", "ImageNotFoundError", "CheckpointError", "InputError")
    for name in (*names, "InputTypeError", "RunFolderInUse"):
        assert f"`{name}`" in table


DESCRIPTORS = torch.randn(5, 8)


@pytest.mark.parametrize(
    "call",
    [
        lambda: kp2d.match(None, DESCRIPTORS),  # was torch's TypeError
        lambda: kp2d.match(DESCRIPTORS, "descriptors.npz"),
        lambda: kp2d.estimate_homography(None, np.zeros((4, 2)), np.zeros((0, 2), int)),
        lambda: kp2d.estimate_homography(np.zeros((4, 2)), np.zeros((4, 2)), "0 1"),
        lambda: kp2d.extract(KeyPointNet(), None),  # was a DataError
        lambda: draw_keypoints(None, np.zeros((1, 2))),
        lambda: to_rgb_uint8("photo.png"),
    ],
)
def test_a_wrong_type_is_an_input_type_error(call):
    with pytest.raises(InputTypeError):
        call()
    with pytest.raises(TypeError):
        call()


IMAGE = np.zeros((32, 32, 3), np.uint8)


@pytest.mark.parametrize(
    "call",
    [
        lambda: kp2d.match(torch.zeros(5), DESCRIPTORS),  # was a plain ValueError
        lambda: kp2d.match(torch.zeros(5, 4), DESCRIPTORS),
        lambda: kp2d.estimate_homography(np.zeros((4, 3)), np.zeros((4, 2)), np.zeros((0, 2), int)),
        lambda: kp2d.estimate_homography(np.zeros((4, 2)), np.zeros((4, 2)), np.zeros((4, 3), int)),
        lambda: kp2d.estimate_homography(np.zeros((4, 2)), np.zeros((4, 2)), np.array([[0, 9]])),
        lambda: draw_keypoints(IMAGE, np.zeros((3, 3))),
        lambda: draw_keypoints(np.zeros((32, 32, 5), np.uint8), np.zeros((1, 2))),
        lambda: draw_score_heatmap(IMAGE, np.zeros((2, 2, 2))),
        lambda: draw_matches(IMAGE, np.zeros((2, 2)), IMAGE, np.zeros((2, 2)), np.zeros((2, 3), int)),
        lambda: save_gif([], "x.gif"),
        lambda: kp2d.extract(KeyPointNet(), np.zeros((64, 64, 5), np.uint8)),
    ],
)
def test_a_wrong_shape_is_a_kp2d_value_error(call):
    with pytest.raises(Kp2dError) as raised:
        call()
    assert isinstance(raised.value, ValueError)


def test_a_missing_image_is_caught_as_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png: image not found"):
        kp2d.extract(KeyPointNet(), tmp_path / "nope.png")


@pytest.mark.parametrize(
    "error",
    [
        ImageNotFoundError("a.png: image not found"),
        InputError("kpts0 must have shape (N, 2)"),
        InputTypeError("desc0 must be a tensor"),
        CheckpointError("x.ckpt: not a checkpoint"),
    ],
)
def test_the_cli_prints_each_in_one_line(monkeypatch, capsys, error):
    import kp2d.cli.detect

    def run(args):
        raise error

    monkeypatch.setattr(kp2d.cli.detect, "run", run)
    assert main(["detect", "x.png"]) == 2
    assert single_error_line(capsys) == f"kp2d detect: error: {error}"


# --- kp2d detect's outputs ---


def _photo(path: Path) -> Path:
    import cv2
    import skimage.data

    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut()[:96, :128], cv2.COLOR_RGB2BGR))
    return path


def test_a_failed_detect_leaves_no_empty_output_folder(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture")
    out = tmp_path / "new" / "out"
    assert main(["detect", str(bad), "--model", "v0", "--device", "cpu", "--out", str(out)]) == 2
    single_error_line(capsys)
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert main(["detect", str(bad), "--model", "v0", "--device", "cpu", "--out", str(existing)]) == 2
    single_error_line(capsys)
    assert existing.is_dir()  # a folder the user made stays


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("output", ["photo.npz", "photo.json", "photo_keypoints.png"])
def test_a_full_disk_names_the_file(tmp_path, capsys, output):
    """Writing to /dev/full fails with ENOSPC, an OSError without a file name."""
    photo = _photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / output).symlink_to("/dev/full")
    assert main(["detect", str(photo), "--model", "v0", "--device", "cpu", "--out", str(out)]) == 2
    line = single_error_line(capsys)
    assert str(out / output) in line and "No space left on device" in line, line


@pytest.mark.parametrize("command", ["detect", "match"])
def test_scale_factor_has_an_upper_bound(tmp_path, capsys, command):
    """No image fits the network past MAX_NETWORK_SIZE / MIN_IMAGE_SIZE; the error showed a 300-digit size."""
    photo = str(_photo(tmp_path / "photo.png"))
    images = [photo] if command == "detect" else [photo, photo]
    argv = [command, *images, "--model", "v0", "--device", "cpu", "--scale-factor", "1e300"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    expected = f"kp2d {command}: error: --scale-factor must be at most 512, got 1e+300"
    assert single_error_line(capsys) == expected
