"""``flowpost export RUN --out DIR``: the trained model alone, in a format other tools load.

* Runs of a diffusers transformer with LoRA: ``pytorch_lora_weights.safetensors`` in
  diffusers' key layout (``transformer.<module>.lora_A.weight``) with diffusers' adapter
  metadata (rank, alpha, targets), loadable by ``pipeline.load_lora_weights(DIR)`` or
  ``transformer.load_lora_adapter(DIR, prefix="transformer")``; plus ``flowpost_adapter.json``
  naming the base model.
* Runs of flowpost's own networks: ``model.safetensors`` (the EMA weights of the evaluated
  role) and ``config.json`` (network config, data shape, role), loadable with
  :func:`load_exported` or as ``init_from`` of another run, without the run folder.

The EMA weights are exported (what the run evaluates) from the checkpoint ``flowpost.load``
picks (the best one when the run kept one, else the newest; ``last=True``: the newest);
never optimiser or RNG state.

Example:
    >>> import tempfile, torch
    >>> from flowpost.train.config import build_run_config
    >>> from flowpost.train import Trainer
    >>> run, out = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> cfg = build_run_config({"data": {"name": "moons", "n_heldout": 50},
    ...     "model": {"hidden": 16, "depth": 1}, "train": {"steps": 2, "batch_size": 8},
    ...     "eval": {"nfe": 2, "n_samples": 50, "plots": False}})
    >>> _ = Trainer.from_config(cfg, run, progress=False).fit()
    >>> sorted(p.name for p in export_run(run, out))
    ['config.json', 'model.safetensors']
    >>> load_exported(out)(torch.zeros(3, 2), torch.zeros(3)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from flowpost.train.checkpoint import CheckpointError, load_checkpoint

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
FORMAT = "flowpost-model"


def _run_state(
    run: Path, last: bool = False
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    from flowpost.config import load_yaml
    from flowpost.train.selection import chosen_checkpoint

    tensors, state = load_checkpoint(chosen_checkpoint(run, last=last, use="export"))
    return load_yaml(run / "config.yaml"), tensors, state


def _role(tensors: dict[str, Tensor]) -> tuple[str, str]:
    """``(role, prefix)`` of the weights to export: the EMA of the evaluated role."""
    for role in ("policy", "generator"):
        for prefix in (f"ema.{role}.", f"model.{role}."):
            if any(k.startswith(prefix) for k in tensors):
                return role, prefix
    raise CheckpointError("the checkpoint holds no policy or generator weights to export")


def _write_atomic(out: Path, name: str, write: Any) -> Path:
    tmp = out / f".{name}.tmp-{os.getpid()}"
    write(tmp)
    final = out / name
    os.replace(tmp, final)
    return final


def export_run(run: str | Path, out: str | Path, *, last: bool = False) -> list[Path]:
    """Export ``run`` into folder ``out``; returns the files. Like ``flowpost.load``, the
    best checkpoint (scored on held-out demonstrations) when the run kept one, else (or with
    ``last``) the newest."""
    run, out = Path(run), Path(out)
    config, tensors, state = _run_state(run, last)
    role, prefix = _role(tensors)
    weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    out.mkdir(parents=True, exist_ok=True)
    if config.get("diffusers"):
        return _export_lora(config, weights, role, out, run, int(state["step"]))
    return _export_network(config, weights, role, out, run, int(state["step"]))


def _export_lora(
    config: dict[str, Any],
    weights: dict[str, Tensor],
    role: str,
    out: Path,
    run: Path,
    step: int,
) -> list[Path]:
    from flowpost.adapters.diffusers.config import DiffusersConfig
    from flowpost.adapters.diffusers.lora import diffusers_lora_state, lora_metadata
    from flowpost.config import from_dict

    cfg = from_dict(DiffusersConfig, config["diffusers"], prefix="diffusers")
    names = {k.removeprefix("shadow.").replace("__", "."): v for k, v in weights.items()}
    lora = diffusers_lora_state(names)
    if not lora:
        raise CheckpointError(f"{run}: the {role} holds no LoRA weights to export")
    files = [
        _write_atomic(
            out, LORA_FILE, lambda p: save_file(lora, str(p), metadata=lora_metadata(cfg))
        )
    ]
    init_from = config.get("init_from")
    base = {
        "pretrained": cfg.pretrained or init_from,
        "model_class": cfg.model_class,
        "transformer": cfg.transformer if not (cfg.pretrained or init_from) else None,
        "init_seed": cfg.init_seed,
        "guidance": cfg.guidance,
    }
    info = {"format": "flowpost-lora", "base": base, "run": str(run), "step": step, "role": role}
    text = json.dumps(info, indent=1, sort_keys=True)
    files.append(_write_atomic(out, "flowpost_adapter.json", lambda p: p.write_text(text)))
    return files


def _export_network(
    config: dict[str, Any],
    weights: dict[str, Tensor],
    role: str,
    out: Path,
    run: Path,
    step: int,
) -> list[Path]:
    from flowpost.train.config import build_run_config

    cfg = build_run_config(config)
    from flowpost.data import load_data

    spec = load_data(cfg.data).spec
    meta = {
        "format": FORMAT,
        "role": role,
        "model": config.get("model") or {},
        "shape": list(spec.shape),
        "num_classes": spec.num_classes,
        "end_time": role == "generator",
        "method": cfg.method.name,
        "run": str(run),
        "step": step,
    }
    flat = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    files = [_write_atomic(out, MODEL_FILE, lambda p: save_file(flat, str(p)))]
    text = json.dumps(meta, indent=1, sort_keys=True)
    files.append(_write_atomic(out, CONFIG_FILE, lambda p: p.write_text(text)))
    return files


def is_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`export_run` for a flowpost network."""
    cfg = Path(path) / CONFIG_FILE
    if not (Path(path) / MODEL_FILE).is_file() or not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def exported_state(path: str | Path) -> dict[str, Tensor]:
    """The weights of an exported network (what ``init_from`` loads)."""
    if not is_export(path):
        raise CheckpointError(f"{path}: not a flowpost export ({MODEL_FILE} + {CONFIG_FILE})")
    return load_file(str(Path(path) / MODEL_FILE))


def load_exported(path: str | Path) -> nn.Module:
    """The exported network, built from its ``config.json`` and loaded (eval mode)."""
    from flowpost.config import from_dict
    from flowpost.data.base import DataSpec
    from flowpost.nets.config import NetConfig
    from flowpost.nets.factory import build_velocity_net

    state = exported_state(path)
    meta = json.loads((Path(path) / CONFIG_FILE).read_text())
    spec = DataSpec(tuple(meta["shape"]), meta.get("num_classes"))
    net = build_velocity_net(
        from_dict(NetConfig, meta["model"], prefix="model"), spec, end_time=meta["end_time"]
    )
    net.load_state_dict(state)
    return net.eval().requires_grad_(False)


__all__ = ["export_run", "load_exported", "exported_state", "is_export"]
