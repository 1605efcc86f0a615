import json
import os
import re

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from cli_output import single_error_line
from kp2d.cli import main
from kp2d.config import load_config
from kp2d.demo import DEMO_PHOTOS, demo_homography, demo_pair
from kp2d.eval.metrics import corner_error
from kp2d.features.matching import estimate_homography, match
from kp2d.io.checkpoint import save_checkpoint
from kp2d.io.weights import list_pretrained
from kp2d.models import KeyPointNet


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A v4 checkpoint with random (Kaiming-initialised, so varied) weights."""
    torch.manual_seed(0)
    net = KeyPointNet()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, a=0.01)
    path = tmp_path_factory.mktemp("model") / "random.ckpt"
    save_checkpoint(path, load_config("v4"), net)
    return str(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two small photos on disk: a crop of a bundled photo (png) and a warped copy (jpg)."""
    folder = tmp_path_factory.mktemp("photos")
    image = np.ascontiguousarray(demo_pair("astronaut").image0[100:212, 150:294])  # 112 x 144
    homography = demo_homography(144, 112)
    warped = cv2.warpPerspective(image, homography, (144, 112))
    Image.fromarray(image).save(folder / "a.png")
    Image.fromarray(warped).save(folder / "b.jpg", quality=95)
    return folder / "a.png", folder / "b.jpg"


@pytest.mark.slow
def test_detect_writes_pictures_and_arrays(tmp_path, checkpoint, photos, capsys):
    out = tmp_path / "out"
    status = main(
        [
            "detect",
            *map(str, photos),
            "--model",
            checkpoint,
            "--out",
            str(out),
            "--top-k",
            "50",
            "--device",
            "cpu",
        ]
    )
    assert status == 0
    for stem, size in (("a", (144, 112)), ("b", (144, 112))):
        for suffix in ("_keypoints.png", "_scores.png"):
            picture = np.asarray(Image.open(out / f"{stem}{suffix}"))
            assert picture.shape == (size[1], size[0], 3)
        arrays = np.load(out / f"{stem}.npz")
        assert arrays["keypoints"].shape == (50, 2) and arrays["descriptors"].shape == (50, 256)
        assert arrays["scores"].shape == (50,) and arrays["image_size"].tolist() == list(size)
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["image_size"] == list(size) and len(record["keypoints"]) == 50
        np.testing.assert_allclose(record["keypoints"], arrays["keypoints"], atol=1e-3)
    assert "50 keypoints" in capsys.readouterr().out


@pytest.mark.slow
def test_detect_takes_folders(tmp_path, checkpoint, photos, capsys):
    """A folder stands for the images under it (recursively, sorted); repeated stems get -2, -3, ..."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.png").write_bytes(photos[0].read_bytes())
    (folder / "b.jpg").write_bytes(photos[1].read_bytes())
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    args = ["--model", checkpoint, "--out", str(out), "--top-k", "20", "--device", "cpu"]
    assert main(["detect", str(photos[0]), str(folder), *args]) == 0
    assert sorted(p.name for p in out.glob("*.npz")) == ["a-2.npz", "a.npz", "b.npz"]
    printed = capsys.readouterr().out
    assert printed.index(str(folder / "b.jpg")) < printed.index(str(folder / "sub" / "a.png"))
    np.testing.assert_array_equal(np.load(out / "a.npz")["keypoints"], np.load(out / "a-2.npz")["keypoints"])
    (tmp_path / "empty").mkdir()
    assert main(["detect", str(tmp_path / "empty"), *args]) == 2
    assert "no images" in single_error_line(capsys)


@pytest.mark.slow
def test_detect_skip_bad_writes_the_readable_images(tmp_path, checkpoint, photos, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(photos[0].read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((20, 64, 3), np.uint8)).save(folder / "small.png")
    args = ["detect", str(folder), "--model", checkpoint, "--top-k", "10", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "strict")]) == 2
    line = single_error_line(capsys)
    assert "broken.jpg" in line and "--skip-bad" in line
    assert main([*args, "--out", str(tmp_path / "lenient"), "--skip-bad"]) == 0
    assert [p.name for p in (tmp_path / "lenient").glob("*.npz")] == ["a.npz"]
    assert "2 of 3 images skipped" in capsys.readouterr().out


def test_detect_options_change_the_selection(tmp_path, checkpoint, photos):
    out = tmp_path / "nms"
    assert (
        main(
            [
                "detect",
                str(photos[0]),
                "--model",
                checkpoint,
                "--out",
                str(out),
                "--top-k",
                "0",
                "--nms-radius",
                "12",
            ]
        )
        == 0
    )
    points = np.load(out / "a.npz")["keypoints"]
    distance = np.linalg.norm(points[:, None] - points[None], axis=2) + np.eye(len(points)) * 1e9
    assert 0 < len(points) < 12 * 16 and distance.min() > 12


@pytest.mark.slow
def test_detect_scale_factor_keeps_original_pixels(tmp_path, checkpoint, photos, capsys):
    args = ["detect", str(photos[0]), "--model", checkpoint, "--top-k", "0", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "x1")]) == 0
    assert main([*args, "--out", str(tmp_path / "x2"), "--scale-factor", "2"]) == 0
    once, twice = (np.load(tmp_path / name / "a.npz") for name in ("x1", "x2"))
    assert len(twice["keypoints"]) > 3 * len(once["keypoints"])  # 4 px cells of the 144 x 112 photo
    assert twice["image_size"].tolist() == [144, 112]
    assert (twice["keypoints"] >= -0.5).all() and (twice["keypoints"] <= [143.5, 111.5]).all()
    scores = np.asarray(Image.open(tmp_path / "x2" / "a_scores.png"))
    assert scores.shape == (112, 144, 3)
    assert main([*args, "--out", str(tmp_path / "x0"), "--scale-factor", "-1"]) == 2
    assert "--scale-factor" in single_error_line(capsys)


def _recording(checkpoint: str, path, entry: dict) -> str:
    """``checkpoint``'s network saved again to ``path`` with ``inference: entry``."""
    from kp2d.models.keypoint_net import load_keypoint_net

    save_checkpoint(path, load_config("v4"), load_keypoint_net(checkpoint), inference=entry)
    return str(path)


def _detect_each(runs: dict[str, list[str]], photo, tmp_path) -> tuple[dict, dict]:
    """``kp2d detect PHOTO --top-k 0`` with each run's options: the ``.npz`` arrays and ``.json`` records."""
    for name, options in runs.items():
        argv = ["detect", str(photo), *options, "--top-k", "0", "--device", "cpu"]
        assert main([*argv, "--out", str(tmp_path / name)]) == 0
    arrays = {name: np.load(tmp_path / name / "a.npz") for name in runs}
    records = {name: json.loads((tmp_path / name / "a.json").read_text()) for name in runs}
    return arrays, records


#: A x2 run pooled with a x1 one: what the extra runs' options act on.
POOLED = ["--scale-factor", "2", "--extra-scales", "1"]


def _recorded_and_given(
    tmp_path, checkpoint: str, photo, entry: dict, given: list[str], override: list[str], common=()
) -> tuple[dict, dict]:
    """``kp2d detect`` four ways: a file recording ``entry``; ``checkpoint`` with the options ``given`` (and
    ``common``) that say the same; the file with ``override``; plain ``checkpoint`` (with ``common``). The
    first two and the last two give the same keypoints, scores and descriptors; returns arrays, records."""
    recording = _recording(checkpoint, tmp_path / "recording.ckpt", entry)
    runs = {
        "recorded": ["--model", recording],
        "option": ["--model", checkpoint, *common, *given],
        "override": ["--model", recording, *override],
        "plain": ["--model", checkpoint, *common],
    }
    arrays, records = _detect_each(runs, photo, tmp_path)
    for got, want in (("recorded", "option"), ("override", "plain")):
        for name in ("keypoints", "scores", "descriptors"):
            np.testing.assert_array_equal(arrays[got][name], arrays[want][name])
    return arrays, records


def _refusal(capsys, tmp_path, checkpoint: str, photo, *options: str) -> str:
    """The one error line of ``kp2d detect PHOTO --model CHECKPOINT OPTIONS``, which exits with 2."""
    argv = ["detect", str(photo), "--model", checkpoint, *options, "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    return single_error_line(capsys)


def test_detect_uses_the_scale_factor_the_model_records(tmp_path, checkpoint, photos):
    """A file recording scale_factor 2 detects as --scale-factor 2 does; --scale-factor 1 overrides it."""
    arrays, records = _recorded_and_given(
        tmp_path, checkpoint, photos[0], {"scale_factor": 2.0}, ["--scale-factor", "2"],
        ["--scale-factor", "1"],
    )
    assert len(arrays["recorded"]["keypoints"]) > 3 * len(arrays["plain"]["keypoints"])  # 4 px cells
    for got, want in (("recorded", "option"), ("override", "plain")):
        assert records[got]["scale_factor"] == records[want]["scale_factor"]
    assert records["recorded"]["scale_factor"] == 2.0 and records["override"]["scale_factor"] == 1.0
    scores = np.asarray(Image.open(tmp_path / "recorded" / "a_scores.png"))  # heat map of the 4 px grid
    np.testing.assert_array_equal(scores, np.asarray(Image.open(tmp_path / "option" / "a_scores.png")))


def test_detect_weights_the_extra_runs_recorded_or_given(tmp_path, checkpoint, photos, capsys):
    """A recorded extra_weight detects as --extra-weight does; --extra-weight 1 gives the plain pooling."""
    entry = {"scale_factor": 2.0, "extra_scales": [1.0], "extra_weight": 0.25}
    arrays, records = _recorded_and_given(
        tmp_path, checkpoint, photos[0], entry, ["--extra-weight", "0.25"], ["--extra-weight", "1"], POOLED
    )
    assert records["recorded"]["extra_weight"] == 0.25 and records["override"]["extra_weight"] == 1.0
    # the same keypoints (--top-k 0 keeps all) in another order, the coarse scale's scores a quarter
    weighted, plain = arrays["recorded"]["keypoints"], arrays["plain"]["keypoints"]
    np.testing.assert_array_equal(weighted[np.lexsort(weighted.T)], plain[np.lexsort(plain.T)])
    assert arrays["recorded"]["scores"].sum() < arrays["plain"]["scores"].sum()
    refused = _refusal(capsys, tmp_path, checkpoint, photos[0], "--extra-weight", "-1")
    assert "--extra-weight must be a number in (0, 1]" in refused


def test_detect_thins_the_extra_runs_recorded_or_given(tmp_path, checkpoint, photos, capsys):
    """A recorded extra_suppression detects as --extra-suppression does; 'none' gives the plain pooling,
    whose keypoints hold the thinned ones."""
    entry = {"scale_factor": 2.0, "extra_scales": [1.0], "extra_suppression": 3.0}
    arrays, records = _recorded_and_given(
        tmp_path, checkpoint, photos[0], entry, ["--extra-suppression", "3"], ["--extra-suppression", "none"],
        POOLED,
    )
    assert records["recorded"]["extra_suppression"] == 3.0 and records["override"]["extra_suppression"] == 0
    thinned, plain = arrays["recorded"]["keypoints"], arrays["plain"]["keypoints"]
    assert 0 < len(thinned) < len(plain)
    assert {tuple(row) for row in thinned} <= {tuple(row) for row in plain}
    refused = _refusal(capsys, tmp_path, checkpoint, photos[0], "--extra-suppression", "x")
    assert "--extra-suppression must be a distance in pixels >= 0" in refused


def test_detect_reads_descriptors_the_recorded_or_given_way(tmp_path, checkpoint, photos, capsys):
    """A recorded descriptor_sampling detects as --descriptor-sampling does; 'original' overrides it. The
    keypoints stay, the descriptors change."""
    arrays, records = _recorded_and_given(
        tmp_path, checkpoint, photos[0], {"scale_factor": 1.0, "descriptor_sampling": "centred"},
        ["--descriptor-sampling", "centred"], ["--descriptor-sampling", "original"],
    )
    np.testing.assert_array_equal(arrays["recorded"]["keypoints"], arrays["plain"]["keypoints"])
    assert np.abs(arrays["recorded"]["descriptors"] - arrays["plain"]["descriptors"]).max() > 1e-2
    assert records["recorded"]["descriptor_sampling"] == "centred"
    assert records["override"]["descriptor_sampling"] == "original"
    refused = _refusal(capsys, tmp_path, checkpoint, photos[0], "--descriptor-sampling", "corners")
    assert "--descriptor-sampling must be one of original, centred, got 'corners'" in refused


def test_detect_enlarges_the_recorded_or_given_way(tmp_path, checkpoint, photos, capsys):
    """A recorded interpolation detects as --interpolation does; 'bilinear' overrides it. Bicubic input
    moves the keypoints."""
    arrays, records = _recorded_and_given(
        tmp_path, checkpoint, photos[0], {"scale_factor": 2.0, "interpolation": "bicubic"},
        ["--interpolation", "bicubic"], ["--interpolation", "bilinear"], ["--scale-factor", "2"],
    )
    assert records["recorded"]["interpolation"] == "bicubic"
    assert records["override"]["interpolation"] == "bilinear"
    recorded, plain = arrays["recorded"]["keypoints"], arrays["plain"]["keypoints"]
    assert recorded.shape != plain.shape or np.abs(recorded - plain).max() > 1e-2
    refused = _refusal(capsys, tmp_path, checkpoint, photos[0], "--interpolation", "nearest")
    assert "--interpolation must be one of bilinear, bicubic, got 'nearest'" in refused


@pytest.mark.parametrize(
    ("key", "entry", "main_scale", "value", "refused"),
    [
        ("extra_scales", {"scale_factor": 2.0, "extra_scales": [1.0]}, ["--scale-factor", "2"], "1",
         "--extra-scales must be numbers > 0"),
        ("extra_rotations", {"scale_factor": 1.0, "extra_rotations": [90]}, [], "90",
         "--extra-rotations must be angles in degrees"),
    ],
)
def test_detect_pools_the_extra_runs_recorded_or_given(
    tmp_path, checkpoint, photos, capsys, key, entry, main_scale, value, refused
):
    """A file recording an extra scale (or turn) detects as the option does; 'none' overrides it."""
    option = "--" + key.replace("_", "-")
    recording = _recording(checkpoint, tmp_path / "recording.ckpt", entry)
    runs = {
        "recorded": ["--model", recording],
        "option": ["--model", checkpoint, *main_scale, option, value],
        "override": ["--model", recording, option, "none"],
        "single": ["--model", checkpoint, *main_scale],
    }
    arrays, records = _detect_each(runs, photos[0], tmp_path)
    for got, want in (("recorded", "option"), ("override", "single")):
        for name in ("keypoints", "scores", "descriptors"):
            np.testing.assert_array_equal(arrays[got][name], arrays[want][name])
    assert len(arrays["recorded"]["keypoints"]) > len(arrays["single"]["keypoints"])
    assert records["recorded"][key] == [float(value)] and records["override"][key] == []
    other = "extra_rotations" if key == "extra_scales" else "extra_scales"
    assert records["recorded"][other] == []
    argv = ["detect", str(photos[0]), "--model", checkpoint, option, "x"]
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert refused in single_error_line(capsys)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"scale_factor": -1}, "inference.scale_factor must be a finite number > 0, got -1"),
        (
            {"scale_factor": 2.0, "top_k": 5},
            "unknown inference setting top_k (known: scale_factor, extra_scales, extra_rotations, precision, "
            "extra_weight, extra_suppression, descriptor_sampling, interpolation)",
        ),
    ],
)
def test_detect_refuses_bad_recorded_settings(tmp_path, checkpoint, photos, capsys, entry, message):
    bad = _recording(checkpoint, tmp_path / "bad.ckpt", entry)
    argv = ["detect", str(photos[0]), "--model", bad, "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(argv) == 2
    assert single_error_line(capsys) == f"kp2d detect: error: {bad}: {message}"
    assert not (tmp_path / "out").exists()


def test_match_prints_the_homography_and_writes_a_picture(tmp_path, checkpoint, photos, capsys):
    picture = tmp_path / "pair.png"
    assert (
        main(["match", *map(str, photos), "--model", checkpoint, "--out", str(picture), "--ratio", "0.95"])
        == 0
    )
    out = capsys.readouterr().out
    matches = int(re.search(r"^matches: (\d+)$", out, re.M).group(1))
    inliers = int(re.search(r"^inliers: (\d+)", out, re.M).group(1))
    assert 0 <= inliers <= matches
    if inliers:
        rows = re.findall(r"^  \[(.*)\]$", out, re.M)
        assert len(rows) == 3 and all(len(row.split()) == 3 for row in rows)
    assert np.asarray(Image.open(picture)).shape == (112, 144 * 2 + 10, 3)


@pytest.mark.slow
def test_match_demo_prints_the_corner_error(tmp_path, checkpoint, capsys):
    picture = tmp_path / "demo.png"
    assert main(["match", "--demo", "--model", checkpoint, "--out", str(picture), "--top-k", "300"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^mean corner error: (\d+\.\d+|inf) px$", out, re.M)
    assert picture.is_file()


def test_demo_pair_is_warped_by_its_homography():
    assert "astronaut" in DEMO_PHOTOS
    pair = demo_pair()
    assert pair.image0.shape == pair.image1.shape == (512, 512, 3) and pair.image1.dtype == np.uint8
    # a pixel of image 0 lands where the homography says in image 1 (interior point, bilinear warp)
    x, y = 200.0, 260.0
    u, v = cv2.perspectiveTransform(np.array([[[x, y]]]), pair.homography)[0, 0]
    patch0 = pair.image0[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2].astype(float).mean()
    patch1 = pair.image1[round(v) - 1 : round(v) + 2, round(u) - 1 : round(u) + 2].astype(float).mean()
    assert abs(patch0 - patch1) < 25
    assert pair.image1[0, 0].tolist() == [0, 0, 0]  # outside the warped photo


def test_demo_homography_is_recovered_from_sift_matches():
    """The demo's homography maps image 0 to image 1 the way estimate_homography reports it."""
    pair = demo_pair()
    sift = cv2.SIFT_create(nfeatures=500)
    gray = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in (pair.image0, pair.image1)]
    (points0, desc0), (points1, desc1) = (sift.detectAndCompute(image, None) for image in gray)
    kpts0 = np.array([p.pt for p in points0])
    kpts1 = np.array([p.pt for p in points1])
    matches, _ = match(torch.from_numpy(desc0), torch.from_numpy(desc1), ratio=0.8)
    homography, inliers = estimate_homography(kpts0, kpts1, matches)
    assert inliers.sum() > 50
    assert corner_error(homography, pair.homography, (512, 512)) < 2.0


def test_error_unknown_model(photos, capsys):
    assert main(["detect", str(photos[0]), "--model", "v9"]) == 2
    assert "unknown model 'v9'" in single_error_line(capsys)
    if "v4" not in list_pretrained():  # until trained weights ship, the default model is a clear error
        assert main(["match", "--demo"]) == 2
        line = single_error_line(capsys)
        assert "unknown model 'v4'" in line and "none shipped" in line


def test_error_missing_image(tmp_path, checkpoint, capsys):
    missing = tmp_path / "nope.png"
    assert main(["detect", str(missing), "--model", checkpoint, "--out", str(tmp_path)]) == 2
    assert str(missing) in single_error_line(capsys)
    assert main(["match", str(missing), str(missing), "--model", checkpoint]) == 2
    assert "image not found" in single_error_line(capsys)


def test_error_unreadable_image(tmp_path, checkpoint, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not a picture")
    assert main(["detect", str(bad), "--model", checkpoint, "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}: cannot decode image (corrupt or not an image)" in single_error_line(capsys)


def test_error_small_image(tmp_path, checkpoint, capsys):
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 64, 3), np.uint8)).save(small)
    assert main(["detect", str(small), "--model", checkpoint, "--out", str(tmp_path / "o")]) == 2
    line = single_error_line(capsys)
    assert str(small) in line and "at least 32" in line


def test_error_bad_match_arguments(photos, checkpoint, capsys):
    assert main(["match", str(photos[0]), "--model", checkpoint]) == 2
    assert "give two images" in single_error_line(capsys)
    assert main(["match", *map(str, photos), "--demo", "--model", checkpoint]) == 2
    assert "not both" in single_error_line(capsys)
    assert main(["match", *map(str, photos), "--ratio", "1.5", "--model", checkpoint]) == 2
    assert "ratio" in single_error_line(capsys)
    assert main(["detect", str(photos[0]), "--top-k", "-1", "--model", checkpoint]) == 2
    assert "--top-k" in single_error_line(capsys)


@pytest.mark.slow
def test_detect_backend_option_gives_the_same_keypoints(tmp_path, checkpoint, photos):
    """``--backend torch-fold`` (BatchNorm folded) writes the keypoints of the plain network."""
    for backend in ("torch-fp32", "torch-fold"):
        arguments = ["detect", str(photos[0]), "--model", checkpoint, "--backend", backend]
        assert main([*arguments, "--out", str(tmp_path / backend)]) == 0
    plain, folded = (np.load(tmp_path / backend / "a.npz") for backend in ("torch-fp32", "torch-fold"))
    # pair by position: keypoints with near-equal scores may swap places in the sorted list
    distance = np.linalg.norm(folded["keypoints"][:, None] - plain["keypoints"][None], axis=2)
    assert len(folded["keypoints"]) == len(plain["keypoints"]) and distance.min(axis=1).max() < 1e-3
    paired = plain["descriptors"][distance.argmin(axis=1)]
    np.testing.assert_allclose(folded["descriptors"], paired, atol=1e-4)


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded: the check came too late")


def test_unique_stems_never_repeat_a_stem_handed_out_before():
    from pathlib import Path

    from kp2d.cli.detect import _unique_stems

    paths = [Path(name) for name in ("d/a.png", "d/a.jpg", "d/a-2.png", "d/A.png", "d/sub/a.png", "d/b.png")]
    stems = _unique_stems(paths)
    assert stems == ["a", "a-2", "a-2-2", "A-3", "a-4", "b"]
    assert len({stem.casefold() for stem in stems}) == len(stems)  # also on case-insensitive file systems


@pytest.mark.slow
def test_detect_outputs_of_colliding_stems_are_distinct(tmp_path, checkpoint, photos):
    """``d/a.png d/a.jpg d/a-2.png``: a.jpg becomes a-2, so a-2.png must not get a-2 too."""
    folder = tmp_path / "d"
    folder.mkdir()
    image = np.asarray(Image.open(photos[0]))
    Image.fromarray(image).save(folder / "a.png")
    (folder / "a.jpg").write_bytes(photos[1].read_bytes())
    Image.fromarray(np.ascontiguousarray(image[:, ::-1])).save(folder / "a-2.png")
    inputs = [folder / "a.png", folder / "a.jpg", folder / "a-2.png"]
    out = tmp_path / "out"
    argv = ["detect", *map(str, inputs), "--model", checkpoint, "--out", str(out), "--top-k", "20"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.npz")) == ["a-2-2.npz", "a-2.npz", "a.npz"]
    stems = ("a", "a-2", "a-2-2")
    sources = [json.loads((out / f"{stem}.json").read_text())["image"] for stem in stems]
    assert sources == list(map(str, inputs))
    assert len(list(out.glob("*_keypoints.png"))) == 3


@pytest.mark.slow
def test_detect_folder_run_twice_skips_its_own_outputs(tmp_path, checkpoint, photos, monkeypatch, capsys):
    """``kp2d detect .`` writes to ./kp2d_detect/; a second run must not detect in those pictures."""
    (tmp_path / "a.png").write_bytes(photos[0].read_bytes())
    monkeypatch.chdir(tmp_path)
    argv = ["detect", ".", "--model", checkpoint, "--top-k", "20", "--device", "cpu"]
    for _ in range(2):
        assert main(argv) == 0
        printed = capsys.readouterr().out
        assert printed.count("keypoints ->") == 1 and printed.startswith("a.png: 20 keypoints")
    names = sorted(path.name for path in (tmp_path / "kp2d_detect").iterdir())
    assert names == ["a.json", "a.npz", "a_keypoints.png", "a_scores.png"]
    # the output folder itself, given as the input folder, holds no image outside the output folder
    assert main(["detect", "kp2d_detect", *argv[2:]]) == 2
    assert "no images" in single_error_line(capsys)


@pytest.mark.slow
def test_detect_folder_with_out_beside_or_above_it(tmp_path, checkpoint, photos, monkeypatch, capsys):
    """``--out .`` above the photos keeps them; ``--out`` the photo folder skips only detect's pictures."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(photos[0].read_bytes())
    monkeypatch.chdir(tmp_path)
    options = ["--model", checkpoint, "--top-k", "20", "--device", "cpu"]
    assert main(["detect", "photos", "--out", ".", *options]) == 0
    assert (tmp_path / "a.npz").is_file() and "photos/a.png: 20 keypoints" in capsys.readouterr().out
    for _ in range(2):
        assert main(["detect", "photos", "--out", "photos", *options]) == 0
        printed = capsys.readouterr().out
        assert printed.count("keypoints ->") == 1 and printed.startswith("photos/a.png: 20 keypoints")
    assert sorted(path.name for path in (tmp_path / "photos").glob("*.npz")) == ["a.npz"]


@pytest.mark.parametrize(
    ("command", "option", "value", "message"),
    [
        ("match", "--threshold", "nan", "--threshold must be a finite number > 0"),
        ("match", "--threshold", "inf", "--threshold must be a finite number > 0"),
        ("match", "--ratio", "nan", "--ratio must be a number in (0, 1]"),
        ("match", "--score-threshold", "nan", "--score-threshold must be a finite number"),
        ("detect", "--score-threshold", "nan", "--score-threshold must be a finite number"),
        ("detect", "--score-threshold", "-inf", "--score-threshold must be a finite number"),
        ("detect", "--nms-radius", "nan", "--nms-radius must be a finite number >= 0"),
    ],
)
def test_non_finite_options_are_rejected(
    tmp_path, checkpoint, photos, capsys, monkeypatch, command, option, value, message
):
    monkeypatch.setattr("kp2d.models.keypoint_net.load_keypoint_net", _no_model)
    out = tmp_path / ("out.png" if command == "match" else "out")
    images = list(map(str, photos)) if command == "match" else [str(photos[0])]
    argv = [command, *images, "--model", checkpoint, "--out", str(out), f"{option}={value}"]
    assert main(argv) == 2
    assert message in single_error_line(capsys)
    assert not out.exists()


def test_match_out_is_checked_before_matching(tmp_path, checkpoint, photos, capsys, monkeypatch):
    monkeypatch.setattr("kp2d.models.keypoint_net.load_keypoint_net", _no_model)
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["match", *map(str, photos), "--model", checkpoint, "--out"]
    assert main([*argv, str(tmp_path / "emptydir")]) == 2
    assert "is a folder" in single_error_line(capsys)
    for name, found in (("matches", "(none)"), ("matches.xyz", "('.xyz')")):
        assert main([*argv, str(tmp_path / name)]) == 2
        line = single_error_line(capsys)
        assert f"unsupported picture extension {found}" in line and ".png, .jpg" in line
    assert main([*argv, str(tmp_path / "notes.txt" / "pair.png")]) == 2
    assert "notes.txt is a file, not a folder" in single_error_line(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_detect_out_is_checked_before_detecting(tmp_path, checkpoint, photos, capsys, monkeypatch):
    monkeypatch.setattr("kp2d.models.keypoint_net.load_keypoint_net", _no_model)
    (tmp_path / "notes.txt").write_text("mine")
    argv = ["detect", str(photos[0]), "--model", checkpoint, "--out"]
    assert main([*argv, str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt is a file, not a folder" in single_error_line(capsys)
    assert main([*argv, str(tmp_path / "notes.txt" / "out")]) == 2
    assert "notes.txt is a file, not a folder" in single_error_line(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_detect_and_match_refuse_an_unwritable_folder(tmp_path, checkpoint, photos, capsys, monkeypatch):
    monkeypatch.setattr("kp2d.models.keypoint_net.load_keypoint_net", _no_model)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["detect", str(photos[0]), "--model", checkpoint, "--out", str(locked / "out")]) == 2
        assert "no permission to write" in single_error_line(capsys)
        assert main(["match", *map(str, photos), "--model", checkpoint, "--out", str(locked / "m.png")]) == 2
        assert "no permission to write" in single_error_line(capsys)
    finally:
        locked.chmod(0o700)


@pytest.mark.slow
def test_opencv_prints_nothing_beside_the_error_line(tmp_path):
    """OpenCV logs its own decoding error to the process's stderr; only kp2d's line should show."""
    import subprocess
    import sys

    truncated = tmp_path / "cut.ppm"
    header = b"P6\n64 64\n255\n"
    truncated.write_bytes(header + bytes(100))  # 64 * 64 * 3 bytes announced
    result = subprocess.run(
        [sys.executable, "-m", "kp2d", "detect", str(truncated), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"kp2d detect: error: {truncated}: cannot decode image (corrupt or not an image) "
        "(--skip-bad skips such images)"
    ]


@pytest.mark.slow
def test_match_json_holds_what_it_printed_and_the_inliers_fit_the_homography(tmp_path, photos, capsys):
    record_path = tmp_path / "pair.json"
    argv = ["match", *map(str, photos), "--model", "v4", "--out", str(tmp_path / "pair.png")]
    assert main([*argv, "--json", str(record_path), "--threshold", "2"]) == 0
    out = capsys.readouterr().out
    record = json.loads(record_path.read_text())
    assert record["image_a"] == str(photos[0]) and record["image_size_b"] == [144, 112]
    assert (record["method"], record["threshold"]) == ("usac", 2.0)
    assert f"matches: {len(record['matches'])}\n" in out
    assert f"inliers: {sum(record['inliers'])} (" in out
    count = len(record["matches"])
    assert len(record["points_a"]) == len(record["points_b"]) == len(record["inliers"]) == count
    homography = np.array(record["homography"])
    printed = [[float(v) for v in row.split()] for row in re.findall(r"^  \[(.*)\]$", out, re.M)]
    np.testing.assert_allclose(homography, printed, rtol=1e-5)
    inliers = np.array(record["inliers"])
    assert inliers.sum() >= 8
    points_a, points_b = np.array(record["points_a"]), np.array(record["points_b"])
    projected = cv2.perspectiveTransform(points_a[None], homography)[0]
    error = np.linalg.norm(projected - points_b, axis=1)
    assert (error[inliers] <= 2.0 + 1e-6).all()
    assert corner_error(homography, demo_homography(144, 112), (144, 112)) < 8.0  # b.jpg is a; warped


@pytest.mark.slow
def test_match_json_of_the_demo_has_the_corner_error_and_is_checked_first(tmp_path, capsys, monkeypatch):
    record_path = tmp_path / "demo.json"
    assert main(["match", "--demo", "--out", str(tmp_path / "d.png"), "--json", str(record_path)]) == 0
    out = capsys.readouterr().out
    record = json.loads(record_path.read_text())
    assert f"mean corner error: {record['corner_error']:.2f} px" in out
    assert record["image_b"] == "astronaut (warped)" and record["keypoints"] == [1000, 1000]
    monkeypatch.setattr("kp2d.models.keypoint_net.load_keypoint_net", _no_model)
    assert main(["match", "--demo", "--out", str(tmp_path / "d.png"), "--json", str(tmp_path)]) == 2
    line = single_error_line(capsys)
    assert "--json" in line and "is a folder" in line
