"""User mistakes in the helper scripts of ``scripts/``: one ``<script>: error:`` line, exit status 2, and
nothing written (the user's files untouched), checked before any long work.

``warp_sweep`` has its own test file.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cli_output import single_error_line
from hpatches_tiny import make_tiny_hpatches
from kp2d.data.hpatches import HPatchesDataset
from kp2d.errors import DataError
from kp2d.io.weights import resolve_model_path

NOT_ROOT = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere"
)


def _refuse(*args, **kwargs):
    raise AssertionError("the long work started before the options were checked")


# --- ship_weights ---


@pytest.fixture
def ship(load_script, tmp_path, monkeypatch):
    """``scripts/ship_weights.py`` writing to ``tmp_path/weights`` instead of the package's folder."""
    module = load_script("ship_weights")
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setattr(module, "WEIGHTS", weights)
    return module


@pytest.mark.parametrize("name", ["", "sub/dir/v9", "../v9", ".v9", "v 9", "v9.pt"])
def test_ship_weights_wants_a_plain_name(ship, capsys, name):
    assert ship.main([str(resolve_model_path("v4")), name]) == 2
    assert single_error_line(capsys).startswith("ship_weights: error: NAME ")
    assert not any(ship.WEIGHTS.iterdir())


@pytest.mark.parametrize("source", ["missing", "folder", "text"])
def test_ship_weights_refuses_what_is_not_a_checkpoint(ship, tmp_path, capsys, source):
    path = {"missing": tmp_path / "missing.ckpt", "folder": tmp_path, "text": tmp_path / "notes.ckpt"}[source]
    if source == "text":
        path.write_text("not a checkpoint")
    assert ship.main([str(path), "v9"]) == 2
    line = single_error_line(capsys)
    assert line.startswith("ship_weights: error: ") and str(path) in line
    assert not any(ship.WEIGHTS.iterdir())


@pytest.mark.slow
def test_ship_weights_says_unknown_without_a_step_count(ship, tmp_path, capsys):
    """A checkpoint that does not count its steps (the original's) ships, and the count reads "unknown"."""
    shipped = torch.load(resolve_model_path("v4"), map_location="cpu", weights_only=True)
    source = tmp_path / "original.ckpt"
    torch.save({"config": shipped["config"], "state_dict": shipped["state_dict"]}, source)
    assert ship.main([str(source), "v9"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {ship.WEIGHTS / 'v9.pt'}" in out and "training steps unknown" in out and "None" not in out
    assert [p.name for p in ship.WEIGHTS.iterdir()] == ["v9.pt"]


@pytest.fixture
def random_checkpoint(tmp_path):
    """A V4 checkpoint with random weights (quick to ship)."""
    from kp2d.config import load_config
    from kp2d.io.checkpoint import save_checkpoint
    from kp2d.models import KeyPointNet

    torch.manual_seed(0)
    path = tmp_path / "random.ckpt"
    save_checkpoint(path, load_config("v4"), KeyPointNet(), step=5)
    return path


def test_ship_weights_records_the_scale_factor(ship, random_checkpoint, capsys):
    from kp2d.io.checkpoint import load_checkpoint
    from kp2d.io.inference import InferenceSettings
    from kp2d.models.keypoint_net import load_keypoint_net

    assert ship.main([str(random_checkpoint), "v9", "--scale-factor", "2"]) == 0
    assert "inference: scale_factor 2" in capsys.readouterr().out
    shipped = ship.WEIGHTS / "v9.pt"
    assert torch.load(shipped, map_location="cpu", weights_only=True)["inference"] == {"scale_factor": 2.0}
    assert load_keypoint_net(shipped).inference_settings == InferenceSettings(2.0)
    assert ship.main([str(random_checkpoint), "v8"]) == 0  # without the option: nothing recorded
    assert "inference: scale_factor 1" in capsys.readouterr().out
    assert "inference" not in load_checkpoint(ship.WEIGHTS / "v8.pt").extra


@pytest.mark.parametrize(
    ("options", "printed", "settings", "lone"),
    [
        (["--scale-factor", "2", "--extra-scales", "1", "--extra-rotations", "45,-45"],
         "scale_factor 2, extra scale 1, extra rotation 45, extra rotation -45",
         (2.0, (1.0,), (45.0, -45.0)), ["--extra-rotations", "45"]),
        (["--scale-factor", "2.8", "--extra-scales", "1.25", "--extra-weight", "0.9"],
         "scale_factor 2.8, extra scale 1.25, extra scales' scores x0.9, precision fp32",
         (2.8, (1.25,), (), "fp32", 0.9), ["--extra-weight", "0.9"]),
        (["--scale-factor", "2.8", "--extra-scales", "1.25", "--extra-suppression", "4"],
         "scale_factor 2.8, extra scale 1.25, suppression 4 px, precision fp32",
         (2.8, (1.25,), (), "fp32", 1.0, 4.0), ["--extra-suppression", "4"]),
        (["--scale-factor", "2.8", "--descriptor-sampling", "centred"],
         "scale_factor 2.8, descriptors centred, precision fp32",
         (2.8, (), (), "fp32", 1.0, 0.0, "centred"), ["--descriptor-sampling", "centred"]),
        (["--scale-factor", "2.8", "--interpolation", "bicubic"],
         "scale_factor 2.8, bicubic input, precision fp32",
         (2.8, (), (), "fp32", 1.0, 0.0, "original", "bicubic"), ["--interpolation", "bicubic"]),
    ],
)
def test_ship_weights_records_the_extra_runs(
    ship, random_checkpoint, capsys, options, printed, settings, lone
):
    """Extra scales, rotations and their weight recorded; each needs --scale-factor."""
    from kp2d.io.inference import InferenceSettings
    from kp2d.models.keypoint_net import load_keypoint_net

    assert ship.main([str(random_checkpoint), "v9", *options]) == 0
    assert printed in capsys.readouterr().out
    assert load_keypoint_net(ship.WEIGHTS / "v9.pt").inference_settings == InferenceSettings(*settings)
    assert ship.main([str(random_checkpoint), "v8", *lone]) == 2
    message = f"{lone[0]} needs --scale-factor (the main scale)"
    assert single_error_line(capsys) == f"ship_weights: error: {message}"


def test_ship_weights_refuses_a_bad_extra_weight(ship, random_checkpoint, capsys):
    assert ship.main([str(random_checkpoint), "v8", "--scale-factor", "2", "--extra-weight", "x"]) == 2
    assert "--extra-weight must be a number in (0, 1]" in single_error_line(capsys)
    assert ship.main([str(random_checkpoint), "v8", "--scale-factor", "2", "--extra-weight", "0.9"]) == 2
    assert "--extra-weight weighs the extra scales' scores: give --extra-scales" in single_error_line(capsys)
    assert ship.main([str(random_checkpoint), "v8", "--scale-factor", "2", "--extra-suppression", "-1"]) == 2
    assert "--extra-suppression must be a distance in pixels >= 0" in single_error_line(capsys)
    assert ship.main([str(random_checkpoint), "v8", "--scale-factor", "2", "--extra-suppression", "4"]) == 2
    message = "--extra-suppression thins the extra scales' keypoints: add --extra-scales"
    assert message in single_error_line(capsys)
    assert not any(ship.WEIGHTS.iterdir())


@pytest.mark.parametrize("value", ["0", "-2", "nan"])
def test_ship_weights_refuses_a_bad_scale_factor(ship, random_checkpoint, capsys, value):
    assert ship.main([str(random_checkpoint), "v9", "--scale-factor", value]) == 2
    message = f"--scale-factor must be a number > 0, got {value}"
    assert single_error_line(capsys) == f"ship_weights: error: {message}"
    assert not any(ship.WEIGHTS.iterdir())


# --- recalibrate_batchnorm ---


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_recalibrate_out_is_checked_first(load_script, tmp_path, capsys, monkeypatch, where):
    module = load_script("recalibrate_batchnorm")
    monkeypatch.setattr(module, "resolve_model_path", _refuse)
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    out = {"folder": tmp_path, "under_a_file": blocker / "v4_bn.ckpt"}[where]
    assert module.main(["v4", "--images", str(tmp_path), "--out", str(out)]) == 2
    line = single_error_line(capsys)
    assert line.startswith(f"recalibrate_batchnorm: error: --out {out}")
    assert ("is a folder" if where == "folder" else f"{blocker} is a file, not a folder") in line
    assert blocker.read_text() == "keep me"


@NOT_ROOT
def test_recalibrate_out_in_a_read_only_folder(load_script, tmp_path, capsys, monkeypatch):
    module = load_script("recalibrate_batchnorm")
    monkeypatch.setattr(module, "resolve_model_path", _refuse)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert module.main(["v4", "--images", str(tmp_path), "--out", str(locked / "x.ckpt")]) == 2
        assert "no permission to write" in single_error_line(capsys)
    finally:
        locked.chmod(0o700)


# --- localization_errors ---


@pytest.mark.parametrize("broken", ["v_chelsea/1.jpg", "v_astronaut/3.ppm"])
def test_localization_errors_stops_on_an_unreadable_image(load_script, tmp_path, capsys, broken):
    """An unreadable reference image (was an IndexError) or view (was a pair silently left out): DataError."""
    module = load_script("localization_errors")
    root = make_tiny_hpatches(tmp_path / "tiny")
    (root / broken).write_bytes(b"not an image")
    assert module.main(["--method", "orb", "--hpatches", str(root), "--shape", "160x120"]) == 2
    assert single_error_line(capsys) == (
        f"localization_errors: error: {root / broken}: cannot decode image (corrupt or not an image)"
    )
    with pytest.raises(DataError, match="cannot decode image"):
        module.repeated_distances(module.opencv_detector("orb", 300), HPatchesDataset(root, (160, 120)), 300)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "orb", "--scale-factor", "2"],
         "--scale-factor applies to KeyPointNet, not to --method"),
        (["--model", "v4", "--scale-factor", "nan"], "--scale-factor must be a number > 0, got nan"),
        (["--model", "v4", "--scale-factor", "0"], "--scale-factor must be a number > 0, got 0"),
    ],
)
def test_localization_errors_scale_factor_as_kp2d_eval(
    load_script, tiny_root, capsys, monkeypatch, args, message
):
    module = load_script("localization_errors")
    monkeypatch.setattr(module, "repeated_distances", _refuse)
    assert module.main([*args, "--hpatches", str(tiny_root), "--shape", "160x120"]) == 2
    assert single_error_line(capsys) == f"localization_errors: error: {message}"


# --- hpatches_breakdown ---


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "not a kp2d eval --json result"),
        ('{"320x240": 5}', "320x240: not a kp2d eval result"),
        ("{}", "no results in it"),
        ('{"320x240": {"per_pair": [{"pair": "v_x:1-2", "c3": 1.0}]}}', "pair v_x:1-2: no number for"),
        ('{"320x240": {"per_pair": [{"c3": 1.0}]}}', "per_pair[0] is not a pair's metrics"),
        ('{"320x240": {"per_pair": []}}', "320x240: no pair in 'per_pair'"),
        ('{"320x240": {"per_pair": 3}}', "'per_pair' is not a list of pairs"),
        ('{"320x240": {"model": "x"}}', "320x240: no per-pair metrics"),
        ('{"baselines": [1]}', "'baselines' is not an object of methods"),
        ("not json", "Expecting value"),
    ],
)
def test_breakdown_refuses_what_kp2d_eval_did_not_write(load_script, tmp_path, capsys, content, message):
    module = load_script("hpatches_breakdown")
    path = tmp_path / "results.json"
    path.write_text(content)
    assert module.main([str(path)]) == 2
    line = single_error_line(capsys)
    assert line.startswith(f"hpatches_breakdown: error: {path}: ") and message in line
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("metrics", [",", " , ", ""])
def test_breakdown_wants_a_metric(load_script, tmp_path, capsys, metrics):
    module = load_script("hpatches_breakdown")
    assert module.main([str(tmp_path / "results.json"), "--metrics", metrics]) == 2
    assert single_error_line(capsys).startswith("hpatches_breakdown: error: --metrics: give at least one of ")


def test_breakdown_of_a_folder(load_script, tmp_path, capsys):
    assert load_script("hpatches_breakdown").main([str(tmp_path)]) == 2
    assert single_error_line(capsys).startswith("hpatches_breakdown: error: ")


def test_breakdown_tables_of_a_minimal_result(load_script):
    """Only ``per_pair`` with each pair's name and metrics is needed (a metric may be null)."""
    pair = {"pair": "v_x:1-2", "repeatability": 0.5, "localization_error": None, "c1": 0, "c3": 1,
            "c5": 1, "mscore": 0.25}
    (table,) = load_script("hpatches_breakdown").breakdown_tables({"64x48": {"per_pair": [pair]}}, ("c3",))
    assert table.splitlines()[-1] == "| v 1-2 | 1 | 1.000 |"


# --- make_readme_pictures ---


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-lines", "-1"], "--max-lines must be at least 0, got -1"),
        (["--width", "-5"], "--width must be at least 0, got -5"),
        (["--progress-width", "0"], "--progress-width must be at least 1, got 0"),
        (["--progress-width", "-10"], "--progress-width must be at least 1, got -10"),
        (["--top-k", "-1"], "--top-k must be at least 0, got -1"),
        (["--nms-radius", "nan"], "--nms-radius must be a finite number >= 0, got nan"),
        (["--nms-radius", "-1"], "--nms-radius must be a finite number >= 0, got -1"),
    ],
)
def test_readme_pictures_refuse_bad_sizes(load_script, tmp_path, capsys, monkeypatch, args, message):
    module = load_script("make_readme_pictures")
    monkeypatch.setattr(module, "load_keypoint_net", _refuse)
    out = tmp_path / "pictures"
    assert module.main([*args, "--out", str(out)]) == 2
    assert single_error_line(capsys) == f"make_readme_pictures: error: {message}"
    assert not out.exists()


def test_readme_pictures_out_under_a_file(load_script, tmp_path, capsys, monkeypatch):
    module = load_script("make_readme_pictures")
    monkeypatch.setattr(module, "load_keypoint_net", _refuse)
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    assert module.main(["--out", str(blocker)]) == 2
    assert "is a file, not a folder" in single_error_line(capsys)
    assert blocker.read_text() == "keep me"



# --- swap_descriptors ---


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hpatches", "missing-folder"], "missing-folder"),
        (["--shape", "320by240"], "320by240"),
        (["--descriptors", "no-such-model"], "no-such-model"),
    ],
)
def test_swap_descriptors_refuses_user_mistakes(load_script, tiny_root, capsys, args, message):
    script = load_script("swap_descriptors")
    base = {"--keypoints": "lite", "--descriptors": "lite", "--hpatches": str(tiny_root)}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert script.main([item for pair in base.items() for item in pair]) == 2
    line = single_error_line(capsys)
    assert line.startswith("swap_descriptors: error: ") and message in line


@pytest.mark.slow
def test_swap_descriptors_of_one_network_is_that_network(load_script, tiny_root, capsys):
    """Keypoints and descriptors of the same network: the protocol's numbers of that network alone."""
    from kp2d.eval.hpatches import METRIC_NAMES, KeyPointNetDetector, evaluate_hpatches
    from kp2d.models.keypoint_net import load_keypoint_net

    script = load_script("swap_descriptors")
    argv = ["--keypoints", "v4", "--descriptors", "v4", "--hpatches", str(tiny_root), "--precision", "fp32"]
    assert script.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tiny_root.name} |")]
    alone = evaluate_hpatches(
        KeyPointNetDetector(load_keypoint_net("v4"), precision="fp32"), tiny_root, (320, 240), 300,
        progress=False,
    )
    want = " | ".join(f"{alone[key]:.3f}" for key in METRIC_NAMES)
    assert rows == [f"| {tiny_root.name} | {want} |"]


# --- second_run ---


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hpatches", "missing-folder"], "missing-folder"),
        (["--variants", "first,best"], "best"),
        (["--variants", "share"], "give a fraction"),
        (["--variants", "dual:1.5"], "between 0 and 1"),
        (["--variants", "first:0.5"], "takes no value"),
        (["--crop", "0.1"], "--crop"),
        (["--second-scale", "0"], "--second-scale"),
        (["--model", "no-such-model"], "no-such-model"),
    ],
)
def test_second_run_refuses_user_mistakes(load_script, tiny_root, capsys, monkeypatch, args, message):
    script = load_script("second_run")
    monkeypatch.setattr(script, "evaluate_variants", _refuse)
    base = {"--hpatches": str(tiny_root)}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    assert script.main([item for pair in base.items() for item in pair]) == 2
    line = single_error_line(capsys)
    assert line.startswith("second_run: error: ") and message in line


def test_second_run_rank_scores_give_each_run_its_share(load_script):
    """300 slots, 0.25 to the second run: 225 of the first's best and 75 of the second's lie above 0."""
    script = load_script("second_run")
    rng = np.random.default_rng(0)
    first, second = rng.random(1000), rng.random(800)
    pooled = np.concatenate([script.rank_scores(first, 225.0), script.rank_scores(second, 75.0)])
    top = np.argsort(-pooled, kind="stable")[:300]
    assert (top < 1000).sum() == 225 and (top >= 1000).sum() == 75
    assert set(top[top < 1000]) == set(np.argsort(-first)[:225])
    assert script.rank_scores(np.array([0.2, 0.9, 0.5]), 2.0).tolist() == [0.0, 1.0, 0.5]


def test_second_run_weighted_scales_the_second_runs_scores(load_script):
    script = load_script("second_run")
    first, second = np.array([[1.0, 2.0, 0.8]]), np.array([[3.0, 4.0, 0.5], [5.0, 6.0, 1.0]])
    item = {"rows": first, "desc": np.zeros((1, 4)), "second_rows": second, "second_desc": np.ones((2, 4))}
    ((rows, desc),) = script.combine([item], "weighted", 0.6, 300)
    np.testing.assert_allclose(rows, [[1.0, 2.0, 0.8], [3.0, 4.0, 0.3], [5.0, 6.0, 0.6]])
    assert desc.shape == (3, 4) and second[1, 2] == 1.0  # the run's own rows are left as they were
    assert script.parse_variants("weighted:0.9") == [("weighted", 0.9)]


@pytest.mark.slow
def test_second_run_first_and_its_own_descriptors_are_kp2d_eval(load_script, tiny_root, capsys):
    """The first run alone, and its keypoints with a second identical run's descriptors, give the protocol's
    numbers of ``kp2d eval`` with the main scale alone (fp32: the sparse descriptors equal the dense ones to
    rounding)."""
    from kp2d.eval.hpatches import METRIC_NAMES, KeyPointNetDetector, evaluate_hpatches
    from kp2d.io.weights import DEFAULT_MODEL
    from kp2d.models.keypoint_net import load_keypoint_net

    script = load_script("second_run")
    argv = ["--hpatches", str(tiny_root), "--precision", "fp32", "--variants", "first,second-descriptors"]
    assert script.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {tiny_root.name},")]
    main_run = KeyPointNetDetector(
        load_keypoint_net(DEFAULT_MODEL), precision="fp32", extra_scales=(), extra_rotations=()
    )
    alone = evaluate_hpatches(main_run, tiny_root, (320, 240), 300, progress=False)
    want = " | ".join(f"{alone[key]:.3f}" for key in METRIC_NAMES)
    name = tiny_root.name
    assert rows == [f"| {name}, first | {want} |", f"| {name}, second-descriptors | {want} |"]
