"""LoRA through peft: adapters on a frozen base, the base itself as the frozen reference, an
EMA of the adapters alone, and diffusers' LoRA file layout.

* :func:`add_lora` freezes the base and adds peft LoRA adapters (``lora_B = 0``, so the
  adapted model starts exactly at the base); target names that match no linear layer and
  a rank of 0 are one-line errors.
* :class:`FrozenBase` is the reference FAIL and reward fine-tuning regularise toward: the
  same module with its adapters switched off for the call. No second copy of the weights.
* :class:`LoRAEMA` keeps the EMA of the adapter weights only and evaluates by swapping them
  into the live model for one no-grad call.
* :func:`diffusers_lora_state` / :func:`lora_metadata` give the keys and metadata of
  ``pytorch_lora_weights.safetensors`` (``transformer.<module>.lora_A.weight``), the file
  that ``pipeline.load_lora_weights`` and ``transformer.load_lora_adapter`` read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from flowpost.adapters.diffusers.config import DiffusersConfig

ADAPTER = "default"


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def add_lora(transformer: nn.Module, cfg: DiffusersConfig) -> None:
    """Freeze ``transformer`` and add LoRA adapters to ``cfg.lora_targets`` (peft)."""
    from peft import LoraConfig

    if cfg.lora_rank < 1:
        raise ValueError(f"diffusers.lora_rank: {cfg.lora_rank} trains nothing; use a rank >= 1")
    names = _linear_names(transformer)
    for target in cfg.lora_targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            examples = sorted({n.rsplit(".", 1)[-1] for n in names})[:8]
            raise ValueError(
                f"diffusers.lora_targets: {target!r} matches no linear layer of "
                f"{type(transformer).__name__} (layer names end in e.g. {', '.join(examples)})"
            )
    transformer.requires_grad_(False)
    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha_value,  # type: ignore[arg-type]
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets),
        init_lora_weights=True,
    )
    transformer.add_adapter(config, adapter_name=ADAPTER)  # type: ignore[operator]
    for name, p in transformer.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()  # adapters train in fp32 over a (possibly bf16) base
            p.requires_grad_(True)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Within the block, every peft layer of ``model`` runs its base weights only."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was = [m.disable_adapters for m in layers]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m, disabled in zip(layers, was):
            m.enable_adapters(not disabled)
        for p, flag in flags:  # peft's enable/disable toggles requires_grad: undo that
            p.requires_grad_(flag)


class FrozenBase(nn.Module):
    """The frozen reference: ``live`` called with its adapters disabled, under no grad.

    It registers no parameters (``live`` is held outside the module tree), so it adds
    nothing to checkpoints and nothing to the memory; it follows ``live`` across devices.
    """

    def __init__(self, live: nn.Module) -> None:
        super().__init__()
        self._live = [live]

    @property
    def time_shift(self) -> float:
        return float(getattr(self._live[0], "time_shift", 1.0))

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        live = self._live[0]
        transformer = getattr(live, "transformer", live)
        with torch.no_grad(), adapters_disabled(transformer):
            out: Tensor = live(*args, **kwargs)
        return out


def _safe(name: str) -> str:
    return name.replace(".", "__")


class LoRAEMA(nn.Module):
    """The EMA of a flow's trainable (LoRA) weights; calling it evaluates the flow with them.

    ``state_dict`` holds only the averaged adapter tensors. A call swaps them into the live
    model, runs it without gradients and swaps the live weights back.
    """

    def __init__(self, live: nn.Module) -> None:
        super().__init__()
        self._live = [live]
        pairs = live.trainable()  # type: ignore[operator]
        self.names = [n for n, _ in pairs]
        self.shadow = nn.ParameterDict(
            {_safe(n): nn.Parameter(p.detach().clone(), requires_grad=False) for n, p in pairs}
        )

    @property
    def time_shift(self) -> float:
        return float(getattr(self._live[0], "time_shift", 1.0))

    def ema_pairs(self, live: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        """``(ema tensors, live tensors)`` in the same order, for the EMA update."""
        live_params = [p for _, p in live.trainable()]  # type: ignore[operator]
        return [self.shadow[_safe(n)] for n in self.names], live_params

    def averaged(self) -> dict[str, Tensor]:
        """The averaged tensors under the live model's parameter names."""
        return {n: self.shadow[_safe(n)].detach() for n in self.names}

    @contextmanager
    def swapped_in(self) -> Iterator[nn.Module]:
        live = self._live[0]
        params = [p for _, p in live.trainable()]  # type: ignore[operator]
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            for p, name in zip(params, self.names):
                p.copy_(self.shadow[_safe(name)])
        try:
            yield live
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        with torch.no_grad(), self.swapped_in() as live:
            out: Tensor = live(*args, **kwargs)
        return out


# ------------------------------------------------------------------ diffusers' file layout


def diffusers_lora_state(
    tensors: Mapping[str, Tensor], prefix: str = "transformer"
) -> dict[str, Tensor]:
    """Map flow parameter names (``transformer.<module>.lora_A.default.weight``, with or
    without a leading role prefix) to diffusers' layout ``transformer.<module>.lora_A.weight``.

    >>> k = "transformer.blocks.0.attn.to_q.lora_A.default.weight"
    >>> list(diffusers_lora_state({k: torch.zeros(1)}))
    ['transformer.blocks.0.attn.to_q.lora_A.weight']
    """
    out: dict[str, Tensor] = {}
    for name, value in tensors.items():
        if "lora_" not in name:
            continue
        key = name.replace(f".{ADAPTER}.", ".")
        cut = key.find("transformer.")
        key = key[cut + len("transformer.") :] if cut >= 0 else key
        out[f"{prefix}.{key}"] = value.detach().to("cpu").contiguous()
    return out


def lora_metadata(cfg: DiffusersConfig, prefix: str = "transformer") -> dict[str, str]:
    """safetensors metadata as diffusers writes it, so a loader gets rank and alpha."""
    import json

    adapter = {
        "r": cfg.lora_rank,
        "lora_alpha": cfg.lora_alpha_value,
        "lora_dropout": cfg.lora_dropout,
        "target_modules": list(cfg.lora_targets),
        "bias": "none",
        "use_dora": False,
    }
    packed = {f"{prefix}.{k}": v for k, v in adapter.items()}
    return {"format": "pt", "lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True)}


__all__ = [
    "add_lora",
    "adapters_disabled",
    "FrozenBase",
    "LoRAEMA",
    "diffusers_lora_state",
    "lora_metadata",
]
