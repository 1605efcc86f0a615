"""``scripts/match_residuals.py``: residuals, bias and oracle fit of a hand-made pair; options, errors."""

from __future__ import annotations

import numpy as np
import pytest

from cli_output import single_error_line


@pytest.fixture
def residuals(load_script):
    return load_script("match_residuals")


@pytest.fixture
def random_checkpoint(tmp_path):
    import torch

    from kp2d.config import load_config
    from kp2d.io.checkpoint import save_checkpoint
    from kp2d.models import KeyPointNet

    torch.manual_seed(0)
    path = tmp_path / "random.ckpt"
    save_checkpoint(path, load_config("v4"), KeyPointNet())
    return path


def _pair():
    """Image 2 is image 1 moved 10 px right; its keypoints sit 0.5 px further right; one match is wrong."""
    points1 = np.array([[40, 40], [200, 50], [100, 120], [260, 200], [60, 190], [150, 180], [120, 60]], float)
    points2 = points1 + [10.5, 0.0]
    points2[6] += [20.0, 15.0]  # the seventh keypoint of image 2 is elsewhere: a wrong match
    scores = np.linspace(1.0, 0.4, 7)[:, None]
    descriptors = np.eye(7, 8, dtype=np.float32)  # keypoint i of one image matches keypoint i of the other
    homography = np.array([[1.0, 0, 10], [0, 1, 0], [0, 0, 1]])
    prob1 = np.hstack([points1, scores]).astype(np.float32)
    prob2 = np.hstack([points2, scores]).astype(np.float32)
    return prob1, descriptors, prob2, descriptors.copy(), homography


def test_a_known_offset_is_the_bias_and_the_fits_carry_it(residuals):
    found = residuals.pair_residuals(*_pair(), (320, 240), 300)
    assert (found["matches"], found["within3"], found["within1"]) == (7, 6, 6)
    assert found["residual"] == pytest.approx(0.5, abs=1e-5)
    np.testing.assert_allclose(found["bias"], [-0.5, 0.0], atol=1e-5)
    # both fits find a translation of 10.5 px: every corner 0.5 px off the true one
    assert found["oracle_error"] == pytest.approx(0.5, abs=1e-3)
    assert found["corner_error"] == pytest.approx(0.5, abs=1e-3)
    assert np.isnan(found["scale"]).all()  # 6 matches within 3 px: too few for the line fit
    summary = residuals.summarize([found, {**found, "corner_error": 4.0, "oracle_error": float("inf")}])
    assert summary["pairs"] == 2 and summary["c3"] == 0.5 and summary["oracle_c3"] == 0.5
    assert summary["bias_x"] == pytest.approx(-0.5, abs=1e-5)
    assert summary["median_corner"] == pytest.approx(2.25)


def test_a_magnified_second_image_is_the_scale(residuals):
    """Image 2's keypoints 1 % farther from its centre (160, 120) than the true ones: the residuals
    ``H p1 - p2`` are ``(1 / 1.01 - 1)`` of the position about the centre, -0.99 % on both axes."""
    points1 = np.array([[40, 40], [200, 50], [100, 120], [260, 200], [60, 190], [150, 180], [120, 60],
                        [230, 110], [30, 100]], float)
    homography = np.array([[1.0, 0, 10], [0, 1, 0], [0, 0, 1]])
    points2 = (points1 + [10.0, 0.0] - [160.0, 120.0]) * 1.01 + [160.0, 120.0]
    scores = np.linspace(1.0, 0.4, len(points1))[:, None]
    descriptors = np.eye(len(points1), 10, dtype=np.float32)
    prob1 = np.hstack([points1, scores]).astype(np.float32)
    prob2 = np.hstack([points2, scores]).astype(np.float32)
    found = residuals.pair_residuals(prob1, descriptors, prob2, descriptors, homography, (320, 240), 300)
    assert found["within3"] == 9
    np.testing.assert_allclose(found["scale"], [100 * (1 / 1.01 - 1)] * 2, atol=1e-4)  # float32 points


def test_parse_runs_and_views(residuals):
    assert residuals.parse_run("2.8+1.25/1.12") == ((2.8, 1.25), (1.12,))
    assert residuals.parse_run("2") == ((2.0,), (2.0,))
    from kp2d.errors import ConfigError

    for bad in ("a", "2/1/1", "0", "2+-1", "2+inf"):
        with pytest.raises(ConfigError, match="--runs"):
            residuals.parse_run(bad)


def test_main_prints_a_row_per_run_and_one_error_line(residuals, tiny_root, random_checkpoint, capsys):
    argv = ["--model", str(random_checkpoint), "--hpatches", str(tiny_root), "--shape", "64x48"]
    argv += ["--views", "2"]
    assert residuals.main([*argv, "--runs", "1", "1/2", "--baselines", "sift"]) == 0
    out = capsys.readouterr().out
    assert "| 1 | " in out and "| 1/2 | " in out and "| SIFT | " in out
    # a pooled run, its extra scale weighted, in bf16: one more row of the same pairs
    assert residuals.main([*argv, "--runs", "1+2", "--extra-weight", "0.5", "--precision", "bf16"]) == 0
    assert "| 1+2 | 5 | " in capsys.readouterr().out
    assert residuals.main([*argv, "--runs", "1/2", "--descriptor-sampling", "centred"]) == 0
    assert "scale (x, y), %" in capsys.readouterr().out
    assert residuals.main([*argv, "--descriptor-sampling", "corners"]) == 2
    assert "--descriptor-sampling must be one of original, centred" in single_error_line(capsys)
    assert residuals.main([*argv, "--shape", "65x48"]) == 2
    assert "multiples of 8" in single_error_line(capsys)
    assert residuals.main([*argv, "--extra-weight", "3"]) == 2
    assert "--extra-weight must be a number in (0, 1]" in single_error_line(capsys)
    assert residuals.main([*argv, "--runs", "x"]) == 2
    assert single_error_line(capsys).startswith("match_residuals: error: --runs: 'x'")
    assert residuals.main([*argv[:-1], "9"]) == 2
    assert "no pair of views 9" in single_error_line(capsys)
