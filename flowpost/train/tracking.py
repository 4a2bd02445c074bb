"""Experiment trackers (through Accelerate) and the sample grids a run logs to them.

``train.log_with`` names the trackers of a run: ``tensorboard`` (the default) and ``wandb``.
They are Accelerate's own tracker classes (``accelerate.tracking.TensorBoardTracker`` and
``WandBTracker``), started on the main process by :func:`start_trackers`; the run's
:class:`~flowpost.train.logger.RunLogger` sends each of them every number it writes to
``metrics.jsonl`` (same keys, same step) and the sample grids as images.

* ``tensorboard``: event files in ``<run>/tensorboard/``; on resume, events after the
  checkpoint's step are purged (as ``metrics.jsonl``'s lines are), the step's own kept.
* ``wandb``: a W&B run under ``<run>/wandb/``, **offline** unless the environment says
  otherwise (``WANDB_MODE=online`` and a login to upload live; an offline run is uploaded
  later with ``wandb sync <run>/wandb/offline-run-*``). Its config is the run's config;
  a resumed run is a new W&B run of the same name and group. Needs the ``wandb`` package
  (``pip install 'flowpost[wandb]'``).

:func:`log_grid` turns image-shaped samples (digits, MNIST; latents as their channels, see
:mod:`flowpost.eval.grid`) into ``<run>/samples/<name>.png`` and logs it as the image
``samples`` at the trainer's step. The trainer calls it at every evaluation (``eval.grid``
samples, 0: none) and, with ``eval.grid_at_checkpoints``, at every checkpoint.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> check_trackers(["tensorboard"])
    >>> run = Path(tempfile.mkdtemp())
    >>> trackers = start_trackers(["tensorboard"], run, config={})
    >>> trackers[0].log({"policy/fm": 0.5}, step=1)
    >>> trackers[0].finish()
    >>> [p.name for p in run.iterdir()]
    ['tensorboard']
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from flowpost.config import ConfigError

if TYPE_CHECKING:
    from accelerate.tracking import GeneralTracker

    from flowpost.train.trainer import Trainer

# tracker name (train.config.TRACKERS) -> the package it needs, and how to install it
PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb"}
INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install 'flowpost[wandb]'"}


def check_trackers(names: Sequence[str]) -> None:
    """Raise (one line) for an unknown tracker or one whose package is not installed."""
    for name in names:
        if name not in PACKAGE:
            raise ConfigError(
                f"train.log_with: unknown tracker {name!r} (known: {', '.join(PACKAGE)})"
            )
        if importlib.util.find_spec(PACKAGE[name]) is None:
            raise ConfigError(
                f"train.log_with: {name!r} needs the {PACKAGE[name]} package, which is not "
                f"installed ({INSTALL[name]}), or leave it out"
            )


def start_trackers(
    names: Sequence[str],
    run_dir: str | Path,
    *,
    config: Mapping[str, Any],
    resume_step: int = 0,
) -> list[GeneralTracker]:
    """Accelerate's trackers ``names`` for the run folder ``run_dir``, started (call it on
    the main process only; :class:`~flowpost.train.logger.RunLogger` finishes them)."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    check_trackers(names)
    run = Path(run_dir)
    trackers: list[GeneralTracker] = []
    for name in dict.fromkeys(names):  # once each, in the given order
        if name == "tensorboard":
            # events after the checkpoint's step are dropped (its own step's are kept)
            purge = resume_step + 1 if resume_step else None
            tracker: GeneralTracker = TensorBoardTracker("tensorboard", str(run), purge_step=purge)
        else:
            import wandb

            tracker = WandBTracker(
                "flowpost",
                dir=str(run),
                name=run.resolve().name,
                group=run.resolve().name,
                config=dict(config),
                mode=os.environ.get("WANDB_MODE", "offline"),
                settings=wandb.Settings(
                    console="off", silent=True, x_disable_stats=True, save_code=False
                ),
            )
        tracker.start()
        trackers.append(tracker)
    return trackers


def log_grid(trainer: Trainer, samples: Tensor | None, name: str) -> Path | None:
    """Write the grid of ``samples`` to ``<run>/samples/<name>.png`` and log it to the
    trackers at the trainer's step; nothing for samples that are not image-shaped, with
    ``eval.grid: 0``, or off the main process. Returns the PNG's path, or None."""
    from flowpost.eval.grid import sample_grid, save_png

    n = trainer.config.eval.grid
    if not n or samples is None or samples.ndim != 4 or not trainer.accelerator.is_main_process:
        return None
    image = sample_grid(samples, max_images=n)
    path = save_png(image, trainer.out / "samples" / f"{name}.png")
    if trainer.logger is not None:
        trainer.logger.log_image("samples", image, trainer.step)
    return path


def checkpoint_grid(trainer: Trainer) -> Path | None:
    """With ``eval.grid_at_checkpoints``, the grid of ``eval.grid`` fresh samples (the EMA
    roles, ``eval.nfe``, noise seed ``eval.seed``) at a checkpoint, unless an evaluation
    at this step (or the final one) draws its grid anyway."""
    ec, tc = trainer.config.eval, trainer.config.train
    if not (ec.grid and ec.grid_at_checkpoints and len(trainer.data.spec.shape) == 3):
        return None
    evaluated = tc.eval_every and trainer.step % tc.eval_every == 0
    if evaluated or trainer.step >= tc.steps:  # that evaluation (or the final one) drew it
        return None
    if not trainer.accelerator.is_main_process:
        return None
    samples = trainer.evaluator().sample(
        ec.grid, ec.nfe, solver=ec.solver, seed=ec.seed, check_finite=False
    )
    trainer.method.train()
    return log_grid(trainer, samples, f"step_{trainer.step:07d}")


__all__ = ["check_trackers", "start_trackers", "log_grid", "checkpoint_grid"]
