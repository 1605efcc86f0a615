import pytest
import torch

from kp2d.features.dense import sample_descriptors
from kp2d.models import KeyPointNet


def test_output_shapes_and_border():
    net = KeyPointNet().eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 96))
    assert out.score.shape == (2, 1, 8, 12)
    assert out.coord.shape == (2, 2, 8, 12)
    assert out.desc.shape == (2, 256, 16, 24)  # 1/4 resolution with upsampling
    border = torch.ones(8, 12, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert (out.score[:, 0][:, border] == 0).all()
    assert (out.score[:, 0][:, ~border] > 0).all()
    assert out.coord[:, 0].min() >= 0 and out.coord[:, 0].max() <= 95
    assert out.coord[:, 1].min() >= 0 and out.coord[:, 1].max() <= 63


def test_keypoints_stay_near_their_cell():
    for do_cross, reach in [(False, 3.5), (True, 7.0)]:
        net = KeyPointNet(do_cross=do_cross, do_upsample=False).eval()
        with torch.no_grad():
            out = net(torch.rand(1, 3, 64, 64))
        centers_x = torch.arange(8).float() * 8 + 3.5
        offsets = (out.coord[0, 0] - centers_x).abs()
        assert offsets.max() <= reach + 1e-4


def test_dense_output_same_in_train_and_eval_shape():
    net = KeyPointNet(with_dropout=False)
    image = torch.rand(1, 3, 32, 32)
    assert net.train()(image).desc.shape == net.eval()(image).desc.shape


@pytest.mark.parametrize("shape", [(1, 3, 60, 64), (1, 1, 64, 64), (3, 64, 64)])
def test_bad_input_shape_raises(shape):
    with pytest.raises(ValueError, match="shape|multiples"):
        KeyPointNet()(torch.rand(*shape))


def test_grayscale_network():
    net = KeyPointNet(in_channels=1).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 32, 32)).score.shape == (1, 1, 4, 4)


@pytest.mark.slow
def test_score_and_keypoints_stay_fp32_under_bf16_autocast():
    """bf16 has an 8-bit mantissa: a coordinate in [256, 512) snaps to a 2-px grid. Heads finish in fp32."""
    torch.manual_seed(0)
    net = KeyPointNet(do_upsample=True, do_cross=True).eval()
    image = torch.rand(1, 3, 240, 320)
    with torch.no_grad():
        reference = net(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = net(image)
    assert mixed.score.dtype == torch.float32 and mixed.coord.dtype == torch.float32
    right = mixed.coord[:, 0][mixed.coord[:, 0] > 256]
    assert right.numel() > 100 and (right.remainder(2) != 0).float().mean() > 0.9  # off the 2-px grid
    # only the bf16 trunk differs: keypoints within a fraction of a pixel of the fp32 network's
    assert (mixed.coord - reference.coord).abs().max() < 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_half_precision_descriptors_are_sampled_in_float32(dtype, channels_last):
    """PyTorch's CPU grid_sample in fp16 / bf16 gives wrong values (NaN rows for channels-last fp16)."""
    generator = torch.Generator().manual_seed(0)
    desc = torch.randn(1, 256, 60, 80, generator=generator).to(dtype)
    coord = torch.rand(1, 2, 30, 40, generator=generator) * torch.tensor([319.0, 239.0]).view(1, 2, 1, 1)
    expected = sample_descriptors(desc.float(), coord, 240, 320)  # the same (rounded) map, in float32
    if channels_last:
        desc = desc.contiguous(memory_format=torch.channels_last)
    sampled = sample_descriptors(desc, coord, 240, 320)
    assert sampled.dtype == torch.float32
    torch.testing.assert_close(sampled, expected, atol=1e-6, rtol=0)
    float64 = sample_descriptors(desc.double(), coord.double(), 240, 320)
    assert float64.dtype == torch.float64  # other dtypes are sampled as they are
