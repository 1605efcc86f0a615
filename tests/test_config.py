import pytest

from kp2d.config import list_presets, load_config, parse_image_shape
from kp2d.errors import ConfigError


def test_presets_are_the_ablations():
    assert list_presets() == ["v0", "v1", "v2", "v3", "v4"]
    flags = {
        name: (c.model.do_cross, c.model.do_upsample, c.model.with_io, c.loss.descriptor_loss)
        for name in list_presets()
        for c in [load_config(name)]
    }
    assert flags == {
        "v0": (False, False, False, True),
        "v1": (True, False, False, True),
        "v2": (True, True, False, True),
        "v3": (True, True, True, False),
        "v4": (True, True, True, True),
    }


def test_original_defaults():
    c = load_config("v4")
    assert (c.train.batch_size, c.train.epochs, c.train.seed) == (8, 50, 42)
    assert (c.optim.learning_rate, c.optim.lr_decay, c.optim.lr_decay_epochs) == (1e-3, 0.5, 40)
    assert c.augmentation.image_shape == (240, 320)
    assert c.loss.io_selection == "lowest"


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: v2\nloss:\n  triplet_margn: 0.3\n")
    with pytest.raises(ConfigError, match="loss.triplet_margn"):
        load_config(path)


def test_user_file_extends_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: v3\ntrain:\n  batch_size: 4\n")
    c = load_config(path)
    assert c.train.batch_size == 4 and c.model.with_io and not c.loss.descriptor_loss


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train": {"batch_size": "8"}}, "integer"),
        ({"model": {"do_cross": 1}}, "true or false"),
        ({"augmentation": {"image_shape": [240, 321]}}, "multiples of 8"),
        ({"loss": {"io_selection": "top"}}, "io_selection"),
        ({"augmentation": {"blur_kernels": [0, 4]}}, "blur_kernels"),
    ],
)
def test_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("v4", override)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown config 'v7'"):
        load_config("v7")


def test_parse_image_shape():
    assert parse_image_shape("240x320") == (240, 320)
    assert parse_image_shape("480X640") == (480, 640)
    for bad in ("240x321", "16x16", "240", "240x320x3", "ax320"):
        with pytest.raises(ConfigError, match=f"expected HxW .* got '{bad}'"):
            parse_image_shape(bad)
