"""Build any flowpost method around a diffusers transformer with LoRA.

The adapted transformer goes in through the methods' model injection (``model=``): it is the
``policy`` (flow matching, FAIL, reward) or the ``generator`` (AF). The reference a method
keeps (``frozen_copy``) is then the same module with its adapters off
(:class:`~flowpost.adapters.diffusers.lora.FrozenBase`), the trainer's EMA covers only the
adapters (:class:`~flowpost.adapters.diffusers.lora.LoRAEMA`), and a discriminator is a
:class:`~flowpost.adapters.diffusers.discriminator.LatentDiscriminator` sized from the
transformer's text dimensions.

Example:
    >>> from flowpost.adapters.diffusers.build import is_diffusers_source
    >>> is_diffusers_source(None)
    False
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowpost.adapters.diffusers.config import DiffusersConfig
from flowpost.adapters.diffusers.discriminator import LatentDiscriminator
from flowpost.adapters.diffusers.model import DiffusersFlow, build_flow, diffusers_folder_class
from flowpost.data.base import DataSpec
from flowpost.methods.base import Method
from flowpost.nets.config import NetConfig

# the `model` section is unused when the flow is a diffusers transformer
_UNUSED_NET = NetConfig()


def is_diffusers_source(path: str | None) -> bool:
    """Whether ``init_from`` names a diffusers folder (rather than a flowpost run)."""
    if not path or not Path(path).exists():
        return False
    return diffusers_folder_class(Path(path)) is not None


def build_adapted_flow(cfg: DiffusersConfig, init_from: str | None = None) -> DiffusersFlow:
    """The adapted transformer; ``init_from`` may be a diffusers folder (the base)."""
    pretrained = init_from if is_diffusers_source(init_from) else None
    return build_flow(cfg, pretrained)


def latent_discriminator(
    flow: DiffusersFlow, spec: DataSpec, cfg: DiffusersConfig, method_config: Any, *, time: bool
) -> LatentDiscriminator:
    """The discriminator FAIL, reward (with FAIL) and AF get on latents + text."""
    dc = getattr(method_config, "discriminator", None)
    return LatentDiscriminator(
        spec.shape[0],
        text_dim=flow.text_dim,
        pooled_dim=flow.pooled_dim,
        hidden=cfg.discriminator_hidden,
        depth=min(int(getattr(dc, "depth", 2)), 3),
        time_conditional=time,
        spectral_norm=bool(getattr(dc, "spectral_norm", False)),
    )


def build_method(
    method_cls: type[Method],
    method_config: Any,
    spec: DataSpec,
    cfg: DiffusersConfig,
    init_from: str | None = None,
) -> Method:
    """``method_cls`` (a registered flowpost method) with its flow role on the adapted
    transformer. Data that do not fit the model are a one-line ``ValueError``."""
    if spec.num_classes is not None:
        raise ValueError(
            "diffusers models take text embeddings as conditions, not class labels; use "
            "data.name: latents with prompt embeddings"
        )
    flow = build_adapted_flow(cfg, init_from)
    flow.fit_latents(spec.shape)  # checks them; FLUX's time shift depends on their size
    if spec.cond_dim is not None:  # checks the size: L * joint_attention_dim + pooled
        from flowpost.adapters.diffusers.model import unpack_condition

        unpack_condition(torch.zeros(1, spec.cond_dim), flow.text_dim, flow.pooled_dim)
    name = method_cls.name
    if name == "adversarial" and getattr(method_config, "nfe", 1) == 0:
        raise ValueError(
            "method.nfe: 0 (any-step AF) needs an end-time input, which diffusers "
            "transformers do not have; train for fixed k-step sampling (method.nfe: k >= 1)"
        )
    if name == "adversarial" and getattr(method_config, "parameterization", "auto") == "direct":
        raise ValueError(
            "method.parameterization: direct does not fit a pretrained velocity model; use "
            "residual (or auto)"
        )
    kwargs: dict[str, Any] = {"model": flow}
    params = inspect.signature(method_cls.__init__).parameters
    if "discriminator" in params:
        time = name == "adversarial"
        kwargs["discriminator"] = latent_discriminator(flow, spec, cfg, method_config, time=time)
    method = method_cls(method_config, spec, _UNUSED_NET, **kwargs)
    if name == "adversarial":
        # the transformer predicts a velocity: G = x_a + (b - a) v, from the base's k-step map
        setattr(method, "residual", True)  # noqa: B010
    return method


def load_init_state(method: nn.Module, init_from: str) -> None:
    """Start the adapters from an earlier flowpost run of the same model (its EMA LoRA
    weights); a diffusers folder in ``init_from`` is the base itself, nothing more to load.

    The frozen reference stays the base without those adapters: to regularise toward the
    earlier fine-tune instead, fuse its LoRA into a base folder and pass that folder.
    """
    if is_diffusers_source(init_from):
        return
    from flowpost.train.checkpoint import load_policy_state

    flow = getattr(method, "generator", None) or getattr(method, "policy", None)
    if not isinstance(flow, DiffusersFlow):
        raise ValueError("this method has no diffusers policy or generator to initialise")
    state: dict[str, torch.Tensor] = {}
    for role in ("policy", "generator"):
        try:
            state = load_policy_state(init_from, role=role)
            break
        except Exception:  # noqa: BLE001  (the run may name its flow role the other way)
            continue
    if not state:
        raise ValueError(f"init_from {init_from}: holds no weights of a policy or generator")
    names = dict(flow.trainable())
    # EMA tensors are stored under sanitised names (dots as "__")
    lora = {
        k.removeprefix("shadow.").replace("__", "."): v for k, v in state.items() if "lora_" in k
    }
    unknown = [k for k in lora if k not in names]
    if not lora or unknown:
        raise ValueError(
            f"init_from {init_from}: its adapters do not fit this model (unknown "
            f"{unknown[:2]}); use the same diffusers model and LoRA settings"
        )
    with torch.no_grad():
        for k, v in lora.items():
            names[k].copy_(v)


__all__ = [
    "build_method",
    "build_adapted_flow",
    "load_init_state",
    "latent_discriminator",
    "is_diffusers_source",
]
