"""Build any flowpost method around a diffusers transformer with LoRA.

The roles a method trains are swapped for the adapted transformer: ``policy`` (flow
matching, FAIL, reward) or ``generator`` (AF); a ``reference`` becomes
:class:`~flowpost.adapters.diffusers.lora.FrozenBase` (the same weights, adapters off); a
discriminator becomes a :class:`~flowpost.adapters.diffusers.discriminator.LatentDiscriminator`
sized from the transformer's text dimensions. The trainer's EMA of such a role covers only
the adapters (the flow's ``make_ema`` returns a
:class:`~flowpost.adapters.diffusers.lora.LoRAEMA`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from flowpost.adapters.diffusers.config import DiffusersConfig
from flowpost.adapters.diffusers.discriminator import LatentDiscriminator
from flowpost.adapters.diffusers.lora import FrozenBase
from flowpost.adapters.diffusers.model import DiffusersFlow, build_flow, diffusers_folder_class
from flowpost.data.base import DataSpec
from flowpost.methods.base import Method
from flowpost.nets.config import NetConfig

# the stand-in network a method builds before its role is replaced: as small as possible
_PLACEHOLDER = NetConfig(arch="mlp", hidden=1, depth=1, time_embed_dim=2)


def is_diffusers_source(path: str | None) -> bool:
    """Whether ``init_from`` names a diffusers folder (rather than a flowpost run)."""
    from pathlib import Path

    if not path or not Path(path).exists():
        return False
    return diffusers_folder_class(Path(path)) is not None


def build_adapted_flow(cfg: DiffusersConfig, init_from: str | None = None) -> DiffusersFlow:
    """The adapted transformer; ``init_from`` may be a diffusers folder (the base)."""
    pretrained = init_from if is_diffusers_source(init_from) else None
    return build_flow(cfg, pretrained)


def latent_discriminator(
    flow: DiffusersFlow, spec: DataSpec, method_config: Any, *, time_conditional: bool
) -> LatentDiscriminator:
    dc = getattr(method_config, "discriminator", None)
    return LatentDiscriminator(
        spec.shape[0],
        text_dim=flow.text_dim,
        pooled_dim=flow.pooled_dim,
        hidden=getattr(flow, "discriminator_hidden", 64),
        depth=min(getattr(dc, "depth", 2), 3),
        time_conditional=time_conditional,
        spectral_norm=bool(getattr(dc, "spectral_norm", False)),
    )


def build_method(
    method_cls: type,
    method_config: Any,
    spec: DataSpec,
    cfg: DiffusersConfig,
    init_from: str | None = None,
) -> Method:
    """``method_cls`` (a registered flowpost method) with its flow roles on the adapted
    transformer. Raises a one-line ``ValueError`` for data that do not fit the model."""
    flow = build_adapted_flow(cfg, init_from)
    setattr(flow, "discriminator_hidden", cfg.discriminator_hidden)  # noqa: B010
    flow.check_latents(spec.shape)
    if spec.num_classes is not None:
        raise ValueError(
            "diffusers models take text embeddings as conditions, not class labels; use "
            "data.name: latents with prompt embeddings"
        )
    name = getattr(method_config, "name", "")
    kwargs: dict[str, Any] = {}
    if name == "adversarial":
        if getattr(method_config, "steps", 1) == 0:
            raise ValueError(
                "method.steps: 0 (any-step AF) needs an end-time input, which diffusers "
                "transformers do not have; use fixed k-step training (method.steps: k >= 1)"
            )
        if getattr(method_config, "parameterization", "auto") == "direct":
            raise ValueError(
                "method.parameterization: direct does not fit a pretrained velocity model; "
                "use residual (or auto)"
            )
        kwargs["generator"] = flow
        kwargs["discriminator"] = latent_discriminator(
            flow, spec, method_config, time_conditional=True
        )
    elif _takes(method_cls, "discriminator"):
        kwargs["discriminator"] = latent_discriminator(
            flow, spec, method_config, time_conditional=False
        )
    method: Method = method_cls(method_config, spec, replace(_PLACEHOLDER), **kwargs)
    if name == "adversarial":
        setattr(method, "residual", True)  # noqa: B010  (a velocity model: G = x_a + (b - a) v)
        return method
    if not hasattr(method, "policy"):
        raise ValueError(f"method {name!r} has no policy role a diffusers model can fill")
    method.policy = flow
    if isinstance(getattr(method, "reference", None), nn.Module):
        method.reference = FrozenBase(flow)
    return method


def load_init_state(method: nn.Module, init_from: str) -> None:
    """Start the adapters from a previous flowpost run of the same model (its EMA LoRA
    weights); a diffusers folder in ``init_from`` is the base itself, nothing more to load.

    The frozen reference stays the base without those adapters: to regularise toward the
    earlier fine-tune instead, fuse its LoRA into a base folder and pass that folder.
    """
    if is_diffusers_source(init_from):
        return
    from flowpost.train.checkpoint import load_policy_state

    role = "generator" if hasattr(method, "generator") else "policy"
    flow = getattr(method, role)
    state = {}
    for r in (role, "policy", "generator"):
        try:
            state = load_policy_state(init_from, role=r)
            break
        except Exception:  # noqa: BLE001  (try the other role name)
            continue
    if not state:
        raise ValueError(f"init_from {init_from}: holds no weights of a policy or generator")
    names = dict(flow.trainable())
    lora = {k: v for k, v in state.items() if "lora_" in k}
    # EMA tensors are stored under their sanitised names (dots as "__")
    lora = {k.removeprefix("shadow.").replace("__", "."): v for k, v in lora.items()}
    unknown = [k for k in lora if k not in names]
    if not lora or unknown:
        raise ValueError(
            f"init_from {init_from}: its adapters do not fit this model (unknown "
            f"{unknown[:2]}); use the same diffusers model and LoRA settings"
        )
    with torch.no_grad():
        for k, v in lora.items():
            names[k].copy_(v)


def _takes(cls: type, arg: str) -> bool:
    import inspect

    try:
        params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


__all__ = ["load_init_state", "build_adapted_flow", "build_method", "is_diffusers_source"]
