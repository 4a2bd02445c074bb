"""The training loop of a :class:`~flowpost.train.Trainer`: draw this process's batch, let the
method take its step, then do what is due (log, evaluate, checkpoint, validate, stop).

A step costs what a hand-written loop costs: what the trainer adds is entered once per
stretch of steps (guard warnings), or per step only when it does something (autocast under
mixed precision, the batch shard under several processes). ``benchmarks/
bench_trainer_overhead.py`` measures the difference against a bare PyTorch loop.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch

from flowpost.data.base import Batch
from flowpost.flows.distributed import any_true, mean_scalars
from flowpost.flows.random import batch_shard
from flowpost.train import guard, tracking
from flowpost.train.logger import ProgressBar, RunLogger

if TYPE_CHECKING:
    from flowpost.train.trainer import Trainer


def next_batch(trainer: Trainer) -> tuple[Batch, tuple[int, int, int]]:
    """This process's slice of the global batch, and the shard ``(offset, local, total)``.

    Every process draws the same global indices (their random streams are identical).
    Streamed data (latents on disk) reads only this process's rows."""
    return _Batches(trainer)()


class _Batches:
    """:func:`next_batch` with the run's constants looked up once."""

    def __init__(self, trainer: Trainer) -> None:
        acc = trainer.accelerator
        self.total = total = trainer.config.train.batch_size
        self.local = local = total // acc.num_processes
        self.offset = offset = acc.process_index * local
        self.shard = (offset, local, total)
        self.x, self.cond, self.data = trainer.train_x, trainer.train_cond, trainer.data.train
        self.n = len(self.data) if self.x is None else self.x.shape[0]  # x None: streamed
        self.device = trainer.device
        self.move = trainer.device.type != "cpu"  # the indices are drawn on the CPU

    def __call__(self) -> tuple[Batch, tuple[int, int, int]]:
        index = torch.randint(0, self.n, (self.total,))
        if self.local != self.total:
            index = index[self.offset : self.offset + self.local]
        if self.x is None:
            return self.data.batch(index).to(self.device), self.shard
        if self.move:
            index = index.to(self.device)
        cond = None if self.cond is None else self.cond[index]
        return Batch(self.x[index], cond), self.shard


def run_steps(
    trainer: Trainer, n: int, logger: RunLogger | None = None, bar: ProgressBar | None = None
) -> None:
    """Take ``n`` training iterations with logging, periodic evaluation and checkpoints."""
    end = trainer.step + n
    trainer.method.train()
    if trainer.selector is not None and trainer.step == 0 and trainer.selector.start is None:
        guard.validate(trainer, logger)  # the start is a candidate: the kept model is never worse
    amp = trainer.accelerator.native_amp
    several = trainer.accelerator.num_processes > 1
    due = _Due(trainer, logger, bar, several)
    batches = _Batches(trainer)
    method, updater = trainer.method, trainer.updater
    with guard.reported_warnings(trainer, logger):
        while trainer.step < end:
            batch, shard = batches()
            updater.global_step = step = trainer.step
            if amp or several:
                with (
                    trainer.accelerator.autocast() if amp else nullcontext(),
                    batch_shard(*shard) if several else nullcontext(),
                ):
                    logs = method.train_step(batch, step, updater)
            else:
                logs = method.train_step(batch, step, updater)
            trainer.step = step + 1
            if due.after_step(logs):
                return


class _Due:
    """What is due after a step: logging (window means), evaluation, checkpoints,
    validation on held-out demonstrations, and a stop request."""

    def __init__(
        self, trainer: Trainer, logger: RunLogger | None, bar: ProgressBar | None, several: bool
    ) -> None:
        tc = trainer.config.train
        self.trainer, self.logger, self.bar, self.several = trainer, logger, bar, several
        self.window: dict[str, list[float]] = {}
        self.started = time.perf_counter()
        self.steps, self.log_every = tc.steps, tc.log_every
        self.eval_every = tc.eval_every if logger is not None else 0
        self.checkpoint_every = tc.checkpoint_every
        self.validate_every = (
            (tc.validate_every or max(1, tc.steps // 10)) if trainer.selector is not None else 0
        )

    def after_step(self, logs: dict[str, float]) -> bool:
        """Do what is due after the step just taken (``trainer.step`` counts it); whether to
        stop (a signal arrived on any process)."""
        trainer, step, window = self.trainer, self.trainer.step, self.window
        for key, value in logs.items():
            if key in window:
                window[key].append(value)
            else:
                window[key] = [value]
        last = step == self.steps
        if step % self.log_every == 0 or last:
            self.log()
        if self.eval_every and step % self.eval_every == 0 and step < self.steps:
            assert self.logger is not None
            metrics = trainer.evaluate(plot_name=f"samples_step{step:07d}.png", check_finite=False)
            tracking.log_grid(trainer, trainer.eval_samples, f"step_{step:07d}")
            trainer.method.train()
            self.logger.write({"step": step, **{f"eval/{k}": v for k, v in metrics.items()}})
        if self.checkpoint_every and step % self.checkpoint_every == 0:
            trainer.save()
            tracking.checkpoint_grid(trainer)
        if self.validate_every and (step % self.validate_every == 0 or last):
            guard.validate(trainer, self.logger)
            trainer.method.train()
        stop = trainer._stop is not None and trainer._stop.signum is not None
        return any_true(stop) if self.several else stop

    def log(self) -> None:
        """One record of the window's means (every process reaches this: the logged losses
        are global-batch means), the learning rates and the time."""
        trainer = self.trainer
        means = mean_scalars({k: sum(v) / len(v) for k, v in self.window.items()})
        record: dict[str, Any] = {"step": trainer.step, "phase": trainer.method.phase(trainer.step)}
        record.update(means)
        for name, opt in trainer.optimizers.items():
            record[f"lr/{name}"] = opt.param_groups[0]["lr"]
        record["time_s"] = round(time.perf_counter() - self.started, 3)
        if self.logger is not None:
            self.logger.write(record)
        if self.bar is not None:
            self.bar.update(trainer.step, record["phase"], means)
        self.window = {}
