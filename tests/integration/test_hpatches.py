"""HPatches reader and evaluation loop on a generated folder of real photos, and on the shared data."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import kp2d.data.hpatches as hpatches_data
from hpatches_tiny import PAIRS_PER_SUBSET, SIZE, UPSCALE, write_sequence
from kp2d.data.hpatches import HPatchesDataset, find_sequences, read_homography, read_image
from kp2d.errors import ConfigError, DataError
from kp2d.eval.hpatches import KeyPointNetDetector, OpenCVDetector, evaluate_hpatches
from kp2d.features.extraction import rescale_images
from kp2d.geometry import scale_homography
from kp2d.models import KeyPointNet


@pytest.fixture
def tiny_copy(tiny_root, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(tiny_root, tmp_path / "hp")


# --- reader ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("subset", ["all", "i", "v"])
def test_subsets_and_pair_counts(tiny_root, subset):
    sequences = find_sequences(tiny_root, subset)
    assert sum(len(s.pairs) for s in sequences) == PAIRS_PER_SUBSET[subset]
    names = [s.name for s in sequences]
    assert names == sorted(names)
    assert "notes" not in names
    if subset != "all":
        assert all(name.startswith(f"{subset}_") for name in names)
    else:
        assert "misc_chelsea" in names


def test_pairs_sorted_and_all_formats(tiny_root):
    sequences = {s.name: s for s in find_sequences(tiny_root)}
    astronaut = sequences["v_astronaut"]
    assert [p.index for p in astronaut.pairs] == [2, 3, 4]
    assert [p.name for p in astronaut.pairs] == ["v_astronaut:1-2", "v_astronaut:1-3", "v_astronaut:1-4"]
    suffixes = {s.name: s.pairs[0].image2.suffix for s in sequences.values()}
    assert suffixes == {
        "v_astronaut": ".ppm",
        "v_chelsea": ".jpg",
        "i_coffee": ".png",
        "i_camera": ".pgm",
        "misc_chelsea": ".jpeg",
    }


def test_single_sequence_root(tiny_root):
    sequences = find_sequences(tiny_root / "v_astronaut")
    assert [s.name for s in sequences] == ["v_astronaut"]


def test_sample_shapes_and_grayscale(tiny_root):
    dataset = HPatchesDataset(tiny_root, size_wh=(160, 120))
    names = [s.name for s in dataset.sequences]
    sample = dataset[names.index("i_camera")]
    assert sample.images.shape == (2, 120, 160, 3) and sample.images.dtype == np.uint8
    assert np.array_equal(sample.images[..., 0], sample.images[..., 2])  # .pgm read as 3 equal channels
    sample = dataset[names.index("v_astronaut")]
    assert sample.images.shape == (4, 120, 160, 3)
    assert sample.homographies.shape == (3, 3, 3) and sample.homographies.dtype == np.float64
    assert sample.pair_names == ["v_astronaut:1-2", "v_astronaut:1-3", "v_astronaut:1-4"]
    assert sample.problems == []


def test_homography_rescaling_by_hand(tmp_path):
    """H shifts by (10, 20); image 1 is 200x100, image 2 400x200, both resized to 100x50.

    S1 = diag(0.5, 0.5, 1), S2 = diag(0.25, 0.25, 1):
    H' = S2 H S1^-1 = [[0.5, 0, 2.5], [0, 0.5, 5], [0, 0, 1]];
    e.g. resized point (10, 10) → original (20, 20) → (30, 40) → resized (7.5, 10).
    """
    homography = np.array([[1.0, 0.0, 10.0], [0.0, 1.0, 20.0], [0.0, 0.0, 1.0]])
    image1 = np.full((100, 200, 3), 128, np.uint8)
    image2 = np.full((200, 400, 3), 64, np.uint8)
    write_sequence(tmp_path / "v_sizes", ".png", image1, [(image2, homography)])
    sample = HPatchesDataset(tmp_path, size_wh=(100, 50))[0]
    expected = np.array([[0.5, 0.0, 2.5], [0.0, 0.5, 5.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(sample.homographies[0], expected, atol=1e-12)
    np.testing.assert_allclose(scale_homography(homography, (200, 100), (400, 200), (100, 50)), expected)
    point = sample.homographies[0] @ [10.0, 10.0, 1.0]
    np.testing.assert_allclose(point[:2] / point[2], [7.5, 10.0])


def test_rescaled_homography_of_differently_sized_view(tiny_root):
    dataset = HPatchesDataset(tiny_root, size_wh=(120, 90))
    sample = dataset[[s.name for s in dataset.sequences].index("i_coffee")]
    # view 3 is view 1 stored 1.25x larger: after resizing both to 120x90 the homography is the identity
    np.testing.assert_allclose(sample.homographies[1], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(
        sample.homographies[1], scale_homography(UPSCALE, SIZE, (300, 225), (120, 90)), atol=1e-12
    )


def test_reference_image_read_once(tiny_root, monkeypatch):
    calls = []
    original = hpatches_data.read_image

    def counting(path):
        calls.append(path.name)
        return original(path)

    monkeypatch.setattr(hpatches_data, "read_image", counting)
    sample = HPatchesDataset(tiny_root / "v_astronaut", size_wh=(80, 60))[0]
    assert sorted(calls) == ["1.ppm", "2.ppm", "3.ppm", "4.ppm"]
    assert len(sample.images) == 4


# --- bad input ------------------------------------------------------------------------------------


def _oxford_copy(source, target):
    """The HPatches-layout sequence ``source`` rewritten in the Oxford layout (imgk.*, H1tokp)."""
    target.mkdir()
    for path in source.iterdir():
        name = f"H1to{path.name[4:]}p" if path.name.startswith("H_1_") else f"img{path.name}"
        shutil.copy(path, target / name)
    return target


def test_the_oxford_layout_reads_as_the_hpatches_one(tiny_root, tmp_path):
    oxford = _oxford_copy(tiny_root / "v_astronaut", tmp_path / "boat")
    (sequence,) = find_sequences(oxford)
    assert [p.name for p in sequence.pairs] == ["boat:1-2", "boat:1-3", "boat:1-4"]
    assert sequence.pairs[0].image1.name == "img1.ppm" and sequence.pairs[1].image2.name == "img3.ppm"
    assert [p.homography_path.name for p in sequence.pairs] == ["H1to2p", "H1to3p", "H1to4p"]
    expected = HPatchesDataset(tiny_root / "v_astronaut", size_wh=(160, 120))[0]
    got = HPatchesDataset(tmp_path, size_wh=(160, 120))[0]
    assert np.array_equal(got.images, expected.images)
    assert np.array_equal(got.homographies, expected.homographies)
    assert got.problems == []


def test_a_folder_with_both_layouts_is_read_in_the_hpatches_one(tiny_root, tmp_path, caplog):
    """No pair mixes layouts: with any H_1_k file the folder is HPatches, the Oxford files are named."""
    folder = shutil.copytree(tiny_root / "v_astronaut", tmp_path / "mixed")
    shutil.copy(folder / "1.ppm", folder / "img1.ppm")
    shutil.copy(folder / "3.ppm", folder / "img5.ppm")
    np.savetxt(folder / "H1to5p", np.eye(3))
    (sequence,) = find_sequences(folder)
    assert [(p.index, p.homography_path.name, p.image2.name) for p in sequence.pairs] == [
        (2, "H_1_2", "2.ppm"), (3, "H_1_3", "3.ppm"), (4, "H_1_4", "4.ppm"),
    ]
    assert sequence.pairs[0].image1.name == "1.ppm"
    left_out = "H1to5p, img1.ppm, img5.ppm of the Oxford layout left out"
    assert f"mixed: read in the HPatches layout (1.*, H_1_k); {left_out}" in caplog.text


def test_oxford_names_in_any_case_with_zeros_and_a_missing_view(tiny_root, tmp_path, caplog):
    folder = _oxford_copy(tiny_root / "v_astronaut", tmp_path / "bark")
    (folder / "img1.ppm").rename(folder / "IMG01.PPM")
    (folder / "img3.ppm").unlink()
    shutil.copy(folder / "img2.ppm", folder / "img7.ppm")  # a view without a homography
    (sequence,) = find_sequences(folder)
    assert sequence.pairs[0].image1.name == "IMG01.PPM"
    assert [p.image2.name if p.image2 else None for p in sequence.pairs] == ["img2.ppm", None, "img4.ppm"]
    assert "bark: no H1tokp file for img7.ppm; left out of the evaluation" in caplog.text
    sample = HPatchesDataset(folder, size_wh=(80, 60))[0]
    assert sample.pair_names == ["bark:1-2", "bark:1-4"]
    assert sample.problems == [("bark:1-3", f"{folder / 'img3'}.*: image not found (listed by H1to3p)")]
    (folder / "IMG01.PPM").unlink()
    message = HPatchesDataset(folder, size_wh=(80, 60))[0].problems[0][1]
    assert message == f"{folder / 'img1'}.*: reference image not found (no img1.ppm/.png/.jpg/.jpeg/.pgm)"


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(DataError, match="not found"):
        find_sequences(tmp_path / "nope")
    with pytest.raises(DataError, match="no HPatches sequences.*H_1_k, or img1.ppm and H1to2p"):
        find_sequences(tmp_path)
    with pytest.raises(ConfigError, match="subset"):
        find_sequences(tmp_path, "x")


def test_bad_homography_files(tmp_path):
    cases = {
        "short": "1 0 0\n0 1 0\n",
        "words": "1 0 0\n0 one 0\n0 0 1\n",
        "nan": "1 0 0\n0 nan 0\n0 0 1\n",
        "singular": "1 2 3\n2 4 6\n0 0 1\n",
        "empty": "",
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(DataError, match=name):
            read_homography(path)
    with pytest.raises(DataError, match="not found"):
        read_homography(tmp_path / "H_1_9")


def test_corrupt_image(tmp_path):
    path = tmp_path / "2.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="2.png"):
        read_image(path)


def _damage(root):
    """Corrupt v_astronaut/2.ppm, remove v_chelsea/2.jpg, break i_camera/H_1_2."""
    (root / "v_astronaut" / "2.ppm").write_bytes(b"P6\n garbage")
    (root / "v_chelsea" / "2.jpg").unlink()
    (root / "i_camera" / "H_1_2").write_text("1 0\n0 1\n")


def test_bad_files_raise_naming_the_file(tiny_copy):
    _damage(tiny_copy)
    detector = OpenCVDetector("orb", nfeatures=200)
    with pytest.raises(DataError, match="H_1_2"):  # i_camera comes first in sorted order
        evaluate_hpatches(detector, tiny_copy, size_wh=(80, 60), progress=False, num_workers=0)
    with pytest.raises(DataError, match="2.ppm"):
        evaluate_hpatches(detector, tiny_copy, size_wh=(80, 60), subset="v", progress=False, num_workers=0)
    (tiny_copy / "v_astronaut" / "2.ppm").unlink()
    (tiny_copy / "v_chelsea" / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"v_astronaut/2\.\*"):
        evaluate_hpatches(detector, tiny_copy, size_wh=(80, 60), subset="v", progress=False, num_workers=0)


def test_skip_bad_reports_and_continues(tiny_copy):
    _damage(tiny_copy)
    result = evaluate_hpatches(
        OpenCVDetector("orb", nfeatures=200),
        tiny_copy,
        size_wh=(80, 60),
        skip_bad=True,
        progress=False,
        num_workers=1,
    )
    skipped = sorted(entry.split(":")[0] + ":" + entry.split(":")[1] for entry in result["skipped"])
    assert skipped == ["i_camera:1-2", "v_astronaut:1-2", "v_chelsea:1-2"]
    assert result["pairs"] == PAIRS_PER_SUBSET["all"] - 3
    assert "v_astronaut:1-2" not in {p["pair"] for p in result["per_pair"]}


# --- evaluation loop ------------------------------------------------------------------------------


def test_sift_sanity_on_real_photos(tiny_root):
    """Known homographies on real photos: SIFT finds them (C5 = 1), the identity pair is perfect."""
    result = evaluate_hpatches(
        OpenCVDetector("sift"), tiny_root, size_wh=(160, 120), progress=False, num_workers=0
    )
    assert result["pairs"] == PAIRS_PER_SUBSET["all"] and result["skipped"] == []
    per_pair = {p["pair"]: p for p in result["per_pair"]}
    identity = per_pair["v_astronaut:1-4"]
    assert (identity["repeatability"], identity["localization_error"], identity["mscore"]) == (1.0, 0.0, 1.0)
    assert all(p["c5"] == 1.0 for p in result["per_pair"])
    assert per_pair["i_coffee:1-3"]["c1"] == 1.0  # differently sized view: rescaling is right
    assert result["repeatability"] > 0.6 and result["mscore"] > 0.5
    for name in ("repeatability", "localization_error", "c1", "c3", "c5", "mscore"):
        assert result[name] == pytest.approx(np.nanmean([p[name] for p in result["per_pair"]]))


def test_orb_runs_with_hamming(tiny_root):
    result = evaluate_hpatches(
        OpenCVDetector("orb", nfeatures=600),
        tiny_root,
        size_wh=(160, 120),
        subset="v",
        progress=False,
        num_workers=0,
    )
    assert result["pairs"] == PAIRS_PER_SUBSET["v"]
    assert result["c5"] >= 0.75 and result["mscore"] > 0.5


@pytest.mark.slow
def test_keypointnet_detector_rows_in_raster_order():
    torch.manual_seed(0)
    model = KeyPointNet(do_upsample=False, do_cross=True).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(2, 48, 64, 3), dtype=np.uint8)
    detections = KeyPointNetDetector(model, "cpu")(images)
    with torch.inference_mode():
        out = model.describe(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    interior = (slice(1, -1), slice(1, -1))  # the border cells have score 0 and drop out
    for b, (prob, desc) in enumerate(detections):
        assert prob.dtype == np.float32 and desc.dtype == np.float32
        assert prob.shape == (4 * 6, 3) and desc.shape == (24, 256)
        np.testing.assert_array_equal(prob[:, 0], out.coord[b, 0][interior].flatten().numpy())
        np.testing.assert_array_equal(prob[:, 1], out.coord[b, 1][interior].flatten().numpy())
        np.testing.assert_array_equal(prob[:, 2], out.score[b, 0][interior].flatten().numpy())
        np.testing.assert_array_equal(desc, out.desc[b][:, 1:-1, 1:-1].flatten(1).T.numpy())


def test_keypointnet_detector_scale_factor():
    torch.manual_seed(0)
    model = KeyPointNet(do_upsample=False, do_cross=True).eval()
    images = np.random.default_rng(0).integers(0, 256, size=(2, 48, 64, 3), dtype=np.uint8)
    detections = KeyPointNetDetector(model, "cpu", scale_factor=2)(images)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        out = model.describe(rescale_images(batch, 2))  # 96 x 128: 12 x 16 cells
    interior = (slice(1, -1), slice(1, -1))
    for b, (prob, desc) in enumerate(detections):
        assert prob.shape == (10 * 14, 3) and desc.shape == (140, 256)
        # network pixel x' is image pixel (x' + 0.5) / 2 - 0.5
        np.testing.assert_allclose(prob[:, 0], (out.coord[b, 0][interior].flatten().numpy() + 0.5) / 2 - 0.5)
        np.testing.assert_allclose(prob[:, 1], (out.coord[b, 1][interior].flatten().numpy() + 0.5) / 2 - 0.5)
        np.testing.assert_array_equal(prob[:, 2], out.score[b, 0][interior].flatten().numpy())
        np.testing.assert_array_equal(desc, out.desc[b][:, 1:-1, 1:-1].flatten(1).T.numpy())
    # x1.1: 70 x 53 padded to 72 x 56 (replicated edge, as extract pads); cells whose keypoint falls in the
    # padding are left out, the others are those of the padded run mapped back
    padded = rescale_images(batch, 1.1)
    with torch.inference_mode():
        out = model.describe(torch.nn.functional.pad(padded, (0, 2, 0, 3), mode="replicate"))
    for b, (prob, _) in enumerate(KeyPointNetDetector(model, "cpu", scale_factor=1.1)(images)):
        inside = (out.score[b, 0] > 0) & (out.coord[b, 0] <= 69) & (out.coord[b, 1] <= 52)
        assert len(prob) == int(inside.sum()) > 0
        assert prob[:, 0].max() <= 63 and prob[:, 1].max() <= 47


def test_keypointnet_evaluation_runs(tiny_root):
    torch.manual_seed(0)
    detector = KeyPointNetDetector(KeyPointNet(do_upsample=False, do_cross=True), "cpu")
    result = evaluate_hpatches(
        detector, tiny_root, size_wh=(64, 48), top_k=300, subset="i", progress=False, num_workers=0
    )
    assert result["pairs"] == PAIRS_PER_SUBSET["i"]
    assert 0.0 <= result["repeatability"] <= 1.0 and 0.0 <= result["mscore"] <= 1.0


# --- shared data ----------------------------------------------------------------------------------


def test_shared_graffiti_and_homogr(data_dir):
    graffiti = data_dir / "hpatches" / "v_graffiti"
    homogr = data_dir / "homogr"
    if not graffiti.is_dir() or not homogr.is_dir():
        pytest.skip("hpatches/v_graffiti or homogr missing from the shared data")
    (sequence,) = find_sequences(graffiti)
    assert [p.index for p in sequence.pairs] == [2, 3, 4, 5, 6]
    assert read_image(sequence.pairs[0].image1).shape == (640, 800, 3)
    sample = HPatchesDataset(graffiti, size_wh=(320, 240))[0]
    assert sample.images.shape == (6, 240, 320, 3) and sample.problems == []
    original = read_homography(graffiti / "H_1_2")
    np.testing.assert_allclose(
        sample.homographies[0], scale_homography(original, (800, 640), (800, 640), (320, 240))
    )
    sequences = find_sequences(homogr)
    assert len(sequences) == 14 and sum(len(s.pairs) for s in sequences) == 14
    assert {s.pairs[0].image2.suffix for s in sequences} <= {".png", ".jpg"}
