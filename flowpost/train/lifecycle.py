"""A run's life around the training loop: lock the folder, resume, stop cleanly, finish.

:meth:`flowpost.train.Trainer.fit` is :func:`open_folder` (the main process checks and locks
the run folder; the other processes learn its verdict) followed by :func:`fit`:

1. paths in the config are stored resolved; with ``resume`` the newest checkpoint is
   restored, applying the safe changed settings (:mod:`flowpost.train.resume`) with a printed
   line, recorded in ``metrics.jsonl``, every later checkpoint and ``summary.json``;
2. the roles and optimisers are prepared for several processes (DDP through Accelerate);
3. ``config.yaml`` is written atomically; the loop runs under a
   :class:`~flowpost.train.signals.StopRequest`: SIGTERM/SIGINT end the current step, a
   checkpoint is written there and :class:`~flowpost.train.signals.TrainingInterrupted`
   is raised;
4. a divergence (a non-finite loss term, or non-finite weights about to be checkpointed)
   stops the run with the step, the term or tensor, and the last finite checkpoint if there
   is one (never one that does not exist);
5. the main process evaluates and writes ``summary.json`` (with ``num_processes``)
   atomically.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml
from torch import nn

from flowpost.config import ConfigError
from flowpost.train import guard
from flowpost.train.checkpoint import (
    CheckpointError,
    NonFiniteCheckpointError,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
)
from flowpost.train.config import run_config_to_dict
from flowpost.train.logger import ProgressBar, RunLogger
from flowpost.train.resume import describe_changes, resolve_paths, resume_changes
from flowpost.train.runfolder import (
    RunFolderError,
    RunLock,
    atomic_write_bytes,
    atomic_write_text,
    open_run_folder,
)
from flowpost.train.selection import BEST_DIR
from flowpost.train.signals import StopRequest, TrainingInterrupted
from flowpost.train.state import restore_payload
from flowpost.train.tracking import start_trackers
from flowpost.train.updater import DivergenceError, NonFiniteLossError

if TYPE_CHECKING:
    from flowpost.train.trainer import Trainer


def open_folder(trainer: Trainer, *, resume: bool, overwrite: bool) -> RunLock | None:
    """The main process checks and locks the run folder; the others learn its verdict."""
    acc = trainer.accelerator
    lock, refusal = None, None
    if acc.is_main_process:
        try:
            lock = open_run_folder(trainer.out, resume=resume, overwrite=overwrite, say=trainer.say)
        except RunFolderError as err:
            refusal = str(err)
    if acc.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        refusal = broadcast_object_list([refusal])[0]
    if refusal is not None:
        refused = RunFolderError(refusal)
        refused.quiet = not acc.is_main_process  # type: ignore[attr-defined]
        raise refused
    return lock


def resume_newest(trainer: Trainer) -> None:
    """Restore the newest checkpoint, applying (and announcing) the safe changed settings."""
    found = latest_checkpoint(trainer.out / "checkpoints")
    if found is None:
        raise CheckpointError(f"--resume: no checkpoint under {trainer.out / 'checkpoints'}")
    tensors, state = load_checkpoint(found)
    changes = resume_changes(
        state.get("config", {}),
        run_config_to_dict(trainer.config),
        step=int(state["step"]),
        where=str(found),
    )
    restore_payload(trainer, found, tensors, state, new_lr="train.lr" in changes)
    if changes:
        trainer.say(f"resuming {found} with changed settings: {describe_changes(changes)}")
        changed = {k: [old, new] for k, (old, new) in changes.items()}
        trainer.resumes.append({"step": trainer.step, "changed": changed})


def last_finite(trainer: Trainer) -> str:
    """Where a diverged run can be resumed from, or that it cannot (never a promise)."""
    found = checkpoint_dirs(trainer.out / "checkpoints")
    if not found:
        return "no checkpoint was written before it"
    return f"the last finite checkpoint is {found[-1]} (resume from it with --resume)"


def fit(trainer: Trainer, *, resume: bool) -> dict[str, Any]:
    """Steps 1-5 of the module docstring, in a folder :func:`open_folder` has locked."""
    tc = trainer.config.train
    trainer.config = resolve_paths(trainer.config)
    if resume:
        resume_newest(trainer)
        best = latest_checkpoint(trainer.out / BEST_DIR)
        if best is not None and trainer.selector is not None:
            trainer.selector.load_state(load_checkpoint(best)[1].get("selection", {}))
    distribute(trainer)
    main = trainer.accelerator.is_main_process
    if main:
        if not resume:  # files given by the caller (e.g. a user's network), new runs only
            for name, blob in trainer.files.items():
                atomic_write_bytes(trainer.out / name, blob)
        # what the config cannot say (a user's own network) is noted as comments
        notes = "".join(f"# {key}: {json.dumps(value)}\n" for key, value in trainer.meta.items())
        config_text = yaml.safe_dump(run_config_to_dict(trainer.config), sort_keys=False)
        atomic_write_text(trainer.out / "config.yaml", notes + config_text)
    logger = None
    if main:
        start = trainer.step if resume else 0
        trackers = start_trackers(
            tc.log_with,
            trainer.out,
            config=run_config_to_dict(trainer.config),
            resume_step=start,
        )
        logger = RunLogger(trainer.out, resume_step=start, trackers=trackers)
    trainer.logger = logger
    if (
        logger is not None
        and resume
        and trainer.resumes
        and trainer.resumes[-1]["step"] == trainer.step
    ):
        logger.write({"step": trainer.step, "event": "resume", **trainer.resumes[-1]})
    bar = ProgressBar(tc.steps, trainer.step, trainer.progress_enabled and main)
    stop = StopRequest()
    try:
        with stop:
            trainer._stop = stop
            trainer.run_steps(tc.steps - trainer.step, logger=logger, bar=bar)
            if trainer._saved_step != trainer.step:
                trainer.save()
    except (NonFiniteLossError, NonFiniteCheckpointError) as err:
        if isinstance(err, NonFiniteLossError):
            note = f"; {last_finite(trainer)}. Lower train.lr or check the data"
            error: DivergenceError = NonFiniteLossError(err.step, err.term, err.value, note)
        else:
            error = DivergenceError(
                f"non-finite weights at step {err.step}: tensor '{err.name}'; "
                f"{last_finite(trainer)}. Lower train.lr or check the data"
            )
        if logger is not None:
            logger.write({"step": trainer.step, "error": str(error)})
            logger.close()
        raise error from None
    finally:
        bar.close()
        trainer._stop = None
    if stop.signum is not None:
        interrupted = TrainingInterrupted(
            stop.signum, trainer.step, latest_checkpoint(trainer.out / "checkpoints")
        )
        if logger is not None:
            logger.write({"step": trainer.step, "event": "interrupted"})
            logger.close()
        raise interrupted
    trainer.accelerator.wait_for_everyone()
    if logger is None:
        return {"step": trainer.step, "num_processes": trainer.accelerator.num_processes}
    summary = trainer.final_evaluation()
    summary.update(guard.selection_summary(trainer))
    summary["num_processes"] = trainer.accelerator.num_processes
    if trainer.resumes:
        summary["resumes"] = trainer.resumes
    final = {
        f"final/{k}": v
        for k, v in summary.items()
        if isinstance(v, (int, float)) and k != "num_processes"
    }
    logger.write({"step": trainer.step, **final})
    logger.close()
    atomic_write_text(trainer.out / "summary.json", json.dumps(summary, indent=1, sort_keys=True))
    return summary


def distribute(trainer: Trainer) -> None:
    """Under several processes, prepare every trained role and then the optimisers in one
    ``accelerator.prepare`` call (the order Accelerate documents): DDP averages the
    gradients of the processes' shares of the global batch. Every process keeps the same
    random stream: they draw the same global batch and noise and keep their slice."""
    acc = trainer.accelerator
    if acc.num_processes <= 1 or trainer._wrapped:
        return
    bs = trainer.config.train.batch_size
    if bs % acc.num_processes:
        raise ConfigError(
            f"train.batch_size: {bs} (the global batch) is not divisible by the "
            f"{acc.num_processes} processes"
        )
    names = list(trainer.optimizers)
    for name in names:
        if not isinstance(getattr(trainer.method, name, None), nn.Module):
            raise ValueError(
                f"optimiser {name!r} is not named after a role (sub-module) of the method: "
                "multi-process training cannot synchronise its gradients"
            )
    prepared = acc.prepare(
        *[getattr(trainer.method, name) for name in names],
        *[trainer.optimizers[name] for name in names],
    )
    for name, module, opt in zip(
        names, prepared[: len(names)], prepared[len(names) :], strict=True
    ):
        setattr(trainer.method, name, module)
        trainer.optimizers[name] = opt  # the updater holds this same dict
        trainer._wrapped.append(name)
