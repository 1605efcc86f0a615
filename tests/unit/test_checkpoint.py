import os
import pickle
import sys

import pytest
import torch

from kp2d.config import load_config
from kp2d.errors import CheckpointError, ConfigError
from kp2d.io.checkpoint import load_checkpoint, save_checkpoint
from kp2d.models import KeyPointNet
from kp2d.models.keypoint_net import load_keypoint_net


def test_round_trip_keeps_config_and_weights(tmp_path):
    config = load_config("v2")
    net = KeyPointNet(do_upsample=True, do_cross=True)
    save_checkpoint(tmp_path / "a.ckpt", config, net, step=7)
    checkpoint = load_checkpoint(tmp_path / "a.ckpt")
    assert checkpoint.config == config
    assert checkpoint.extra["step"] == 7
    # the original's loader reads config['model']['params']
    raw = torch.load(tmp_path / "a.ckpt", weights_only=True)
    assert raw["config"]["model"]["params"]["do_upsample"] is True
    loaded = load_keypoint_net(tmp_path / "a.ckpt")
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = KeyPointNet().state_dict()
    state.pop("convDb.bias")
    state["head.extra"] = torch.zeros(1)
    params = {"use_color": True, "do_upsample": True, "do_cross": True}
    torch.save({"config": {"model": {"params": params}}, "state_dict": state}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"missing keys: convDb\.bias.*unexpected keys: head\.extra"):
        load_keypoint_net(tmp_path / "bad.ckpt")


def test_wrong_variant_names_shapes(tmp_path):
    state = KeyPointNet(do_upsample=True).state_dict()
    state["convFaa.0.weight"] = torch.zeros(256, 128, 3, 3)
    params = {"use_color": True, "do_upsample": False, "do_cross": False}
    torch.save({"config": {"model": {"params": params}}, "state_dict": state}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="wrong shapes: convFaa.0.weight"):
        load_keypoint_net(tmp_path / "bad.ckpt")


@pytest.mark.parametrize(
    ("payload", "message"),
    [({"weights": 1}, "not a KeyPointNet checkpoint"), ({"state_dict": {}, "config": {}}, "model.params")],
)
def test_not_a_checkpoint(tmp_path, payload, message):
    torch.save(payload, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "x.pt")


def test_text_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "notes.pt")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_code_in_pickle_is_refused(tmp_path):
    torch.save(
        {"config": {}, "state_dict": {}, "x": _Payload()},
        tmp_path / "evil.pt",
        pickle_protocol=pickle.DEFAULT_PROTOCOL,
    )
    with pytest.raises(CheckpointError, match="does not load"):
        load_checkpoint(tmp_path / "evil.pt")


def test_unknown_name_and_missing_file():
    with pytest.raises(CheckpointError, match="unknown model 'nope'"):
        load_keypoint_net("nope")
    with pytest.raises(CheckpointError, match="not found"):
        load_keypoint_net("/no/such/file.ckpt")


@pytest.mark.parametrize(
    ("module", "name"), [("torch", "os.system"), ("torch", "load"), ("torch.hub", "load"), ("numpy", "load")]
)
def test_only_tensor_globals_of_torch_are_loaded(tmp_path, module, name):
    """A checkpoint that fails the weights-only load goes through kp2d's unpickler, which must not hand out
    any attribute of torch: with protocol 4, ``torch`` + ``os.system`` would resolve to ``os.system``."""
    torch.save({"config": {}, "state_dict": {}}, tmp_path / "base.pt")
    marker = tmp_path / "ran"
    call = (
        b"\x80\x04" + pickle.dumps(module)[2:-1] + pickle.dumps(name)[2:-1] + b"\x93"  # STACK_GLOBAL
        + pickle.dumps((f"touch {marker}",))[2:-1] + b"R."  # REDUCE, STOP
    )
    import zipfile

    with zipfile.ZipFile(tmp_path / "base.pt") as source, zipfile.ZipFile(tmp_path / "evil.pt", "w") as evil:
        for item in source.infolist():
            data = call if item.filename.endswith("/data.pkl") else source.read(item)
            evil.writestr(item, data)
    with pytest.raises(CheckpointError, match="does not load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("preset", "net", "message"),
    [
        ("v0", KeyPointNet(), r"model.do_upsample=False but the network has do_upsample=True; model\.do_cr"),
        ("v4", KeyPointNet(do_cross=False), r"model.do_cross=True but the network has do_cross=False"),
        ("v4", KeyPointNet(in_channels=1), r"model.use_color=True but the network has in_channels=1"),
    ],
)
def test_save_checkpoint_refuses_a_config_that_does_not_describe_the_network(tmp_path, preset, net, message):
    path = tmp_path / "mismatch.ckpt"
    with pytest.raises(ConfigError, match=message):
        save_checkpoint(path, load_config(preset), net)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    gray = KeyPointNet(in_channels=1, do_upsample=False, do_cross=False)
    # a matching config is written and reloads the same network
    save_checkpoint(path, load_config("v0", {"model": {"use_color": False}}), gray)
    loaded = load_keypoint_net(path)
    assert (loaded.in_channels, loaded.do_upsample, loaded.do_cross) == (1, False, False)


_WRITE_PAST_A_FILE_SIZE_LIMIT = """
import resource, signal, sys, torch
from kp2d.io.files import atomic_torch_save
atomic_torch_save({"step": 1}, sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
try:
    atomic_torch_save({"step": 2, "weights": torch.zeros(250_000)}, sys.argv[1])
except Exception as err:
    print(type(err).__name__, err)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs resource.RLIMIT_FSIZE")
def test_a_failed_write_is_an_oserror_and_leaves_the_previous_checkpoint(tmp_path):
    """PyTorch's zip writer turned the failed writes of a full disk into a RuntimeError ("unexpected pos"),
    which the CLI printed as a traceback; now it is the OSError, the temporary file goes and ``last.ckpt``
    stays as it was."""
    import subprocess

    path = tmp_path / "last.ckpt"
    result = subprocess.run(
        [sys.executable, "-c", _WRITE_PAST_A_FILE_SIZE_LIMIT, str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OSError [Errno 27] File too large"), result.stdout
    loaded = torch.load(path, weights_only=True)
    assert loaded.pop("checksum").startswith("sha256:") and loaded == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_checkpoints_get_the_usual_permissions_without_os_fchmod(tmp_path, monkeypatch):
    """``os.fchmod`` exists on Windows only from Python 3.13; every checkpoint write failed there."""
    from kp2d.io.files import atomic_torch_save

    monkeypatch.delattr(os, "fchmod", raising=False)
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
