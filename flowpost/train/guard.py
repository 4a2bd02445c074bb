"""Held-out demonstrations around the training loop: score the model, keep the best
checkpoint, and roll back on a collapse (functions of a :class:`~flowpost.train.Trainer`).

The trainer holds out ``train.holdout_fraction`` of the demonstrations (a
:class:`~flowpost.train.selection.Selector`), or, on a robot task with
``train.select_rollouts``, rolls the policy out on validation episodes (a
:class:`~flowpost.train.selection.RolloutSelector`); :func:`validate` scores the EMA model so
at the start and every tenth of the run (``train.validate_every``), keeps the best in
``best/``, and on a collapse rolls back to it with lower learning rates, printing one
``warning:`` line; at the first check the held-out selector's start test (``train.start_test``)
warns in one line when all the demonstrations cannot tell the starting model from their own
distribution. A method's own guard
warnings become one line each within :func:`reported_warnings`.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowpost.eval.evaluator import Evaluator
from flowpost.methods.components.guards import GuardWarning
from flowpost.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    optimizer_from_flat,
    save_checkpoint,
    split_prefixed,
)
from flowpost.train.logger import RunLogger
from flowpost.train.selection import BEST_DIR, Selector, scale_learning_rates
from flowpost.train.state import load_method_weights, state_payload

if TYPE_CHECKING:
    from flowpost.train.trainer import Trainer


def validate(trainer: Trainer, logger: RunLogger | None = None) -> str:
    """Score the EMA model on the held-out demonstrations; keep it in ``best/`` if it is
    the best so far; on a collapse roll back to the best and lower the learning rates."""
    sel = trainer.selector
    assert sel is not None
    ec = trainer.config.eval
    # one process measures and every process gets its check, so that all reach the same
    # verdict (and all roll back together, or none), and the work is not repeated
    check = None
    if trainer.accelerator.is_main_process:
        if sel.deployed:  # the policy as deployed: its task, its noise scale
            ev = trainer.evaluator()
        else:
            ev = Evaluator(
                trainer.method, roles=trainer.ema_roles(), spec=trainer.data.spec,
                reference=trainer.data.train, device=trainer.device,
            )  # fmt: skip
        check = sel.check(ev, ec.nfe, solver=ec.solver, seed=ec.seed + 1)
    if trainer.accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        check = broadcast_object_list([check])[0]
    assert check is not None
    check.step = trainer.step
    first = sel.start is None
    verdict, reason = sel.judge(check)
    if logger is not None:
        logger.write({"step": trainer.step, **sel.logged(check)})
    untold = sel.start_warning() if first and isinstance(sel, Selector) else None
    if untold is not None and trainer.accelerator.is_main_process:
        line = f"warning: step {trainer.step}: {untold}"
        print(line, file=sys.stderr, flush=True)
        if logger is not None:
            logger.write({"step": trainer.step, "warning": line})
    if verdict == "best" and trainer.accelerator.is_main_process:
        tensors, state = state_payload(trainer)
        state["selection"] = sel.state()
        save_checkpoint(trainer.out / BEST_DIR, trainer.step, tensors, state, keep=1)
    if verdict == "collapse":
        tc = trainer.config.train
        act = tc.guard and trainer.rollbacks < tc.max_rollbacks and trainer.step < tc.steps
        what = "the best model is kept" if trainer.step >= tc.steps else "no rollbacks left"
        if act:
            assert sel.best is not None
            trainer.accelerator.wait_for_everyone()
            load_weights(trainer, trainer.out / BEST_DIR, optimizers=True)
            scale_learning_rates(trainer.optimizers, tc.rollback_lr_factor)
            trainer.rollbacks += 1
            what = (
                f"rolled back to the best model (step {sel.best.step}) and scaled the "
                f"learning rates by {tc.rollback_lr_factor}"
            )
        message = f"warning: step {trainer.step}: collapse on {sel.source} ({reason}); {what}"
        if trainer.accelerator.is_main_process:
            if act or not trainer._warned_idle:  # once when the guard can no longer act
                print(message, file=sys.stderr, flush=True)
            trainer._warned_idle = trainer._warned_idle or not act
            if logger is not None:
                logger.write({"step": trainer.step, "warning": message})
    return verdict


@contextmanager
def reported_warnings(trainer: Trainer, logger: Any) -> Iterator[None]:
    """Within this block a method's guard warnings become one ``warning: step N: ...`` line
    each (and a metrics.jsonl record); other warnings pass on unchanged. Entered once per
    stretch of training steps (not per step: the loop stays as cheap as a bare one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", GuardWarning)
        passed_on = warnings.showwarning

        def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if not issubclass(category, GuardWarning):
                passed_on(message, category, *args, **kwargs)
                return
            line = f"warning: step {trainer.step}: {message}"
            if trainer.accelerator.is_main_process:
                print(line, file=sys.stderr, flush=True)
                if logger is not None:
                    logger.write({"step": trainer.step, "warning": line})

        warnings.showwarning = show
        yield


def load_weights(trainer: Trainer, root: Path, *, optimizers: bool = False) -> None:
    """Load the method's and EMA weights (and optimiser states) of the checkpoint in
    ``root``; the step, schedule position and random streams stay as they are."""
    found = latest_checkpoint(root)
    if found is None:
        raise CheckpointError(f"{root}: no checkpoint to load")
    tensors, state = load_checkpoint(found)
    load_method_weights(trainer, tensors)
    for role, ema in trainer.emas.items():
        ema.module.load_state_dict(split_prefixed(tensors, f"ema.{role}"))
    if optimizers:
        for name, opt in trainer.optimizers.items():
            optimizer_from_flat(name, opt, tensors, state["optimizers"][name])
    trainer.method.load_extra_state(state.get("method", {}))


def selection_summary(trainer: Trainer) -> dict[str, Any]:
    """Name both checkpoints; when the best is not the last, report the last model's
    metrics as ``last/...`` and leave the best loaded (what sample/eval use)."""
    sel = trainer.selector
    last = latest_checkpoint(trainer.out / "checkpoints")
    out: dict[str, Any] = {"checkpoints": {"last": None if last is None else
                                           str(last.relative_to(trainer.out))}}  # fmt: skip
    if sel is None or sel.best is None:
        return out
    best = latest_checkpoint(trainer.out / BEST_DIR)
    out["checkpoints"]["best"] = None if best is None else str(best.relative_to(trainer.out))
    out.update(
        best_step=sel.best.step, rollbacks=trainer.rollbacks, **sel.describe(),
        validation=sel.state(), model="best",
    )  # fmt: skip
    return out
