"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX/`` holding

* ``tensors.safetensors``: the method's modules, the EMA copies, optimiser tensors and
  RNG states, under prefixed names;
* ``state.json``: step, optimiser hyper-parameters (with each group's ``base_lr``), the
  method's extra state, the SHA-256 of ``tensors.safetensors`` and ``state_sha256``, the
  SHA-256 of the rest of ``state.json`` itself (canonical JSON), so an edit of either file
  is refused.

It is written into a hidden temporary folder and renamed into place, so a run killed at any
moment leaves either a complete checkpoint or none; old checkpoints are renamed away before
they are deleted, for the same reason. Loading verifies both checksums before parsing and
never unpickles anything, so a truncated or tampered file is a clear error. A checkpoint
with a non-finite floating tensor is never written (:class:`NonFiniteCheckpointError`).

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


class NonFiniteCheckpointError(CheckpointError):
    """Refused to write a checkpoint holding a NaN or Inf (the run diverged)."""

    def __init__(self, step: int, name: str) -> None:
        super().__init__(f"tensor '{name}' is not finite at step {step}")
        self.step = step
        self.name = name


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of ``state`` (without its ``state_sha256``) as canonical JSON."""
    body = {k: v for k, v in state.items() if k != "state_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def first_non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    """The name of the first floating tensor holding a NaN or Inf, or None."""
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def _remove_atomically(path: Path) -> None:
    """Rename ``path`` to a hidden name, then delete it: never a half-deleted checkpoint."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    try:
        os.replace(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries to disk (after a rename into it); best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory
        pass
    finally:
        os.close(fd)


def _step_of(path: Path) -> int | None:
    try:
        return int(path.name[len(PREFIX) :])
    except ValueError:
        return None


def checkpoint_dirs(root: Path, *, strict: bool = False) -> list[Path]:
    """Checkpoints under ``root``, oldest first (hidden temporary folders are ignored).

    With ``strict``, a ``step_...`` folder without its state file is an error (it was
    damaged: checkpoints are only ever renamed into place complete), not skipped.
    """
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if not (p.is_dir() and p.name.startswith(PREFIX)) or _step_of(p) is None:
            continue
        if not (p / STATE).exists():
            if strict:
                raise CheckpointError(
                    f"{p}: checkpoint folder without its {STATE} (damaged); delete that "
                    "folder to use the checkpoint before it"
                )
            continue
        found.append(p)
    return sorted(found, key=lambda p: _step_of(p) or 0)


def save_checkpoint(
    root: Path,
    step: int,
    tensors: Mapping[str, Tensor],
    state: Mapping[str, Any],
    *,
    keep: int,
) -> Path:
    """Write checkpoint ``step`` atomically under ``root`` and keep only the last ``keep``."""
    bad = first_non_finite(tensors)
    if bad is not None:
        raise NonFiniteCheckpointError(step, bad)
    root.mkdir(parents=True, exist_ok=True)
    for trash in root.glob(".trash-*"):  # what a kill during a deletion left
        shutil.rmtree(trash, ignore_errors=True)
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
    meta["state_sha256"] = state_digest(meta)
    with (tmp / STATE).open("w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    with (tmp / TENSORS).open("rb") as fh:
        os.fsync(fh.fileno())
    if final.exists():
        _remove_atomically(final)
    os.replace(tmp, final)
    fsync_dir(root)
    for old in checkpoint_dirs(root)[:-keep]:
        _remove_atomically(old)
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
    if isinstance(state, dict) and "state_sha256" not in state:
        raise CheckpointError(
            f"{state_file}: has no state_sha256 (written by a flowpost older than checksummed "
            "checkpoints, or by hand), so it cannot be verified; retrain or resume from a "
            "checkpoint written by this version"
        )
    if not isinstance(state, dict) or state.get("state_sha256") != state_digest(state):
        raise CheckpointError(
            f"{state_file}: checksum mismatch (modified or damaged); delete this checkpoint "
            "folder to resume from the one before it"
        )
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
    """The newest checkpoint under ``root``, or None; a damaged one (no state file) is an
    error rather than silently skipped."""
    found = checkpoint_dirs(root, strict=True)
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

    ``run_dir`` is a run folder (its newest checkpoint is used), a checkpoint folder or a
    folder written by ``flowpost export``.
    For a generator-style method the evaluated role may be named differently; the first of
    ``ema.<role>``, ``model.<role>`` found is returned.
    """
    path = Path(run_dir)
    if not path.exists():
        raise CheckpointError(f"pretrained run not found: {path}")
    from flowpost.export import exported_state, is_export

    if is_export(path):  # a folder written by `flowpost export`
        return exported_state(path)
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


def check_pretrained_fits(
    module: torch.nn.Module, state: Mapping[str, Tensor], source: str
) -> None:
    """Raise a one-line :class:`CheckpointError` naming the first tensor of ``state`` whose
    shape differs from ``module``'s (a pretrained run with another model size)."""
    own = module.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"init_from {source}: tensor '{key}' has shape {tuple(value.shape)} there but "
                f"{tuple(own[key].shape)} in this network; use the pretrained run's model "
                "settings"
            )
