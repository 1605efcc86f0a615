import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
import torch
import yaml

from kp2d.cli import main
from kp2d.config import load_config
from kp2d.data.sampler import EpochBatchSampler
from kp2d.errors import CheckpointError, ConfigError, DataError
from kp2d.io.checkpoint import load_checkpoint
from kp2d.train.step import NonFiniteLossError, learning_rate_at
from kp2d.train.trainer import TrainOptions, train

pytestmark = pytest.mark.slow  # every test here runs a training run

TINY = {"augmentation": {"image_shape": [64, 96]}, "train": {"batch_size": 2, "precision": "fp32",
        "checkpoint_every": 1, "num_workers": 0, "log_every": 1}, "loss": {"io_top_k": 40}}


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train_images")
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    for i, photo in enumerate(photos):
        small = cv2.resize(photo, (120, 80), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return folder


def _options(tmp_path: Path, data: Path, **kwargs) -> TrainOptions:
    return TrainOptions(
        config=load_config("v4", TINY), data=data, out=tmp_path, device="cpu", progress=False, **kwargs
    )


@pytest.mark.parametrize(("stop_at", "workers"), [(2, 0), (1, 0), (3, 2)])
def test_resume_continues_exactly(tiny_images, tmp_path, stop_at, workers):
    """Stopped at an epoch's end or inside an epoch, with or without loader processes, --resume gives the
    weights of the run that never stopped (dropout and augmentation draws continue where they were)."""
    straight = train(_options(tmp_path / "a", tiny_images, max_steps=4, num_workers=workers))
    train(_options(tmp_path / "b", tiny_images, max_steps=stop_at, num_workers=workers))
    resumed = train(_options(tmp_path / "b", tiny_images, max_steps=4, resume=True, num_workers=workers))
    assert straight.steps == resumed.steps == 4
    assert resumed.epochs_completed == 2  # 4 images, batch 2: 2 steps per epoch
    a, b = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for key, value in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[key], value, rtol=0, atol=0)
    for key, value in a.io_net_state_dict.items():
        torch.testing.assert_close(b.io_net_state_dict[key], value, rtol=0, atol=0)
    assert b.extra["step"] == 4 and "optimizer" in b.extra
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["name"] == "v4"


def test_init_starts_a_new_run_from_trained_weights(tiny_images, tmp_path):
    """--init: the run's first weights are the source's (IO-Net too), the optimizer and step count are new."""
    first = train(_options(tmp_path / "a", tiny_images, max_steps=2))
    assert first.from_scratch
    source = first.last_checkpoint
    trained = load_checkpoint(source)
    summary = train(_options(tmp_path / "b", tiny_images, max_steps=1, init=str(source)))
    tuned = load_checkpoint(summary.last_checkpoint)
    assert tuned.extra["step"] == 1
    assert not summary.from_scratch  # the CLI's early-checkpoint note is for runs from random weights
    assert tuned.extra["init_from"] == {"source": str(source), "steps_before": 2}
    assert tuned.extra["optimizer"]["state"][0]["step"] == 1  # a fresh Adam: one step taken
    # a fresh Adam's first step moves every parameter by at most lr (1e-3) from the source's weights
    for before, after in ((trained.state_dict, tuned.state_dict),
                          (trained.io_net_state_dict, tuned.io_net_state_dict)):
        parameters = [k for k in before if "running_" not in k and "num_batches" not in k]
        assert len(parameters) > 4
        assert max((after[k] - before[k]).abs().max().item() for k in parameters) <= 1.001e-3
    # a resumed fine-tuning run keeps the record
    resumed = train(_options(tmp_path / "b", tiny_images, max_steps=2, resume=True))
    assert load_checkpoint(resumed.last_checkpoint).extra["init_from"]["steps_before"] == 2
    assert not resumed.from_scratch


def test_init_refuses_other_networks_and_resume(tiny_images, tmp_path, capsys):
    source = train(_options(tmp_path / "a", tiny_images, max_steps=1)).last_checkpoint
    v0 = TrainOptions(config=load_config("v0", TINY), data=tiny_images, out=tmp_path / "b", device="cpu",
                      progress=False, max_steps=1, init=str(source))
    with pytest.raises(CheckpointError, match="with model.do_upsample=True, model.do_cross=True; the conf"):
        train(v0)
    args = ["train", "v4", "--data", str(tiny_images), "--init", "v4", "--resume"]
    assert main(args) == 2
    assert "use one" in capsys.readouterr().err
    assert main(["train", "v4", "--data", str(tiny_images), "--init", "nope.ckpt", "--out",
                 str(tmp_path / "c")]) == 2
    assert "checkpoint not found: nope.ckpt" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_images, tmp_path, monkeypatch):
    import kp2d.train.step as step_module

    real = step_module.keypoint_net_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        return terms._replace(total=terms.total * float("nan")) if calls["n"] == 3 else terms

    monkeypatch.setattr(step_module, "keypoint_net_losses", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*last good checkpoint"):
        train(_options(tmp_path, tiny_images, max_steps=5))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt").extra["step"] == 2


def test_time_limit_stops_with_a_checkpoint_to_resume(tiny_images, tmp_path):
    """--max-minutes ends the run after the step that crosses the limit; --resume goes on from there."""
    stopped = train(_options(tmp_path, tiny_images, max_steps=4, max_minutes=1e-9))
    assert (stopped.steps, stopped.stopped_by) == (1, "time limit")
    assert load_checkpoint(stopped.last_checkpoint).extra["step"] == 1
    resumed = train(_options(tmp_path, tiny_images, max_steps=3, resume=True))
    assert (resumed.steps, resumed.stopped_by) == (3, None)


def test_sigterm_stops_after_the_step_with_a_checkpoint(tiny_images, tmp_path, monkeypatch, capsys):
    """SIGTERM (a scheduler, or Ctrl-C for SIGINT) lets the step finish, writes last.ckpt, exits 130."""
    import signal

    import kp2d.train.step as step_module

    real = step_module.keypoint_net_losses
    calls = {"n": 0}

    def signalled(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "keypoint_net_losses", signalled)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"extends": "v4", **TINY}))
    before = signal.getsignal(signal.SIGTERM)
    status = main(["train", str(config), "--data", str(tiny_images), "--out", str(tmp_path / "run"),
                   "--device", "cpu", "--max-steps", "5", "--no-progress"])
    assert status == 130
    out = capsys.readouterr().out
    assert "stopped (signal): 2 steps" in out
    assert "note: from random weights, checkpoints of fewer than about 2,500 steps" in out
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").extra["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_learning_rate_halves_every_40_epochs_at_most_4_times():
    optim = load_config("v4").optim
    rates = [learning_rate_at(1e-3, epoch, optim) for epoch in (0, 39, 40, 80, 159, 160, 400)]
    assert rates == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 1.25e-4, 6.25e-5, 6.25e-5])


def test_sampler_shards_and_resumes():
    ranks = [EpochBatchSampler(10, 2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(3)
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == 2  # 10 // (2 * 2)
    seen = [i for b in batches for batch in b for i in batch]
    assert len(seen) == len(set(seen)) == 8
    ranks[0].set_epoch(3, skip_batches=1)
    assert list(ranks[0]) == batches[0][1:]
    ranks[0].set_epoch(4)
    assert list(ranks[0]) != batches[0]
    with pytest.raises(DataError, match="fewer than one batch"):
        EpochBatchSampler(3, 2, seed=0, world_size=2)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "v4", "--data", str(tmp_path / "missing")]) == 2
    assert "training data folder not found" in capsys.readouterr().err
    (tmp_path / "photo.jpg").write_bytes(b"")
    assert main(["train", "v4", "--data", str(tmp_path / "photo.jpg")]) == 2
    assert "photo.jpg is a file; give the folder of training images" in capsys.readouterr().err
    assert main(["train", "v9", "--data", str(tmp_path)]) == 2
    assert "unknown config 'v9'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["train", "v4", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["train", "v4", "--data", str(tmp_path), "--max-steps", "0"]) == 2
    assert main(["train", "v4", "--data", str(tmp_path), "--max-minutes", "-1"]) == 2
    assert "--max-minutes must be above 0" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_one_line_naming_it(tiny_images, tmp_path, capsys, workers):
    """An undecodable photo stops the run with its name and the way round it, also when a DataLoader worker
    process met it (PyTorch then puts the worker's traceback into the error's message)."""
    data = tmp_path / "photos"
    data.mkdir()
    for image in tiny_images.iterdir():
        (data / image.name).write_bytes(image.read_bytes())
    (data / "img1.png").write_bytes(b"not a png")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"extends": "v4", **TINY}))
    status = main(["train", str(config), "--data", str(data), "--out", str(tmp_path / "run"),
                   "--device", "cpu", "--max-steps", "2", "--no-progress", "--workers", str(workers)])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("kp2d train: error: ") and "img1.png: cannot decode image (" in err
    assert "--skip-bad" in err


def test_two_process_gloo_training(tiny_images, tmp_path):
    """torchrun with 2 CPU processes (gloo) runs DistributedDataParallel steps and writes one checkpoint;
    --resume gives each process back its own random streams: a stopped run ends where a straight one does."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"extends": "v4", **TINY}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def torchrun(out: str, steps: int, *extra: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
            "-m", "kp2d", "train", str(config), "--data", str(tiny_images), "--out", str(tmp_path / out),
            "--device", "cpu", "--max-steps", str(steps), "--no-progress", *extra,
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    first = torchrun("run", 3)
    assert "2 process(es)" in first.stderr
    assert first.stdout.count("done: 3 steps") == 1  # rank 0 reports for both
    straight = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert straight.extra["step"] == 3
    assert all(torch.isfinite(v).all() for v in straight.state_dict.values() if v.is_floating_point())
    assert len(straight.extra["rng"]["per_process"]) == 2

    torchrun("stopped", 1)
    torchrun("stopped", 3, "--resume")
    resumed = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.ckpt")
    for key, value in straight.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[key], value, rtol=0, atol=0)
    # one process cannot take over the two's data order and streams (it retrained batches, and both ranks
    # of the other way round drew the same augmentations)
    one = TrainOptions(config=load_config(config), data=tiny_images, out=tmp_path / "stopped", device="cpu",
                       progress=False, max_steps=4, resume=True)
    with pytest.raises(CheckpointError, match=r"of 2 process\(es\), this one has 1: .* --nproc_per_node 2"):
        train(one)


def test_descriptor_spread_script_measures_a_collapsed_network(tiny_images, tmp_path, capsys, load_script):
    """``scripts/descriptor_spread.py``: a descriptor head that outputs one vector everywhere has mean
    cosine 1, a score head that outputs one value has score std 0, in both BatchNorm modes."""
    from kp2d.io.checkpoint import save_checkpoint
    from kp2d.models.keypoint_net import build_keypoint_net

    module = load_script("descriptor_spread")
    config = load_config("v4", TINY)
    torch.manual_seed(0)
    network = build_keypoint_net(config.model)
    with torch.no_grad():
        network.convFbb.weight.zero_()
        network.convFbb.bias.copy_(torch.linspace(-1, 1, network.convFbb.bias.numel()))
        network.convDb.weight.zero_()
        network.convDb.bias.fill_(0.3)
    images = torch.rand(2, 3, 64, 96)
    for batch_statistics in (True, False):
        cosine, score_std = module.spread(network, images, batch_statistics)
        assert cosine == pytest.approx(1.0, abs=1e-5) and score_std == pytest.approx(0.0, abs=1e-6)
    untrained = module.spread(build_keypoint_net(config.model), images, batch_statistics=True)
    assert untrained[0] < 0.9 and untrained[1] > 0  # a fresh network's descriptors differ

    collapsed = tmp_path / "collapsed.ckpt"
    save_checkpoint(collapsed, config, network)
    args = ["--images", str(tiny_images), "--shape", "64x96", "--count", "2"]
    capsys.readouterr()
    assert module.main([str(collapsed), *args]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {collapsed}")]
    assert row.split(" | ")[1:] == ["1.000", "1.000", "0.000", "0.000 |"]
    assert module.main([str(tmp_path / "missing.ckpt"), *args]) == 2
    assert "not found" in capsys.readouterr().err


def test_recalibrate_batchnorm_script_averages_batch_statistics(
    tiny_images, tmp_path, capsys, load_script
):
    """``scripts/recalibrate_batchnorm.py``: after two batches, the first BatchNorm's running mean and
    variance are the averages of the two batches' channel means and unbiased variances of its input; the
    written checkpoint changes only BatchNorm statistics."""
    from kp2d.io.checkpoint import save_checkpoint
    from kp2d.models.keypoint_net import build_keypoint_net, normalize_image

    module = load_script("recalibrate_batchnorm")
    config = load_config("v4", TINY)
    torch.manual_seed(0)
    network = build_keypoint_net(config.model)
    batches = [torch.rand(2, 3, 64, 96), torch.rand(3, 3, 64, 96) * 0.5]
    conv, norm = network.conv1a[0], network.conv1a[1]
    with torch.no_grad():
        inputs = [conv(normalize_image(images)).transpose(0, 1).flatten(1) for images in batches]  # (C, n)
    assert module.recalibrate(network, iter(batches)) == 2
    expected_mean = (inputs[0].mean(dim=1) + inputs[1].mean(dim=1)) / 2
    expected_var = (inputs[0].var(dim=1) + inputs[1].var(dim=1)) / 2
    torch.testing.assert_close(norm.running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var, expected_var, rtol=1e-5, atol=1e-6)
    assert norm.momentum == 0.1 and not norm.training and not network.training

    source = tmp_path / "source.ckpt"
    save_checkpoint(source, config, build_keypoint_net(config.model), step=7)
    out = tmp_path / "recalibrated.ckpt"
    args = ["--images", str(tiny_images), "--shape", "64x96", "--batch-size", "2"]
    assert module.main([str(source), *args, "--out", str(out)]) == 0
    assert "averaged over 4 batches at 64x96" in capsys.readouterr().out  # 2 batches x (source, target)
    before, after = load_checkpoint(source), load_checkpoint(out)
    assert after.extra["step"] == 7 and after.extra["batchnorm_recalibrated"]["batches"] == 4
    changed = {k for k in before.state_dict if not torch.equal(before.state_dict[k], after.state_dict[k])}
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    assert changed and all(k.endswith(statistics) for k in changed)
    assert module.main([str(source), *args[:-1], "8", "--out", str(out)]) == 2
    assert "fewer than a batch of 8" in capsys.readouterr().err


def _one_error_line(err: str) -> str:
    """The CLI's error output must be exactly one ``kp2d train: error:`` line, without a traceback."""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("kp2d train: error: "), err
    return err


@pytest.mark.parametrize(
    ("override", "extra", "named"),
    [
        ({"train": {"checkpoint_every": 0}}, [], "train.checkpoint_every must be at least 1"),
        ({"train": {"log_every": 0}}, [], "train.log_every must be at least 1"),
        ({"optim": {"lr_decay_epochs": 0}}, [], "optim.lr_decay_epochs must be at least 1"),
        ({"train": {"num_workers": -1}}, [], "train.num_workers must be at least 0"),
        ({"train": {"val_top_k": 0}}, [], "train.val_top_k must be at least 1"),
        ({"train": {"val_shape": [100, 60]}}, [], "train.val_shape (W, H) must be multiples of 8"),
        ({}, ["--workers", "-1"], "--workers must be at least 0, got -1"),
    ],
)
def test_bad_config_values_stop_before_training(tiny_images, tmp_path, capsys, override, extra, named):
    """Values that crashed a run after its first step (division by zero, DataLoader) are one-line errors
    naming the key or option, before anything is written."""
    config = tmp_path / "bad.yaml"
    merged = {key: {**TINY.get(key, {}), **override.get(key, {})} for key in {*TINY, *override}}
    config.write_text(yaml.safe_dump({"extends": "v4", **merged}))
    out = tmp_path / "run"
    status = main(["train", str(config), "--data", str(tiny_images), "--out", str(out), "--device", "cpu",
                   "--max-steps", "2", "--no-progress", *extra])
    assert status == 2
    assert named in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_bad_hpatches_folder_stops_before_training(tiny_images, tmp_path, capsys):
    """--hpatches is read up front (sequences, images present, homographies): a bad folder is a one-line
    error before the first step instead of a crash at the end of the first epoch; a good one validates."""
    from hpatches_tiny import write_sequence

    config = tmp_path / "tiny.yaml"
    train_section = {**TINY["train"], "val_shape": [64, 48]}
    config.write_text(yaml.safe_dump({"extends": "v4", **TINY, "train": train_section}))
    photo = cv2.imread(str(sorted(tiny_images.iterdir())[0]))
    shift = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0], [0.0, 0.0, 1.0]])
    view = cv2.warpPerspective(photo, shift, (photo.shape[1], photo.shape[0]))

    def hpatches(name: str) -> Path:
        root = tmp_path / name
        write_sequence(root / "v_photo", ".png", photo, [(view, shift)])
        return root

    empty = tmp_path / "empty"
    empty.mkdir()
    missing_view = hpatches("missing_view")
    (missing_view / "v_photo" / "2.png").unlink()
    bad_homography = hpatches("bad_homography")
    (bad_homography / "v_photo" / "H_1_2").write_text("1 0 0\n0 1\n")
    cases = [
        (tmp_path / "nowhere", "--hpatches: HPatches folder not found"),
        (empty, "--hpatches: no HPatches sequences in"),
        (missing_view, "image not found (listed by H_1_2)"),
        (bad_homography, "malformed homography"),
    ]
    for root, message in cases:
        out = tmp_path / f"run_{root.name}"
        status = main(["train", str(config), "--data", str(tiny_images), "--out", str(out), "--device", "cpu",
                       "--max-steps", "1", "--no-progress", "--hpatches", str(root)])
        assert status == 2, root
        err = _one_error_line(capsys.readouterr().err)
        assert "--hpatches" in err and message in err
        assert not out.exists()  # no step was taken
    good = hpatches("good")
    out = tmp_path / "run_good"
    assert main(["train", str(config), "--data", str(tiny_images), "--out", str(out), "--device", "cpu",
                 "--max-steps", "1", "--no-progress", "--hpatches", str(good)]) == 0
    assert (out / "checkpoints" / "best.ckpt").is_file()  # validated at the end of the run
    off = tmp_path / "off.yaml"  # val_every 0: no validation, also not at the end (there used to be one)
    off.write_text(yaml.safe_dump({"extends": "v4", **TINY, "train": {**train_section, "val_every": 0}}))
    out = tmp_path / "run_off"
    assert main(["train", str(off), "--data", str(tiny_images), "--out", str(out), "--device", "cpu",
                 "--max-steps", "1", "--no-progress", "--hpatches", str(good)]) == 0
    assert not (out / "checkpoints" / "best.ckpt").exists() and (out / "checkpoints" / "last.ckpt").is_file()


def test_existing_run_folder_needs_resume_or_overwrite(tiny_images, tmp_path, capsys, monkeypatch):
    """The same command twice (default --out runs/<config name>) must not overwrite the first run's
    checkpoints: without --resume or --overwrite it stops, naming both, and last.ckpt is untouched."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"extends": "v4", **TINY}))
    base = ["train", str(config), "--data", str(tiny_images), "--device", "cpu", "--no-progress"]
    assert main([*base, "--max-steps", "2"]) == 0
    last = tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    capsys.readouterr()
    for extra in ([], ["--init", "v4"]):
        assert main([*base, "--max-steps", "1", *extra]) == 2
        err = _one_error_line(capsys.readouterr().err)
        assert f"{Path('runs') / 'tiny'} already holds a run" in err
        assert "--resume" in err and "--overwrite" in err
        assert last.read_bytes() == before
    assert main([*base, "--max-steps", "3", "--resume", "--overwrite"]) == 2
    assert "use one" in _one_error_line(capsys.readouterr().err)
    assert last.read_bytes() == before
    # --resume continues the run (step 2 → 3); --overwrite starts a new one there (step 1)
    assert main([*base, "--max-steps", "3", "--resume"]) == 0
    assert load_checkpoint(last).extra["step"] == 3
    capsys.readouterr()
    assert main([*base, "--max-steps", "3", "--resume"]) == 0  # nothing left to do: no "last loss nan"
    out = capsys.readouterr().out
    assert "done: 3 steps" in out and "; no step taken; checkpoint" in out and "nan" not in out
    assert main([*base, "--max-steps", "1", "--overwrite"]) == 0
    assert load_checkpoint(last).extra["step"] == 1


def _survive_stop_signals(queue) -> None:
    """In a spawned process: what a training DataLoader worker does at start, then Ctrl-C."""
    import signal

    from kp2d.train.trainer import _leave_signals_to_the_run

    _leave_signals_to_the_run(0)
    os.kill(os.getpid(), signal.SIGINT)
    queue.put(("alive", os.getpgrp() == os.getpid() if hasattr(os, "getpgrp") else True))


def test_loader_workers_leave_ctrl_c_to_the_main_process(tiny_images, tmp_path, monkeypatch):
    """Spawned workers (macOS, Windows) do not inherit the run's handlers: Ctrl-C, which the whole process
    group gets, killed them and the waiting main process crashed. They now ignore it; the run still works
    with the spawn start method (everything handed to the workers pickles)."""
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    queue = spawn.Queue()
    worker = spawn.Process(target=_survive_stop_signals, args=(queue,))
    worker.start()
    assert queue.get(timeout=60) == ("alive", True)  # and out of the parent's process group
    worker.join(timeout=60)
    assert worker.exitcode == 0

    from kp2d.train import trainer

    made = []
    real_loader = torch.utils.data.DataLoader

    def spawning_loader(*args, **kwargs):
        made.append(kwargs)
        return real_loader(*args, multiprocessing_context="spawn", **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", spawning_loader)
    summary = train(_options(tmp_path, tiny_images, max_steps=2, num_workers=1))
    assert summary.steps == 2 and made[0]["worker_init_fn"] is trainer._leave_signals_to_the_run


def test_init_takes_weights_across_io_net_and_dropout_switches(tiny_images, tmp_path, caplog):
    """Neither IO-Net nor dropout changes KeyPointNet's weights: V2's weights start a V4 run (IO-Net from
    random weights) and V4's a V2 run; both used to be refused."""
    def options(preset: str, out: str, **kwargs) -> TrainOptions:
        return TrainOptions(config=load_config(preset, TINY), data=tiny_images, out=tmp_path / out,
                            device="cpu", progress=False, max_steps=1, **kwargs)

    v2 = train(options("v2", "v2")).last_checkpoint
    with caplog.at_level("INFO", logger="kp2d.train.trainer"):
        v4 = train(options("v4", "v4", init=str(v2))).last_checkpoint
    assert "has no IO-Net weights; IO-Net starts from random weights" in caplog.text
    assert train(options("v2", "v2b", init=str(v4))).steps == 1


def test_resume_refuses_a_changed_config_but_not_a_longer_run(tiny_images, tmp_path):
    """--resume continues a run exactly; a config with another image size, batch or learning rate would
    silently have trained on with it (and overwritten the run's config.yaml)."""
    train(_options(tmp_path, tiny_images, max_steps=1))
    changed = load_config("v4", {**TINY, "optim": {"learning_rate": 1e-4},
                                 "augmentation": {"image_shape": [64, 64]}})
    options = TrainOptions(config=changed, data=tiny_images, out=tmp_path, device="cpu", progress=False,
                           max_steps=2, resume=True)
    with pytest.raises(CheckpointError, match=r"augmentation.image_shape: \[64, 96\] -> \[64, 64\]; "
                                              r"optim.learning_rate: 0.001 -> 0.0001\); resume with"):
        train(options)
    longer = load_config("v4", {**TINY, "train": {**TINY["train"], "epochs": 80, "checkpoint_every": 5}})
    options.config = longer
    assert train(options).steps == 2


def test_a_grayscale_network_trains_on_the_luma_of_the_pairs(tiny_images, tmp_path):
    """``model.use_color: false`` is the original's 1-channel network; the first step used to crash feeding
    it the RGB pair."""
    gray = load_config("v4", {**TINY, "model": {"use_color": False}})
    summary = train(TrainOptions(config=gray, data=tiny_images, out=tmp_path, device="cpu", progress=False,
                                 max_steps=2))
    assert summary.steps == 2 and np.isfinite(summary.last_loss)
    weights = load_checkpoint(summary.last_checkpoint).state_dict
    assert weights["conv1a.0.weight"].shape[1] == 1


def _failing_reads(monkeypatch, fail_at: int, before_failing=None) -> None:
    """Make the training images' ``fail_at``-th read (counting from 1) fail with a DataError."""
    from kp2d.data.image_folder import ImageFolderDataset

    real = ImageFolderDataset.__getitem__
    calls = {"n": 0}

    def reading(self, index):
        calls["n"] += 1
        if calls["n"] == fail_at:
            if before_failing is not None:
                before_failing()
            raise DataError("photo.jpg: cannot decode image")
        return real(self, index)

    monkeypatch.setattr(ImageFolderDataset, "__getitem__", reading)


def test_an_unreadable_image_mid_run_loses_no_step(tiny_images, tmp_path, monkeypatch):
    """The run is between two steps when a read fails: last.ckpt is written before the error goes on."""
    _failing_reads(monkeypatch, fail_at=5)  # batch 2: reads 1-2, 3-4, then the third batch's first
    rare = load_config("v4", {**TINY, "train": {**TINY["train"], "checkpoint_every": 100}})
    with pytest.raises(DataError, match="photo.jpg"):
        train(TrainOptions(config=rare, data=tiny_images, out=tmp_path, device="cpu", progress=False,
                           max_steps=4))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt").extra["step"] == 2


def test_a_signal_that_also_ends_a_loader_process_stops_the_run_cleanly(tiny_images, tmp_path, monkeypatch):
    """SIGTERM to a process group ends the DataLoader's workers too: the batch the run waits for never comes.
    With the stop already asked for, the run ends as after the step, with last.ckpt to resume from."""
    import signal

    _failing_reads(monkeypatch, fail_at=5, before_failing=lambda: os.kill(os.getpid(), signal.SIGTERM))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"extends": "v4", **TINY, "train": {**TINY["train"],
                                                                          "checkpoint_every": 100}}))
    status = main(["train", str(config), "--data", str(tiny_images), "--out", str(tmp_path / "run"),
                   "--device", "cpu", "--max-steps", "4", "--no-progress"])
    assert status == 130
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").extra["step"] == 2


def test_a_bad_photo_with_loader_processes_ends_the_command(tiny_images, tmp_path):
    """With loader processes, an unreadable photo must end ``kp2d train`` (not leave it waiting on them)."""
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(tiny_images, photos)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"extends": "v4", **TINY}))
    result = subprocess.run(
        [sys.executable, "-m", "kp2d", "train", str(config), "--data", str(photos), "--out",
         str(tmp_path / "r"), "--device", "cpu", "--max-steps", "6", "--workers", "2", "--no-progress"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 2, result.stderr
    assert "broken.jpg" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("progress", [True, False])
def test_validation_is_reported_once(tmp_path, capsys, caplog, progress):
    """Above the progress bar when there is one, else in the log; it used to be both."""
    from kp2d.train.logger import RunLogger

    logger = RunLogger(tmp_path, load_config("v4"), is_main=True, total_steps=10, start_step=0,
                       progress=progress)
    with caplog.at_level("INFO", logger="kp2d.train.logger"):
        logger.validation({"mscore": 0.5, "c3": 0.25}, step=7)
    logger.close()
    captured = capsys.readouterr()
    shown = captured.out + captured.err + caplog.text
    assert shown.count("validation at step 7") == 1 and "c3=0.250" in shown


def test_crop_from_trains_on_windows_of_larger_photos(tiny_images, tmp_path):
    """``augmentation.crop_from``: photos resized to (H, W), a random ``image_shape`` window per pair."""
    with pytest.raises(ConfigError, match=r"crop_from \[32, 96\] must be at least image_shape \[64, 96\]"):
        load_config("v4", {**TINY, "augmentation": {"image_shape": [64, 96], "crop_from": [32, 96]}})
    cropped = load_config("v4", {**TINY, "augmentation": {"image_shape": [64, 96], "crop_from": [128, 192]}})
    summary = train(TrainOptions(config=cropped, data=tiny_images, out=tmp_path, device="cpu", progress=False,
                                 max_steps=2))
    assert summary.steps == 2 and np.isfinite(summary.last_loss)


def test_a_run_reading_descriptors_centred_records_it_in_its_checkpoints(tiny_images, tmp_path):
    """``loss.descriptor_sampling: centred``: validation and the saved weights read the map that way too."""
    from kp2d.models.keypoint_net import load_keypoint_net

    centred = load_config("v4", {**TINY, "loss": {"io_top_k": 40, "descriptor_sampling": "centred"}})
    summary = train(TrainOptions(config=centred, data=tiny_images, out=tmp_path / "c", device="cpu",
                                 progress=False, max_steps=1))
    assert load_checkpoint(summary.last_checkpoint).extra["inference"]["descriptor_sampling"] == "centred"
    net = load_keypoint_net(str(summary.last_checkpoint), "cpu")
    assert net.inference_settings.descriptor_sampling == "centred"
    assert net.inference_settings.scale_factor == 1  # the rest as the defaults
    plain = train(_options(tmp_path / "o", tiny_images, max_steps=1))
    assert "inference" not in load_checkpoint(plain.last_checkpoint).extra


def test_freeze_keeps_the_named_parts_as_they_started(tiny_images, tmp_path):
    """train.freeze [encoder, score, location]: those weights and BatchNorm statistics stay bit for bit (also
    through a validation-free resume), the descriptor head trains."""
    first = train(_options(tmp_path / "a", tiny_images, max_steps=1))
    before = load_checkpoint(first.last_checkpoint).state_dict
    frozen_parts = ["encoder", "score", "location"]
    config = load_config("v4", {**TINY, "train": {**TINY["train"], "freeze": frozen_parts}})
    options = TrainOptions(config=config, data=tiny_images, out=tmp_path / "b", device="cpu", progress=False,
                           init=str(first.last_checkpoint), max_steps=2)
    train(options)
    resumed = train(TrainOptions(**{**vars(options), "max_steps": 3, "resume": True}))
    after = load_checkpoint(resumed.last_checkpoint).state_dict
    frozen = [k for k in before if k.startswith(("conv1", "conv2", "conv3", "conv4", "convD", "convP"))]
    assert any("running_mean" in k for k in frozen)
    for key in frozen:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert (after["convFbb.weight"] - before["convFbb.weight"]).abs().max() > 0
    assert (after["convFa.1.running_mean"] - before["convFa.1.running_mean"]).abs().max() > 0


def test_keep_batchnorm_statistics_trains_the_weights_only(tiny_images, tmp_path):
    """train.keep_batchnorm_statistics: every running statistic stays bit for bit, the weights move."""
    first = train(_options(tmp_path / "a", tiny_images, max_steps=1))
    before = load_checkpoint(first.last_checkpoint).state_dict
    config = load_config("v4", {**TINY, "train": {**TINY["train"], "keep_batchnorm_statistics": True}})
    options = TrainOptions(config=config, data=tiny_images, out=tmp_path / "b", device="cpu", progress=False,
                           init=str(first.last_checkpoint), max_steps=2)
    after = load_checkpoint(train(options).last_checkpoint).state_dict
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert len(statistics) > 20
    for key in statistics:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert (after["conv1a.0.weight"] - before["conv1a.0.weight"]).abs().max() > 0
    assert (after["conv4b.1.weight"] - before["conv4b.1.weight"]).abs().max() > 0


@pytest.mark.parametrize("parts", [["decoder"], ["encoder", "score", "location", "descriptor"]])
def test_freeze_rejects_unknown_or_all_parts(parts):
    with pytest.raises(ConfigError, match="train.freeze"):
        load_config("v4", {"train": {"freeze": parts}})
