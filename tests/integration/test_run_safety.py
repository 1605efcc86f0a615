"""A run owns its folder, cleans what killed runs left, and a second Ctrl-C aborts at once (issue 25)."""

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
import skimage.data
import torch
import yaml

from kp2d.cli import main
from kp2d.config import load_config
from kp2d.io.checkpoint import load_checkpoint
from kp2d.train.run_folder import RunFolderInUse, hold_run_folder, remove_stale_temporary_files
from kp2d.train.trainer import TrainOptions, train

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = {"augmentation": {"image_shape": [64, 96]}, "train": {"batch_size": 2, "precision": "fp32",
        "checkpoint_every": 1, "num_workers": 0, "log_every": 1}, "loss": {"io_top_k": 40}}
ENV = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
       "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train_images")
    for i, photo in enumerate([skimage.data.astronaut(), skimage.data.coffee()]):
        small = cv2.resize(photo, (120, 80), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture()
def tiny_config(tmp_path) -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"extends": "v4", **TINY}))
    return config


def _options(out: Path, data: Path, **kwargs) -> TrainOptions:
    return TrainOptions(config=load_config("v4", TINY), data=data, out=out, device="cpu", progress=False,
                        **kwargs)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


HOLDER = """
import sys, time
from kp2d.train.run_folder import hold_run_folder
with hold_run_folder(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_second_run_in_a_held_folder_stops_naming_the_holder(tiny_images, tiny_config, tmp_path, capsys):
    """While another process holds runs/x, a new run and a --resume there stop with one line naming its pid,
    exit 2, and write nothing; once the holder is killed (kill -9: no clean-up) the folder is free."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        base = ["train", str(tiny_config), "--data", str(tiny_images), "--out", str(out), "--device", "cpu",
                "--max-steps", "1", "--no-progress"]
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert main([*base, *extra]) == 2
            err = _one_line(capsys.readouterr().err)
            holder_text = f"(pid {holder.pid} on {socket.gethostname()}, started "
            assert err.startswith(f"kp2d train: error: {out} is in use by another kp2d run {holder_text}")
            assert err.endswith("); wait for it or choose another --out")
            assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written
        with pytest.raises(RunFolderInUse, match=f"pid {holder.pid}"):
            train(_options(out, tiny_images, max_steps=1))
    finally:
        holder.kill()  # SIGKILL: the holder runs no clean-up, the kernel drops its lock
        holder.wait(timeout=30)
    assert main([*base]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.ckpt").extra["step"] == 1
    assert not (out / ".lock").exists()  # a run that ends removes its lock file


def test_the_lock_is_per_open_file_and_nests_in_one_process(tmp_path):
    """A second open + flock conflicts even in this process; nested holds share one lock; a hold that
    created the folder and wrote nothing leaves nothing behind."""
    out = tmp_path / "a" / "run"
    with hold_run_folder(out):
        text = (out / ".lock").read_text()
        assert text.startswith(f"pid {os.getpid()} on {socket.gethostname()}, started ")
        with open(out / ".lock", "rb") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with hold_run_folder(out):  # the CLI holds it, then train() again
            pass
        assert (out / ".lock").exists()
    assert not out.exists() and (tmp_path / "a").is_dir()
    out.mkdir()
    with open(out / ".lock", "w") as other:  # held by another open file: refused, the folder kept
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunFolderInUse, match=r"run \(starting\); wait for it"):
            with hold_run_folder(out):
                pass
    assert out.is_dir()
    with hold_run_folder(tmp_path / "rank1", enabled=False):  # torchrun ranks other than 0 take no lock
        pass
    assert not (tmp_path / "rank1").exists()


@pytest.mark.slow
def test_stale_temporary_files_are_removed_when_a_run_resumes(tiny_images, tmp_path, monkeypatch, caplog):
    """What a save killed between write and rename leaves (the real atomic save's names) is removed when
    the run starts or resumes; checkpoints and other files stay."""
    import kp2d.io.files as checkpoint

    out = tmp_path / "run"
    train(_options(out, tiny_images, max_steps=1))
    folder = out / "checkpoints"
    left: list[Path] = []

    def killed_before_rename(src, dst):
        """The file is written, the process dies before the rename: the temporary file stays."""
        left.append(Path(src))
        shutil.copyfile(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_before_rename)
    checkpoint.atomic_torch_save({"x": torch.zeros(1000)}, folder / "last.ckpt.other")
    checkpoint.atomic_torch_save({"x": torch.zeros(1000)}, folder / "best.ckpt")
    monkeypatch.undo()
    assert len(left) == 2 and all(path.is_file() and path.name.endswith(".tmp") for path in left)
    assert left[1].name.startswith(".best.ckpt.")
    (folder / "notes.tmp").write_text("not ours")
    (folder / "best.ckpt").unlink()
    left[0].unlink()  # the name of a last.ckpt save
    last_tmp = folder / ".last.ckpt.k3j9x_2a.tmp"
    last_tmp.write_bytes(b"\0" * 2_000_000)
    caplog.set_level("INFO", logger="kp2d.train.run_folder")
    resumed = train(_options(out, tiny_images, max_steps=2, resume=True))
    assert resumed.steps == 2
    assert not last_tmp.exists() and not left[1].exists()
    assert (folder / "notes.tmp").is_file() and (folder / "last.ckpt").is_file()
    assert "removed 2 temporary file(s) of 2.0 MB" in caplog.text
    assert remove_stale_temporary_files(folder) == 0
    assert remove_stale_temporary_files(tmp_path / "missing") == 0


# A training step that blocks for 30 s inside C code that releases the GIL, as a long convolution does:
# pthread_mutex_timedlock on a mutex this thread holds restarts after signals instead of returning.
DRIVER = """
import ctypes, multiprocessing, sys, time
import kp2d.train.trainer as trainer

libc = ctypes.CDLL(None)

class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

def block_in_c(seconds):
    mutex = ctypes.create_string_buffer(64)  # zeroed: a default mutex
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_timedlock(mutex, ctypes.byref(Timespec(int(time.time() + seconds), 0)))

real = trainer._Run._step

def step(self, images):
    if self.progress.step == 1:
        print("blocking", *[child.pid for child in multiprocessing.active_children()], flush=True)
        block_in_c(30)
    return real(self, images)

trainer._Run._step = step
from kp2d.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _gone(pid: int) -> bool:
    """The process has ended (a zombie not yet reaped by init has ended too)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the blocking step uses glibc and /proc")
@pytest.mark.parametrize("workers", [0, 1])
def test_a_second_ctrl_c_aborts_at_once_inside_a_long_step(tiny_images, tiny_config, tmp_path, workers):
    """Ctrl-C during a step blocked in C code: its message comes at once; a second Ctrl-C a second later
    ends the process within seconds with status 130, loader processes with it, and last.ckpt (step 1) is
    intact. (Before, both were silent until the step returned, which then finished.)"""
    out = tmp_path / "run"
    (tmp_path / "driver.py").write_text(DRIVER)
    command = [sys.executable, str(tmp_path / "driver.py"), "train", str(tiny_config), "--data",
               str(tiny_images), "--out", str(out), "--device", "cpu", "--max-steps", "5", "--no-progress",
               "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    err_lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: err_lines.extend((time.monotonic(), line)
                                                              for line in process.stderr), daemon=True)
    reader.start()
    try:
        line = process.stdout.readline()
        assert line.startswith("blocking"), "".join(text for _, text in err_lines)
        children = [int(pid) for pid in line.split()[1:]]
        assert len(children) == workers
        before = (out / "checkpoints" / "last.ckpt").read_bytes()
        time.sleep(0.5)
        first = time.monotonic()
        process.send_signal(signal.SIGINT)
        time.sleep(1.0)
        said = [(at, text) for at, text in err_lines if "stopping after this step" in text]
        assert said and said[0][0] - first < 1.0, "the first Ctrl-C's message waited for the step"
        second = time.monotonic()
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=10)
        ended = time.monotonic() - second
    finally:
        process.kill()
        process.wait()
    reader.join(timeout=10)
    assert status == 130 and ended < 3.0
    err = "".join(text for _, text in err_lines)
    assert err.count("stopping after this step") == 1 and "Traceback" not in err
    assert f"kp2d train: interrupted (second Ctrl-C) in step 2; nothing saved since the last checkpoint " \
           f"(last checkpoint: {out / 'checkpoints' / 'last.ckpt'})" in err
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == before
    assert load_checkpoint(out / "checkpoints" / "last.ckpt").extra["step"] == 1
    deadline = time.monotonic() + 3
    while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in children)
    assert main(["train", str(tiny_config), "--data", str(tiny_images), "--out", str(out), "--device", "cpu",
                 "--max-steps", "2", "--no-progress", "--resume"]) == 0  # the folder is free again


def test_a_config_with_nothing_to_learn_stops_before_the_run(tiny_images, tmp_path, capsys):
    """Every loss weight 0 and no teacher: one line, exit 2, no run folder (it would train nothing)."""
    config = tmp_path / "idle.yaml"
    loss = {"keypoint_loss_weight": 0.0, "descriptor_loss_weight": 0.0, "score_loss_weight": 0.0}
    config.write_text(yaml.safe_dump({"extends": "v4", **TINY, "loss": {**TINY["loss"], **loss}}))
    out = tmp_path / "run"
    argv = ["train", str(config), "--data", str(tiny_images), "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--max-steps", "1", "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("kp2d train: error: idle: nothing to learn (no train.teacher; ")
    assert not out.exists()
