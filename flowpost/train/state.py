"""What a trainer's checkpoint holds, and how it is put back (exact resume).

Tensors: the method's modules (DDP-wrapped roles under their plain names), the EMA copies,
optimiser moments and the torch RNG states; JSON: optimiser hyper-parameters, update
counters, the method's extra state, Python's RNG state, the config, the run's data spec,
the settings changed at each resume and the number of processes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flowpost.train.checkpoint import (
    CheckpointError,
    optimizer_from_flat,
    optimizer_to_flat,
    split_prefixed,
)
from flowpost.train.config import run_config_to_dict

if TYPE_CHECKING:
    from flowpost.train.trainer import Trainer


def rng_tensors() -> dict[str, Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def restore_rng(tensors: Mapping[str, Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def state_payload(trainer: Trainer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Everything a checkpoint holds: tensors (roles, EMAs, optimiser moments, RNG states)
    and a JSON-able state (counters, hyper-parameters, config, resumes)."""
    tensors: dict[str, Tensor] = {}
    for key, value in trainer.method.state_dict().items():
        for role in trainer._wrapped:  # store DDP-wrapped roles under their plain names
            key = key.replace(f"{role}.module.", f"{role}.", 1)
        tensors[f"model.{key}"] = value
    for role, ema in trainer.emas.items():
        for key, value in ema.module.state_dict().items():
            tensors[f"ema.{role}.{key}"] = value
    optim_meta = {}
    for name, opt in trainer.optimizers.items():
        flat, meta = optimizer_to_flat(name, opt)
        tensors.update(flat)
        optim_meta[name] = meta
    tensors.update(rng_tensors())
    state = {
        "optimizers": optim_meta,
        "updater": {"steps_taken": trainer.updater.steps_taken},
        "method": trainer.method.extra_state(),
        "python_rng": list(random.getstate()[1]),
        "config": run_config_to_dict(trainer.config),
        "run": trainer.run_info(),
        "resumes": trainer.resumes,
        "num_processes": trainer.accelerator.num_processes,
    }
    return tensors, state


def restore_payload(
    trainer: Trainer,
    path: Path,
    tensors: Mapping[str, Tensor],
    state: Mapping[str, Any],
    *,
    new_lr: bool = False,
) -> None:
    """Load a checkpoint's ``tensors`` and ``state`` into ``trainer``; with ``new_lr`` the
    learning rates of ``trainer``'s config replace the checkpoint's."""
    # the learning rates this config builds; kept over the checkpoint's if lr changed
    built = {name: [g["base_lr"] for g in o.param_groups] for name, o in trainer.optimizers.items()}
    try:
        load_method_weights(trainer, tensors)
        for role, ema in trainer.emas.items():
            ema.module.load_state_dict(split_prefixed(tensors, f"ema.{role}"))
        for name, opt in trainer.optimizers.items():
            optimizer_from_flat(name, opt, tensors, state["optimizers"][name])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: does not fit this run's config ({err}); resume with the same recipe"
        ) from None
    if new_lr:
        for name, opt in trainer.optimizers.items():
            for group, base in zip(opt.param_groups, built[name], strict=True):
                group["base_lr"] = base
                if name not in trainer.updater.scheduled:
                    group["lr"] = base
    trainer.resumes = list(state.get("resumes", []))
    trainer.updater.steps_taken = dict(state["updater"]["steps_taken"])
    trainer.method.load_extra_state(state.get("method", {}))
    restore_rng(tensors)
    py = state.get("python_rng")
    if py is not None:
        random.setstate((3, tuple(py), None))
    trainer.step = int(state["step"])


def load_method_weights(trainer: Trainer, tensors: Mapping[str, Tensor]) -> None:
    """Load the checkpoint's ``model.*`` tensors into the method (into the modules inside the
    DDP wrappers of prepared roles, whose keys carry ``.module.``)."""
    weights = split_prefixed(tensors, "model")
    for role in trainer._wrapped:
        weights = {
            (f"{role}.module.{k[len(role) + 1 :]}" if k.startswith(f"{role}.") else k): v
            for k, v in weights.items()
        }
    trainer.method.load_state_dict(weights)
