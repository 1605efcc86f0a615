"""``scripts/phase_error.py``: the grid-phase error of hand-made detectors; the table; errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cli_output import single_error_line


@pytest.fixture
def phase(load_script):
    return load_script("phase_error")


class _CellCentres:
    """A detector whose keypoints are its cells' centres whatever the image: locked to the grid."""

    def forward_cells(self, window):
        rows, cols = window.shape[-2] // 8, window.shape[-1] // 8
        ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        coord = torch.stack([xs * 8 + 3.5, ys * 8 + 3.5]).float()[None]
        return torch.rand(1, 1, rows, cols), coord, None


class _BrightestPixel:
    """A detector whose keypoint in each cell is its brightest pixel: on isolated dots, the dots."""

    def forward_cells(self, window):
        gray = window[0].mean(dim=0)
        rows, cols = gray.shape[0] // 8, gray.shape[1] // 8
        cells = gray.reshape(rows, 8, cols, 8).permute(0, 2, 1, 3).reshape(rows, cols, 64)
        index = cells.argmax(dim=-1)
        ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        coord = torch.stack([xs * 8 + index % 8, ys * 8 + index // 8]).float()[None]
        return cells.amax(dim=-1)[None, None], coord, None


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (80, 96, 3), dtype=np.uint8) for _ in range(2)]


def _dots():
    """Six bright single-pixel dots 16 px apart in an 80x96 image, away from the edges."""
    dots = np.zeros((80, 96, 3), np.uint8)
    for x, y in [(28, 28), (45, 29), (62, 30), (29, 46), (47, 45), (61, 47)]:
        dots[y, x] = 255
    return dots


def test_paired_distances_by_hand(phase):
    found = phase.paired_distances(np.array([[0.0, 0.0], [10.0, 10.0]]), np.array([[0.3, 0.4], [20.0, 20.0]]))
    np.testing.assert_allclose(found, [0.5])  # the second keypoint has no partner within 4 px


def test_a_grid_locked_detector_moves_by_the_shift_and_a_content_one_not_at_all(phase):
    locked = phase.phase_errors(_CellCentres(), _images(), 1.0, "bilinear", 1000)
    # a cell centre moved back by (dx, dy) lies (dx, dy) off the nearest centre, modulo the 8-px cell
    for (dx, dy), (distances, images) in locked.items():
        expected = math.hypot(*(min(d % 8, 8 - d % 8) for d in (dx, dy)))
        assert images == 2
        if expected < phase.PAIRING_RADIUS:
            np.testing.assert_allclose(distances, expected, atol=1e-5)
        else:  # (3, 5): 4.24 px, nothing pairs
            assert len(distances) == 0
    # six bright dots 16 px apart, inside every cut and away from its edges: the top 6 cells are theirs
    exact = phase.phase_errors(_BrightestPixel(), [_dots()], 1.0, "bilinear", 6)
    assert all(len(distances) == 6 and np.all(distances == 0) for distances, _ in exact.values())


def test_the_scale_error_of_a_content_detector_is_0_and_of_a_grid_locked_one_is_not(phase):
    # x3 puts each dot's pixel centre on a pixel centre of the enlarged image (28 -> 85), where bilinear peaks
    exact = phase.scale_errors(_BrightestPixel(), [_dots()], 1.0, "bilinear", 6, (3.0,))
    distances, images = exact[3.0]
    assert images == 1 and len(distances) == 6
    np.testing.assert_allclose(distances, 0, atol=1e-5)
    # the x2 input's cell centres (3.5 + 8 j) map back to 1.5 + 4 j: 2 px off the x1 centres on each axis
    locked = phase.scale_errors(_CellCentres(), [_dots()], 1.0, "bilinear", 1000, (2.0,))[2.0][0]
    assert len(locked) > 0
    np.testing.assert_allclose(locked, 2 * math.sqrt(2), atol=1e-5)


def test_main_prints_the_table_and_one_error_line(phase, tiny_root, tmp_path, capsys):
    from kp2d.config import load_config
    from kp2d.io.checkpoint import save_checkpoint
    from kp2d.models import KeyPointNet

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "random.ckpt", load_config("v4"), KeyPointNet())
    argv = ["--model", str(tmp_path / "random.ckpt"), "--hpatches", str(tiny_root), "--shape", "96x80"]
    assert phase.main([*argv, "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 images of 96x80" in out and "| (8, 8) | " in out and "| all within a cell | " in out
    assert "scale (x the main)" not in out
    assert phase.main([*argv, "--limit", "1", "--scales", "0.5,1.5"]) == 0
    out = capsys.readouterr().out
    assert "| x0.5 | " in out and "| x1.5 | " in out
    for bad in ("0.5,x", "1", "-2"):
        assert phase.main([*argv, "--scales", bad]) == 2
        assert "--scales must" in single_error_line(capsys)
    assert phase.main([*argv, "--limit", "0"]) == 2
    assert "--limit and --top-k must be at least 1" in single_error_line(capsys)
    assert phase.main([*argv[:3], str(tmp_path / "nowhere")]) == 2
    assert single_error_line(capsys).startswith("phase_error: error: ")
