"""The training loop: data → :class:`~kp2d.train.step.TrainingStep` → logs, checkpoints, validation.

Single process or ``torchrun`` (DistributedDataParallel: NCCL on GPU, gloo on CPU). Checkpoints are the
original's format plus what resuming needs, written atomically; ``resume=True`` continues from
``OUT/checkpoints/last.ckpt`` with the same optimizer state, schedule, data order and random streams;
``init=NAME_OR_PATH`` starts a new run (fresh optimizer, step 0) from trained weights (fine-tuning).
A time limit (``max_minutes``), Ctrl-C or SIGTERM ends the run after the current step with ``last.ckpt``
written, so that ``resume=True`` picks it up where it stopped; a second Ctrl-C ends the process at once.
A run holds its folder (``OUT/.lock``) while it trains: a second run there is refused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from kp2d.config import Config, ModelConfig, check_something_to_learn
from kp2d.errors import CheckpointError
from kp2d.io.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint, training_steps
from kp2d.io.inference import INFERENCE_KEY, InferenceSettings
from kp2d.io.weights import resolve_model_path
from kp2d.models import IONet
from kp2d.models.keypoint_net import KeyPointNet, build_keypoint_net, load_keypoint_net
from kp2d.runtime import autocast_dtype, init_distributed, resolve_device
from kp2d.train.logger import RunLogger
from kp2d.train.run_folder import close_inherited_locks, hold_run_folder, remove_stale_temporary_files
from kp2d.train.step import NonFiniteLossError, SiameseLoss, TrainingStep, build_optimizer, learning_rate_at

__all__ = ["TrainOptions", "TrainSummary", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """What ``kp2d train`` was asked to do (the config holds the rest)."""

    config: Config
    data: Path
    out: Path
    device: str = "auto"
    epochs: int | None = None  # overrides config.train.epochs
    max_steps: int | None = None  # stop after this many steps in total
    max_minutes: float | None = None  # stop (checkpoint written) after this much wall time of this process
    resume: bool = False
    init: str | None = None  # start from these weights: a pretrained name or a checkpoint path
    hpatches: Path | None = None  # periodic validation set
    skip_bad: bool = False
    cache_images: bool = False
    num_workers: int | None = None  # overrides config.train.num_workers
    progress: bool = True


@dataclass
class TrainSummary:
    """Where a run ended."""

    steps: int
    epochs_completed: int
    seconds: float
    last_checkpoint: Path
    last_loss: float = math.nan
    validation: dict[str, Any] = field(default_factory=dict)
    stopped_by: str | None = None  # "time limit" or "signal" when the run ended before its last step
    from_scratch: bool = True  # the weights started random (no --init, in this run or the one it resumes)
    is_main: bool = True  # the process that reports (rank 0 under torchrun)


@dataclass
class _Progress:
    """Position in the run: global step, epoch, and batches done in that epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def _rng_state(generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """The augmentation generator and the global streams dropout draws from (CPU, and CUDA on a GPU)."""
    state = {"cpu": generator.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


# model switches that change KeyPointNet's weights (dropout has none; IO-Net is a network of its own)
_WEIGHT_SWITCHES = ("use_color", "do_upsample", "do_cross", "width")
# config keys that --resume may change: how long, how often to log / save / validate, workers, precision
_RESUME_MAY_CHANGE = frozenset(
    ["name"]
    + [f"train.{key}" for key in ("epochs", "num_workers", "precision", "log_every", "checkpoint_every",
                                  "snapshot_every", "val_every", "val_shape", "val_top_k", "wandb",
                                  "wandb_project")]
)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"seed": 42}}`` → ``{"train.seed": 42}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def freeze_parts(net: KeyPointNet, parts: Sequence[str]) -> list[torch.nn.Module]:
    """Stop training ``parts`` (:data:`~kp2d.config.NETWORK_PARTS`) of ``net``; returns their layers.

    Their weights stop taking gradients and their BatchNorm layers go to eval mode (running statistics
    kept); the caller keeps them in eval mode whenever it puts the network back into training mode.
    """
    frozen = [module for part in parts for module in net.part_modules(part)]
    for module in frozen:
        module.requires_grad_(False).eval()
    return frozen


def _leave_signals_to_the_run(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM to the main process, which stops the run after the step.

    Ctrl-C, torchrun and job schedulers signal a whole process group; a worker that dies of it makes the
    main process fail wherever it is (PyTorch's SIGCHLD check), losing the steps since the last
    checkpoint. On POSIX the worker leaves the group; elsewhere it ignores Ctrl-C. SIGTERM sent to the
    worker itself keeps PyTorch's handler: the main process ends its workers with it (ignored, the
    interpreter's exit would wait for them forever). A worker whose main process is gone exits by itself.
    """
    if hasattr(os, "setpgid"):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    close_inherited_locks()  # a forked worker must not keep the run folder locked after the run is gone
    if threading.current_thread() is threading.main_thread():
        signal.set_wakeup_fd(-1)  # a forked worker's signals are its own, not the run's Ctrl-C


class _Run:
    """State of one training run; methods are the phases of :func:`train`."""

    def __init__(self, options: TrainOptions) -> None:
        self.options = options
        self.config = options.config
        self.dist, self.device = init_distributed(resolve_device(options.device))
        self.out = Path(options.out)
        self.checkpoint_dir = self.out / "checkpoints"
        self.last_checkpoint = self.checkpoint_dir / "last.ckpt"
        self.epochs = options.epochs or self.config.train.epochs
        self.progress = _Progress()
        self.best_score = -math.inf
        self.init_from: dict[str, Any] | None = None  # set by --init, kept by --resume
        self.stop_signal: str | None = None  # name of the signal that asked the run to stop
        self.started = time.perf_counter()

    # -- set-up -------------------------------------------------------------------------------------------
    def build(self) -> None:
        from kp2d.augmentation import HomographicAugmentation
        from kp2d.data.image_folder import ImageFolderDataset
        from kp2d.data.sampler import EpochBatchSampler

        train_cfg = self.config.train
        torch.manual_seed(train_cfg.seed + self.dist.rank)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed image size: let cuDNN pick the fastest kernels
        self.dataset = ImageFolderDataset(
            self.options.data,
            image_shape=self.config.augmentation.crop_from
            if self.config.augmentation.crop_from != (0, 0)
            else self.config.augmentation.image_shape,
            skip_bad=self.options.skip_bad,
            cache=self.options.cache_images,
        )
        self.sampler = EpochBatchSampler(
            len(self.dataset), train_cfg.batch_size, train_cfg.seed, self.dist.rank, self.dist.world_size
        )
        workers = train_cfg.num_workers if self.options.num_workers is None else self.options.num_workers
        self.loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            # Its own generator: starting an iterator (each epoch, and on --resume in mid-epoch) must not
            # draw from the global stream that dropout uses, or a resumed run would part from a straight one.
            generator=torch.Generator().manual_seed(train_cfg.seed + self.dist.rank),
            worker_init_fn=_leave_signals_to_the_run,
        )
        self.keypoint_net = build_keypoint_net(self.config.model).to(self.device)
        # validated, and recorded in its checkpoints, as the losses read its descriptors
        self.keypoint_net.inference_settings = InferenceSettings(
            descriptor_sampling=self.config.loss.descriptor_sampling
        )
        # layers that stay in eval mode while the rest trains (train_mode)
        self.eval_layers = freeze_parts(self.keypoint_net, train_cfg.freeze)
        if train_cfg.freeze:
            log.info("frozen: %s (weights and BatchNorm statistics kept)", ", ".join(train_cfg.freeze))
        if train_cfg.keep_batchnorm_statistics:
            batchnorms = [m for m in self.keypoint_net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            self.eval_layers += [m.eval() for m in batchnorms]
            log.info("BatchNorm statistics kept as they start (train.keep_batchnorm_statistics)")
        self.io_net = IONet().to(self.device) if self.config.model.with_io else None
        self.optimizer = build_optimizer(self.keypoint_net, self.io_net, self.config.optim)
        dtype = autocast_dtype(train_cfg.precision, self.device)
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        self.scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        self.keypoint_net.to(memory_format=torch.channels_last)
        teacher = None
        if train_cfg.teacher:
            teacher = load_keypoint_net(train_cfg.teacher, self.device).to(memory_format=torch.channels_last)
            log.info("distilling from %s (loss.distill_weight %g)", train_cfg.teacher,
                     self.config.loss.distill_weight)
        model: torch.nn.Module = SiameseLoss(self.keypoint_net, self.io_net, self.config, dtype, teacher)
        if self.dist.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # IO loss and V3's descriptor head can drop out of a step
            )
        # all augmentation draws come from this CPU generator
        # (kp2d.augmentation seeds its device stream from it)
        self.generator = torch.Generator().manual_seed(train_cfg.seed * 1000 + self.dist.rank)
        self.step_fn = TrainingStep(model, self.optimizer, HomographicAugmentation(self.config.augmentation),
                                    channels_last=True, scaler=self.scaler)

    def restore(self) -> None:
        """Load ``last.ckpt`` (``--resume``): weights, optimizer, position, random streams."""
        if not self.last_checkpoint.is_file():
            raise CheckpointError(f"nothing to resume: {self.last_checkpoint} does not exist")
        checkpoint = load_checkpoint(self.last_checkpoint)
        if checkpoint.config is not None:
            self._require_same_settings(checkpoint.config)
        extra = checkpoint.extra
        if "optimizer" not in extra:
            raise CheckpointError(f"{self.last_checkpoint} has no optimizer state; it cannot be resumed")
        load_state_dict_strict(self.keypoint_net, checkpoint.state_dict, str(self.last_checkpoint))
        if self.io_net is not None:
            load_state_dict_strict(self.io_net, checkpoint.io_net_state_dict or {}, str(self.last_checkpoint))
        rng = extra.get("rng", {})
        per_process = rng.get("per_process") or []
        trained_with = len(per_process) or 1  # the streams of every process are kept, one per rank
        if trained_with != self.dist.world_size:
            raise CheckpointError(
                f"{self.last_checkpoint} comes from a run of {trained_with} process(es), this one has "
                f"{self.dist.world_size}: the data order and random streams are per process, so resume with "
                f"{trained_with} (torchrun --nproc_per_node {trained_with}), or start a new run from its "
                f"weights with --init"
            )
        self.optimizer.load_state_dict(extra["optimizer"])
        if self.scaler is not None and "scaler" in extra:
            self.scaler.load_state_dict(extra["scaler"])
        self.progress = _Progress(extra["step"], extra["epoch"], extra["batch_in_epoch"])
        self.best_score = extra.get("best_score", -math.inf)
        self.init_from = extra.get("init_from")
        if per_process:
            rng = per_process[self.dist.rank]
        if "cpu" in rng:
            self.generator.set_state(rng["cpu"])
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        log.info(
            "resumed from %s at step %d (epoch %d)",
            self.last_checkpoint, self.progress.step, self.progress.epoch,
        )

    def initialize_from(self, name_or_path: str) -> None:
        """Start from trained weights (``--init``): KeyPointNet, and IO-Net when the file has it.

        The optimizer, schedule and step count start fresh; the source and how many steps it had are kept
        in every checkpoint of this run as ``init_from``.
        """
        path = resolve_model_path(name_or_path)
        checkpoint = load_checkpoint(path)
        self._require_same_network(checkpoint.model, path)
        load_state_dict_strict(self.keypoint_net, checkpoint.state_dict, str(path))
        if self.io_net is not None and checkpoint.io_net_state_dict is not None:
            load_state_dict_strict(self.io_net, checkpoint.io_net_state_dict, str(path))
        elif self.io_net is not None:
            log.info("%s has no IO-Net weights; IO-Net starts from random weights", path)
        prior = training_steps(checkpoint)
        self.init_from = {"source": str(name_or_path), "steps_before": prior}
        log.info("starting from the weights of %s (%s steps)", path, prior if prior is not None else "?")

    def _require_same_network(self, model: ModelConfig, source: Path) -> None:
        """Weights from ``source`` fit only a network with this config's input and layers.

        Dropout and IO-Net do not change KeyPointNet's weights: V2's weights can start a V4 run and back.
        """
        wanted = self.config.model
        differ = [name for name in _WEIGHT_SWITCHES if getattr(model, name) != getattr(wanted, name)]
        if differ:
            theirs = ", ".join(f"model.{name}={getattr(model, name)}" for name in differ)
            ours = ", ".join(f"{getattr(wanted, name)}" for name in differ)
            raise CheckpointError(
                f"{source} holds a network with {theirs}; the config '{self.config.name}' asks for {ours}"
            )

    def _require_same_settings(self, stored: Config) -> None:
        """``--resume`` continues a run exactly: only the keys of :data:`_RESUME_MAY_CHANGE` may differ."""
        theirs, ours = _flatten(stored.to_dict()), _flatten(self.config.to_dict())
        differ = [key for key in ours if key not in _RESUME_MAY_CHANGE and theirs.get(key) != ours[key]]
        if differ:
            changes = "; ".join(f"{key}: {theirs.get(key)} -> {ours[key]}" for key in differ[:4])
            more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
            raise CheckpointError(
                f"--resume: the config differs from the run in {self.out} ({changes}{more}); resume with the "
                f"run's own config ({self.out / 'config.yaml'}), or start a new run from its weights with "
                f"--init {self.last_checkpoint}"
            )

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save(self, path: Path | None = None) -> None:
        rng = _rng_state(self.generator, self.device)
        if self.dist.enabled:  # every process calls save at the same steps; each keeps its own streams
            per_process: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(per_process, rng)
            rng = {**rng, "per_process": per_process}
        if not self.dist.is_main:
            return
        save_checkpoint(
            path or self.last_checkpoint,
            self.config,
            self.keypoint_net,
            self.io_net,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            step=self.progress.step,
            epoch=self.progress.epoch,
            batch_in_epoch=self.progress.batch_in_epoch,
            best_score=self.best_score,
            rng=rng,
            **self._init_record(),
            **self._inference_record(),
        )

    def save_model_only(self, path: Path) -> None:
        if self.dist.is_main:
            save_checkpoint(path, self.config, self.keypoint_net, self.io_net, step=self.progress.step,
                            **self._init_record(), **self._inference_record())

    def _init_record(self) -> dict[str, Any]:
        return {"init_from": self.init_from} if self.init_from is not None else {}

    def _inference_record(self) -> dict[str, Any]:
        """The ``inference`` entry of a run whose losses read descriptors centred; none for the default."""
        if self.config.loss.descriptor_sampling == "original":
            return {}
        return {INFERENCE_KEY: self.keypoint_net.inference_settings}

    # -- validation -----------------------------------------------------------------------------------------
    def validate(self, logger: RunLogger) -> dict[str, Any]:
        """HPatches metrics of the current weights (main process), logged; ``best.ckpt`` by matching score."""
        if self.options.hpatches is None:
            return {}
        metrics: dict[str, Any] = {}
        if self.dist.is_main:
            from kp2d.eval.hpatches import KeyPointNetDetector, evaluate_hpatches

            train_cfg = self.config.train
            self.keypoint_net.eval()
            try:
                metrics = evaluate_hpatches(
                    KeyPointNetDetector(self.keypoint_net, self.device),
                    self.options.hpatches,
                    size_wh=tuple(train_cfg.val_shape),
                    top_k=train_cfg.val_top_k,
                    progress=False,
                )
            finally:
                self.train_mode()
            logger.validation(metrics, self.progress.step)
            if metrics.get("mscore", -math.inf) > self.best_score:
                self.best_score = metrics["mscore"]
                self.save_model_only(self.checkpoint_dir / "best.ckpt")
        if self.dist.enabled:
            torch.distributed.barrier()
        return metrics

    def train_mode(self) -> None:
        """KeyPointNet in training mode, its frozen parts (and kept BatchNorms) in eval mode."""
        self.keypoint_net.train()
        for module in self.eval_layers:
            module.eval()

    # -- the loop -------------------------------------------------------------------------------------------
    def total_steps(self) -> int:
        total = self.epochs * len(self.sampler)
        return min(total, self.options.max_steps) if self.options.max_steps else total

    def set_learning_rate(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate_at(group["base_lr"], self.progress.epoch, self.config.optim)
        return self.optimizer.param_groups[0]["lr"]

    def stop_reason(self) -> str | None:
        """Why the run should end after this step (all processes agree), or ``None``."""
        reason = 0
        if self.stop_signal is not None:
            reason = 2
        elif self.options.max_minutes is not None:
            reason = int(time.perf_counter() - self.started >= 60 * self.options.max_minutes)
        if self.dist.enabled:  # every rank must leave the loop at the same step
            flag = torch.tensor([reason], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            reason = int(flag.item())
        return {0: None, 1: "time limit", 2: "signal"}[reason]

    def run(self) -> TrainSummary:
        total = self.total_steps()
        logger = RunLogger(
            self.out, self.config, self.dist.is_main, total, self.progress.step, self.options.progress
        )
        last_loss, metrics, stopped_by = math.nan, {}, None
        train_cfg = self.config.train
        try:
            while self.progress.step < total and self.progress.epoch < self.epochs and stopped_by is None:
                lr = self.set_learning_rate()
                self.sampler.set_epoch(self.progress.epoch, self.progress.batch_in_epoch)
                for images in self._batches():
                    terms = self._step(images)
                    last_loss = terms.total.item()
                    logger.step(terms, self.progress.step, self.progress.epoch, lr)
                    if self.progress.step % train_cfg.checkpoint_every == 0:
                        self.save()
                    stopped_by = self.stop_reason()
                    if self.progress.step >= total or stopped_by is not None:
                        break
                if self.progress.batch_in_epoch >= len(self.sampler):
                    metrics = self.finish_epoch(logger) or metrics
                if stopped_by is None and self.progress.step < total:
                    stopped_by = self.stop_reason()  # e.g. a signal while a batch was read
            self.save()
            validating = self.options.hpatches is not None and self.config.train.val_every > 0
            if validating and not metrics and stopped_by is None:  # a run shorter than val_every epochs
                metrics = self.validate(logger)
        finally:
            logger.close()
        if stopped_by is not None:
            log.info("stopped at step %d (%s); %s written: continue with --resume",
                     self.progress.step, self.stop_signal or stopped_by, self.last_checkpoint)
        return TrainSummary(self.progress.step, self.progress.epoch, time.perf_counter() - self.started,
                            self.last_checkpoint, last_loss, metrics, stopped_by, self.init_from is None,
                            self.dist.is_main)

    def _batches(self) -> Iterator[torch.Tensor]:
        """The loader's batches for the current epoch.

        A failed read leaves the run between two steps. In one process, a stop already asked for (a loader
        process may have died of the same SIGTERM) just ends the epoch, and any other error (an unreadable
        image) writes ``last.ckpt`` before it goes on, so that no step is lost.
        """
        batches = iter(self.loader)
        while True:
            try:
                images = next(batches)
            except StopIteration:
                return
            except Exception:
                if self.dist.enabled:  # a checkpoint needs every process
                    raise
                if self.stop_signal is not None:
                    return
                if self.progress.step > 0:
                    self.save()
                raise
            yield images

    def finish_epoch(self, logger: RunLogger) -> dict[str, Any]:
        """Count the epoch, checkpoint, keep a snapshot and validate when due; returns validation metrics."""
        train_cfg = self.config.train
        self.progress.epoch += 1
        self.progress.batch_in_epoch = 0
        self.save()
        if train_cfg.snapshot_every and self.progress.epoch % train_cfg.snapshot_every == 0:
            self.save_model_only(self.checkpoint_dir / f"epoch_{self.progress.epoch:03d}.ckpt")
        if train_cfg.val_every and self.progress.epoch % train_cfg.val_every == 0:
            return self.validate(logger)
        return {}

    def _step(self, images: torch.Tensor):
        images = images.to(self.device, non_blocking=True)
        try:
            terms = self.step_fn(images, self.generator)
        except NonFiniteLossError as err:
            kept = (
                f"the last good checkpoint is {self.last_checkpoint}"
                if self.last_checkpoint.is_file()
                else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"training stopped at step {self.progress.step + 1} (epoch {self.progress.epoch}): "
                f"{err}; {kept}"
            ) from None
        self.progress.step += 1
        self.progress.batch_in_epoch += 1
        return terms


def _write_run_config(out: Path, config: Config) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _abort_now(run: _Run) -> None:
    """Second Ctrl-C: end the process now (status 130), loader processes with it; nothing more is saved."""
    import multiprocessing

    for child in multiprocessing.active_children():  # loader processes left the group: Ctrl-C misses them
        with contextlib.suppress(Exception):
            child.kill()
    kept = f"last checkpoint: {run.last_checkpoint}" if run.last_checkpoint.is_file() else "none was written"
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        print(f"kp2d train: interrupted (second Ctrl-C) in step {run.progress.step + 1}; nothing saved since "
              f"the last checkpoint ({kept})", file=sys.stderr, flush=True)
    os._exit(130)


@contextmanager
def _stop_on_signals(run: _Run) -> Iterator[None]:
    """SIGINT/SIGTERM ask ``run`` to stop after the current step; a second Ctrl-C aborts at once.

    Python runs signal handlers only between bytecodes of the main thread, so during a long C++ op (a
    convolution) a handler waits until the op returns, and two Ctrl-C in that time run it once. The C-level
    handler writes each signal's number to the wakeup socket at once, though: a thread reads it, reports the
    first signal and ends the process on a second Ctrl-C, whatever the main thread is doing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, frame: Any) -> None:
        # the watcher counts the signals; this makes the stop certain before the step's end is checked
        if run.stop_signal is None:
            run.stop_signal = signal.Signals(signum).name

    def watch(reader: socket.socket) -> None:
        first: str | None = None
        while data := reader.recv(64):
            for signum in data:
                if signum == 0:  # the run is over (forked loader processes keep the writer open: no EOF)
                    return
                if signum not in (signal.SIGINT, signal.SIGTERM):
                    continue
                if first is not None and signum == signal.SIGINT:
                    _abort_now(run)
                if first is None:
                    first = signal.Signals(signum).name
                    if run.stop_signal is None:
                        run.stop_signal = first
                    log.warning("%s: stopping after this step and writing a checkpoint (Ctrl-C again to "
                                "abort at once)", first)

    reader, writer = socket.socketpair()
    writer.setblocking(False)
    watcher = threading.Thread(target=watch, args=(reader,), name="kp2d-signals", daemon=True)
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        writer.send(b"\0")
        watcher.join()
        writer.close()
        reader.close()


def train(options: TrainOptions) -> TrainSummary:
    """Train KeyPointNet (and IO-Net) as configured; see :class:`TrainOptions`.

    Raises:
        RunFolderInUse: another live run holds ``options.out`` (nothing is written).
        ConfigError: no loss term has a weight (nothing would be learned).
    """
    check_something_to_learn(options.config)  # before the run folder is held
    run = _Run(options)
    try:
        with hold_run_folder(run.out, enabled=run.dist.is_main):
            if run.dist.is_main:
                remove_stale_temporary_files(run.checkpoint_dir)
            return _train(run)
    finally:
        if run.dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(run: _Run) -> TrainSummary:
    options = run.options
    run.build()
    if options.resume:
        run.restore()
    elif options.init is not None:
        run.initialize_from(options.init)
    if run.dist.is_main:
        _write_run_config(run.out, run.config)
    log.info(
        "training %s on %s (%s, %d process(es)), %d images, %d steps per epoch",
        run.config.name, run.device, run.precision, run.dist.world_size,
        len(run.dataset), len(run.sampler),
    )
    with _stop_on_signals(run):
        summary = run.run()
    if run.dist.enabled:
        # Leave together: a process tearing its gloo group down while another still writes the last
        # checkpoint aborted now and then ("terminate called without an active exception").
        torch.distributed.barrier()
    return summary
