"""``kp2d eval`` end to end on a generated HPatches folder, and its error handling."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from hpatches_tiny import PAIRS_PER_SUBSET
from kp2d.cli import main
from kp2d.errors import ConfigError
from kp2d.eval.settings import parse_shapes

METRICS = ("repeatability", "localization_error", "c1", "c3", "c5", "mscore")


def _eval(*args: str) -> int:
    return main(["eval", *args, "--no-progress"])


@pytest.mark.slow
def test_random_init_writes_json(tiny_root, tmp_path, capsys):
    out = tmp_path / "out" / "eval.json"
    code = _eval("--random-init", "--hpatches", str(tiny_root), "--shape", "64x48", "--json", str(out))
    assert code == 0
    printed = capsys.readouterr().out
    assert "Evaluation for (64, 48):" in printed
    assert "| Model | Repeatability | Localization | C1 | C3 | C5 | MScore |" in printed
    assert "| random-init (v4) |" in printed
    result = json.loads(out.read_text())
    assert list(result) == ["64x48"]
    entry = result["64x48"]
    for name in METRICS:
        assert name in entry
    assert entry["pairs"] == PAIRS_PER_SUBSET["all"]
    assert entry["top_k"] == 1000 and entry["skipped"] == []
    assert 0.0 <= entry["repeatability"] <= 1.0


def test_random_init_is_seeded(tiny_root, tmp_path):
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        args = ("--random-init", "--config", "v0", "--hpatches", str(tiny_root), "--shape", "64x48")
        assert _eval(*args, "--subset", "v", "--workers", "0", "--json", str(out)) == 0
    first, second = (json.loads(out.read_text())["64x48"] for out in outs)
    assert all(first[name] == second[name] for name in METRICS if first[name] is not None)
    assert first["pairs"] == PAIRS_PER_SUBSET["v"]


@pytest.mark.slow
def test_checkpoint_and_method(tiny_root, tmp_path, capsys):
    from kp2d.config import load_config
    from kp2d.io.checkpoint import save_checkpoint
    from kp2d.models import KeyPointNet

    config = load_config("v0")
    torch.manual_seed(0)
    path = tmp_path / "net.ckpt"
    save_checkpoint(path, config, KeyPointNet(do_upsample=False, do_cross=False))
    assert (
        _eval("--checkpoint", str(path), "--hpatches", str(tiny_root), "--shape", "64x48", "--subset", "i")
        == 0
    )
    assert "| net |" in capsys.readouterr().out
    assert _eval("--model", str(path), "--hpatches", str(tiny_root), "--shape", "64x48", "--subset", "i") == 0
    assert "| net |" in capsys.readouterr().out
    out = tmp_path / "orb.json"
    code = _eval(
        "--method", "orb", "--hpatches", str(tiny_root), "--shape", "160x120,120x90", "--json", str(out)
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert list(result) == ["160x120", "120x90"]
    assert result["160x120"]["model"] == "ORB" and result["160x120"]["c5"] >= 0.75


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("kp2d eval: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_missing_folder(tmp_path, capsys):
    assert _eval("--random-init", "--hpatches", str(tmp_path / "nope"), "--shape", "64x48") == 2
    assert "nope" in _error_line(capsys)


def test_empty_folder(tmp_path, capsys):
    assert _eval("--method", "sift", "--hpatches", str(tmp_path), "--shape", "64x48") == 2
    assert "no HPatches sequences" in _error_line(capsys)


def test_bad_checkpoint(tiny_root, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert _eval("--checkpoint", str(bad), "--hpatches", str(tiny_root), "--shape", "64x48") == 2
    assert "bad.ckpt" in _error_line(capsys)
    assert _eval("--checkpoint", str(tmp_path / "none.ckpt"), "--hpatches", str(tiny_root)) == 2
    assert "none.ckpt" in _error_line(capsys)
    assert _eval("--model", "no_such_model", "--hpatches", str(tiny_root)) == 2
    assert "no_such_model" in _error_line(capsys)
    assert _eval("--checkpoint", "v4", "--hpatches", str(tiny_root)) == 2
    assert _error_line(capsys).endswith("checkpoint not found: v4 (shipped weights: --model v4)")


@pytest.mark.parametrize("shape", ["64x", "axb", "0x48", "60x44", "24x24", "16392x32"])
def test_bad_shape(tiny_root, capsys, shape):
    assert _eval("--random-init", "--hpatches", str(tiny_root), "--shape", shape) == 2
    line = _error_line(capsys)
    assert "--shape" in line and "--scale-factor" not in line  # 24x24 used to blame --scale-factor
    assert _eval("--method", "sift", "--hpatches", str(tiny_root), "--shape", "20x20") == 2  # a row of NaN
    assert "must be from 32 to 16384 pixels" in _error_line(capsys)


def test_views_without_a_homography_are_named(tiny_root, tmp_path, caplog):
    """A pair exists for each ``H_1_k``; an image ``k.*`` without one is left out, and the log says so."""
    root = shutil.copytree(tiny_root, tmp_path / "hp")
    (root / "v_astronaut" / "H_1_3").unlink()
    with caplog.at_level("WARNING", logger="kp2d.data.hpatches"):
        assert _eval("--method", "orb", "--hpatches", str(root), "--shape", "80x60", "--subset", "v") == 0
    assert "v_astronaut: no H_1_k file for 3.ppm; left out of the evaluation" in caplog.text


def test_scale_factor_labels_the_row(tiny_root, tmp_path, capsys):
    out = tmp_path / "x2.json"
    args = ("--random-init", "--hpatches", str(tiny_root), "--shape", "64x48", "--subset", "i")
    assert _eval(*args, "--scale-factor", "2", "--json", str(out)) == 0
    assert "| random-init (v4) (input x2) |" in capsys.readouterr().out
    entry = json.loads(out.read_text())["64x48"]
    assert entry["pairs"] == PAIRS_PER_SUBSET["i"] and entry["inference"] == {"scale_factor": 2.0}


@pytest.mark.parametrize(
    ("option", "value", "label", "recorded", "bad", "refused"),
    [
        ("--extra-scales", "1", "input x2+x1", {"extra_scales": [1.0]}, "0.1",
         "--extra-scales 0.1 resizes 64x48 to 6x5; KeyPointNet takes 32 to 16384 px a side"),
        ("--extra-rotations", "45,-45", "input x2, turned 0/45/-45", {"extra_rotations": [45.0, -45.0]},
         "north", "--extra-rotations must be angles in degrees separated by commas"),
        ("--extra-weight", "0.5", "input x2+x1, extra scales' scores x0.5",
         {"extra_scales": [1.0], "extra_weight": 0.5}, "0", "--extra-weight must be a number in (0, 1]"),
        ("--extra-suppression", "3", "input x2+x1, extra scales suppressed within 3 px",
         {"extra_scales": [1.0], "extra_suppression": 3.0}, "-1",
         "--extra-suppression must be a distance in pixels >= 0"),
        ("--descriptor-sampling", "centred", "input x2, descriptors centred",
         {"descriptor_sampling": "centred"}, "corners",
         "--descriptor-sampling must be one of original, centred, got 'corners'"),
        ("--interpolation", "bicubic", "input x2 bicubic", {"interpolation": "bicubic"}, "nearest",
         "--interpolation must be one of bilinear, bicubic, got 'nearest'"),
    ],
)
def test_extra_runs_label_the_row(tiny_root, tmp_path, capsys, option, value, label, recorded, bad, refused):
    """Each option names itself in the row and the JSON; a bad value and --method are refused.

    The weight and the suppression act on extra scales, so those runs add ``--extra-scales 1``.
    """
    out = tmp_path / "extra.json"
    args = ("--random-init", "--hpatches", str(tiny_root), "--shape", "64x48", "--subset", "i")
    scales = ["--extra-scales", "1"] if option in ("--extra-weight", "--extra-suppression") else []
    assert _eval(*args, "--scale-factor", "2", *scales, option, value, "--json", str(out)) == 0
    assert f"| random-init (v4) ({label}) |" in capsys.readouterr().out
    entry = json.loads(out.read_text())["64x48"]
    assert entry["inference"] == {"scale_factor": 2.0, **recorded}
    assert _eval(*args, option, bad) == 2
    assert refused in _error_line(capsys)
    assert _eval("--method", "sift", "--hpatches", str(tiny_root), option, value) == 2
    assert f"{option} applies to KeyPointNet, not to --method" in _error_line(capsys)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--random-init", "--scale-factor", "0.4"), "resizes 64x48 to 26x19; KeyPointNet takes 32 to"),
        (("--random-init", "--scale-factor", "0"), "--scale-factor must be"),
        (("--random-init", "--scale-factor", "1e6"), "takes 32 to 16384 px a side"),
        (("--random-init", "--scale-factor", "nan"), "--scale-factor must be"),
        (("--method", "sift", "--scale-factor", "2"), "not to --method"),
    ],
)
def test_bad_scale_factor(tiny_root, capsys, args, message):
    assert _eval(*args, "--hpatches", str(tiny_root), "--shape", "64x48") == 2
    assert message in _error_line(capsys)


def test_bad_json_path_is_refused_before_evaluating(tiny_root, tmp_path, capsys, monkeypatch):
    """--json is checked first (a folder, a path under a file): no evaluation whose results would be lost."""
    import kp2d.eval.hpatches

    def never(*args, **kwargs):
        raise AssertionError("evaluated although the --json path is unusable")

    monkeypatch.setattr(kp2d.eval.hpatches, "evaluate_hpatches", never)
    (tmp_path / "a_file").write_text("x")
    args = ("--method", "sift", "--hpatches", str(tiny_root), "--shape", "64x48")
    assert _eval(*args, "--json", str(tmp_path)) == 2
    assert "is a folder" in _error_line(capsys)
    assert _eval(*args, "--json", str(tmp_path / "a_file" / "out.json")) == 2
    assert "a_file" in _error_line(capsys)


def test_unavailable_device(tiny_root, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert _eval("--random-init", "--hpatches", str(tiny_root), "--shape", "64x48", "--device", "cuda") == 2
    assert "cuda" in _error_line(capsys).lower()


def test_corrupt_file_and_skip_bad(tiny_root, tmp_path, capsys):
    root = shutil.copytree(tiny_root, tmp_path / "hp")
    (root / "v_chelsea" / "2.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    assert _eval("--method", "sift", "--hpatches", str(root), "--shape", "80x60") == 2
    assert "2.jpg" in _error_line(capsys)
    out = tmp_path / "skip.json"
    assert (
        _eval(
            "--method", "sift", "--hpatches", str(root), "--shape", "80x60", "--skip-bad", "--json", str(out)
        )
        == 0
    )
    entry = json.loads(out.read_text())["80x60"]
    assert entry["pairs"] == PAIRS_PER_SUBSET["all"] - 1
    assert len(entry["skipped"]) == 1 and entry["skipped"][0].startswith("v_chelsea:1-2")


def test_source_options_are_exclusive(tiny_root):
    with pytest.raises(SystemExit) as exit_info:
        _eval("--random-init", "--method", "sift", "--hpatches", str(tiny_root))
    assert exit_info.value.code == 2


@pytest.fixture(scope="module")
def x2_model(tmp_path_factory):
    """A random V4 network whose file records ``inference: {scale_factor: 2.0}``."""
    from kp2d.config import load_config
    from kp2d.io.checkpoint import save_checkpoint
    from kp2d.models import KeyPointNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("x2") / "x2.ckpt"
    save_checkpoint(path, load_config("v4"), KeyPointNet(), inference={"scale_factor": 2.0})
    return str(path)


def _rows(printed: str) -> list[str]:
    """The first cell of each table row (``"| label"``), the header row first."""
    return [line.split(" | ")[0] for line in printed.splitlines() if line.startswith("| ")]


def test_without_a_source_the_default_model_runs_with_its_settings(tiny_root, tmp_path, capsys, monkeypatch,
                                                                   x2_model):
    """No --model: DEFAULT_MODEL, at the scale its file records; the row and the JSON name the settings."""
    import kp2d.cli.eval

    monkeypatch.setattr(kp2d.cli.eval, "DEFAULT_MODEL", x2_model)
    args = ("--hpatches", str(tiny_root), "--shape", "64x48", "--subset", "i", "--workers", "0")
    runs = {
        "default": (),
        "option": ("--model", x2_model, "--scale-factor", "2"),
        "override": ("--scale-factor", "1"),
    }
    results = {}
    for name, extra in runs.items():
        out = tmp_path / f"{name}.json"
        assert _eval(*args, *extra, "--json", str(out)) == 0
        results[name] = json.loads(out.read_text())["64x48"]
        results[name]["row"] = _rows(capsys.readouterr().out)[1]
    assert results["default"]["row"] == results["option"]["row"] == "| x2 (input x2)"
    assert results["default"]["model"] == "x2 (input x2)" and results["override"]["row"] == "| x2"
    assert results["default"]["inference"] == {"scale_factor": 2.0}
    assert results["override"]["inference"] == {"scale_factor": 1.0}
    assert all(results["default"][name] == results["option"][name] for name in METRICS)
    assert [results["default"][name] for name in METRICS] != [results["override"][name] for name in METRICS]


def test_the_default_model_is_the_shipped_default(tiny_root, tmp_path, capsys):
    """Without a source, eval runs kp2d.io.weights.DEFAULT_MODEL with the settings its file records."""
    from kp2d.io.checkpoint import load_checkpoint
    from kp2d.io.weights import DEFAULT_MODEL, list_pretrained, resolve_model_path

    if DEFAULT_MODEL not in list_pretrained():
        pytest.skip(f"the default model {DEFAULT_MODEL} is not shipped in this install")
    from kp2d.features.extraction import resolved_precision
    from kp2d.models.keypoint_net import load_keypoint_net

    settings = load_checkpoint(resolve_model_path(DEFAULT_MODEL)).inference
    precision = resolved_precision(load_keypoint_net(DEFAULT_MODEL))
    out = tmp_path / "default.json"  # 80x40 stays a multiple of 8 at x2, x2.8, x3
    args = ("--hpatches", str(tiny_root), "--shape", "80x40", "--subset", "i", "--json", str(out))
    assert _eval(*args) == 0
    assert _rows(capsys.readouterr().out)[1] == f"| {DEFAULT_MODEL}{settings.label(precision)}"
    assert json.loads(out.read_text())["80x40"]["inference"] == settings.to_entry()
    assert json.loads(out.read_text())["80x40"]["precision"] == precision


def test_bad_recorded_settings_are_one_line(tiny_root, tmp_path, capsys):
    from kp2d.config import load_config
    from kp2d.io.checkpoint import save_checkpoint
    from kp2d.models import KeyPointNet

    bad = tmp_path / "bad.ckpt"
    save_checkpoint(bad, load_config("v4"), KeyPointNet(), inference={"scale_factor": -1})
    assert _eval("--model", str(bad), "--hpatches", str(tiny_root), "--shape", "64x48") == 2
    assert _error_line(capsys) == (
        f"kp2d eval: error: {bad}: inference.scale_factor must be a finite number > 0, got -1"
    )


def test_a_recorded_scale_factor_that_does_not_fit_the_shape_is_named(tiny_root, tmp_path, capsys):
    from kp2d.config import load_config
    from kp2d.io.checkpoint import save_checkpoint
    from kp2d.models import KeyPointNet

    odd = tmp_path / "odd.ckpt"
    save_checkpoint(odd, load_config("v4"), KeyPointNet(), inference={"scale_factor": 0.4})
    assert _eval("--model", str(odd), "--hpatches", str(tiny_root), "--shape", "64x48") == 2
    assert "the model's scale_factor 0.4 resizes 64x48 to 26x19" in _error_line(capsys)


def test_a_scale_factor_off_the_8_px_grid_is_padded(tiny_root, tmp_path):
    """x1.1 resizes 64x48 to 70x53: padded to 72x56 as extract pads, no keypoint outside the image."""
    out = tmp_path / "odd.json"
    args = ("--random-init", "--hpatches", str(tiny_root), "--shape", "64x48", "--subset", "i")
    assert _eval(*args, "--scale-factor", "1.1", "--json", str(out)) == 0
    entry = json.loads(out.read_text())["64x48"]
    assert entry["pairs"] == PAIRS_PER_SUBSET["i"] and entry["inference"] == {"scale_factor": 1.1}


def test_parse_shapes():
    assert parse_shapes(None, None) == [(320, 240, 300), (640, 480, 1000)]
    assert parse_shapes(["320x240"], None) == [(320, 240, 300)]
    assert parse_shapes(["640x480"], None) == [(640, 480, 1000)]
    assert parse_shapes(["160x120"], None) == [(160, 120, 1000)]
    assert parse_shapes(["320x240,640x480"], ["100"]) == [(320, 240, 100), (640, 480, 100)]
    assert parse_shapes(["320x240", "640x480"], ["100", "200"]) == [(320, 240, 100), (640, 480, 200)]
    assert parse_shapes(None, ["500"]) == [(320, 240, 500), (640, 480, 500)]
    with pytest.raises(ConfigError, match="top-k"):
        parse_shapes(["320x240"], ["1", "2"])
    with pytest.raises(ConfigError, match="top-k"):
        parse_shapes(["320x240"], ["-3"])


@pytest.mark.slow
def test_baselines_in_the_same_run(tiny_root, tmp_path, capsys):
    """``--baselines sift,orb`` adds one row per method; each equals its own ``--method`` run."""
    both = tmp_path / "both.json"
    args = ("--hpatches", str(tiny_root), "--shape", "160x120")
    assert _eval("--random-init", *args, "--baselines", "sift,orb", "--json", str(both)) == 0
    printed = capsys.readouterr().out
    assert "| random-init (v4) |" in printed and "| SIFT |" in printed and "| ORB |" in printed
    assert printed.count("Evaluation for (160, 120):") == 1
    combined = json.loads(both.read_text())
    assert combined["160x120"]["model"] == "random-init (v4)"
    alone = tmp_path / "sift.json"
    assert _eval("--method", "sift", *args, "--json", str(alone)) == 0
    sift = json.loads(alone.read_text())["160x120"]
    for name in METRICS:
        assert combined["baselines"]["sift"]["160x120"][name] == pytest.approx(sift[name], nan_ok=True)
    assert _eval("--random-init", *args, "--baselines", "surf") == 2
    assert "surf" in _error_line(capsys)


def test_json_keeps_each_pair_and_the_breakdown_groups_them(tiny_root, tmp_path, capsys, load_script):
    """``--json`` ends with each pair's metrics; ``scripts/hpatches_breakdown.py`` averages them by view."""
    out = tmp_path / "sift.json"
    args = ("--method", "sift", "--hpatches", str(tiny_root), "--shape", "160x120")
    assert _eval(*args, "--json", str(out)) == 0
    entry = json.loads(out.read_text())["160x120"]
    names = [pair["pair"] for pair in entry["per_pair"]]
    assert len(names) == entry["pairs"] == PAIRS_PER_SUBSET["all"] and "v_astronaut:1-2" in names
    for name in METRICS:  # the means are the means of the pairs (localization over pairs that have one)
        values = [p[name] for p in entry["per_pair"] if p[name] is not None and not math.isnan(p[name])]
        assert entry[name] == pytest.approx(sum(values) / len(values))

    breakdown = load_script("hpatches_breakdown")
    capsys.readouterr()
    assert breakdown.main([str(out), "--metrics", "c3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[1:]}
    v_pairs = [p["c3"] for p in entry["per_pair"] if p["pair"].startswith("v_")]
    assert rows["v"][0] == str(PAIRS_PER_SUBSET["v"]) and rows["i"][0] == str(PAIRS_PER_SUBSET["i"])
    assert float(rows["v"][1].rstrip(" |")) == pytest.approx(sum(v_pairs) / len(v_pairs), abs=5e-4)
    assert rows["v 1-2"][0] == "2" and rows["other"][0] == "1"
    assert breakdown.main([str(out), "--metrics", "c4"]) == 2
    assert "unknown metric" in capsys.readouterr().err


def test_localization_errors_script_pools_the_protocols_distances(tiny_root, capsys, load_script):
    """``scripts/localization_errors.py``: per group, the pooled mean of the repeated keypoints' distances;
    on a group of one pair with one method it equals that pair's localization error of ``kp2d eval``."""
    module = load_script("localization_errors")
    args = ["--hpatches", str(tiny_root), "--shape", "160x120"]
    assert module.main(["--method", "sift", *args]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[1:]}
    assert _eval("--method", "sift", *args, "--json", str(tiny_root.parent / "loc.json")) == 0
    per_pair = json.loads((tiny_root.parent / "loc.json").read_text())["160x120"]["per_pair"]
    other = [p for p in per_pair if not p["pair"].startswith(("i_", "v_"))]
    (pair,) = other
    assert rows["other"][0] == str(round(pair["repeatability"] * (pair["n1"] + pair["n2"])))  # repeated count
    assert float(rows["other"][1]) == pytest.approx(pair["localization_error"], abs=5e-4)
    assert module.main(["--method", "sift", *args, "--baselines", "surf"]) == 2
    assert "surf" in capsys.readouterr().err
