"""Descriptors at the selected keypoints only (``KeyPointNet.descriptors_at``) equal the dense map's."""

from __future__ import annotations

import dataclasses

import cv2
import pytest
import skimage.data
import torch

from kp2d.deploy.backends import load_backend
from kp2d.features.dense import conv3x3_at, gather_patches, map_points, padded_cells, sample_descriptors
from kp2d.features.extraction import extract
from kp2d.models import KeyPointNet


def _astronaut(size: tuple[int, int] = (160, 128)) -> torch.Tensor:
    """A real photo, ``(1, 3, H, W)`` in [0, 1] at ``size = (W, H)``."""
    rgb = cv2.resize(skimage.data.astronaut(), size, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0


def _dense_at(
    net: KeyPointNet, features, batch_index, points, height, width, sampling: str = "original"
) -> torch.Tensor:
    """The reference: the dense map sampled by ``sample_descriptors``, ``(N, 256)``."""
    dense = net.descriptor_map(features)
    out = [
        sample_descriptors(dense[b : b + 1], point.t()[None, :, None, :], height, width, sampling)[0, :, :, 0]
        .t()
        for b, point in zip(batch_index.tolist(), points.split(1), strict=True)
    ]
    return torch.cat(out)


def test_map_points_and_windows_by_hand():
    # a 4x5 map covering a 16x20 image: x = 19 (last column) lands on column 4 with weight 1
    at = map_points(torch.tensor([[0.0, 0.0], [19.0, 7.5]]), 16, 20, 4, 5)
    assert at.left.tolist() == [0, 4] and at.top.tolist() == [0, 1]
    torch.testing.assert_close(at.weights[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(at.weights[1, 0], torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
    maps = torch.arange(20.0).reshape(1, 1, 4, 5)
    window = gather_patches(maps, torch.tensor([0]), torch.tensor([-1]), torch.tensor([3]), 3)
    # rows -1..1, columns 3..5: outside the map reads 0
    assert window[0, 0].tolist() == [[0, 0, 0], [3, 4, 0], [8, 9, 0]]


@pytest.mark.parametrize(("name", "sampling"), [("lite", "original"), ("v4", "original"), ("v0", "original"),
                                               ("lite", "centred"), ("v4", "centred")])
def test_descriptors_at_equal_the_dense_map_sampled(name, sampling):
    net = KeyPointNet.from_pretrained(name).eval()
    images = torch.cat([_astronaut(), _astronaut().flip(-1)])
    height, width = images.shape[-2:]
    with torch.no_grad():
        _, coord, features = net.forward_cells(images)
        rows, cols = coord.shape[-2:]
        points = coord.flatten(2).transpose(1, 2).reshape(-1, 2)
        # the image's corners and edges, where the windows reach past the map
        corners = torch.tensor([[0.0, 0.0], [width - 1, height - 1], [width - 1, 0.0], [0.0, 37.2]])
        points = torch.cat([corners, points[torch.randperm(len(points), generator=torch.Generator())[:60]]])
        batch_index = torch.arange(len(points)) % 2
        expected = _dense_at(net, features, batch_index, points, height, width, sampling)
        few = net.descriptors_at(features, batch_index, points, height, width, sampling)  # windows
        every = torch.cat([coord.flatten(2).transpose(1, 2).reshape(-1, 2)])
        every_index = torch.arange(2).repeat_interleave(rows * cols)
        all_cells = net.descriptors_at(features, every_index, every, height, width, sampling)  # dense map
        none = net.descriptors_at(features, every_index[:0], every[:0], height, width, sampling)
    torch.testing.assert_close(few, expected, atol=1e-5, rtol=1e-4)
    dense = _dense_at(net, features, every_index, every, height, width, sampling)
    torch.testing.assert_close(all_cells, dense, atol=1e-5, rtol=1e-4)
    assert none.shape == (0, 256)


@pytest.mark.parametrize("backend_name", ["torch-fp32", "torch-fused", "torch-bf16"])
@pytest.mark.parametrize("settings", [{}, {"scale_factor": 1.5, "extra_rotations": (45,)}])
def test_extract_gives_the_dense_paths_keypoints_and_descriptors(backend_name, settings):
    net = KeyPointNet.from_pretrained("lite")
    backend = load_backend(backend_name, net)
    dense_only = dataclasses.replace(backend, cells=None, descriptors_at=None)
    image = _astronaut((200, 152))[0]
    got = extract(net, image, top_k=120, backend=backend, **settings)
    expected = extract(net, image, top_k=120, backend=dense_only, **settings)
    torch.testing.assert_close(got.keypoints, expected.keypoints)
    torch.testing.assert_close(got.scores, expected.scores)
    tolerance = 2e-2 if backend_name == "torch-bf16" else 1e-5  # bf16 convolutions on other blockings
    torch.testing.assert_close(got.descriptors, expected.descriptors, atol=tolerance, rtol=0)
    got.descriptors += 0  # ordinary tensors, not inference-mode ones


def test_extract_with_the_plain_network_keeps_its_mode_and_gives_the_dense_descriptors():
    net = KeyPointNet.from_pretrained("lite").train()
    images = torch.cat([_astronaut(), torch.zeros(1, 3, 128, 160)])
    got = extract(net, images, top_k=80, precision="fp32", scale_factor=1)
    assert net.training
    with torch.no_grad():
        out = net.eval().describe(images)
    first = got[0]
    cells = (first.keypoints[:, None, :] - out.coord[0].flatten(1).t()[None]).abs().sum(-1).argmin(1)
    torch.testing.assert_close(first.descriptors, out.desc[0].flatten(1).t()[cells], atol=1e-5, rtol=0)
    assert len(got[1]) == 0 and got[1].descriptors.shape == (0, 256)


def test_conv3x3_at_equals_the_padded_layer_at_those_cells():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 4, 3, padding=1, bias=False)
    norm = torch.nn.BatchNorm2d(4).eval()
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    layer = torch.nn.Sequential(conv, norm, torch.nn.LeakyReLU(0.1))
    maps = torch.randn(2, 5, 6, 7)
    # corners and edges (whose neighbourhoods reach the zero padding) and inner cells of both images
    batch_index = torch.tensor([0, 0, 1, 1, 1, 0])
    rows, cols = torch.tensor([0, 5, 0, 5, 3, 2]), torch.tensor([0, 6, 6, 0, 4, 3])
    with torch.no_grad():
        got = conv3x3_at(layer, padded_cells(maps), batch_index, rows, cols)
        want = layer(maps)[batch_index, :, rows, cols]
    assert got.shape == (6, 4)
    torch.testing.assert_close(got, want)
    with pytest.raises(TypeError, match="3x3"):
        conv3x3_at(torch.nn.Conv2d(5, 4, 1), padded_cells(maps), batch_index, rows, cols)


def test_descriptors_at_run_the_head_once_per_cell(monkeypatch):
    """One point reads 2x2 map cells, which read the first layer at 4x4 cells; a second point reading the
    same cells adds none, and both get the dense map's descriptor."""
    import kp2d.models.keypoint_net as keypoint_net

    cells_asked: list[int] = []

    def counting(layer, padded, batch_index, rows, cols):
        cells_asked.append(len(rows))
        return conv3x3_at(layer, padded, batch_index, rows, cols)

    monkeypatch.setattr(keypoint_net, "conv3x3_at", counting)
    net = KeyPointNet.from_pretrained("lite").eval()
    image = _astronaut((320, 256))  # a 32x40 map
    height, width = image.shape[-2:]
    # centred reading: x = 84 px lands at (84 + 0.5) / 8 - 0.5 = 10.06, between map columns 10 and 11
    points = torch.tensor([[84.0, 100.0], [86.0, 101.0]])
    batch_index = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        features = net.forward_cells(image).features
        got = net.descriptors_at(features, batch_index, points, height, width, "centred")
        expected = _dense_at(net, features, batch_index, points, height, width, "centred")
    assert cells_asked == [16, 4]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
