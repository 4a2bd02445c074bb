"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX/`` holding

* ``tensors.safetensors``: the method's modules, the EMA copies, optimiser tensors and
  RNG states, under prefixed names;
* ``state.json``: step, optimiser hyper-parameters (with each group's ``base_lr``), the
  method's extra state and the SHA-256 of ``tensors.safetensors``.

It is written into a hidden temporary folder and renamed into place, so a run killed at any
moment leaves either a complete checkpoint or none. Loading verifies the checksum before
parsing and never unpickles anything, so a truncated or tampered file is a clear error.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> path = save_checkpoint(root, 3, {"w": torch.ones(2)}, {"note": "hi"}, keep=2)
    >>> tensors, state = load_checkpoint(path)
    >>> state["step"], tensors["w"].tolist()
    (3, [1.0, 1.0])
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

TENSORS = "tensors.safetensors"
STATE = "state.json"
PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, tampered with or does not fit the run."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary folders are ignored)."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE).exists()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def save_checkpoint(
    root: Path,
    step: int,
    tensors: Mapping[str, Tensor],
    state: Mapping[str, Any],
    *,
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically under ``root`` and keep only the last ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".{PREFIX}{step:08d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    # safetensors wants contiguous, non-shared storage
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    save_file(flat, str(tmp / TENSORS))
    meta = dict(state)
    meta["step"] = step
    meta["sha256"] = _sha256(tmp / TENSORS)
    with (tmp / STATE).open("w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    with (tmp / TENSORS).open("rb") as fh:
        os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in checkpoint_dirs(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a checkpoint folder; raise :class:`CheckpointError` if it is damaged."""
    path = Path(path)
    state_file, tensor_file = path / STATE, path / TENSORS
    if not state_file.is_file() or not tensor_file.is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (needs {STATE} and {TENSORS})")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_file}: corrupted ({err}); delete this checkpoint") from None
    expected = state.get("sha256")
    if expected is None or _sha256(tensor_file) != expected:
        raise CheckpointError(
            f"{tensor_file}: checksum mismatch (truncated or modified); delete this checkpoint "
            "folder to resume from the one before it"
        )
    try:
        tensors = load_file(str(tensor_file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{tensor_file}: unreadable ({err})") from None
    return tensors, state


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = checkpoint_dirs(root)
    return found[-1] if found else None


def split_prefixed(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``tensors`` under ``prefix.``, with the prefix removed."""
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def optimizer_to_flat(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], Any]:
    """Split an optimiser state dict into safetensors-ready tensors and a JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    rest: dict[str, dict[str, Any]] = {}
    for idx, slots in sd["state"].items():
        for key, value in slots.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{name}.{idx}.{key}"] = value
            else:
                rest.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": rest}


def optimizer_from_flat(
    name: str, opt: torch.optim.Optimizer, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> None:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, slot = key[len(prefix) :].split(".", 1)
            state.setdefault(int(idx), {})[slot] = value
    for idx, slots in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(slots)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


def load_policy_state(run_dir: str | Path, role: str = "policy") -> dict[str, Tensor]:
    """The EMA weights (or, without EMA, the live weights) of ``role`` from a finished run.

    ``run_dir`` is a run folder (its newest checkpoint is used) or a checkpoint folder.
    For a generator-style method the evaluated role may be named differently; the first of
    ``ema.<role>``, ``model.<role>`` found is returned.
    """
    path = Path(run_dir)
    if not path.exists():
        raise CheckpointError(f"pretrained run not found: {path}")
    if not (path / STATE).exists():
        found = latest_checkpoint(path / "checkpoints")
        if found is None:
            raise CheckpointError(f"{path}: no checkpoint found (expected {path}/checkpoints/)")
        path = found
    tensors, _ = load_checkpoint(path)
    for prefix in (f"ema.{role}", f"model.{role}"):
        part = split_prefixed(tensors, prefix)
        if part:
            return part
    raise CheckpointError(f"{path}: holds no weights for role '{role}'")
