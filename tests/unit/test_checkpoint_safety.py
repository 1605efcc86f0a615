"""No code runs from a checkpoint, whatever its format; kp2d's checkpoints carry a checksum that loads check.

Every payload here would touch a marker file if it were unpickled without kp2d's restricted unpickler; each
test asserts the file was refused with a :class:`CheckpointError` (exit 2 from the CLI) and the marker is
absent.
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from kp2d.cli import main
from kp2d.config import load_config
from kp2d.errors import CheckpointError
from kp2d.io.checkpoint import load_checkpoint, save_checkpoint
from kp2d.io.checksum import payload_checksum
from kp2d.models import KeyPointNet
from kp2d.models.keypoint_net import load_keypoint_net

REFUSED = "not a kp2d or KP2D checkpoint"


class _Touch:
    """Unpickling this runs ``touch marker`` (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


class _Open:
    """Unpickling this creates ``marker`` through ``builtins.open`` (no shell)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _valid_payload() -> dict:
    """A small checkpoint in the original's layout (config + state_dict)."""
    params = {"use_color": True, "do_upsample": True, "do_cross": True, "with_io": True}
    return {"config": {"model": {"params": params}}, "state_dict": {"w": torch.ones(3)}}


def _kp2d_payload(tmp_path: Path) -> dict:
    """The dict kp2d's own ``save_checkpoint`` writes (read back safely)."""
    save_checkpoint(tmp_path / "own.ckpt", load_config("v0"), KeyPointNet(do_upsample=False, do_cross=False))
    return torch.load(tmp_path / "own.ckpt", weights_only=True)


def _write(path: Path, kind: str, marker: Path, protocol: int = 2) -> Path:
    """Write a hostile file of ``kind`` to ``path``."""
    evil = _Touch(marker)
    if kind == "raw-pickle":
        path.write_bytes(pickle.dumps(evil, protocol=protocol))
    elif kind == "raw-pickle-open":
        path.write_bytes(pickle.dumps(_Open(marker), protocol=protocol))
    elif kind in ("legacy-top", "zip-top"):
        torch.save(evil, path, pickle_protocol=protocol, _use_new_zipfile_serialization=kind == "zip-top")
    elif kind in ("legacy-state-dict", "zip-state-dict"):
        payload = _valid_payload()
        payload["state_dict"]["evil"] = evil
        torch.save(payload, path, pickle_protocol=protocol, _use_new_zipfile_serialization=kind[:3] == "zip")
    elif kind in ("legacy-config", "zip-config"):
        payload = _kp2d_payload(path.parent)
        payload["config"]["kp2d"]["model"]["evil"] = evil
        torch.save(payload, path, pickle_protocol=protocol, _use_new_zipfile_serialization=kind[:3] == "zip")
    elif kind == "legacy-magic-then-pickle":
        # the legacy format starts with a pickled magic number: a file that copies it, then a payload
        magic = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)
        path.write_bytes(magic + pickle.dumps(evil, protocol=protocol))
    else:
        raise AssertionError(kind)
    return path


KINDS = [
    "raw-pickle", "raw-pickle-open", "legacy-top", "zip-top", "legacy-state-dict", "zip-state-dict",
    "legacy-config", "zip-config", "legacy-magic-then-pickle",
]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize("kind", KINDS)
def test_no_payload_runs_through_the_loader(tmp_path, kind, protocol):
    marker = tmp_path / "pwned"
    try:
        path = _write(tmp_path / "evil.ckpt", kind, marker, protocol)
    except (RuntimeError, pickle.PicklingError, TypeError) as err:  # torch.save refuses some protocols
        pytest.skip(f"torch.save cannot write {kind} with protocol {protocol}: {err}")
    with pytest.raises(CheckpointError, match=REFUSED) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["raw-pickle", "legacy-state-dict", "zip-config"])
def test_from_pretrained_refuses(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = _write(tmp_path / "evil.pt", kind, marker)
    with pytest.raises(CheckpointError, match=REFUSED):
        KeyPointNet.from_pretrained(path)
    with pytest.raises(CheckpointError, match=REFUSED):
        load_keypoint_net(str(path))
    assert not marker.exists()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        path = folder / f"p{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (80, 120, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def _cli_args(entry: str, model: Path, photos: list[Path], tmp_path: Path, tiny_root: Path) -> list[str]:
    if entry == "detect":
        return ["detect", str(photos[0]), "--model", str(model), "--out", str(tmp_path / "out")]
    if entry == "match":
        out = str(tmp_path / "m.png")
        return ["match", str(photos[0]), str(photos[1]), "--model", str(model), "--out", out]
    if entry == "eval":
        return ["eval", "--checkpoint", str(model), "--hpatches", str(tiny_root), "--device", "cpu"]
    if entry == "export":
        return ["export", "--checkpoint", str(model), "--onnx", str(tmp_path / "m.onnx")]
    data = photos[0].parent
    if entry == "train-init":
        return ["train", "v0", "--data", str(data), "--out", str(tmp_path / "run"), "--init", str(model),
                "--device", "cpu", "--max-steps", "1", "--batch-size", "2", "--no-progress"]
    assert entry == "train-resume"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(model.read_bytes())
    return ["train", "v0", "--data", str(data), "--out", str(tmp_path / "run"), "--resume", "--device", "cpu",
            "--max-steps", "1", "--batch-size", "2", "--no-progress"]


@pytest.mark.parametrize("kind", ["raw-pickle", "legacy-state-dict", "zip-config"])
@pytest.mark.parametrize("entry", ["detect", "match", "eval", "export", "train-init", "train-resume"])
def test_cli_refuses_with_one_line(tmp_path, photos, tiny_root, capsys, entry, kind):
    marker = tmp_path / "pwned"
    model = _write(tmp_path / "evil.ckpt", kind, marker)
    assert main(_cli_args(entry, model, photos, tmp_path, tiny_root)) == 2
    err = capsys.readouterr().err
    assert REFUSED in err and "Traceback" not in err
    assert not marker.exists()


# -- what must still load ---------------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False])
def test_plain_checkpoints_load_in_both_formats(tmp_path, zip_format):
    """The original's files (no checksum), in torch's zip and legacy formats, with a numpy scalar too."""
    net = KeyPointNet()
    params = {"use_color": True, "do_upsample": True, "do_cross": True, "with_io": True}
    payload = {"config": {"model": {"params": params}}, "state_dict": net.state_dict(), "x": np.float64(0.5)}
    torch.save(payload, tmp_path / "a.ckpt", _use_new_zipfile_serialization=zip_format)
    checkpoint = load_checkpoint(tmp_path / "a.ckpt")
    assert checkpoint.extra["x"] == 0.5
    loaded = load_keypoint_net(tmp_path / "a.ckpt")
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_golden_state_dict_loads(tmp_path, golden_forward):
    params = {"use_color": True, "do_upsample": True, "do_cross": True}
    torch.save({"config": {"model": {"params": params}}, "state_dict": golden_forward["state_dict"]},
               tmp_path / "g.ckpt")
    assert not load_keypoint_net(tmp_path / "g.ckpt").training


# -- integrity ----------------------------------------------------------------------------------------------


def _training_checkpoint(path: Path) -> Path:
    """A kp2d checkpoint with an optimizer state, as ``--resume`` reads it."""
    net = KeyPointNet(do_upsample=False, do_cross=False)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.rand(1, 3, 32, 32))[0].sum().backward()
    optimizer.step()
    save_checkpoint(path, load_config("v0"), net, optimizer=optimizer.state_dict(), step=1, epoch=0,
                    batch_in_epoch=1, best_score=float("-inf"), rng={"torch": torch.get_rng_state()})
    return path


def test_kp2d_checkpoints_record_a_checksum_that_loads(tmp_path):
    path = _training_checkpoint(tmp_path / "a.ckpt")
    raw = torch.load(path, weights_only=True)
    assert raw["checksum"].startswith("sha256:") and len(raw["checksum"]) == len("sha256:") + 64
    checkpoint = load_checkpoint(path)
    assert "checksum" not in checkpoint.extra
    assert checkpoint.extra["step"] == 1
    # saving the same content again gives the same checksum (the canonical bytes are deterministic)
    torch.save(raw, tmp_path / "b.ckpt")
    load_checkpoint(tmp_path / "b.ckpt")


def test_checksum_of_known_bytes():
    """Type tag, length, content; mappings by sorted key; a tensor as dtype, shape and raw bytes."""
    import hashlib

    payload = {"step": 1, "w": torch.tensor([1.0], dtype=torch.float32), "a": [None, True, 0.5, "x"]}
    canonical = (
        b"D3;" + b"S1;a" + b"L4;" + b"N" + b"B1" + b"F0x1.0000000000000p-1;" + b"S1;x"
        + b"S4;step" + b"I1;" + b"S1;w" + b"Ttorch.float32(1,);" + b"\x00\x00\x80\x3f"
    )
    assert payload_checksum(payload) == "sha256:" + hashlib.sha256(canonical).hexdigest()
    # what torch.load gives back for what was saved: tuples for lists, another key order, a copy
    same = {"a": (None, True, 0.5, "x"), "w": torch.tensor([1.0]), "step": 1, "checksum": "ignored"}
    assert payload_checksum(same) == payload_checksum(payload)
    wider = {**payload, "w": torch.tensor([1.0], dtype=torch.float64)}
    assert payload_checksum(wider) != payload_checksum(payload)


def _flip_optimizer_byte(path: Path) -> None:
    """One bit of one element of the optimizer's first moment flipped, the file re-saved as it was."""
    raw = torch.load(path, weights_only=True)
    exp_avg = raw["optimizer"]["state"][0]["exp_avg"]
    bits = exp_avg.view(-1).view(torch.int32)
    bits[0] ^= 1
    torch.save(raw, path)


def test_flipped_byte_in_the_optimizer_state_is_refused(tmp_path):
    path = _training_checkpoint(tmp_path / "a.ckpt")
    _flip_optimizer_byte(path)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is corrupt \(checksum mismatch\)"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_keypoint_net(path)


def test_flipped_byte_in_the_zip_member_is_refused(tmp_path):
    """The same corruption made in the file itself: one byte of a tensor's storage in the zip archive."""
    path = _training_checkpoint(tmp_path / "a.ckpt")
    edited = tmp_path / "b.ckpt"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(edited, "w") as out:
        members = source.infolist()
        largest = max((m for m in members if "/data/" in m.filename), key=lambda m: m.file_size)
        for item in members:
            data = bytearray(source.read(item))
            if item.filename == largest.filename:
                data[len(data) // 2] ^= 0x10
            out.writestr(item, bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(edited)


def test_resume_refuses_a_corrupt_last_checkpoint(tmp_path, photos, capsys):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    _training_checkpoint(last)
    _flip_optimizer_byte(last)
    args = ["train", "v0", "--data", str(photos[0].parent), "--out", str(tmp_path / "run"), "--resume",
            "--device", "cpu", "--max-steps", "2", "--batch-size", "2", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {last} is corrupt (checksum mismatch)" in err


@pytest.mark.parametrize("entry", ["md5:1234", None, torch.zeros(2)])
def test_a_wrong_checksum_entry_is_corrupt(tmp_path, entry):
    path = _training_checkpoint(tmp_path / "a.ckpt")
    raw = torch.load(path, weights_only=True)
    raw["checksum"] = entry
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_with_the_tensor_name(tmp_path, bad):
    net = KeyPointNet(do_upsample=False, do_cross=False)
    with torch.no_grad():
        net.state_dict()["convDb.weight"].view(-1)[5] = bad
    save_checkpoint(tmp_path / "a.ckpt", load_config("v0"), net)  # the checksum is right; the weights are not
    with pytest.raises(CheckpointError, match=r"a\.ckpt.*convDb\.weight.*(NaN|Inf)"):
        load_keypoint_net(tmp_path / "a.ckpt")
    buffer = io.BytesIO()
    torch.save({"config": {"model": {"params": {}}}, "state_dict": net.state_dict()}, buffer)
    (tmp_path / "b.ckpt").write_bytes(buffer.getvalue())  # the original's layout, no checksum
    with pytest.raises(CheckpointError, match=r"convDb\.weight"):
        load_checkpoint(tmp_path / "b.ckpt")


def test_shipped_weights_without_checksum_still_load():
    from kp2d.io.weights import list_pretrained, resolve_model_path

    if "v4" not in list_pretrained():
        pytest.skip("no weights shipped in this install")
    raw = torch.load(str(resolve_model_path("v4")), weights_only=True)
    assert "checksum" not in raw  # v4.pt predates checksums and is not rewritten
    assert not load_keypoint_net("v4").training
    lite = torch.load(str(resolve_model_path("lite")), weights_only=True)
    assert "checksum" in lite  # files shipped since carry one
