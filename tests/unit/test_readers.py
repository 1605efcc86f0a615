"""Every reader (the API, detect, the training folder, the HPatches reader) treats a damaged file alike."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cli_output import single_error_line
from hpatches_tiny import make_tiny_hpatches
from kp2d.cli import main
from kp2d.data.hpatches import HPatchesDataset, read_image
from kp2d.data.image_folder import ImageFolderDataset
from kp2d.errors import DataError, ImageNotFoundError, Kp2dError
from kp2d.eval.hpatches import check_sequence_problems
from kp2d.features.extraction import extract
from kp2d.io.imageio import _library_stderr, check_image_bytes, read_image_rgb
from kp2d.models import KeyPointNet


def _photo() -> np.ndarray:
    """A 96x128 BGR photo with texture (a crop of a bundled picture)."""
    import skimage.data

    return np.ascontiguousarray(cv2.cvtColor(skimage.data.astronaut()[:96, :128], cv2.COLOR_RGB2BGR))


def _encoded(suffix: str) -> bytes:
    return cv2.imencode(suffix, _photo())[1].tobytes()


def _header_end(data: bytes, suffix: str) -> int:
    """Where the header ends: after IHDR for a PNG, just before the start of scan for a JPEG."""
    return 8 + 25 if suffix == ".png" else data.index(b"\xff\xda")


CUTS = ("half", "minus 1 byte", "header only")
CASES = [(suffix, cut) for suffix in (".jpg", ".png") for cut in CUTS]
IDS = [f"{suffix[1:]}-{cut.replace(' ', '-')}" for suffix, cut in CASES]


def _truncated(folder: Path, suffix: str, cut: str, stem: str = "cut") -> Path:
    data = _encoded(suffix)
    end = {"half": len(data) // 2, "minus 1 byte": len(data) - 1}.get(cut) or _header_end(data, suffix)
    path = folder / f"{stem}{suffix}"
    path.write_bytes(data[:end])
    return path


def _expected(path: Path) -> str:
    """The message form every reader gives: the path, then ``cannot decode image (truncated ...)``."""
    kind = "JPEG" if path.suffix == ".jpg" else "PNG"
    return f"{path}: cannot decode image (truncated {kind} file"


def test_whole_files_pass_the_check():
    for suffix in (".jpg", ".png", ".ppm", ".bmp"):
        assert check_image_bytes(_encoded(suffix)) is None


@pytest.mark.parametrize(("suffix", "cut"), CASES, ids=IDS)
def test_read_image_rgb_refuses_a_truncated_file(tmp_path, suffix, cut):
    path = _truncated(tmp_path, suffix, cut)
    with pytest.raises(DataError) as raised:
        read_image_rgb(path)
    assert str(raised.value).startswith(_expected(path))


def test_a_png_with_a_damaged_chunk_is_refused(tmp_path):
    data = bytearray(_encoded(".png"))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"flipped.png: cannot decode image \(corrupt PNG file: CRC mismatch"):
        read_image_rgb(path)


def test_a_whole_file_reads_as_before(tmp_path):
    path = tmp_path / "whole.png"
    cv2.imwrite(str(path), _photo())
    np.testing.assert_array_equal(read_image_rgb(path), cv2.cvtColor(_photo(), cv2.COLOR_BGR2RGB))
    np.testing.assert_array_equal(read_image(path), _photo())  # HPatches: BGR, as the original


def test_a_missing_image_is_a_data_error_and_a_file_not_found_error(tmp_path):
    with pytest.raises(ImageNotFoundError) as raised:
        read_image_rgb(tmp_path / "nope.jpg")
    assert isinstance(raised.value, DataError) and isinstance(raised.value, FileNotFoundError)
    assert isinstance(raised.value, Kp2dError)
    assert str(raised.value) == f"{tmp_path / 'nope.jpg'}: image not found"


@pytest.mark.parametrize(("suffix", "cut"), CASES, ids=IDS)
def test_extract_on_a_path_refuses_it(tmp_path, suffix, cut):
    path = _truncated(tmp_path, suffix, cut)
    with pytest.raises(DataError) as raised:
        extract(KeyPointNet().eval(), path)
    assert str(raised.value).startswith(_expected(path))


@pytest.mark.parametrize(("suffix", "cut"), CASES, ids=IDS)
def test_the_training_folder_refuses_or_skips_it(tmp_path, suffix, cut):
    cv2.imwrite(str(tmp_path / "a_good.png"), _photo())
    path = _truncated(tmp_path, suffix, cut, stem="b_cut")
    with pytest.raises(DataError) as raised:
        ImageFolderDataset(tmp_path, image_shape=(32, 48))[1]
    assert str(raised.value).startswith(_expected(path))
    skipping = ImageFolderDataset(tmp_path, image_shape=(32, 48), skip_bad=True)
    assert skipping[1].shape == (3, 32, 48) and skipping.bad_files == [path]


@pytest.mark.parametrize(("suffix", "cut"), CASES, ids=IDS)
def test_the_hpatches_reader_reports_it_and_skip_bad_skips_it(tmp_path, suffix, cut):
    """The HPatches reader used to score a JPEG cut in half (OpenCV's partial image)."""
    root = make_tiny_hpatches(tmp_path / "tiny")
    folder = root / "v_astronaut"
    encoded = cv2.imencode(suffix, cv2.imread(str(folder / "3.ppm")))[1].tobytes()
    (folder / "3.ppm").unlink()
    end = {"half": len(encoded) // 2, "minus 1 byte": len(encoded) - 1}.get(cut)
    end = end or _header_end(encoded, suffix)
    path = folder / f"3{suffix}"
    path.write_bytes(encoded[:end])

    dataset = HPatchesDataset(root, (160, 120), subset="v")
    index = [sequence.name for sequence in dataset.sequences].index("v_astronaut")
    sample = dataset[index]
    assert [name for name, _ in sample.problems] == ["v_astronaut:1-3"]
    assert sample.problems[0][1].startswith(_expected(path))
    assert "v_astronaut:1-3" not in sample.pair_names and len(sample.images) == 1 + len(sample.pair_names)
    with pytest.raises(DataError) as raised:
        check_sequence_problems(sample, skip_bad=False, skipped=[])
    assert _expected(path) in str(raised.value)
    skipped: list[str] = []
    check_sequence_problems(sample, skip_bad=True, skipped=skipped)
    assert len(skipped) == 1 and skipped[0].startswith("v_astronaut:1-3")


@pytest.mark.parametrize(("suffix", "cut"), CASES, ids=IDS)
def test_kp2d_detect_gives_one_line(tmp_path, capsys, suffix, cut):
    path = _truncated(tmp_path, suffix, cut)
    out = tmp_path / "out"
    assert main(["detect", str(path), "--model", "v0", "--device", "cpu", "--out", str(out)]) == 2
    line = single_error_line(capsys)
    assert line.startswith(f"kp2d detect: error: {_expected(path)}")
    assert line.endswith("(--skip-bad skips such images)")


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_the_cli_stderr_holds_only_kp2ds_line(tmp_path, suffix):
    """libpng printed ``libpng error: ...`` (libjpeg ``Premature end of JPEG file``) before kp2d's line."""
    path = _truncated(tmp_path, suffix, "half")
    lines = _detect_stderr_lines(path, tmp_path)
    assert len(lines) == 1 and lines[0].startswith(f"kp2d detect: error: {_expected(path)}"), lines


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_kp2d_eval_stops_on_a_view_cut_in_half_and_skip_bad_skips_it(tmp_path, capsys, suffix):
    """``kp2d eval --hpatches`` scored a JPEG cut in half (OpenCV's partial image), even with --skip-bad."""
    import json

    from hpatches_tiny import PAIRS_PER_SUBSET

    root = make_tiny_hpatches(tmp_path / "tiny")
    folder = root / "v_astronaut"
    encoded = cv2.imencode(suffix, cv2.imread(str(folder / "3.ppm")))[1].tobytes()
    (folder / "3.ppm").unlink()
    path = folder / f"3{suffix}"
    path.write_bytes(encoded[: len(encoded) // 2])
    args = ["eval", "--method", "sift", "--hpatches", str(root), "--shape", "80x60", "--no-progress"]
    assert main(args) == 2
    assert single_error_line(capsys).startswith(f"kp2d eval: error: {_expected(path)}")
    out = tmp_path / "skip.json"
    assert main([*args, "--skip-bad", "--json", str(out)]) == 0
    entry = json.loads(out.read_text())["80x60"]
    assert entry["pairs"] == PAIRS_PER_SUBSET["all"] - 1
    assert len(entry["skipped"]) == 1 and entry["skipped"][0].startswith("v_astronaut:1-3")


def _detect_stderr_lines(path: Path, tmp_path: Path) -> list[str]:
    """stderr lines of ``kp2d detect PATH`` in a fresh process, which must exit with status 2."""
    result = subprocess.run(
        [sys.executable, "-m", "kp2d", "detect", str(path), "--model", "v0", "--device", "cpu",
         "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    return result.stderr.strip().splitlines()


def _damaged_png(path: Path) -> Path:
    """A complete PNG whose image data is garbled (CRCs recomputed): only libpng itself can tell."""
    import zlib

    data = bytearray(_encoded(".png"))
    start = data.index(b"IDAT") - 4
    length = int.from_bytes(data[start : start + 4], "big")
    for offset in range(start + 18, start + 8 + length, 7):
        data[offset] ^= 0x5A
    crc = zlib.crc32(bytes(data[start + 4 : start + 8 + length]))
    data[start + 8 + length : start + 12 + length] = crc.to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


def test_libpng_s_own_line_is_quoted_in_kp2d_s(tmp_path, capfd):
    path = _damaged_png(tmp_path / "garbled.png")
    with pytest.raises(DataError) as raised:
        read_image_rgb(path)
    expected = f"{path}: cannot decode image (corrupt or not an image: libpng error: "
    assert str(raised.value).startswith(expected)
    assert capfd.readouterr().err == ""


def test_the_capture_gives_back_what_is_not_a_library_line(capfd):
    lines: list[str] = []
    with _library_stderr(lines):
        os.write(2, b"libpng error: bad adaptive filter value\n12:00:00 INFO kp2d.eval: another thread\n")
    assert lines == ["libpng error: bad adaptive filter value"]
    assert capfd.readouterr().err == "12:00:00 INFO kp2d.eval: another thread\n"


@pytest.mark.slow
def test_a_damaged_png_gives_one_line_on_the_cli(tmp_path):
    path = _damaged_png(tmp_path / "garbled.png")
    lines = _detect_stderr_lines(path, tmp_path)
    assert len(lines) == 1 and "libpng error: " in lines[0], lines
