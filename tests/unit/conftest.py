import pytest
import torch

from kp2d.models import KeyPointNet


@pytest.fixture(scope="module")
def random_net() -> KeyPointNet:
    """Random weights, Kaiming-initialised so that scores and offsets vary across cells (one per file)."""
    torch.manual_seed(0)
    net = KeyPointNet()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, a=0.01)
    return net.eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    """A textured 64x96 RGB image in [0, 1] (seeded)."""
    generator = torch.Generator().manual_seed(1)
    return torch.rand(3, 64, 96, generator=generator)


@pytest.fixture(scope="module")
def channels_last_net(random_net) -> KeyPointNet:
    """:func:`random_net` in channels-last layout, as the CPU paths run it."""
    return random_net.to(memory_format=torch.channels_last)
