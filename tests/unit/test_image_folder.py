import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data as samples

from kp2d.data.image_folder import ImageFolderDataset, list_images, read_image_rgb
from kp2d.errors import DataError, user_message
from kp2d.io.images import resize_image


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Photos in nested folders, mixed extension case, plus files that must be ignored."""
    root = tmp_path / "photos"
    write_rgb(root / "b" / "astronaut.PNG", samples.astronaut()[::4, ::4])
    write_rgb(root / "a.jpg", samples.coffee()[::4, ::4])
    write_rgb(root / "b" / "c" / "chelsea.jpeg", samples.chelsea()[::4, ::4])
    (root / "notes.txt").write_text("not an image")
    write_rgb(root / ".hidden" / "x.jpg", samples.coffee()[::8, ::8])
    write_rgb(root / "._a.jpg", samples.coffee()[::8, ::8])
    return root


def test_lists_recursively_and_sorted(photo_folder):
    names = [p.relative_to(photo_folder).as_posix() for p in list_images(photo_folder)]
    assert names == ["a.jpg", "b/astronaut.PNG", "b/c/chelsea.jpeg"]


def test_items_are_resized_uint8_rgb(photo_folder):
    dataset = ImageFolderDataset(photo_folder, image_shape=(48, 64))
    assert len(dataset) == 3
    item = dataset[1]  # astronaut, 128x128 -> 48x64 with INTER_AREA
    assert item.dtype == torch.uint8 and item.shape == (3, 48, 64)
    source = cv2.imread(str(photo_folder / "b" / "astronaut.PNG"))[..., ::-1]
    expected = cv2.resize(np.ascontiguousarray(source), (64, 48), interpolation=cv2.INTER_AREA)
    assert torch.equal(item, torch.from_numpy(expected.transpose(2, 0, 1).copy()))
    # RGB order: the astronaut's suit is white, the background dark; the coffee image is reddish
    coffee = dataset[0].float().mean(dim=(1, 2))
    assert coffee[0] > coffee[2]


def test_resize_interpolation_choice():
    image = np.zeros((10, 10, 3), np.uint8)
    image[:, ::2] = 255
    assert resize_image(image, (5, 5), area_when_shrinking=True).std() < 1  # area averaging: flat grey
    up = resize_image(image[:4, :4], (8, 8), area_when_shrinking=True)
    assert up.shape == (8, 8, 3)
    assert resize_image(image, (10, 10)) is image


def test_resize_takes_width_then_height_in_every_mode():
    """One resize, OpenCV's (W, H) order: the training reader used (H, W), the HPatches reader (W, H)."""
    image = np.zeros((10, 20, 3), np.uint8)
    for area in (False, True):
        assert resize_image(image, (8, 4), area_when_shrinking=area).shape == (4, 8, 3)
        assert resize_image(image, (40, 30), area_when_shrinking=area).shape == (30, 40, 3)


def test_grayscale_rgba_and_16bit(tmp_path):
    gray = samples.camera()[::8, ::8]  # (64, 64) uint8
    cv2.imwrite(str(tmp_path / "gray.pgm"), gray)
    rgb = samples.astronaut()[::8, ::8]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    gray16 = np.minimum(gray.astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)  # rounds back to gray
    cv2.imwrite(str(tmp_path / "gray16.png"), gray16)
    color16 = rgb.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "color16.png"), cv2.cvtColor(color16, cv2.COLOR_RGB2BGR))

    np.testing.assert_array_equal(read_image_rgb(tmp_path / "gray.pgm"), np.dstack([gray] * 3))
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "rgba.png"), rgb)
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "gray16.png"), np.dstack([gray] * 3))
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "color16.png"), rgb)
    dataset = ImageFolderDataset(tmp_path, image_shape=(32, 40))
    assert all(item.shape == (3, 32, 40) and item.dtype == torch.uint8 for item in dataset)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="not found.*nowhere"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images.*empty"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="not a folder"):
        ImageFolderDataset(tmp_path / "file.jpg")


@pytest.fixture
def folder_with_bad_files(photo_folder: Path) -> Path:
    (photo_folder / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (photo_folder / "b" / "empty.png").write_bytes(b"")
    return photo_folder  # sorted: a.jpg, b/astronaut.PNG, b/broken.jpg, b/c/chelsea.jpeg, b/empty.png


def test_corrupt_file_raises_naming_it(folder_with_bad_files):
    dataset = ImageFolderDataset(folder_with_bad_files, image_shape=(24, 32))
    assert dataset[0].shape == (3, 24, 32)
    with pytest.raises(DataError, match="broken.jpg"):
        dataset[2]
    with pytest.raises(DataError, match="empty.png"):
        dataset[4]


def test_skip_bad_warns_once_and_replaces(folder_with_bad_files, caplog):
    dataset = ImageFolderDataset(folder_with_bad_files, image_shape=(24, 32), skip_bad=True)
    with caplog.at_level(logging.WARNING, logger="kp2d.data.image_folder"):
        first = dataset[2]
        second = dataset[2]
        wrapped = dataset[4]  # the last file is bad: wraps around to the first
    assert torch.equal(first, dataset.load(3)) and torch.equal(second, first)
    assert torch.equal(wrapped, dataset.load(0))
    assert [p.name for p in dataset.bad_files] == ["broken.jpg", "empty.png"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "broken.jpg" in warnings[0] and "empty.png" in warnings[1]


def test_all_bad_files_with_skip_bad(tmp_path):
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no readable image"):
        ImageFolderDataset(tmp_path, skip_bad=True)[0]


def test_cache_gives_identical_items(photo_folder):
    plain = ImageFolderDataset(photo_folder, image_shape=(24, 32))
    cached = ImageFolderDataset(photo_folder, image_shape=(24, 32), cache=True)
    expected = [plain[i] for i in range(len(plain))]
    assert all(torch.equal(cached[i], expected[i]) for i in range(len(cached)))
    for path in plain.paths:  # from now on the cache serves the items without the files
        path.unlink()
    items = [cached[i] for i in range(len(cached))]
    assert all(torch.equal(item, want) for item, want in zip(items, expected, strict=True))
    items[0].zero_()  # callers may modify what they get without corrupting the cache
    assert torch.equal(cached[0], expected[0])


def test_preload_and_dataloader(photo_folder):
    dataset = ImageFolderDataset(photo_folder, image_shape=(24, 32))
    dataset.preload()
    assert len(dataset._cached) == 3
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch.shape == (3, 3, 24, 32) and batch.dtype == torch.uint8
    assert dataset[-1].shape == (3, 24, 32)
    with pytest.raises(IndexError):
        dataset[3]


def test_user_message_unwraps_a_worker_error(folder_with_bad_files):
    """Through a DataLoader worker the error keeps its type, and user_message gives back its own message."""
    dataset = ImageFolderDataset(folder_with_bad_files, image_shape=(24, 32))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=[2], num_workers=1)
    with pytest.raises(DataError) as raised:
        next(iter(loader))
    assert "Traceback" in str(raised.value)  # what PyTorch makes of it
    message = user_message(raised.value)
    assert ": cannot decode image (" in message and message.endswith("skips unreadable images")
    assert "broken.jpg" in message and "\n" not in message
    plain = DataError("image not found: x.png")
    assert user_message(plain) == "image not found: x.png"


def test_tiff_and_webp_photos_are_found_and_read(tmp_path):
    rgb = samples.astronaut()[::8, ::8]
    for name in ("a.tif", "b.TIFF", "c.webp"):
        ok, encoded = cv2.imencode(Path(name).suffix.lower(), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        assert ok
        (tmp_path / name).write_bytes(encoded.tobytes())
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.TIFF", "c.webp"]
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "a.tif"), rgb)  # lossless
    assert read_image_rgb(tmp_path / "c.webp").shape == rgb.shape


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(__import__("os"), "symlink"), reason="needs symbolic links")
def test_links_back_up_the_tree_are_walked_once(tmp_path):
    """``os.walk(followlinks=True)`` followed a link to a parent about 40 times (each photo 41 times in the
    training set); two such links made the walk exponential (it never ended)."""
    import os

    root = tmp_path / "photos"
    write_rgb(root / "a" / "x.jpg", samples.coffee()[:64, :64])
    write_rgb(root / "b c.jpg", samples.chelsea()[:64, :64])
    os.symlink("..", root / "a" / "up")
    os.symlink("..", root / "a" / "up2")
    assert list_images(root) == [root / "a" / "x.jpg", root / "b c.jpg"]
