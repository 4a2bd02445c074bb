"""Resuming with changed settings: what may change, what may not, and what is recorded.

A checkpoint records the config it was trained with. On ``--resume`` the new config is
compared with it key by key:

* settings that only steer what happens from now on (``SAFE``: the learning rate, the
  number of steps, checkpoint/log/eval cadence, the trackers, the device, every ``eval``
  field) are applied,
  and :func:`describe_changes` gives the line the trainer prints and records;
* anything else (the data, the network, the method, the batch, the seed, the schedule's
  shape...) would make the checkpoint mean something else: :func:`resume_changes` refuses,
  listing every difference;
* ``train.steps`` below the checkpoint's step is one clear error.

Paths in a run's config (``data.path``, ``init_from``) are stored resolved
(:func:`resolve_paths`), so a run folder can be sampled and resumed from any directory.

Example:
    >>> old = {"train": {"lr": 0.001, "steps": 100, "seed": 0}}
    >>> new = {"train": {"lr": 0.0005, "steps": 200, "seed": 0}}
    >>> describe_changes(resume_changes(old, new, step=100))
    'train.lr 0.001 -> 0.0005, train.steps 100 -> 200'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowpost.config import ConfigError
from flowpost.train.config import RunConfig

SAFE = (
    "train.lr",
    "train.steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.eval_every",
    "train.log_with",
    "train.device",
    "eval.",
    "init_from",  # only read when a run starts; a resumed run holds every weight
)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _normal(flat: dict[str, Any]) -> dict[str, Any]:
    """Paths compared resolved (configs written before paths were stored resolved)."""
    for key in ("data.path", "init_from"):
        value = flat.get(key)
        if isinstance(value, str) and value:
            flat[key] = str(Path(value).resolve())
    return flat


def _is_safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE)


def resume_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], *, step: int, where: str = "the checkpoint"
) -> dict[str, tuple[Any, Any]]:
    """The safe changes between the checkpoint's config ``old`` and the new one; raise
    :class:`~flowpost.config.ConfigError` listing every unsafe change, or if ``train.steps``
    is below the checkpoint's ``step``."""
    a, b = _normal(flatten(old)), _normal(flatten(new))
    changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    unsafe = {k: v for k, v in changed.items() if not _is_safe(k)}
    if unsafe:
        listed = ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in unsafe.items())
        raise ConfigError(
            f"--resume with settings that differ from {where}: {listed}; resume with the "
            "recorded config (config.yaml) or start a new run in another --out"
        )
    steps = b.get("train.steps")
    if isinstance(steps, int) and steps < step:
        raise ConfigError(
            f"train.steps: {steps} is below the step {step} of {where}; set train.steps to "
            f"{step} or more to continue this run"
        )
    return {k: v for k, v in changed.items() if k != "init_from"}


def describe_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    """``train.lr 0.001 -> 0.0005, ...``"""
    return ", ".join(f"{k} {o} -> {n}" for k, (o, n) in changes.items())


def resolve_paths(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``data.path`` and ``init_from`` made absolute (against the current
    directory), so the run folder works from anywhere."""
    data = cfg.data
    path = getattr(data, "path", None)
    if isinstance(path, str) and path and not Path(path).is_absolute():
        data = dataclasses.replace(data, path=str(Path(path).resolve()))
    init = cfg.init_from
    if isinstance(init, str) and init and not Path(init).is_absolute():
        init = str(Path(init).resolve())
    return dataclasses.replace(cfg, data=data, init_from=init)
