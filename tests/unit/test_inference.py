import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import kp2d
from kp2d.errors import ConfigError, DataError
from kp2d.features.extraction import extract, extract_with_score_map, rescale_images, to_image_pixels
from kp2d.features.keypoints import Keypoints
from kp2d.features.selection import grid_nms, select_keypoints
from kp2d.geometry import cell_centers
from kp2d.io.images import image_to_tensor
from kp2d.models import KeyPointNet


def smooth_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(3, H, W) in [0, 1]: random blobs, textured enough to give varied scores."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 4 + 1, width // 4 + 1, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]


# --- golden numbers ---------------------------------------------------------------------------------------


# --- inputs -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_input_type_gives_the_same_keypoints(random_net, tmp_path):
    tensor = smooth_image(64, 80)
    uint8 = (tensor.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    png = tmp_path / "image.png"
    Image.fromarray(uint8).save(png)  # lossless
    reference = extract(random_net, uint8, top_k=30)  # of 6 x 8 interior cells
    assert isinstance(reference, Keypoints) and len(reference) == 30
    assert reference.keypoints.shape == (30, 2) and reference.keypoints.dtype == torch.float32
    assert reference.scores.shape == (30,) and bool((reference.scores[:-1] >= reference.scores[1:]).all())
    assert reference.descriptors.shape == (30, 256)
    torch.testing.assert_close(reference.descriptors.norm(dim=1), torch.ones(30))
    same = [
        uint8.astype(np.float32) / 255.0,
        Image.fromarray(uint8),
        torch.from_numpy(uint8).permute(2, 0, 1),  # uint8 tensor
        torch.from_numpy(uint8).permute(2, 0, 1).float() / 255.0,
        png,  # a path, read with load_image
        str(png),
    ]
    for image in same:
        kpts = extract(random_net, image, top_k=30)
        torch.testing.assert_close(kpts.keypoints, reference.keypoints)
        torch.testing.assert_close(kpts.descriptors, reference.descriptors)
    gray = uint8[..., 0]
    from_gray = extract(random_net, gray, top_k=30)
    from_rgb_copies = extract(random_net, np.repeat(gray[..., None], 3, axis=2), top_k=30)
    torch.testing.assert_close(from_gray.keypoints, from_rgb_copies.keypoints)
    as_tensor = torch.from_numpy(uint8).permute(2, 0, 1).float() / 255.0
    batch = extract(random_net, torch.stack([as_tensor, as_tensor.flip(-1)]), top_k=30)
    assert isinstance(batch, list) and len(batch) == 2
    torch.testing.assert_close(batch[0].keypoints, reference.keypoints, atol=1e-4, rtol=0)
    listed = extract(random_net, [uint8, uint8[:40, :48]], top_k=None)
    assert [k.image_size for k in listed] == [(80, 64), (48, 40)]


def test_keypoints_stay_in_a_non_multiple_of_8_image(random_net):
    image = smooth_image(250, 333)
    kpts = extract(random_net, image, top_k=None)
    assert kpts.image_size == (333, 250)
    assert len(kpts) > 0
    assert bool((kpts.keypoints >= 0).all())
    assert float(kpts.keypoints[:, 0].max()) <= 332 and float(kpts.keypoints[:, 1].max()) <= 249


def test_padding_replicates_and_drops_points_in_the_padding(golden_forward):
    net = KeyPointNet()
    net.load_state_dict(golden_forward["state_dict"])
    with torch.no_grad():
        net.convPb.bias += 3.0  # push keypoints ~7 px right and down in their cells, into the padding
    net.eval()
    image = smooth_image(66, 81, seed=1)  # padded inside to 72 x 88
    padded = F.pad(image[None], (0, 7, 0, 6), mode="replicate")[0]
    kpts = extract(net, image, top_k=None)
    reference = extract(net, padded, top_k=None)
    inside = (reference.keypoints[:, 0] <= 80) & (reference.keypoints[:, 1] <= 65)
    assert 0 < int(inside.sum()) < len(reference)  # the padded image has keypoints in the padding
    torch.testing.assert_close(kpts.keypoints, reference.keypoints[inside])
    torch.testing.assert_close(kpts.scores, reference.scores[inside])
    torch.testing.assert_close(kpts.descriptors, reference.descriptors[inside])


def test_shifting_the_image_by_a_cell_shifts_the_keypoints(golden_net):
    image = smooth_image(176, 176, seed=2)
    shift = 8
    cropped = image[:, :, shift:]  # content moves left by 8 px
    full = extract(golden_net, image, top_k=None)
    moved = extract(golden_net, cropped, top_k=None)
    # far (> receptive field) from every border of both images
    region = ((full.keypoints >= 80) & (full.keypoints <= 96)).all(dim=1)
    assert int(region.sum()) >= 4
    expected = full.keypoints[region] - torch.tensor([shift, 0.0])
    distance = torch.cdist(expected, moved.keypoints)
    nearest = distance.argmin(dim=1)
    assert float(distance.min(dim=1).values.max()) < 1e-3
    torch.testing.assert_close(moved.scores[nearest], full.scores[region], atol=1e-5, rtol=0)
    # descriptors only nearly: sampling the 1/4-resolution map with align_corners=True (the original's
    # convention) maps pixel x to x * (W/4 - 1) / (W - 1), which depends on the image width
    cosine = (moved.descriptors[nearest] * full.descriptors[region]).sum(dim=1)
    assert float(cosine.min()) > 0.99


def test_mode_is_restored_and_outputs_are_ordinary_tensors(random_net):
    random_net.train()
    try:
        kpts = extract(random_net, smooth_image(64, 64), top_k=10)
        assert random_net.training
    finally:
        random_net.eval()
    kpts.keypoints += 1.0  # not an inference tensor
    assert not kpts.keypoints.requires_grad


def test_score_map_comes_with_the_keypoints(random_net):
    kpts, cell_scores = extract_with_score_map(random_net, smooth_image(70, 93), top_k=None)
    assert cell_scores.shape == (9, 12)
    assert float(cell_scores[0].abs().max()) == 0.0  # border cells of the padded grid
    assert float(kpts.scores.max()) == pytest.approx(float(cell_scores.max()))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((31, 100, 3), np.uint8), "at least 32"),
        (np.zeros((64, 64, 3), np.float32) + 2.0, r"\[0, 1\]"),
        (np.zeros((64, 64, 5), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((64, 64, 3), np.int32), "dtype"),
        ("missing.png", "missing.png: image not found"),
        (torch.zeros(2, 2, 64, 64), "C = 1 or 3"),
    ],
)
def test_bad_images_raise_data_error(random_net, image, message):
    with pytest.raises(DataError, match=message):
        extract(random_net, image)


def test_scale_factor_beyond_the_largest_input_is_refused_before_resizing(random_net):
    image = np.zeros((64, 96, 3), np.uint8)
    with pytest.raises(DataError, match=r"96x64 pixels, 96000000x64000000 at scale_factor 1e\+06.*16384"):
        extract(random_net, image, scale_factor=1e6)


@pytest.mark.parametrize(
    "options",
    [
        {"top_k": 0},
        {"top_k": -5},
        {"nms_radius": -1.0},
        {"nms_radius": None},  # was a raw TypeError
        {"score_threshold": float("nan")},  # selected nothing, silently
        {"score_threshold": None},
    ],
)
def test_bad_selection_options(random_net, options):
    name = next(iter(options))
    with pytest.raises(ConfigError, match=f"^{name} must be"):
        extract(random_net, np.zeros((64, 64, 3), np.uint8), **options)


# --- scale factor -------------------------------------------------------------------------------------------


def test_to_image_pixels_by_hand():
    # 320 x 240 image run at 640 x 480: network pixel x' covers image pixels around (x' + 0.5) / 2 - 0.5
    coords = torch.tensor([[0.0, 1.0, 639.0, 3.5], [0.0, 479.0, 2.0, 3.5]]).view(1, 2, 4)
    expected = torch.tensor([[-0.25, 0.25, 319.25, 1.5], [-0.25, 239.25, 0.75, 1.5]]).view(1, 2, 4)
    assert torch.allclose(to_image_pixels(coords, (640, 480), (320, 240)), expected)
    assert to_image_pixels(coords, (320, 240), (320, 240)) is coords


def test_to_image_pixels_inverts_the_resampling_grid():
    # resampling a linear ramp reads the ramp at the source position of each output pixel: away from the
    # clamped borders, the resized ramp's value is the image x of that network pixel
    width, height = 40, 32
    ramp = torch.arange(width, dtype=torch.float32).expand(1, 1, height, width) / 100.0
    for scale_factor, net_width in ((2.0, 80), (1.5, 60), (0.5, 20)):
        resized = rescale_images(ramp, scale_factor)  # antialiased at 0.5: a symmetric filter, same ramp
        assert resized.shape[-1] == net_width
        xs = torch.arange(net_width, dtype=torch.float32)
        grid = torch.stack([xs, torch.zeros_like(xs)]).view(1, 2, net_width)
        mapped = to_image_pixels(grid, (net_width, round(height * scale_factor)), (width, height))[0, 0]
        inner = (mapped >= 1) & (mapped <= width - 2)  # the filters clamp at the borders
        assert torch.allclose(resized[0, 0, 0][inner] * 100.0, mapped[inner], atol=1e-4)


@pytest.mark.slow
def test_scale_factor_runs_the_network_on_the_resized_image(random_net):
    image = smooth_image(72, 100)  # 72 x 100 -> 144 x 200 at 2: padded to 144 x 200
    for scale_factor, nms_radius in ((2.0, 0.0), (2.0, 5.0), (0.75, 3.0)):
        kpts = extract(random_net, image, top_k=None, nms_radius=nms_radius, scale_factor=scale_factor)
        resized = rescale_images(image_to_tensor(image, 3)[0], scale_factor)
        net_height, net_width = resized.shape[-2:]
        reference = extract(random_net, resized, top_k=None, nms_radius=nms_radius * net_width / 100)[0]
        assert kpts.image_size == (100, 72) and len(kpts) == len(reference) > 0
        assert torch.equal(kpts.scores, reference.scores)
        assert torch.equal(kpts.descriptors, reference.descriptors)
        coords = reference.keypoints.t().unsqueeze(0)
        expected = to_image_pixels(coords, (net_width, net_height), (100, 72))[0].t()
        assert torch.allclose(kpts.keypoints, expected)
    assert len(extract(random_net, image, top_k=None, scale_factor=2)) > 3 * len(
        extract(random_net, image, top_k=None)
    )


@pytest.mark.parametrize("scale_factor", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_bad_scale_factor(random_net, scale_factor):
    with pytest.raises(ConfigError, match="scale_factor"):
        extract(random_net, np.zeros((64, 64, 3), np.uint8), scale_factor=scale_factor)


def test_scale_factor_below_the_minimum_size(random_net):
    with pytest.raises(DataError, match="scale_factor 0.25"):
        extract(random_net, np.zeros((64, 96, 3), np.uint8), scale_factor=0.25)


# --- selection ----------------------------------------------------------------------------------------------


def _row(xs, scores):
    """A 1 x len(xs) cell grid with keypoints at (x, 3.5)."""
    n = len(xs)
    coords = torch.stack([torch.tensor(xs, dtype=torch.float32), torch.full((n,), 3.5)]).view(1, 2, 1, n)
    return torch.tensor(scores, dtype=torch.float32).view(1, 1, n), coords


def test_threshold_and_top_k_by_hand():
    scores = torch.tensor([[[0.0, 0.2, 0.9, 0.4], [0.7, 0.2, 0.5, 0.0]]])
    coords = cell_centers(1, 2, 4)
    assert select_keypoints(scores, coords, top_k=None)[0].tolist() == [2, 4, 6, 3, 1, 5]
    assert select_keypoints(scores, coords, top_k=3)[0].tolist() == [2, 4, 6]
    assert select_keypoints(scores, coords, top_k=None, score_threshold=0.45)[0].tolist() == [2, 4, 6]
    assert select_keypoints(scores, coords, top_k=2, score_threshold=0.8)[0].tolist() == [2]
    valid = torch.ones(1, 2, 4, dtype=torch.bool)
    valid[0, 0, 2] = False
    assert select_keypoints(scores, coords, top_k=2, valid=valid)[0].tolist() == [4, 6]


def test_nms_is_greedy_by_hand():
    # 0.9 at x=10 suppresses 0.8 at x=13 (3 px); 0.7 at x=16 is 6 px from the kept one: kept (greedy),
    # although a higher-scoring (but suppressed) keypoint lies within the radius
    scores, coords = _row([10.0, 13.0, 16.0, 27.5], [0.9, 0.8, 0.7, 0.3])
    assert select_keypoints(scores, coords, top_k=None, nms_radius=3.5)[0].tolist() == [0, 2, 3]
    assert select_keypoints(scores, coords, top_k=None, nms_radius=2.9)[0].tolist() == [0, 1, 2, 3]
    assert select_keypoints(scores, coords, top_k=None, nms_radius=5.9)[0].tolist() == [0, 2, 3]
    assert select_keypoints(scores, coords, top_k=None, nms_radius=6.0)[0].tolist() == [0, 3]  # <= radius
    assert select_keypoints(scores, coords, top_k=None, nms_radius=11.5)[0].tolist() == [0, 3]
    # equal scores: the lower cell index wins
    scores, coords = _row([10.0, 12.0], [0.5, 0.5])
    assert select_keypoints(scores, coords, top_k=None, nms_radius=4)[0].tolist() == [0]


def _greedy_reference(points, scores, radius):
    order = sorted(scores, key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(np.hypot(*(points[i] - points[j])) > radius for j in kept):
            kept.append(i)
    return set(kept)


@pytest.mark.parametrize("radius", [3.0, 8.0, 20.0, 60.0, 1e9, math.inf])
def test_grid_nms_equals_sequential_greedy_nms(radius):
    generator = torch.Generator().manual_seed(int(min(radius, 99)))
    batch, rows, cols = 2, 6, 7
    coords = (
        cell_centers(batch, rows, cols) + (torch.rand(batch, 2, rows, cols, generator=generator) * 2 - 1) * 7
    )
    scores = torch.rand(batch, rows, cols, generator=generator)
    scores[0, 2, 2] = scores[0, 2, 3]  # a tie
    candidates = scores > 0.2
    kept = grid_nms(scores, coords, candidates, radius)
    for b in range(batch):
        alive = torch.nonzero(candidates[b].flatten()).squeeze(1).tolist()
        points = coords[b].flatten(1).t().double().numpy()
        flat_scores = scores[b].flatten().tolist()
        expected = _greedy_reference(
            {i: points[i] for i in alive}, {i: flat_scores[i] for i in alive}, radius
        )
        assert set(torch.nonzero(kept[b].flatten()).squeeze(1).tolist()) == expected


def test_nms_on_a_real_extraction_spaces_the_keypoints(golden_net):
    kpts = extract(golden_net, smooth_image(96, 128, seed=3), top_k=None, nms_radius=10)
    distance = torch.cdist(kpts.keypoints, kpts.keypoints) + torch.eye(len(kpts)) * 1e9
    assert float(distance.min()) > 10


# --- Keypoints --------------------------------------------------------------------------------------------


def test_extract_results_go_straight_into_match_homography_and_pictures(random_net):
    """``match(a, b)``, ``estimate_homography(a, b, m)`` and ``draw_keypoints(image, a)`` with the
    :class:`Keypoints` themselves (as LightGlue takes its feature dicts) give what their arrays give; they
    used to fail in numpy ("setting an array element with a sequence")."""
    from kp2d.features.matching import estimate_homography, match
    from kp2d.visualization import draw_keypoints, draw_matches

    image = (smooth_image(96, 128).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    a = extract(random_net, image, top_k=100)
    b = extract(random_net, np.ascontiguousarray(image[:, ::-1]), top_k=100)
    matches, distances = match(a, b)
    expected, expected_distances = match(a.descriptors, b.descriptors)
    assert torch.equal(matches, expected) and torch.equal(distances, expected_distances)
    homography, inliers = estimate_homography(a, b, matches, method="ransac")
    expected_h, expected_inliers = estimate_homography(a.keypoints, b.keypoints, matches, method="ransac")
    assert (homography is None) == (expected_h is None) and (inliers == expected_inliers).all()
    assert (draw_keypoints(image, a) == draw_keypoints(image, a.keypoints)).all()
    both = draw_matches(image, image, a, b, matches, inliers)
    assert (both == draw_matches(image, image, a.keypoints, b.keypoints, matches, inliers)).all()


@pytest.mark.slow
def test_blank_images_have_no_keypoints_by_default():
    """The shipped V4 scores a blank image under 1e-5 everywhere; at the old default threshold (0) two blank
    images gave 1,000 keypoints each, ~1,000 matches and an identity homography. 0 still keeps every cell."""
    import skimage.data

    from kp2d.features.dense import DEFAULT_SCORE_THRESHOLD

    net = KeyPointNet.from_pretrained("v4")
    assert DEFAULT_SCORE_THRESHOLD == 1e-4
    for value in (0, 128, 255):
        blank = np.full((240, 320, 3), value, np.uint8)
        assert len(net.extract(blank)) == 0
        assert len(net.extract(blank, score_threshold=0)) == 1000
    photo = cv2.resize(skimage.data.astronaut(), (320, 240), interpolation=cv2.INTER_AREA)
    assert len(net.extract(photo, top_k=300)) == 300


def test_a_float64_model_gives_float32_results_and_a_list_takes_single_images(random_net):
    """As the docstring says; a float64 model gave float64 descriptors, and a batch inside a list came back
    as a list inside the list."""
    import copy

    image = smooth_image(64, 80)
    double = copy.deepcopy(random_net).double()
    kpts = extract(double, image, top_k=20)
    assert kpts.keypoints.dtype == kpts.scores.dtype == kpts.descriptors.dtype == torch.float32
    reference = extract(random_net, image, top_k=20)
    torch.testing.assert_close(kpts.keypoints, reference.keypoints, atol=1e-3, rtol=0)
    with pytest.raises(DataError, match=r"item 1 is a batch \(2, 3, 64, 80\)"):
        extract(random_net, [image, torch.stack([image, image])])


def test_keypoints_compare_by_identity():
    """``==`` on the dataclass compared tensors field by field: a RuntimeError (ambiguous truth value)."""
    kpts = Keypoints(torch.zeros(2, 2), torch.ones(2), torch.zeros(2, 4), (8, 8))
    same_values = Keypoints(torch.zeros(2, 2), torch.ones(2), torch.zeros(2, 4), (8, 8))
    assert kpts == kpts and kpts != same_values


def test_keypoints_container():
    kpts = Keypoints(
        keypoints=torch.tensor([[1.5, 2.5], [10.0, 20.0]]),
        scores=torch.tensor([0.9, 0.4]),
        descriptors=F.normalize(torch.ones(2, 256), dim=1),
        image_size=(64, 48),
    )
    assert len(kpts) == 2
    cv_points = kpts.to_cv2(size=8)
    assert isinstance(cv_points[0], cv2.KeyPoint)
    assert cv_points[0].pt == (1.5, 2.5) and cv_points[0].size == 8
    assert cv_points[1].response == pytest.approx(0.4)
    arrays = kpts.numpy()
    assert arrays["keypoints"].shape == (2, 2) and arrays["descriptors"].shape == (2, 256)
    assert arrays["image_size"].tolist() == [64, 48]
    assert len(kpts[kpts.scores > 0.5]) == 1 and kpts[1:].keypoints.tolist() == [[10.0, 20.0]]
    assert kpts[-1].keypoints.tolist() == [[10.0, 20.0]] and kpts[0].descriptors.shape == (1, 256)
    assert kpts.to("cpu").device.type == "cpu"
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        Keypoints(torch.zeros(3, 3), torch.zeros(3), torch.zeros(3, 256), (10, 10))
    with pytest.raises(ValueError, match="scores"):
        Keypoints(torch.zeros(3, 2), torch.zeros(4), torch.zeros(3, 256), (10, 10))


def test_top_level_exports():
    assert kp2d.extract is extract and kp2d.Keypoints is Keypoints
    assert callable(kp2d.match) and callable(kp2d.estimate_homography)


# --- inputs and options the API must accept or refuse -----------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_raise_data_error(random_net, bad):
    array = np.full((64, 64, 3), 0.5, np.float32)
    array[10, 20, 1] = bad  # one pixel: NaN passes every range comparison
    for image in (array, torch.from_numpy(array).permute(2, 0, 1)):
        with pytest.raises(DataError, match="finite"):
            extract(random_net, image)


def test_pil_16_bit_and_float_modes_are_rescaled_not_clipped(random_net):
    values = np.linspace(0, 65535, 64 * 96).round().astype(np.uint16).reshape(64, 96)
    expected = image_to_tensor(values, 1)[0]  # the numpy uint16 path: v / 65535
    np.testing.assert_allclose(expected[0, 0].numpy(), values / 65535.0, rtol=1e-6)
    for pil in (Image.fromarray(values), Image.fromarray(values.astype(np.int32))):  # modes I;16 and I
        assert pil.mode in ("I;16", "I")
        torch.testing.assert_close(image_to_tensor(pil, 1)[0], expected, atol=0, rtol=0)
    big_endian = Image.frombytes("I;16B", (96, 64), values.astype(">u2").tobytes())
    torch.testing.assert_close(image_to_tensor(big_endian, 1)[0], expected, atol=0, rtol=0)
    floats = values.astype(np.float32) / 65535.0
    pil_float = Image.fromarray(floats)
    assert pil_float.mode == "F"
    from_pil, from_numpy = image_to_tensor(pil_float, 3)[0], image_to_tensor(floats, 3)[0]
    torch.testing.assert_close(from_pil, from_numpy, atol=0, rtol=0)
    gray_kpts = extract(random_net, floats, top_k=20)
    torch.testing.assert_close(extract(random_net, pil_float, top_k=20).keypoints, gray_kpts.keypoints)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        image_to_tensor(Image.fromarray(floats * 255.0))
    with pytest.raises(DataError, match="65535"):
        image_to_tensor(Image.fromarray(values.astype(np.int32) * 2))


def test_integer_like_top_k_and_indices(random_net):
    image = smooth_image(64, 96)
    reference = extract(random_net, image, top_k=12)
    for top_k in (np.int64(12), np.int32(12), np.uint8(12)):
        kpts = extract(random_net, image, top_k=top_k)
        assert torch.equal(kpts.keypoints, reference.keypoints)
    for bad in (True, np.int64(0), 12.0):
        with pytest.raises(ConfigError, match="top_k"):
            extract(random_net, image, top_k=bad)
    indices = (np.int64(3), torch.tensor(3), np.array(3), np.int32(-1), torch.tensor(-1, dtype=torch.int32))
    for index in indices:
        one = reference[index]
        position = 3 if int(index) == 3 else 11
        assert len(one) == 1 and one.keypoints.tolist() == [reference.keypoints[position].tolist()]
        assert torch.equal(one.descriptors, reference.descriptors[position : position + 1])


def test_empty_batch_gives_no_keypoints(random_net):
    assert extract(random_net, torch.rand(0, 3, 64, 96)) == []
    assert extract(random_net, torch.rand(0, 3, 64, 96), scale_factor=0.5) == []
    assert random_net.extract(torch.zeros(0, 3, 64, 96, dtype=torch.uint8), top_k=None) == []
    with pytest.raises(DataError, match="batch of 0"):
        extract_with_score_map(random_net, torch.rand(0, 3, 64, 96))
    with pytest.raises(DataError, match="at least 32"):
        extract(random_net, torch.rand(0, 3, 16, 96))  # sizes are still checked


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_gives_finite_float32_descriptors(random_net, dtype):
    """fp16 / bf16 weights on the CPU, channels-last (where half-precision grid_sample gave NaN rows)."""
    net = KeyPointNet().eval()
    net.load_state_dict(random_net.state_dict())
    net = net.to(dtype).to(memory_format=torch.channels_last)
    image = smooth_image(120, 160, seed=4)
    for scale_factor in (1.0, 0.75):  # 0.75: an antialiased shrink of a half-precision image
        kpts = extract(net, image, top_k=None, scale_factor=scale_factor)
        assert len(kpts) > 100
        assert kpts.descriptors.dtype == torch.float32 and bool(torch.isfinite(kpts.descriptors).all())
        torch.testing.assert_close(kpts.descriptors.norm(dim=1), torch.ones(len(kpts)))
    # against the fp32 network: keypoints of the same cell carry nearly the same descriptor
    reference = extract(random_net, image, top_k=None)
    full = extract(net, image, top_k=None)
    nearest = torch.cdist(full.keypoints, reference.keypoints).min(dim=1)
    close = nearest.values < 0.5  # the same cell's keypoint: compare descriptors
    assert int(close.sum()) > len(full) // 2
    cosine = (full.descriptors[close] * reference.descriptors[nearest.indices[close]]).sum(dim=1)
    assert float(cosine.median()) > 0.95


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rescale_images_in_half_precision(dtype):
    image = smooth_image(64, 96)[None]
    for scale_factor in (0.5, 0.75, 2.0):
        resized = rescale_images(image.to(dtype), scale_factor)
        assert resized.dtype == dtype
        expected = rescale_images(image.to(dtype).float(), scale_factor)
        torch.testing.assert_close(resized, expected.to(dtype), atol=0, rtol=0)


def test_a_phone_photo_is_upright_from_its_path_and_from_pil(tmp_path):
    """OpenCV applies the EXIF orientation when kp2d reads a file; a PIL image of the same file was used as
    stored (sideways), so the two gave different keypoints."""
    import skimage.data

    from kp2d.io.images import load_image

    stored = cv2.resize(skimage.data.astronaut(), (96, 64), interpolation=cv2.INTER_AREA)  # RGB, 96 wide
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    from_path = load_image(path)
    assert from_path.shape == (96, 64, 3)  # upright: the stored 96x64 turned
    with Image.open(path) as pil:
        upright = image_to_tensor(pil)[0]
    torch.testing.assert_close(upright, image_to_tensor(from_path)[0], atol=3 / 255, rtol=0)
