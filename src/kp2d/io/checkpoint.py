"""Checkpoint files: the original's format ``{'config', 'state_dict'}`` read and written.

- ``state_dict``: KeyPointNet weights with the original key layout (loads into the original code too).
- ``config``: a dict with ``model.params`` (``use_color``, ``do_upsample``, ``do_cross``, ...) as the
  original reads it; ours adds ``kp2d`` (the whole resolved :class:`~kp2d.config.Config`).
- Training checkpoints add ``io_net_state_dict``, ``optimizer``, ``step``, ``epoch`` and RNG states.
- ``inference`` (optional): how the network is meant to run (:mod:`kp2d.io.inference`).

No code runs from a file: only torch's zip and legacy formats are read (checked by their first bytes), and
only through ``torch.load(weights_only=True)`` or, for original checkpoints whose config is a yacs
``CfgNode`` (read without yacs), an unpickler that admits only torch's tensor-rebuilding globals (those of
``torch.load(weights_only=True)``), plain containers, numpy scalars and that one class.

Files are written atomically (temp file + rename) with a ``checksum`` entry, the SHA-256 of the other
entries' canonical bytes; loading checks it when present (the original's files have none) and refuses
non-finite weights.
"""

from __future__ import annotations

import io
import pickle
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kp2d.config import PAPER_LAYOUT, Config, ModelConfig, config_from_dict
from kp2d.errors import CheckpointError, ConfigError
from kp2d.io.checksum import CHECKSUM_KEY, payload_checksum
from kp2d.io.files import atomic_torch_save
from kp2d.io.inference import INFERENCE_KEY, InferenceSettings, inference_settings_from

__all__ = [
    "Checkpoint",
    "checkpoint_config",
    "load_checkpoint",
    "load_state_dict_strict",
    "save_checkpoint",
    "training_steps",
]

_MODEL_PARAM_NAMES = ("use_color", "do_upsample", "do_cross", "with_io")


class _YacsCfgNode(dict):
    """Stand-in for ``yacs.config.CfgNode`` (a dict subclass) so its pickles load without yacs."""


_ALLOWED_BUILTINS = {
    "set", "frozenset", "tuple", "list", "dict", "slice", "complex", "bool", "int", "float", "str"
}


_ALLOWED_NUMPY = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("scalar", "_reconstruct")
} | {("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode")}  # protocol 2 pickles bytes by encode


def _is_tensor_global(module: str, name: str) -> bool:
    """Whether ``module.name`` is one of torch's globals for rebuilding tensors, storages and dtypes.

    The same kinds as ``torch.load(weights_only=True)`` admits; not any attribute of torch (``torch.load``,
    ``torch.hub``, ... would run code).
    """
    if module in ("torch._utils", "torch._tensor"):
        return name.startswith("_rebuild_")
    if module in ("torch", "torch.cuda", "torch.storage"):
        if name.endswith(("Storage", "Tensor")) or name in ("Size", "device"):
            return True
        return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
    return (module, name) in {("torch.nn.parameter", "Parameter"), ("torch.serialization", "_get_layout")}


class _RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list; ``name`` is its ``module.name``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"it refers to {name}, which kp2d does not load")
        self.name = name


class _CheckpointUnpickler(pickle.Unpickler):
    """Admits torch's tensor-rebuilding globals, containers, numpy scalars and yacs ``CfgNode``, no more."""

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # protocol-2 pickles use the py2 name
        if "." in name:  # protocol 4 resolves dotted names attribute by attribute: torch + "os.system"
            allowed = False
        elif (module, name) == ("yacs.config", "CfgNode"):
            return _YacsCfgNode
        elif (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        else:
            allowed = (
                (module == "builtins" and name in _ALLOWED_BUILTINS)
                or _is_tensor_global(module, name)
                or (module, name) in _ALLOWED_NUMPY
            )
        if allowed:
            return super().find_class(module, name)
        raise _RefusedGlobal(f"{module}.{name}")


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`_CheckpointUnpickler`."""
    return _CheckpointUnpickler(file, **kwargs).load()


# torch reads every pickle of a file through ``pickle_module``: ``load`` for the legacy format's magic number,
# protocol version and system info, ``Unpickler`` for the data, so both must be the restricted ones
_checkpoint_pickle = types.SimpleNamespace(
    __name__="kp2d_checkpoint_pickle", Unpickler=_CheckpointUnpickler, load=_restricted_load
)

_ZIP_MAGIC = b"PK\x03\x04"
# the legacy format starts with torch's magic number, pickled with the protocol the file was saved with
_LEGACY_MAGICS = tuple(
    {pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)}
)


def _to_plain(value: Any) -> Any:
    """CfgNode / OrderedDict / tuples → plain dicts and lists (tensors untouched)."""
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _refuse(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: not a kp2d or KP2D checkpoint ({why})")


def _torch_load(path: Path) -> Any:
    """The file's object, unpickled only by torch's weights-only unpickler or :class:`_CheckpointUnpickler`.

    Anything but torch's zip format or its legacy format is refused before a byte of it is unpickled.
    """
    data = path.read_bytes()
    if not data.startswith((_ZIP_MAGIC, *_LEGACY_MAGICS)):
        raise _refuse(path, "not a PyTorch checkpoint file")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # e.g. a yacs CfgNode config: retry with the restricted unpickler below
    except Exception:  # noqa: BLE001 - a damaged file
        raise _refuse(path, "not a PyTorch checkpoint file: cannot unpickle it") from None
    try:
        return torch.load(
            io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=_checkpoint_pickle
        )
    except _RefusedGlobal as err:
        raise _refuse(path, str(err)) from None
    except Exception as err:  # noqa: BLE001
        raise _refuse(path, f"cannot read it safely: {err}") from None


def _verify(raw: dict[str, Any], path: Path) -> None:
    """The recorded checksum, when the file has one (the original's files do not), and finite weights."""
    recorded = raw.get(CHECKSUM_KEY)
    if CHECKSUM_KEY in raw and (not isinstance(recorded, str) or recorded != payload_checksum(raw)):
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch)")
    for entry in ("state_dict", "io_net_state_dict"):
        weights = raw.get(entry)
        for name, tensor in (weights.items() if isinstance(weights, dict) else ()):
            floating = isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
            if floating and not tensor.isfinite().all():
                where = "" if entry == "state_dict" else f" of {entry}"
                raise CheckpointError(f"{path}: weight {name}{where} is not finite (NaN or Inf)")


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        model: the network switches read from the file's config.
        state_dict: KeyPointNet weights.
        config: our full training config when the file has one (``None`` for the original's files).
        io_net_state_dict: IO-Net weights, when saved.
        extra: everything else in the file (optimizer state, step, epoch, RNG states, ...).
        raw_config: the file's ``config`` entry as plain containers (a yacs ``CfgNode`` becomes a dict).
        inference: the file's ``inference`` entry, parsed (defaults when absent); ``extra`` keeps the raw
            entry, so that a file rewritten from ``extra`` keeps it.
    """

    model: ModelConfig
    state_dict: dict[str, torch.Tensor]
    config: Config | None = None
    io_net_state_dict: dict[str, torch.Tensor] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    raw_config: dict[str, Any] | None = None
    inference: InferenceSettings = field(default_factory=InferenceSettings)


def _model_config_from(raw_config: Any, path: Path) -> tuple[ModelConfig, Config | None]:
    config = _to_plain(raw_config) if raw_config is not None else {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: 'config' must be a mapping, got {type(raw_config).__name__}")
    if "kp2d" in config:
        try:
            full = config_from_dict(config["kp2d"])
        except ConfigError as err:
            raise CheckpointError(f"{path}: invalid kp2d config in checkpoint: {err}") from None
        return full.model, full
    params = config.get("model", {}).get("params") if isinstance(config.get("model"), dict) else None
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: checkpoint config has no 'model.params' section")
    known = {k: bool(params[k]) for k in _MODEL_PARAM_NAMES if k in params}
    return ModelConfig(**known), None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file (ours or the original's); errors name the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    raw = _torch_load(path)
    if not isinstance(raw, dict) or "state_dict" not in raw:
        keys = sorted(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(
            f"{path}: not a KeyPointNet checkpoint (expected keys 'config' and 'state_dict', found {keys})"
        )
    _verify(raw, path)
    state_dict = raw["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of tensors")
    model, full = _model_config_from(raw.get("config"), path)
    skip = ("config", "state_dict", "io_net_state_dict", CHECKSUM_KEY)
    extra = {k: v for k, v in raw.items() if k not in skip}
    raw_config = _to_plain(raw["config"]) if raw.get("config") is not None else None
    inference = inference_settings_from(raw.get(INFERENCE_KEY), path)
    return Checkpoint(
        model, dict(state_dict), full, raw.get("io_net_state_dict"), extra, raw_config, inference
    )


def training_steps(checkpoint: Checkpoint) -> int | None:
    """Training steps behind a checkpoint's weights, counting the run it was fine-tuned from (``--init``).

    Reads ``step`` (a training checkpoint) or ``provenance.step`` (a shipped file), plus
    ``init_from.steps_before``; ``None`` when the file does not say (the original's checkpoints).
    """
    extra = checkpoint.extra
    provenance = extra.get("provenance") if isinstance(extra.get("provenance"), dict) else {}
    step = extra.get("step", provenance.get("step"))
    if not isinstance(step, int):
        return None
    init_from = extra.get("init_from") if isinstance(extra.get("init_from"), dict) else {}
    before = init_from.get("steps_before", provenance.get("steps_before"))
    return step + before if isinstance(before, int) else step


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that names missing, unexpected and mis-shaped keys in a ``CheckpointError``."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:6])}{' …' if len(unexpected) > 6 else ''}")
    if wrong_shape:
        problems.append(f"wrong shapes: {', '.join(wrong_shape[:4])}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit {type(module).__name__}: " + "; ".join(problems))
    module.load_state_dict(state_dict)


def checkpoint_config(config: Config) -> dict[str, Any]:
    """The ``config`` entry we write: the original's ``model.params`` plus our full config."""
    params = {
        "use_color": config.model.use_color,
        "do_upsample": config.model.do_upsample,
        "do_cross": config.model.do_cross,
        "with_io": config.model.with_io,
        "descriptor_loss": config.loss.descriptor_loss,
        "keypoint_loss_weight": config.loss.keypoint_loss_weight,
        "descriptor_loss_weight": config.loss.descriptor_loss_weight,
        "score_loss_weight": config.loss.score_loss_weight,
        "keypoint_net_type": "KeypointNet",
    }
    return {"model": {"params": params}, "kp2d": config.to_dict()}


def _check_model_matches_config(model: ModelConfig, keypoint_net: torch.nn.Module) -> None:
    """ConfigError naming every switch where ``keypoint_net`` differs from ``model`` (the file's config).

    A checkpoint is rebuilt from its config (:func:`build_keypoint_net`), so a mismatch would load the
    weights into a different network (or fail to load them at all).
    """
    net_color = keypoint_net.in_channels == 3
    pairs = (
        ("use_color", model.use_color, net_color, f"in_channels={keypoint_net.in_channels}"),
        ("do_upsample", model.do_upsample, keypoint_net.do_upsample, None),
        ("do_cross", model.do_cross, keypoint_net.do_cross, None),
    )
    problems = [
        f"model.{name}={bool(wanted)!s} but the network has {shown or f'{name}={bool(have)!s}'}"
        for name, wanted, have, shown in pairs
        if bool(wanted) != bool(have)
    ]
    net_width = getattr(keypoint_net, "width", 1.0)
    if float(model.width) != float(net_width):
        problems.append(f"model.width={model.width:g} but the network has width={net_width:g}")
    for name, default in PAPER_LAYOUT.items():
        wanted, have = getattr(model, name), getattr(keypoint_net, name, default)
        if wanted != have:
            problems.append(f"model.{name}={wanted} but the network has {name}={have}")
    if problems:
        raise ConfigError(
            "the config does not describe the network being saved: " + "; ".join(problems)
            + " (reloading would build a different network)"
        )


def save_checkpoint(
    path: str | Path,
    config: Config,
    keypoint_net: torch.nn.Module,
    io_net: torch.nn.Module | None = None,
    **extra: Any,
) -> None:
    """Write ``{'config', 'state_dict', 'io_net_state_dict'?, **extra}`` atomically.

    ``extra`` may hold ``inference`` (a dict or :class:`~kp2d.io.inference.InferenceSettings`): the
    settings the network is meant to run with.

    Raises:
        ConfigError: ``config.model``'s switches (``use_color``, ``do_upsample``, ``do_cross``, ``width``,
            ``stem``, ``head_rank``, ``block2``, ``backbone_rank``) differ from ``keypoint_net``'s; nothing is
            written.
    """
    _check_model_matches_config(config.model, keypoint_net)
    payload: dict[str, Any] = {
        "config": checkpoint_config(config),
        "state_dict": {k: v.detach().cpu() for k, v in keypoint_net.state_dict().items()},
    }
    if io_net is not None:
        payload["io_net_state_dict"] = {k: v.detach().cpu() for k, v in io_net.state_dict().items()}
    payload.update(extra)
    if isinstance(payload.get(INFERENCE_KEY), InferenceSettings):
        payload[INFERENCE_KEY] = payload[INFERENCE_KEY].to_entry()
    atomic_torch_save(payload, path)
