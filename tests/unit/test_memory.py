"""Images too large for the memory are refused, or shrunk to fit on request (issue 25, item 6)."""

import json
import re

import cv2
import numpy as np
import pytest
import torch

import kp2d.io.images
from cli_output import single_error_line
from kp2d import memory
from kp2d.cli import main
from kp2d.config import load_config
from kp2d.errors import ConfigError, DataError
from kp2d.eval.settings import check_eval_memory
from kp2d.features.extraction import extract, extract_with_score_map, to_image_pixels
from kp2d.io.checkpoint import save_checkpoint
from kp2d.memory import (
    ENV_VAR,
    FIXED_BYTES,
    SAFETY,
    _cgroup_headroom,
    _mem_available,
    available_memory,
    check_extract_memory,
    extract_memory,
    keep_freed_memory,
    parse_bytes,
)

MIB = 2**20


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3G", 3 * 2**30), ("500M", 500 * MIB), ("2.5g", int(2.5 * 2**30)), ("1024", 1024), ("64KiB", 65536),
     ("none", None), ("off", None)],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-3G", "0", "3X"])
def test_parse_bytes_refuses_nonsense(text):
    with pytest.raises(ConfigError, match=f"^{ENV_VAR} must be a size"):
        parse_bytes(text)


def test_cgroup_v2_and_v1_headroom(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("3221225472\n")  # 3 GiB
    (v2 / "memory.current").write_text(f"{1024 * MIB}\n")
    (v2 / "memory.stat").write_text(f"anon 1\ninactive_file {100 * MIB}\n")
    assert _cgroup_headroom(v2) == (3072 - 1024 + 100) * MIB
    (v2 / "memory.max").write_text("max\n")
    assert _cgroup_headroom(v2) is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{512 * MIB}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{600 * MIB}\n")  # over the limit: nothing left
    assert _cgroup_headroom(tmp_path / "v1") == 0
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert _cgroup_headroom(tmp_path / "v1") is None


def test_mem_available_and_the_override(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000000 kB\nMemAvailable:    2048 kB\n")
    assert _mem_available(meminfo) == 2048 * 1024
    monkeypatch.setenv(ENV_VAR, "200M")
    assert available_memory() == 200 * MIB
    monkeypatch.setenv(ENV_VAR, "none")
    assert available_memory() is None


def test_estimate_by_hand():
    # 100x60 pads to 104x64 = 6656 pixels at 420 bytes each
    assert extract_memory(100, 60) == int((420 * 6656 + FIXED_BYTES) * SAFETY)
    assert extract_memory(100, 60, batch=3) == int((420 * 6656 * 3 + FIXED_BYTES) * SAFETY)
    assert extract_memory(100, 60, backend="torch-bf16") > extract_memory(100, 60)


def test_named_size_fits_and_a_larger_one_does_not():
    budget = 200 * MIB
    with pytest.raises(DataError) as info:
        check_extract_memory(9000, 12000, budget=budget)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("image is 12000x9000 pixels: extracting needs about ")
    width, height = map(int, re.search(r"the largest size that fits is (\d+)x(\d+) ", message).groups())
    assert abs(width / height - 12000 / 9000) < 0.01
    assert extract_memory(height, width) <= budget < extract_memory(round(height * 1.05), round(width * 1.05))
    assert check_extract_memory(height, width, budget=budget) == (height, width)
    assert check_extract_memory(9000, 12000, budget=budget, fit=True) == (height, width)
    assert check_extract_memory(4500, 6000, scale_factor=2.0, budget=budget, fit=True) == (height, width)
    with pytest.raises(DataError, match=rf"fits is {width // 2}x{height // 2} at scale_factor 2 "):
        check_extract_memory(4500, 6000, scale_factor=2.0, budget=budget)


def test_no_size_fits_a_tiny_budget():
    with pytest.raises(DataError, match="not even a 32-pixel image fits"):
        check_extract_memory(480, 640, budget=10 * MIB, fit=True)


def photo(height: int, width: int) -> np.ndarray:
    """A smooth random RGB uint8 image (blobs give the detector varied scores)."""
    noise = np.random.default_rng(0).uniform(0, 255, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float32)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def test_api_refuses_before_converting_the_image(random_net, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "200M")

    def never(*args, **kwargs):
        raise AssertionError("the image was converted before the memory check")

    monkeypatch.setattr(kp2d.io.images, "_as_batch", never)
    large = np.zeros((3000, 4000, 3), np.uint8)  # needs ~5.7 GB
    expected = r"^image is 4000x3000 pixels: .* the largest size that fits is \d+x\d+ "
    with pytest.raises(DataError, match=expected):
        extract(random_net, large)
    with pytest.raises(DataError, match="^image is 4000x3000 pixels"):
        extract(random_net, torch.zeros(3, 3000, 4000))


def test_fit_memory_runs_the_shrunk_image_and_maps_back(random_net, monkeypatch):
    image = photo(480, 640)
    budget = extract_memory(200, 260)
    monkeypatch.setenv(ENV_VAR, str(budget))
    height, width = check_extract_memory(480, 640, budget=budget, fit=True)
    size = (width, height)
    assert size[0] < 640
    kpts, scores = extract_with_score_map(random_net, image, top_k=200, nms_radius=4.0, fit_memory=True)

    monkeypatch.setenv(ENV_VAR, "none")
    shrunk = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    radius = 4.0 * size[0] / 640
    expected, expected_scores = extract_with_score_map(random_net, shrunk, top_k=200, nms_radius=radius)
    assert kpts.image_size == (640, 480)
    assert len(kpts) == len(expected) > 50
    mapped = to_image_pixels(expected.keypoints.t()[None], size, (640, 480))[0].t()
    torch.testing.assert_close(kpts.keypoints, mapped)
    torch.testing.assert_close(kpts.descriptors, expected.descriptors)
    torch.testing.assert_close(scores, expected_scores)
    assert float(kpts.keypoints[:, 0].max()) > size[0]  # in pixels of the original image


def test_fit_memory_of_a_batch_keeps_each_image_size(random_net, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(extract_memory(100, 130, batch=2)))  # the fixed part counts once
    batch = torch.from_numpy(np.stack([photo(240, 320)] * 2)).permute(0, 3, 1, 2)
    results = extract(random_net, batch, fit_memory=True)
    assert [result.image_size for result in results] == [(320, 240)] * 2
    torch.testing.assert_close(results[0].keypoints, results[1].keypoints)
    assert float(results[0].keypoints[:, 0].max()) > 140


def test_the_model_method_takes_fit_memory_as_the_refusal_tells(random_net, monkeypatch):
    """The refusal says "pass fit_memory=True"; ``model.extract`` (the README's call) was a TypeError."""
    monkeypatch.setenv(ENV_VAR, str(extract_memory(200, 260)))
    image = photo(480, 640)
    with pytest.raises(DataError, match="fit_memory=True"):
        random_net.extract(image, top_k=200)
    kpts = random_net.extract(image, top_k=200, fit_memory=True)
    expected = extract(random_net, image, top_k=200, fit_memory=True)
    assert kpts.image_size == (640, 480)
    torch.testing.assert_close(kpts.keypoints, expected.keypoints)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, random_net):
    path = tmp_path_factory.mktemp("model") / "random.ckpt"
    save_checkpoint(path, load_config("v4"), random_net)
    return str(path)


def test_cli_detect_refuses_in_one_line_and_fits_on_request(tmp_path, checkpoint, monkeypatch, capsys):
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), photo(480, 640))
    monkeypatch.setenv(ENV_VAR, str(extract_memory(200, 260)))
    argv = ["detect", str(path), "--model", checkpoint, "--device", "cpu", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    line = single_error_line(capsys)
    assert re.fullmatch(
        rf"kp2d detect: error: {re.escape(str(path))}: image is 640x480 pixels: extracting needs about .* "
        r"the largest size that fits is \d+x\d+ .*--fit-memory.*",
        line,
    ), line
    assert not list((tmp_path / "out").glob("*.npz"))

    assert main([*argv, "--fit-memory"]) == 0
    arrays = np.load(tmp_path / "out" / "big.npz")
    assert arrays["image_size"].tolist() == [640, 480]
    assert arrays["keypoints"][:, 0].max() > 300
    record = json.loads((tmp_path / "out" / "big.json").read_text())
    assert record["image_size"] == [640, 480]
    assert cv2.imread(str(tmp_path / "out" / "big_scores.png")).shape == (480, 640, 3)


def test_eval_refuses_a_shape_too_large(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "200M")
    expected = r"^--shape 4096x3072: evaluating needs about .*give a smaller --shape"
    with pytest.raises(DataError, match=expected):
        check_eval_memory([(320, 240, 300), (4096, 3072, 1000)], 1.0, torch.device("cpu"))
    check_eval_memory([(4096, 3072, 1000)], 1.0, torch.device("cuda"))  # GPUs are not checked


@pytest.mark.skipif(memory._glibc() is None, reason="keep_freed_memory needs glibc (Linux)")
def test_kept_memory_counts_as_available(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(memory, "_cgroup_headroom", lambda: 900 * MIB)
    monkeypatch.setattr(memory, "_mem_available", lambda: 700 * MIB)
    assert available_memory() - memory._kept_free_bytes() == pytest.approx(700 * MIB, abs=MIB)
    assert keep_freed_memory() and keep_freed_memory()  # on, and again without harm
    block = torch.empty(300 * MIB // 4)
    block.fill_(1.0)
    del block
    # the 300 MiB just freed stay in the process and count as available to it
    assert memory._kept_free_bytes() >= 300 * MIB
    assert available_memory() - memory._kept_free_bytes() == pytest.approx(700 * MIB, abs=MIB)


def test_the_cli_keeps_freed_memory_for_inference_commands_only(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    assert main(["detect", str(tmp_path / "missing.png")]) == 2  # a user error, after the allocator call
    assert calls == [1]
    assert main(["train", str(tmp_path / "missing.yaml"), "--data", str(tmp_path)]) == 2
    assert calls == [1]
