"""How descriptors are read from the dense map (``descriptor_sampling``): by hand, through every path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from kp2d.deploy.shipping import make_pretrained, reference_error
from kp2d.errors import ConfigError
from kp2d.features.dense import descriptor_grid, map_points, read_map, sample_descriptors
from kp2d.features.extraction import extract
from kp2d.io.inference import InferenceSettings, check_descriptor_sampling, inference_settings_from
from kp2d.models import KeyPointNet

ROWS, COLS, STRIDE = 3, 5, 8  # a 3x5 map of 8-px cells over a 24x40 image


def _index_map() -> torch.Tensor:
    """``(1, 2, 3, 5)``: each cell holds its own column and row."""
    cols = torch.arange(COLS, dtype=torch.float32).expand(ROWS, COLS)
    rows = torch.arange(ROWS, dtype=torch.float32)[:, None].expand(ROWS, COLS)
    return torch.stack([cols, rows])[None]


def _read(points: list[list[float]], sampling: str) -> torch.Tensor:
    """``(N, 2)`` (column, row) that ``sampling`` reads at pixel ``points``."""
    grid = descriptor_grid(torch.tensor(points)[None, :, None], ROWS * STRIDE, COLS * STRIDE, sampling)
    return read_map(_index_map(), grid, sampling)[0, :, :, 0].t()


def test_centred_reads_each_cell_at_the_centre_of_its_pixels():
    """Cell j covers pixels 8j..8j+7: at 8j + 3.5 it reads cell j exactly, halfway to the next one half of
    each, and beyond the first and last centres the border cells."""
    got = _read([[3.5, 3.5], [11.5, 19.5], [7.5, 3.5], [0.0, 0.0], [39.0, 23.0]], "centred")
    want = torch.tensor([[0.0, 0.0], [1.0, 2.0], [0.5, 0.0], [0.0, 0.0], [4.0, 2.0]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_original_reads_the_maps_corners_at_the_images_corners():
    """The original code's way: pixel x reads column x * (5 - 1) / (40 - 1), so cell 1's centre pixel
    (11.5) reads column 1.18, and the last pixel the last column."""
    got = _read([[11.5, 19.5], [39.0, 23.0], [0.0, 0.0]], "original")
    want = torch.tensor([[11.5 * 4 / 39, 19.5 * 2 / 23], [4.0, 2.0], [0.0, 0.0]])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampling", ["original", "centred"])
def test_map_points_weigh_the_cells_as_grid_sample_reads_them(sampling):
    """The sparse path's bilinear weights give the dense path's values, inside and at the borders."""
    generator = torch.Generator().manual_seed(3)
    points = torch.rand(50, 2, generator=generator) * torch.tensor([COLS * STRIDE - 1, ROWS * STRIDE - 1])
    points = torch.cat([points, torch.tensor([[0.0, 0.0], [39.0, 23.0], [2.0, 22.9]])])
    values = torch.rand(1, 1, ROWS, COLS, generator=generator)
    at = map_points(points, ROWS * STRIDE, COLS * STRIDE, ROWS, COLS, sampling)
    padded = torch.nn.functional.pad(values[0, 0], (0, 1, 0, 1))  # the cell beyond gets weight 0
    corners = torch.stack([padded[at.top + i, at.left + j] for i in (0, 1) for j in (0, 1)], dim=1)
    sparse = (corners.view(-1, 2, 2) * at.weights[:, 0]).sum(dim=(1, 2))
    grid = descriptor_grid(points[None, :, None], ROWS * STRIDE, COLS * STRIDE, sampling)
    torch.testing.assert_close(sparse, read_map(values, grid, sampling)[0, 0, :, 0], atol=1e-6, rtol=0)


def test_settings_entry_label_and_check():
    centred = InferenceSettings(2.0, descriptor_sampling="centred")
    assert centred.to_entry() == {"scale_factor": 2.0, "descriptor_sampling": "centred"}
    assert centred.label() == " (input x2, descriptors centred)"
    assert "descriptor_sampling" not in InferenceSettings(2.0).to_entry()
    assert inference_settings_from(centred.to_entry(), "x.pt") == centred
    assert check_descriptor_sampling(" Centred") == "centred"
    for bad in ("corners", None, 1):
        with pytest.raises(ConfigError, match="descriptor_sampling must be one of original, centred"):
            check_descriptor_sampling(bad)


@pytest.fixture()
def net(random_net):
    """The module's random network, its settings put back afterwards."""
    settings = random_net.inference_settings
    yield random_net
    random_net.inference_settings = settings


def _sampled(net: KeyPointNet, image: torch.Tensor, sampling: str) -> torch.Tensor:
    """The dense map read at every cell's keypoint, ``(B, 256, Hc, Wc)``."""
    with torch.no_grad():
        out = net.eval()(image[None])
    return sample_descriptors(out.desc, out.coord, *image.shape[-2:], sampling)


def test_the_network_and_its_backend_read_the_recorded_way(net, image):
    """``describe`` follows the settings; the default (faster) backend is rebuilt when they change."""
    original = _sampled(net, image, "original")
    centred = _sampled(net, image, "centred")
    assert (original - centred).abs().max() > 1e-2
    with torch.no_grad():
        torch.testing.assert_close(net.describe(image[None]).desc, original)
        before = net.default_backend("auto")
        net.inference_settings = dataclasses.replace(net.inference_settings, descriptor_sampling="centred")
        torch.testing.assert_close(net.describe(image[None]).desc, centred)
        torch.testing.assert_close(net.describe(image[None], sampling="original").desc, original)
        after = net.default_backend("auto")
        assert after is not before
        tolerance = 5e-2 if after.name == "torch-bf16" else 1e-4
        torch.testing.assert_close(after(image[None]).desc, centred, atol=tolerance, rtol=0)


def test_extract_gives_the_centred_descriptors_at_its_keypoints(net, image):
    """Same keypoints either way; the descriptors are the map read the centred way at them."""
    plain = extract(net, image, top_k=40, precision="fp32")
    net.inference_settings = dataclasses.replace(net.inference_settings, descriptor_sampling="centred")
    got = extract(net, image, top_k=40, precision="fp32")
    torch.testing.assert_close(got.keypoints, plain.keypoints)
    with torch.no_grad():
        dense = net.eval()(image[None]).desc
    want = sample_descriptors(dense, got.keypoints.t()[None, :, :, None], *image.shape[-2:], "centred")
    torch.testing.assert_close(got.descriptors, want[0, :, :, 0].t(), atol=1e-5, rtol=1e-4)
    assert (got.descriptors - plain.descriptors).abs().max() > 1e-2


def test_a_shipped_files_reference_is_the_originals(net, tmp_path):
    """A file recording centred sampling loads with it, and its reference stays what the original code
    computes (checked with the original sampling)."""
    from kp2d.config import load_config
    from kp2d.io.checkpoint import save_checkpoint
    from kp2d.models.keypoint_net import load_keypoint_net

    source = tmp_path / "net.ckpt"
    save_checkpoint(source, load_config("v4"), net, step=1)
    out = make_pretrained(source, tmp_path / "net.pt", torch.float32, {},
                          InferenceSettings(2.0, descriptor_sampling="centred"))
    loaded = load_keypoint_net(out)
    assert loaded.inference_settings.descriptor_sampling == "centred"
    reference = torch.load(out, map_location="cpu", weights_only=True)["reference"]
    # float32 rounding only: coordinates of ~100 px differ by ~1e-5 between CPUs' kernels (AVX2, AVX-512)
    assert max(reference_error(loaded, reference).values()) < 1e-4


@pytest.mark.slow
def test_the_onnx_graph_reads_the_recorded_way(net, image, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from kp2d.deploy.onnx import export_onnx

    net.inference_settings = dataclasses.replace(net.inference_settings, descriptor_sampling="centred")
    path = export_onnx(net, tmp_path / "centred.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    desc = session.run(["desc"], {"image": image[None].numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(desc), _sampled(net, image, "centred"), atol=1e-4, rtol=0)
