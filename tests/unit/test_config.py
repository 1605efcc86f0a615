import math
import re
from pathlib import Path

import pytest

import kp2d
from kp2d.config import list_presets, list_recipes, load_config, parse_image_shape
from kp2d.errors import ConfigError


def test_presets_are_the_ablations_and_lite():
    assert list_presets() == ["lite", "litefast", "liteslim", "v0", "v1", "v2", "v3", "v4"]
    flags = {
        name: (c.model.do_cross, c.model.do_upsample, c.model.with_io, c.loss.descriptor_loss)
        for name in list_presets()
        if not name.startswith("lite")
        for c in [load_config(name)]
    }
    assert flags == {
        "v0": (False, False, False, True),
        "v1": (True, False, False, True),
        "v2": (True, True, False, True),
        "v3": (True, True, True, False),
        "v4": (True, True, True, True),
    }
    lite = load_config("lite")
    assert (lite.model.width, lite.model.do_upsample, lite.train.teacher) == (0.5, False, "v4")
    fast = load_config("litefast")
    assert (fast.model.width, fast.model.stem, fast.model.head_rank) == (0.5, "strided", 48)
    assert fast.train.teacher == "lite"
    slim = load_config("liteslim")
    assert (slim.model.stem, slim.model.head_rank, slim.model.block2, slim.model.backbone_rank) == (
        "strided", 48, "strided", 0.5)
    assert slim.train.teacher == "litefast" and slim.train.keep_batchnorm_statistics


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
    assert c.name == "mine"  # its runs go to runs/mine by default, not to the preset's runs/v3
    path.write_text("extends: v3\nname: fine\n")
    assert load_config(path).name == "fine"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"train": {"batch_size": "8"}}, "integer"),
        ({"model": {"do_cross": 1}}, "true or false"),
        ({"augmentation": {"image_shape": [240, 321]}}, "multiples of 8"),
        ({"loss": {"io_selection": "top"}}, "io_selection"),
        ({"augmentation": {"blur_kernels": [0, 4]}}, "blur_kernels"),
        # values that crashed training (division by zero, DataLoader) or were silently accepted
        ({"train": {"checkpoint_every": 0}}, "train.checkpoint_every must be at least 1, got 0"),
        ({"train": {"log_every": 0}}, "train.log_every must be at least 1, got 0"),
        ({"optim": {"lr_decay_epochs": 0}}, "optim.lr_decay_epochs must be at least 1, got 0"),
        ({"train": {"num_workers": -1}}, "train.num_workers must be at least 0, got -1"),
        ({"train": {"val_top_k": 0}}, "train.val_top_k must be at least 1, got 0"),
        ({"train": {"val_shape": [320, 244]}}, "train.val_shape (W, H) must be multiples of 8"),
        ({"train": {"val_shape": [16, 16]}}, "train.val_shape (W, H) must be multiples of 8, at least 32"),
        # were accepted: training then died in cv2.resize or ran out of memory
        ({"augmentation": {"image_shape": [100000, 100000]}}, "image_shape must be at most 16384 a side"),
        ({"augmentation": {"image_shape": [240, 16392]}}, "image_shape must be at most 16384 a side"),
        ({"augmentation": {"crop_from": [100000, 100000]}}, "crop_from must be at most 16384 a side"),
        ({"train": {"val_shape": [100000, 240]}}, "train.val_shape (W, H) must be at most 16384 a side"),
        ({"train": {"batch_size": 0}}, "train.batch_size must be at least 1"),
        ({"train": {"epochs": 0}}, "train.epochs must be at least 1"),
        ({"train": {"val_every": -1}}, "train.val_every must be at least 0"),
        ({"train": {"snapshot_every": -2}}, "train.snapshot_every must be at least 0"),
        ({"train": {"seed": -1}}, "train.seed must be in [0, 4294967296)"),
        ({"optim": {"learning_rate": 0}}, "optim.learning_rate must be above 0, got 0.0"),
        ({"optim": {"io_learning_rate": -1e-3}}, "optim.io_learning_rate must be above 0"),
        ({"optim": {"learning_rate": math.nan}}, "optim.learning_rate must be above 0, got nan"),
        ({"optim": {"learning_rate": math.inf}}, "optim.learning_rate must be above 0, got inf"),
        ({"optim": {"weight_decay": -0.1}}, "optim.weight_decay must be at least 0"),
        ({"optim": {"lr_decay": 0}}, "optim.lr_decay must be in (0, 1]"),
        ({"optim": {"lr_decay": 2}}, "optim.lr_decay must be in (0, 1]"),
        ({"optim": {"max_lr_decays": -1}}, "optim.max_lr_decays must be at least 0"),
        ({"loss": {"io_top_k": 0}}, "loss.io_top_k must be at least 1"),
        ({"loss": {"location_threshold": 0}}, "loss.location_threshold must be above 0"),
        ({"loss": {"io_inlier_threshold": -4}}, "loss.io_inlier_threshold must be above 0"),
        ({"loss": {"descriptor_loss_weight": -2}}, "loss.descriptor_loss_weight must be at least 0"),
        ({"loss": {"triplet_margin": -0.2}}, "loss.triplet_margin must be at least 0"),
        ({"loss": {"min_valid_cells": -1}}, "loss.min_valid_cells must be at least 0"),
        ({"augmentation": {"horizontal_flip": 1.5}}, "augmentation.horizontal_flip must be in [0, 1]"),
        ({"augmentation": {"noise": -0.1}}, "augmentation.noise must be in [0, 1]"),
        ({"augmentation": {"noise_std": -0.05}}, "augmentation.noise_std must be at least 0"),
        ({"augmentation": {"patch_ratio": 0}}, "augmentation.patch_ratio must be in (0, 1]"),
        ({"augmentation": {"scaling_amplitude": 2}}, "augmentation.scaling_amplitude must be in [0, 2)"),
        ({"augmentation": {"affine_scale": [1.1, 0.9]}}, "augmentation.affine_scale must be [low, high]"),
        ({"augmentation": {"affine_scale": [0, 1.1]}}, "augmentation.affine_scale must be [low, high]"),
        ({"augmentation": {"jitter": [0.5, -0.5, 0.2, 0.05]}}, "augmentation.jitter (contrast) must be at"),
        ({"augmentation": {"jitter": [0.5, 0.5, 0.2, 0.6]}}, "augmentation.jitter (hue) must be in [0, 0.5]"),
        # crashed mid-run: a blur wider than the images, corners that line up (singular homographies; 8.0
        # gave a NaN loss at step 1), an integer too large for a float (OverflowError)
        (
            {"augmentation": {"image_shape": [64, 96], "blur_kernels": [0, 129]}},
            "a 129-tap blur needs images of more than 64 px a side, image_shape is [64, 96]",
        ),
        (
            {"augmentation": {"perspective_amplitude": 0.7}},
            "augmentation.perspective_amplitude (below patch_ratio, 0.7) must be in [0, 0.7), got 0.7",
        ),
        ({"augmentation": {"perspective_amplitude": 8.0}}, "augmentation.perspective_amplitude"),
        ({"train": {"epochs": 10**400}}, "train.epochs is too large"),
        ({"optim": {"learning_rate": "fast"}}, "optim.learning_rate: expected a number, got 'fast'"),
    ],
)
def test_bad_values(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("v4", override)


def test_bad_value_in_a_file_is_named(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: v4\ntrain:\n  checkpoint_every: 0\n")
    with pytest.raises(ConfigError, match=re.escape("train.checkpoint_every must be at least 1, got 0")):
        load_config(path)


def test_edge_values_are_accepted():
    """The bounds themselves are valid settings (0 turns snapshots, validation, workers, flips off)."""
    c = load_config("v4", {
        "train": {"val_every": 0, "snapshot_every": 0, "num_workers": 0, "log_every": 1,
                  "checkpoint_every": 1, "val_top_k": 1, "val_shape": [32, 32], "seed": 0},
        "optim": {"lr_decay": 1, "lr_decay_epochs": 1, "max_lr_decays": 0, "weight_decay": 0},
        "loss": {"min_valid_cells": 0, "io_min_inliers": 0, "triplet_margin": 0, "io_top_k": 1},
        "augmentation": {"horizontal_flip": 0, "noise": 1, "patch_ratio": 1, "affine_scale": [1, 1],
                         "jitter": [0, 0, 0, 0.5]},
    })
    assert (c.train.val_every, c.train.num_workers, c.train.val_shape) == (0, 0, (32, 32))
    assert (c.optim.lr_decay, c.optim.lr_decay_epochs) == (1.0, 1)
    assert c.augmentation.affine_scale == (1.0, 1.0) and c.augmentation.jitter[3] == 0.5


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown config 'v7'"):
        load_config("v7")


def test_parse_image_shape():
    assert parse_image_shape("240x320") == (240, 320)
    assert parse_image_shape("480X640") == (480, 640)
    assert parse_image_shape("16384x16384") == (16384, 16384)
    for bad in ("240x321", "16x16", "240", "240x320x3", "ax320", "100000x100000"):
        with pytest.raises(ConfigError, match=f"expected HxW .* got '{bad}'"):
            parse_image_shape(bad)


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    """YAML 1.1 (PyYAML) reads ``1e-4`` as a string; a float field takes it as the number it means."""
    path = tmp_path / "lr.yaml"
    path.write_text("extends: v4\noptim: {learning_rate: 1e-4, io_learning_rate: 3.0e-4}\n")
    config = load_config(path)
    assert (config.optim.learning_rate, config.optim.io_learning_rate) == (1e-4, 3e-4)


def test_a_folder_named_like_a_preset_does_not_hide_it(tmp_path, monkeypatch):
    """``kp2d train v4 --out v4`` makes a folder ``v4``; ``kp2d train v4`` there still finds the preset."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v4").mkdir()
    (tmp_path / "v3").mkdir()
    (tmp_path / "mine.yaml").write_text("extends: v3\n")
    assert load_config("v4").model.with_io
    assert not load_config("mine.yaml").loss.descriptor_loss


def test_recipes_load_as_presets_and_extend_each_other():
    assert list_recipes() == [
        "recipes/lite_shipped", "recipes/litefast_shipped", "recipes/liteslim_shipped",
        "recipes/liteslim_shipped_s2",
        "recipes/v0_shipped", "recipes/v1_shipped", "recipes/v2_shipped", "recipes/v3_shipped",
        "recipes/v4_shipped_s1", "recipes/v4_shipped_s2", "recipes/v4_shipped_s7", "recipes/v4_shipped_s8",
    ]
    S, L, J = (240, 320), (480, 640), "original_jitter_noop"
    s1, s2, s8 = (load_config(f"recipes/v4_shipped_{s}") for s in ("s1", "s2", "s8"))
    assert (s1.name, s1.optim.lr_decay_epochs, getattr(s1.augmentation, J)) == ("v4_shipped_s1", 40, True)
    assert (s2.optim.lr_decay_epochs, s2.train.snapshot_every, s2.augmentation.image_shape) == (12000, 5, S)
    assert (s8.optim.learning_rate, s8.optim.io_learning_rate, s8.augmentation.image_shape) == (3e-4, 3e-4, L)
    assert "v4" in list_presets() and not any("/" in name for name in list_presets())


@pytest.mark.parametrize("name", ["recipes/nope", "recipes/../v4", "other/v4", "recipes/", "/v4", "a/b/c"])
def test_unknown_or_escaping_preset_names_are_refused(name):
    with pytest.raises(ConfigError, match="unknown config"):
        load_config(name)


@pytest.mark.parametrize(
    ("weights", "recipe"),
    [*((f"v{v}", f"v{v}_shipped") for v in range(4)), ("v4", "v4_shipped_s8"),
     ("lite", "lite_shipped"), ("litefast", "litefast_shipped"), ("liteslim", "liteslim_shipped_s2")],
)
def test_each_recipe_is_the_config_its_shipped_weights_recorded(weights, recipe):
    import torch

    shipped = torch.load(
        Path(kp2d.__file__).parent / "weights" / f"{weights}.pt", map_location="cpu", weights_only=False
    )["config"]["kp2d"]
    mine = load_config(f"recipes/{recipe}").to_dict()
    # fields added after a run: their defaults are what that run had
    added = {("augmentation", "crop_from"): [0, 0], ("model", "width"): 1.0, ("loss", "distill_weight"): 1.0,
             ("train", "teacher"): "", ("loss", "distill_warped_weight"): 0.0,
             ("augmentation", "crop_window_scale"): [1.0, 1.0], ("train", "freeze"): [],
             ("loss", "distill_score_weight"): 1.0, ("loss", "distill_location_weight"): 1.0,
             ("loss", "distill_descriptor_weight"): 1.0, ("train", "keep_batchnorm_statistics"): False,
             ("model", "stem"): "full", ("model", "head_rank"): 0,
             ("model", "block2"): "pooled", ("model", "backbone_rank"): 0.0, ("model", "pooling"): "max",
             ("loss", "distill_warped_location_weight"): 0.0, ("loss", "descriptor_sampling"): "original",
             ("loss", "shift_consistency_weight"): 0.0, ("loss", "scale_consistency_weight"): 0.0,
             ("loss", "scale_consistency_factors"): [0.5, 0.9]}
    for (section, key), default in added.items():
        if key not in shipped[section]:
            assert mine[section].pop(key) == default
    assert mine.pop("name") == recipe and shipped.pop("name") == weights
    assert mine == shipped


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01"),  # invalid UTF-8
        ("x.ckpt", b"PK\x03\x04\x14\x00\x00\x00\x08\x00archive/data.pkl"),  # valid UTF-8 with NUL bytes
        ("binary.yaml", bytes(range(256))),
    ],
)
def test_a_binary_file_is_not_a_config(tmp_path, name, content):
    """Was a UnicodeDecodeError (or YAML's "special characters are not allowed") traceback."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(f"{path} is not a YAML config file (binary content)")):
        load_config(path)
    parent = tmp_path / "child.yaml"  # through 'extends' too
    parent.write_text(f"extends: {name}\n")
    with pytest.raises(ConfigError, match="binary content"):
        load_config(parent)


def test_a_utf8_config_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffextends: v4\ntrain:\n  epochs: 3\n".encode())
    assert load_config(path).train.epochs == 3


@pytest.mark.parametrize("command", ["train", "overfit"])
def test_the_cli_names_a_binary_config_in_one_line(tmp_path, capsys, command):
    from cli_output import single_error_line
    from kp2d.cli import main

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(128, 256)))
    argv = (
        ["train", str(photo), "--data", str(tmp_path), "--out", str(tmp_path / "run")]
        if command == "train"
        else ["overfit", "--config", str(photo), "--out", str(tmp_path / "o")]
    )
    assert main(argv) == 2
    expected = f"kp2d {command}: error: {photo} is not a YAML config file (binary content)"
    assert single_error_line(capsys) == expected


def test_the_cli_refuses_a_config_with_a_huge_image_shape_in_one_line(tmp_path, capsys):
    """The bound of ``overfit --size`` holds for a training config's image_shape too (MAX_NETWORK_SIZE)."""
    from cli_output import single_error_line
    from kp2d.cli import main

    config = tmp_path / "huge.yaml"
    config.write_text("extends: v4\naugmentation:\n  image_shape: [100000, 100000]\n")
    assert main(["train", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    expected = "kp2d train: error: augmentation.image_shape must be at most 16384 a side: [100000, 100000]"
    assert single_error_line(capsys) == expected


@pytest.mark.parametrize(
    ("overrides", "learns"),
    [
        ({}, True),
        ({"loss": {"keypoint_loss_weight": 0.0, "descriptor_loss_weight": 0.0, "score_loss_weight": 0.0}},
         False),
        ({"loss": {"keypoint_loss_weight": 0.0, "score_loss_weight": 0.0, "descriptor_loss": False}}, False),
        ({"loss": {"keypoint_loss_weight": 0.0, "descriptor_loss_weight": 0.0}}, True),  # the score term
        ({"loss": {"keypoint_loss_weight": 0.0, "score_loss_weight": 0.0}}, True),  # the triplet term alone
    ],
)
def test_check_something_to_learn_self_supervised(overrides, learns):
    from kp2d.config import check_something_to_learn

    config = load_config("v4", overrides)
    if learns:
        check_something_to_learn(config)
    else:
        with pytest.raises(ConfigError, match="v4: nothing to learn"):
            check_something_to_learn(config)


def test_check_something_to_learn_with_a_teacher():
    from kp2d.config import check_something_to_learn

    lite = load_config("lite")  # every self-supervised weight 0: it learns by distillation alone
    check_something_to_learn(lite)
    with pytest.raises(ConfigError, match=r"nothing to learn \(train.teacher v4; "):
        check_something_to_learn(load_config("lite", {"loss": {"distill_weight": 0.0}}))
    no_terms = {"distill_score_weight": 0.0, "distill_location_weight": 0.0, "distill_descriptor_weight": 0.0}
    with pytest.raises(ConfigError, match="nothing to learn"):
        check_something_to_learn(load_config("lite", {"loss": no_terms}))
    warped_only = {"loss": {"distill_weight": 0.0, "distill_warped_weight": 1.0}}
    check_something_to_learn(load_config("lite", warped_only))
    with pytest.raises(ConfigError, match="no train.teacher"):
        check_something_to_learn(load_config("lite", {"train": {"teacher": ""}}))
