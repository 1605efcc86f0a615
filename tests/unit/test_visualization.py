import numpy as np
import pytest
import torch
from PIL import Image

from kp2d.errors import DataError
from kp2d.visualization import (
    INLIER_COLOR,
    OUTLIER_COLOR,
    draw_caption,
    draw_keypoints,
    draw_matches,
    draw_score_heatmap,
    save_gif,
    save_image,
    to_rgb_uint8,
)


def test_to_rgb_uint8_accepts_gray_float_and_tensors():
    gray = np.full((4, 5), 0.5, np.float32)
    assert to_rgb_uint8(gray).shape == (4, 5, 3) and to_rgb_uint8(gray)[0, 0].tolist() == [128] * 3
    tensor = torch.zeros(3, 4, 5)
    tensor[0] = 1.0
    assert to_rgb_uint8(tensor)[2, 3].tolist() == [255, 0, 0]
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 6\)"):
        to_rgb_uint8(np.zeros((2, 4, 5, 6)))


def test_draw_matches_colours_inliers_and_outliers():
    left = np.zeros((40, 60, 3), np.uint8)
    right = np.zeros((30, 50, 3), np.uint8)
    kpts0 = np.array([[10.0, 10.0], [10.0, 30.0]])
    kpts1 = np.array([[20.0, 10.0], [20.0, 25.0]])
    matches = np.array([[0, 0], [1, 1]])
    picture = draw_matches(
        left, right, kpts0, kpts1, matches, np.array([True, False]), gap=10, draw_keypoints_too=False
    )
    assert picture.shape == (40, 60 + 10 + 50, 3)
    assert picture[35, 100].tolist() == [255, 255, 255]  # padding under the shorter image
    # midpoints of the two lines: (10 + 90) / 2 = 50 in x
    inlier_pixel = picture[10, 50].astype(int)
    outlier_pixel = picture[int(round((30 + 25) / 2)), 50].astype(int)
    assert inlier_pixel[1] > inlier_pixel[0] + 100 and inlier_pixel[1] > inlier_pixel[2] + 100  # green
    assert outlier_pixel[0] > outlier_pixel[1] + 100 and outlier_pixel[0] > outlier_pixel[2] + 100  # red
    assert INLIER_COLOR[1] > INLIER_COLOR[0] and OUTLIER_COLOR[0] > OUTLIER_COLOR[1]
    only_first = draw_matches(
        left, right, kpts0, kpts1, matches, np.array([True, False]), max_lines=1, draw_keypoints_too=False
    )
    assert only_first[10, 50].tolist() == picture[10, 50].tolist() and only_first[28, 50].sum() == 0
    with pytest.raises(ValueError, match="inlier_mask has 1 entries for 2 matches"):
        draw_matches(left, right, kpts0, kpts1, matches, np.array([True]))


def test_heatmap_follows_the_cells_and_crops_the_padding():
    image = np.full((20, 27, 3), 128, np.uint8)  # covered by a 3 x 4 grid of 8-px cells
    cells = np.zeros((3, 4), np.float32)
    cells[1, 2] = 1.0
    heat = draw_score_heatmap(image, torch.from_numpy(cells), alpha=1.0)
    assert heat.shape == (20, 27, 3)
    hot, cold = heat[12, 20], heat[12, 12]  # inside cell (1, 2) and its left neighbour
    assert int(hot.sum()) > int(cold.sum()) + 300
    assert (heat[8:16, 16:24] == hot).all()
    for wrong in ((2, 4), (4, 4), (6, 8)):  # too small, too large, a 2x score map without its scale_factor
        with pytest.raises(ValueError, match=r"does not match a 20x27 image with 8-px cells \(3x4\)"):
            draw_score_heatmap(image, np.zeros(wrong))


def test_heatmap_of_a_resized_score_map_covers_the_whole_image():
    """A score map from ``scale_factor=2`` (a 5x7 grid: the 2x image is 40x54) drawn with its scale factor:
    the hot cell (2, 5) of the 2x image covers pixels 8..11 x 20..23 here. Without the factor it used to show
    the top-left quarter of the map over the whole image (only the CLI resized around it)."""
    image = np.full((20, 27, 3), 128, np.uint8)
    cells = np.zeros((6, 7), np.float32)  # ceil(40/8) x ceil(54/8) = 5 x 7; 6 rows is wrong
    with pytest.raises(ValueError, match="does not match"):
        draw_score_heatmap(image, cells, scale_factor=2)
    cells = np.zeros((5, 7), np.float32)
    cells[2, 5] = 1.0
    heat = draw_score_heatmap(image, cells, alpha=1.0, scale_factor=2).astype(int)
    assert heat.shape == (20, 27, 3)
    hot = heat[9:11, 21:23].sum(axis=2)
    assert hot.min() > heat[2, 2].sum() + 300 and hot.min() > heat[15, 12].sum() + 300


def test_drawing_refuses_float_images_in_0_255():
    """A float 0-255 image used to be clipped to a white picture; ``extract`` refuses it, so drawing does."""
    image = np.full((32, 32, 3), 100.0, np.float32)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\], got values up to 100"):
        draw_keypoints(image, [[8.0, 8.0]])
    assert to_rgb_uint8(image / 255.0)[0, 0].tolist() == [100, 100, 100]
    assert to_rgb_uint8(np.eye(3, dtype=bool))[0, 0].tolist() == [255, 255, 255]


def test_save_gif_errors_are_data_errors_and_any_suffix_writes_a_gif(tmp_path):
    frame = np.zeros((8, 8, 3), np.uint8)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot write GIF"):
        save_gif([frame], tmp_path / "file" / "a.gif")
    path = save_gif([frame, frame + 255], tmp_path / "animation")  # no suffix: still a GIF
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 2


def test_draw_keypoints_marks_the_points():
    canvas = draw_keypoints(np.zeros((32, 32, 3), np.uint8), torch.tensor([[16.0, 16.0]]), radius=4)
    assert canvas[16, 20].sum() > 0 and canvas[16, 16].sum() == 0  # a ring, not a disc
    scored = draw_keypoints(np.zeros((32, 32), np.uint8), [[8.0, 8.0], [24.0, 24.0]], scores=[0.1, 0.9])
    assert scored[8, 12].tolist() != scored[24, 28].tolist()  # coloured by score


def test_draw_caption_writes_white_on_a_dark_box_and_leaves_the_input_alone():
    image = np.full((60, 200, 3), 128, np.uint8)
    captioned = draw_caption(image, "step 2500")
    assert (image == 128).all()
    box = captioned[6:30, 4:100]
    assert (box == 0).all(axis=-1).mean() > 0.5 and (box >= 200).all(axis=-1).any()  # dark box, white text
    assert (captioned[45:, :] == 128).all() and (captioned[:, 150:] == 128).all()  # only the corner changes


def test_save_gif_round_trip(tmp_path):
    frames = [np.full((16, 24, 3), value, np.uint8) for value in (0, 120, 250)]
    path = save_gif(frames, tmp_path / "sub" / "anim.gif", duration_ms=50, last_frame_ms=500)
    with Image.open(path) as gif:
        assert gif.n_frames == 3 and gif.size == (24, 16)
        gif.seek(1)
        assert abs(int(np.asarray(gif.convert("RGB"))[0, 0, 0]) - 120) <= 2
        gif.seek(2)
        assert gif.info["duration"] == 500
    with pytest.raises(ValueError, match="same size"):
        save_gif([frames[0], np.zeros((8, 8, 3), np.uint8)], tmp_path / "bad.gif")
    with pytest.raises(ValueError, match="at least one frame"):
        save_gif([], tmp_path / "empty.gif")


def test_save_image_errors_are_data_errors(tmp_path):
    save_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    assert Image.open(tmp_path / "a.png").size == (4, 4)
    with pytest.raises(DataError, match="cannot write image"):
        save_image(tmp_path / "a.unknown_suffix", np.zeros((4, 4, 3), np.uint8))


def test_to_rgb_uint8_scales_uint16_and_takes_bf16():
    values = np.array([[0, 128, 129, 257 * 100], [65535, 65406, 65407, 1000]], np.uint16)
    expected = [[0, 0, 1, 100], [255, 254, 255, 4]]  # round(v / 257): 128.5 / 257 = 0.5
    assert to_rgb_uint8(values)[..., 0].tolist() == expected
    tensor = torch.from_numpy(values.astype(np.int32)).to(torch.uint16)
    assert to_rgb_uint8(tensor)[..., 1].tolist() == expected
    image = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(0)).bfloat16()
    np.testing.assert_array_equal(to_rgb_uint8(image), to_rgb_uint8(image.float()))
    kpts, scores = torch.tensor([[8.0, 8.0], [24.0, 20.0]]), torch.tensor([0.2, 0.9])
    canvas = np.zeros((32, 32, 3), np.uint8)
    np.testing.assert_array_equal(
        draw_keypoints(canvas, kpts.bfloat16(), scores.bfloat16()), draw_keypoints(canvas, kpts, scores)
    )
    matches = torch.tensor([[0, 1], [1, 0]])
    np.testing.assert_array_equal(
        draw_matches(image, image, kpts.bfloat16(), kpts.bfloat16(), matches),
        draw_matches(image.float(), image.float(), kpts, kpts, matches),
    )


def test_draw_matches_needs_matches_of_shape_m_by_2():
    image = np.zeros((32, 40, 3), np.uint8)
    kpts = np.array([[5.0, 5.0], [10.0, 20.0], [30.0, 8.0]])
    matches = np.array([[0, 2], [1, 1], [2, 0]])
    for bad in (matches.T[:, :3], np.concatenate([matches, matches[:, :1]], axis=1), matches.ravel()):
        with pytest.raises(ValueError, match=r"matches must have shape \(M, 2\)"):
            draw_matches(image, image, kpts, kpts, bad)
    plain = draw_matches(image, image, kpts, kpts, np.zeros((0, 2), np.int64))
    assert plain.shape == (32, 90, 3)
    np.testing.assert_array_equal(draw_matches(image, image, kpts, kpts, []), plain)
    for outside in ([[0, 3]], [[-1, 0]]):  # numpy would draw the last keypoint for -1
        with pytest.raises(ValueError, match="which has 3 keypoints"):
            draw_matches(image, image, kpts, kpts, np.array(outside))


def test_draw_keypoints_needs_x_y_rows():
    """``(x, y, score)`` rows (the evaluation's) were reshaped into wrong points and drawn without a word."""
    image = np.zeros((32, 40, 3), np.uint8)
    with pytest.raises(ValueError, match=r"keypoints must have shape \(N, 2\)"):
        draw_keypoints(image, [[1.0, 2.0, 0.5], [3.0, 4.0, 0.6]])
    single, pairs = draw_keypoints(image, [5.0, 6.0]), draw_keypoints(image, [[5.0, 6.0]])
    np.testing.assert_array_equal(single, pairs)
    np.testing.assert_array_equal(draw_keypoints(image, np.zeros((0, 2))), draw_keypoints(image, []))
