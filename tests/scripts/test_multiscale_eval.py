"""``scripts/multiscale_eval.py``: the pooled detections are exactly the single-scale ones, concatenated."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cli_output import single_error_line
from kp2d.eval.hpatches import METRIC_NAMES, KeyPointNetDetector, evaluate_hpatches
from kp2d.models.keypoint_net import load_keypoint_net


@pytest.fixture(scope="module")
def multiscale(load_script):
    return load_script("multiscale_eval")


@pytest.mark.slow
def test_pool_is_the_scales_in_order(multiscale):
    model = load_keypoint_net("v4")
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    pooled = multiscale.PooledScales(model, [2.0, 1.0])
    twice, once = (KeyPointNetDetector(model, scale_factor=s)(images) for s in (2.0, 1.0))
    assert pooled.name == "KeyPointNet x2+1"
    for (prob, desc), (prob2, desc2), (prob1, desc1) in zip(pooled(images), twice, once, strict=True):
        assert len(prob2) > len(prob1) > 0  # twice the cells in each direction at 2
        np.testing.assert_array_equal(prob, np.concatenate([prob2, prob1]))
        np.testing.assert_array_equal(desc, np.concatenate([desc2, desc1]))


@pytest.mark.slow
def test_one_scale_is_kp2d_eval(multiscale, tiny_root, tmp_path, capsys, load_script):
    out = tmp_path / "new" / "folder" / "one.json"  # --json's folder is created
    args = [str(tiny_root), "--model", "v4", "--scales", "1", "--shape", "64x48", "--top-k", "100",
            "--json", str(out)]
    assert multiscale.main(args) == 0
    plain = evaluate_hpatches(KeyPointNetDetector(load_keypoint_net("v4")), tiny_root, (64, 48), 100,
                              progress=False)
    printed = capsys.readouterr().out
    assert printed.startswith("| KeyPointNet x1 | ")
    assert printed.split(" | ")[1:4] == [f"{plain[name]:.3f}" for name in METRIC_NAMES[:3]]
    entry = json.loads(out.read_text())["64x48"]
    assert entry["model"] == "KeyPointNet x1" and entry["pairs"] == plain["pairs"]
    assert all(entry[name] == pytest.approx(plain[name]) for name in METRIC_NAMES)
    assert load_script("hpatches_breakdown").main([str(out), "--metrics", "c3"]) == 0  # reads the JSON


@pytest.mark.parametrize("scales", ["", "2,x", "0,1"])
def test_bad_scales(multiscale, tiny_root, scales, capsys):
    assert multiscale.main([str(tiny_root), "--scales", scales]) == 2
    assert capsys.readouterr().err.startswith("multiscale_eval: error: --scales")


def _no_evaluation(*args, **kwargs):
    raise AssertionError("the evaluation ran before --json was checked")


@pytest.mark.parametrize("where", ["folder", "under_a_file", "read_only_file"])
def test_bad_json_path_fails_before_the_evaluation(
    multiscale, tiny_root, tmp_path, capsys, monkeypatch, where
):
    """``--json`` that cannot be written is refused at once, in one line, and the user's file is untouched."""
    monkeypatch.setattr(multiscale, "evaluate_hpatches", _no_evaluation)
    blocker = tmp_path / "blocker.json"
    blocker.write_text("keep me")
    if where == "read_only_file":
        if os.geteuid() == 0:
            pytest.skip("root may write anywhere")
        blocker.chmod(0o400)
    json_out = {"folder": tmp_path, "under_a_file": blocker / "x.json", "read_only_file": blocker}[where]
    args = [str(tiny_root), "--scales", "1", "--shape", "64x48", "--json", str(json_out)]
    assert multiscale.main(args) == 2
    line = single_error_line(capsys)
    assert line.startswith(f"multiscale_eval: error: --json {json_out}")
    reason = {"folder": "is a folder", "under_a_file": "is a file, not a folder"}.get(where, "read-only")
    assert reason in line
    assert blocker.read_text() == "keep me"


@pytest.mark.slow
def test_score_weights_scale_each_scales_scores(multiscale):
    model = load_keypoint_net("v4")
    images = np.random.default_rng(1).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8)
    plain = multiscale.PooledScales(model, [2.0, 1.0])(images)[0][0]
    weighted_detector = multiscale.PooledScales(model, [2.0, 1.0], [1.0, 0.5])
    weighted = weighted_detector(images)[0][0]
    count = len(KeyPointNetDetector(model, scale_factor=2.0)(images)[0][0])
    assert weighted_detector.name == "KeyPointNet x2+1 (scores x1,0.5)"
    np.testing.assert_array_equal(weighted[:count], plain[:count])
    np.testing.assert_allclose(weighted[count:, 2], plain[count:, 2] * 0.5)
    np.testing.assert_array_equal(weighted[count:, :2], plain[count:, :2])


def test_score_weights_need_one_per_scale(multiscale, tiny_root, capsys):
    assert multiscale.main([str(tiny_root), "--scales", "2,1", "--score-weights", "1"]) == 2
    assert "--score-weights needs one number per scale (2)" in capsys.readouterr().err
