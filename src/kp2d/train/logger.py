"""Training logs: a progress bar, TensorBoard scalars, W&B when configured, and log lines."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from kp2d.config import Config
from kp2d.losses import LossTerms

__all__ = ["RunLogger"]

log = logging.getLogger(__name__)

_VALIDATION_KEYS = ("repeatability", "localization_error", "c1", "c3", "c5", "mscore")


class RunLogger:
    """Writes what the main process sees; other processes get a silent logger.

    Args:
        out: run folder; TensorBoard events go to ``out/tensorboard``.
        config: logged once as text; ``config.train.wandb`` turns W&B on when the package is installed.
        is_main: only the main process logs.
        total_steps, start_step: progress bar range.
        progress: show a progress bar (validation lines print above it); False logs them instead.
    """

    def __init__(
        self,
        out: Path,
        config: Config,
        is_main: bool,
        total_steps: int,
        start_step: int,
        progress: bool = True,
    ) -> None:
        self.enabled = is_main
        self.log_every = config.train.log_every
        self.bar = None
        self.writer = None
        self.wandb = None
        self._last_time, self._last_step = time.perf_counter(), start_step
        if not is_main:
            return
        self.bar = tqdm(total=total_steps, initial=start_step, desc=f"train {config.name}", unit="step",
                        disable=not progress, dynamic_ncols=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out) / "tensorboard"))
            self.writer.add_text("config", "```\n" + repr(config.to_dict()) + "\n```", start_step)
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs")
        if config.train.wandb:
            self._start_wandb(config, out)

    def _start_wandb(self, config: Config, out: Path) -> None:
        try:
            import wandb
        except ImportError:
            log.warning("train.wandb is set but wandb is not installed (pip install 'kp2d[wandb]'): skipped")
            return
        self.wandb = wandb.init(project=config.train.wandb_project, name=config.name, dir=str(out),
                                config=config.to_dict(), resume="allow")

    def step(self, terms: LossTerms, step: int, epoch: int, lr: float) -> None:
        """Record one finished step (``step`` counts from 1)."""
        if not self.enabled:
            return
        self.bar.update(1)
        if step % self.log_every and step != 1:
            return
        values = {name: float(value) for name, value in zip(terms._fields, terms, strict=True)}
        now = time.perf_counter()
        values["steps_per_second"] = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        self.bar.set_postfix(loss=f"{values['total']:.3f}", recall=f"{values['recall']:.3f}", epoch=epoch)
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.add_scalar("train/learning_rate", lr, step)
        if self.wandb is not None:
            self.wandb.log(
                {f"train/{k}": v for k, v in values.items()} | {"train/learning_rate": lr}, step=step
            )
        (log.debug if self.bar.disable is False else log.info)(
            "step %d epoch %d: loss %.4f recall %.3f (%.2f steps/s)",
            step, epoch, values["total"], values["recall"], values["steps_per_second"],
        )

    def validation(self, metrics: dict[str, Any], step: int) -> None:
        """Record HPatches validation metrics."""
        if not self.enabled or not metrics:
            return
        shown = {k: float(metrics[k]) for k in _VALIDATION_KEYS if k in metrics}
        message = " ".join(f"{k}={v:.3f}" for k, v in shown.items())
        if self.bar is not None and not self.bar.disable:  # once: above the bar, or in the log without one
            self.bar.write(f"validation at step {step}: {message}")
        else:
            log.info("validation at step %d: %s", step, message)
        if self.writer is not None:
            for name, value in shown.items():
                self.writer.add_scalar(f"val/{name}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"val/{k}": v for k, v in shown.items()}, step=step)

    def close(self) -> None:
        """Close the progress bar, TensorBoard writer and wandb run, if any."""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()
