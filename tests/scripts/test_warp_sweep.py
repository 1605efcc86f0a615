"""``scripts/warp_sweep.py``: pure-warp HPatches-format sets, checked by hand-computed points and pixels."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest

from cli_output import single_error_line
from hpatches_tiny import make_tiny_hpatches
from kp2d.data.hpatches import HPatchesDataset, read_homography


@pytest.fixture(scope="module")
def sweep(load_script):
    return load_script("warp_sweep")


def _apply(homography: np.ndarray, x: float, y: float) -> tuple[float, float]:
    u, v, w = homography @ np.array([x, y, 1.0])
    return u / w, v / w


def test_homographies_by_hand(sweep):
    """In a 200x100 photo (centre (100, 50)): zoom 2 doubles distances from the centre, rotation 90 turns
    (110, 50) to (100, 60), perspective t scales the left edge's height by 1/(1 - t) and the right edge's
    by 1/(1 + t)."""
    zoom = sweep.warp_about_center("zoom", 2.0, 200, 100)
    assert _apply(zoom, 100, 50) == pytest.approx((100, 50))
    assert _apply(zoom, 110, 45) == pytest.approx((120, 40))
    rotation = sweep.warp_about_center("rotation", 90.0, 200, 100)
    assert _apply(rotation, 110, 50) == pytest.approx((100, 60))
    t = 0.4
    tilt = sweep.warp_about_center("perspective", t, 200, 100)
    left = _apply(tilt, 0, 100)[1] - _apply(tilt, 0, 0)[1]
    right = _apply(tilt, 200, 100)[1] - _apply(tilt, 200, 0)[1]
    assert left == pytest.approx(100 / (1 - t)) and right == pytest.approx(100 / (1 + t))
    assert _apply(tilt, 100, 50) == pytest.approx((100, 50))
    with pytest.raises(ValueError, match="perspective"):
        sweep.warp_about_center("perspective", 1.0, 200, 100)
    with pytest.raises(ValueError, match="unknown warp kind"):
        sweep.warp_about_center("shear", 1.0, 200, 100)


def test_zoom_and_turn_by_hand(sweep):
    """zoomturn 2@90 in a 200x100 photo: (110, 50), 10 px right of the centre, is 20 px away after the zoom
    and below the centre after the turn; the levels parse as (zoom, degrees) pairs."""
    both = sweep.warp_about_center("zoomturn", (2.0, 90.0), 200, 100)
    assert _apply(both, 110, 50) == pytest.approx((100, 70))
    assert _apply(both, 100, 50) == pytest.approx((100, 50))
    assert sweep._zoom_turn_levels("2@30, 2.5@-45") == ((2.0, 30.0), (2.5, -45.0))
    with pytest.raises(ValueError, match="pairs"):
        sweep.warp_about_center("zoomturn", 2.0, 200, 100)
    with pytest.raises(ValueError, match="numbers"):
        sweep.warp_about_center("zoom", (2.0, 30.0), 200, 100)


def test_writes_readable_sequences_whose_views_are_the_warped_photo(sweep, tmp_path, capsys):
    root = make_tiny_hpatches(tmp_path / "tiny")
    out = tmp_path / "warps"
    assert sweep.main([str(root), "--out", str(out), "--kinds", "zoom,rotation", "--zoom", "1.5,3"]) == 0
    assert "5 photos × 2 kinds" in capsys.readouterr().out  # one per sequence (the 1.* view), i_/v_ dropped
    zoom_sequences = sorted(p.name for p in (out / "zoom").iterdir())
    assert zoom_sequences == ["v_astronaut", "v_camera", "v_chelsea", "v_coffee", "v_misc_chelsea"]
    assert not (out / "perspective").exists()
    assert len(list((out / "rotation" / "v_astronaut").glob("H_1_*"))) == 5  # the default levels

    folder = out / "zoom" / "v_astronaut"
    photo, view3 = cv2.imread(str(folder / "1.png")), cv2.imread(str(folder / "3.png"))
    homography = read_homography(folder / "H_1_3")
    height, width = photo.shape[:2]
    assert np.allclose(homography, np.diag([3.0, 3.0, 1.0]) + [[0, 0, -width], [0, 0, -height], [0, 0, 0]])
    # a pixel of view 3 near the centre shows the photo at its back-warped point
    x, y = width // 2 + 9, height // 2 - 6
    source_x, source_y = _apply(np.linalg.inv(homography), x, y)
    assert source_x == pytest.approx(width / 2 + 3) and source_y == pytest.approx(height / 2 - 2)
    assert np.abs(view3[y, x].astype(int) - photo[math.floor(source_y), math.floor(source_x)]).max() <= 1

    dataset = HPatchesDataset(out / "zoom", (120, 90))
    assert dataset.num_pairs == 10
    assert dataset[0].pair_names == ["v_astronaut:1-2", "v_astronaut:1-3"]
    # a second sweep into the same folder with fewer levels: the first one's extra pairs are gone
    assert sweep.main([str(root), "--out", str(out), "--kinds", "rotation", "--rotation", "10"]) == 0
    assert sorted(p.name for p in (out / "rotation" / "v_astronaut").glob("H_1_*")) == ["H_1_2"]


def test_folder_of_images_and_bad_input(sweep, tmp_path, capsys):
    images = tmp_path / "photos" / "sub"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "a.png"), np.full((40, 60, 3), 128, np.uint8))
    cv2.imwrite(str(images / "a.jpg"), np.full((40, 60, 3), 128, np.uint8))
    assert [name for name, _ in sweep.source_photos(tmp_path / "photos")] == ["sub_a", "sub_a_sub_a"]
    out = tmp_path / "warps"
    args = [str(tmp_path / "photos"), "--out", str(out)]
    assert sweep.main([*args, "--kinds", "perspective", "--limit", "1"]) == 0
    written = sorted(p.name for p in (out / "perspective" / "v_sub_a").iterdir())
    assert written[:3] == ["1.png", "2.png", "3.png"]
    assert sweep.main([str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    for bad in (
        ["--kinds", "shear"],
        ["--zoom", "2,x"],
        ["--zoomturn", "2"],
        ["--zoomturn", "2@x"],
        ["--limit", "0"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            sweep.main([str(tmp_path / "photos"), "--out", str(out), *bad])
        assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--rotation", "10,nan", "--rotation: rotation levels must be finite numbers, got nan"),
        ("--zoom", "inf", "--zoom: zoom levels must be finite numbers, got inf"),
        ("--zoom", "2,0", "--zoom: zoom must be positive, got 0.0"),
        ("--perspective", "1.5", "--perspective: perspective t must be in [0, 1), got 1.5"),
        ("--zoomturn", "2@30,0@10", "--zoomturn: zoom must be positive, got 0.0"),
        ("--zoomturn", "2@nan", "--zoomturn: rotation levels must be finite numbers, got nan"),
    ],
)
def test_bad_levels_write_nothing(sweep, tiny_root, tmp_path, capsys, option, value, message):
    """A level that gives no finite homography (NaN, inf, zoom 0) stops the script before it writes."""
    out = tmp_path / "warps"
    assert sweep.main([str(tiny_root), "--out", str(out), option, value]) == 2
    assert single_error_line(capsys) == f"warp_sweep: error: {message}"
    assert not out.exists()
    with pytest.raises(ValueError, match="finite"):
        sweep.warp_about_center("rotation", math.nan, 200, 100)


def test_out_under_a_file_writes_nothing(sweep, tiny_root, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    assert sweep.main([str(tiny_root), "--out", str(blocker / "warps")]) == 2
    expected = f"warp_sweep: error: --out {blocker / 'warps'}: {blocker} is a file, not a folder"
    assert single_error_line(capsys) == expected
    assert sweep.main([str(tiny_root), "--out", str(blocker)]) == 2
    assert "is a file, not a folder" in single_error_line(capsys)
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_out_in_a_read_only_folder(sweep, tiny_root, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert sweep.main([str(tiny_root), "--out", str(locked / "warps")]) == 2
        assert "no permission to write" in single_error_line(capsys)
    finally:
        locked.chmod(0o700)
