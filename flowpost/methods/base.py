"""The method interface: the one contract between a method's mathematics and the trainer.

A :class:`Method` is an ``nn.Module`` whose sub-modules are its *roles* (``policy``,
``reference``, ``discriminator``, ``generator``...). It owns its losses and the order of its
updates; it never touches devices, files or logging. The trainer owns everything else and
hands the method an :class:`Updater`, through which the method asks for optimiser steps.

The contract, in full:

* ``config_class``: the method's config dataclass (a :class:`MethodConfig`).
* ``__init__(config, spec, net)``: build the roles from the data spec and the network config
  (:func:`flowpost.nets.factory.build_velocity_net` and friends).
* :meth:`Method.optimizers`: one :class:`OptimizerSpec` per optimiser, keyed by name; by
  convention the name is the role it trains, and the trainer keeps an EMA of the roles
  listed in :meth:`Method.ema_roles`.
* :meth:`Method.train_step`: one training iteration on a batch of target data; calls
  ``update.step(name, **loss_terms)`` once per optimiser step it wants (any number, any order:
  alternating D/G steps, warm-ups, several PPO epochs) and returns scalars to log.
* :meth:`Method.generate`: samples from noise with given roles (the trainer passes the EMA
  copies for evaluation).
* :meth:`Method.load_pretrained`: take the weights of a pretrained flow (SFT, FAIL, AF...).

Randomness: methods draw from torch's global generator (``torch.randn``, ``torch.rand``); the
trainer seeds it and checkpoints its state, so a resumed run continues the same stream.

Example:
    >>> import torch
    >>> from flowpost.methods.base import OptimizerSpec
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> OptimizerSpec([p], lr=1e-3).lr
    0.001
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from flowpost.config import option
from flowpost.data.base import Batch, DataSpec
from flowpost.nets.config import NetConfig


@dataclass
class MethodConfig:
    """Fields shared by every method's config; each method subclasses it."""

    name: str = option("flow_matching", "which method to run (see `flowpost methods`)")


@dataclass
class OptimizerSpec:
    """What one optimiser trains and how; the trainer builds the optimiser (AdamW) from it.

    ``lr=None`` means the run's ``train.lr``; ``grad_clip=None`` means ``train.grad_clip``.
    """

    params: list[nn.Parameter]
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    schedule: bool = True  # follow the run's warm-up + decay schedule
    extra: dict[str, Any] = field(default_factory=dict)


class Updater(Protocol):
    """What the trainer gives a method to take optimiser steps with."""

    def step(self, name: str, **terms: Tensor) -> dict[str, float]:
        """Sum the loss ``terms``, check each is finite (naming the bad one), back-propagate,
        clip, step optimiser ``name``, clear every gradient, update its EMA; return the
        terms as floats for logging."""
        ...


class Method(nn.Module, ABC):
    """Base class of every post-training method (see the module docstring for the contract)."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig, spec: DataSpec, net: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.net_config = net

    @abstractmethod
    def optimizers(self) -> dict[str, OptimizerSpec]:
        """One entry per optimiser the method steps through :class:`Updater`."""

    def ema_roles(self) -> tuple[str, ...]:
        """Roles the trainer keeps an exponential moving average of (used for evaluation)."""
        return ("policy",)

    @abstractmethod
    def train_step(self, batch: Batch, step: int, update: Updater) -> dict[str, float]:
        """One iteration on a batch of target data; returns scalars to log."""

    @abstractmethod
    def generate(
        self,
        noise: Tensor,
        cond: Tensor | None = None,
        *,
        nfe: int,
        solver: str = "euler",
        roles: Mapping[str, nn.Module] | None = None,
    ) -> Tensor:
        """Samples from ``noise`` (t = 0) with ``nfe`` network evaluations.

        ``roles`` replaces some of the method's modules (the trainer passes EMA copies).
        """

    def role(self, name: str, roles: Mapping[str, nn.Module] | None = None) -> nn.Module:
        """Module ``name`` from ``roles`` if given there, else the method's own."""
        if roles is not None and name in roles:
            return roles[name]
        module = getattr(self, name)
        assert isinstance(module, nn.Module)
        return module

    def load_pretrained(self, state: Mapping[str, Tensor]) -> None:
        """Load a pretrained flow's weights (its policy/EMA state dict) into the policy role,
        and into any frozen reference copy the method keeps."""
        policy = getattr(self, "policy", None)
        if policy is None:
            raise ValueError(f"{type(self).__name__} has no policy to load pretrained weights into")
        _load_matching(policy, state, type(self).__name__)
        reference = getattr(self, "reference", None)
        if isinstance(reference, nn.Module):
            _load_matching(reference, state, type(self).__name__)

    def phase(self, step: int) -> str:
        """A short name for what the method does at ``step`` (shown in the progress bar)."""
        return "train"

    def extra_state(self) -> dict[str, Any]:
        """JSON-serialisable counters the method keeps outside its modules (checkpointed)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""


def _load_matching(module: nn.Module, state: Mapping[str, Tensor], owner: str) -> None:
    missing, unexpected = module.load_state_dict(dict(state), strict=False)
    # Extra conditioning inputs added for post-training (zero-initialised, e.g. an AF end-time
    # embedding) may be missing from a pretrained flow; anything else is a mismatch.
    missing = [k for k in missing if not k.startswith("end_time")]
    if missing or unexpected:
        raise ValueError(
            f"{owner}: pretrained weights do not fit the network (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); use the same model settings as the pretrained run"
        )


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients to the parameters of ``modules`` (restored on exit)."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str):  # type: ignore[no-untyped-def]
    """Class decorator: make a method available to configs and the command line by ``name``."""

    def wrap(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return wrap


def method_registry() -> dict[str, type[Method]]:
    """All registered methods, importing the built-in method modules first."""
    import flowpost.methods  # noqa: F401  (registers the built-in methods)

    return dict(_REGISTRY)


def get_method_class(name: str) -> type[Method]:
    registry = method_registry()
    if name not in registry:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]


def detach_scalar(value: Tensor | float) -> float:
    """A loggable float from a scalar tensor or number."""
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
