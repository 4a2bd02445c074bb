"""The method interface: the one contract between a method's mathematics and the trainer.

A :class:`Method` is an ``nn.Module`` whose sub-modules are its *roles* (``policy``,
``reference``, ``discriminator``, ``generator``...). It owns its losses and the order of its
updates; it never touches devices, files or logging. The trainer owns everything else and
hands the method an :class:`Updater`, through which the method asks for optimiser steps.

The contract, in full:

* Registration: decorate the class with ``@register_method("name")``; the name is written
  there only (the config's ``name`` comes from it). Any module in ``flowpost/methods/`` is
  discovered and imported by :func:`method_registry`; nothing else needs editing.
* ``config_class``: the method's config dataclass (a :class:`MethodConfig`); old key names
  go into its ``renamed_keys`` so that a recipe using one gets a one-line error.
* The constructor, ``Method(config, spec, net, *, model=None, **objects)``:

  - ``config``: the method's config; ``spec``: the data's :class:`DataSpec`; ``net``: the
    ``model`` section, used to build networks the user did not give;
  - ``model``: the user's own velocity network, any ``nn.Module`` with
    ``forward(x, t, cond=None)``; it replaces the network the factory would build for the
    trained flow (its frozen reference, if any, is a frozen deep copy of it);
  - further keyword-only objects are method-specific (``discriminator=`` for FAIL and AF,
    ``reward=`` for reward fine-tuning); :func:`build_method` refuses, in one line, an
    object a method does not take.
* :meth:`Method.optimizers`: one :class:`OptimizerSpec` per optimiser, keyed by name; by
  convention the name is the role it trains, and the trainer keeps an EMA of the roles
  listed in :meth:`Method.ema_roles`.
* :meth:`Method.train_step`: one training iteration on a batch of target data; calls
  ``update.step(name, **loss_terms)`` once per optimiser step it wants (any number, any order:
  alternating D/G steps, warm-ups, several PPO epochs) and returns scalars to log.
* :meth:`Method.generate`: samples from noise with given roles (the trainer passes the EMA
  copies for evaluation). The default integrates the ``policy`` role's ODE.
* :meth:`Method.load_pretrained`: take the weights of a pretrained flow (SFT, FAIL, AF...).
* ``toy_settings``: a small ``method`` section (a dict) with which the method trains in a
  few seconds on a 2-D toy (its ``nfe``, if any, is also the sampling nfe); ``toy_recipe``
  overrides other sections of that toy run (``data``, ``model``, ``train``, ``eval``). The
  contract test (``tests/methods/test_contract.py``) runs every registered method with them.

Randomness: per-sample draws go through :mod:`flowpost.flows.random` (``randn``, ``rand``,
``randint``), which draw from torch's global generator; the trainer seeds it and checkpoints
its state, so a resumed run continues the same stream, and 2 processes equal 1.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(2))
    >>> OptimizerSpec([p], lr=1e-3).lr
    0.001
    >>> sorted(method_registry())[:2]
    ['adversarial', 'fail']
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import Tensor, nn

from flowpost.data.base import Batch, DataSpec
from flowpost.flows.solvers import sample
from flowpost.nets.config import NetConfig


@dataclass
class MethodConfig:
    """Fields shared by every method's config; each method subclasses it.

    ``name`` is the name the method was registered under (not a field: it is written once,
    in ``@register_method``). ``renamed_keys`` maps old key names to new ones.
    """

    method_name: ClassVar[str] = ""
    renamed_keys: ClassVar[dict[str, str]] = {}

    @property
    def name(self) -> str:
        """The registered name of the method this config belongs to."""
        return type(self).method_name


@dataclass
class OptimizerSpec:
    """What one optimiser trains and how; the trainer builds the optimiser (AdamW) from it.

    ``lr=None`` means the run's ``train.lr``; the trainer multiplies the lr by ``lr_scale``
    (e.g. ``1 / repeats`` for a deep generator). ``grad_clip=None`` means ``train.grad_clip``.
    ``eps=None`` is AdamW's own (1e-8).
    """

    params: list[nn.Parameter]
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    schedule: bool = True  # follow the run's warm-up + decay schedule
    lr_scale: float = 1.0
    eps: float | None = None


class Updater(Protocol):
    """What the trainer gives a method to take optimiser steps with."""

    def step(self, name: str, **terms: Tensor) -> dict[str, float]:
        """Sum the loss ``terms``, check each is finite (naming the bad one), back-propagate,
        clip, step optimiser ``name``, clear every gradient, update its EMA; return the
        terms as floats for logging."""
        ...


class Method(nn.Module, ABC):
    """Base class of every post-training method (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    toy_settings: ClassVar[dict[str, Any]] = {}
    toy_recipe: ClassVar[dict[str, dict[str, Any]]] = {}
    # whether the method's aim is the distribution of its training data (so held-out data
    # scores its progress); False for a method that maximises a reward
    targets_data: ClassVar[bool] = True

    def __init__(
        self,
        config: MethodConfig,
        spec: DataSpec,
        net: NetConfig,
        *,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.net_config = net
        self._user_model = model

    def velocity_net(self, *, end_time: bool = False) -> nn.Module:
        """The user's ``model`` if one was given, else a new network from the ``model``
        section (:func:`flowpost.nets.factory.build_velocity_net`)."""
        if self._user_model is not None:
            return self._user_model
        from flowpost.nets.factory import build_velocity_net

        return build_velocity_net(self.net_config, self.spec, end_time=end_time)

    @abstractmethod
    def optimizers(self) -> dict[str, OptimizerSpec]:
        """One entry per optimiser the method steps through :class:`Updater`."""

    def ema_roles(self) -> tuple[str, ...]:
        """Roles the trainer keeps an exponential moving average of (used for evaluation)."""
        return ("policy",)

    @abstractmethod
    def train_step(self, batch: Batch, step: int, update: Updater) -> dict[str, float]:
        """One iteration on a batch of target data; returns scalars to log."""

    def guidance(self, cond: Tensor | None) -> float:
        """Classifier-free guidance scale :meth:`generate` samples with (1: none)."""
        return 1.0

    @torch.no_grad()
    def generate(
        self,
        noise: Tensor,
        cond: Tensor | None = None,
        *,
        nfe: int,
        solver: str = "euler",
        roles: Mapping[str, nn.Module] | None = None,
    ) -> Tensor:
        """Samples from ``noise`` (t = 0) with ``nfe`` network evaluations of the ``policy``
        role's ODE. ``roles`` replaces some of the method's modules (the trainer passes EMA
        copies)."""
        policy = self.role("policy", roles)
        # a model may declare its sampling time shift (diffusers adapters: FLUX, SD3)
        shift = getattr(policy, "time_shift", 1.0)
        shift = float(shift) if isinstance(shift, (int, float)) else 1.0
        out = sample(
            policy,
            noise,
            nfe,
            solver,
            cond=cond,
            grid="uniform" if shift == 1.0 else "shifted",
            shift=shift,
            guidance=self.guidance(cond),
            num_classes=self.spec.num_classes,
        )
        assert isinstance(out, Tensor)
        return out

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
        load_matching(policy, state, type(self).__name__)
        reference = getattr(self, "reference", None)
        if isinstance(reference, nn.Module):
            load_matching(reference, state, type(self).__name__)
            reference.requires_grad_(False)

    def phase(self, step: int) -> str:
        """A short name for what the method does at ``step`` (shown in the progress bar)."""
        return "train"

    def extra_state(self) -> dict[str, Any]:
        """JSON-serialisable counters the method keeps outside its modules (checkpointed)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with gradients off, in eval mode (a frozen reference).

    A module may provide its own ``frozen_reference()`` instead: an adapted model (LoRA)
    returns its base with the adapters switched off, without copying the base's weights."""
    own = getattr(module, "frozen_reference", None)
    if callable(own):
        reference: nn.Module = own()
        return reference
    return copy.deepcopy(module).requires_grad_(False).eval()


def load_matching(module: nn.Module, state: Mapping[str, Tensor], owner: str) -> None:
    """Load ``state`` into ``module``; only zero-initialised post-training inputs (names
    starting with ``end_time``, e.g. AF's end-time embedding) may be missing."""
    missing, unexpected = module.load_state_dict(dict(state), strict=False)
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


# --------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Method]] = {}
_DISCOVERED = False
M = TypeVar("M", bound=type[Method])


def register_method(name: str):  # type: ignore[no-untyped-def]
    """Class decorator: make a method available to configs and the command line by ``name``.

    The name is written only here: the method's ``name`` and its config's ``name`` come
    from it.
    """

    def wrap(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"method name {name!r} registered twice")
        config_cls = cls.config_class
        if "method_name" in vars(config_cls) and config_cls.method_name != name:
            # a config class shared with another method: give this one its own subclass
            config_cls = dataclass(type(config_cls.__name__, (config_cls,), {}))
            cls.config_class = config_cls
        fields = {f.name: f for f in dataclasses.fields(config_cls)}
        if "name" in fields and fields["name"].default != name:
            raise ValueError(
                f"method {name!r}: its config's name field says {fields['name'].default!r}; "
                "drop the field (the name comes from @register_method)"
            )
        config_cls.method_name = name
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _discover() -> None:
    """Import every module of :mod:`flowpost.methods` (each registers its method)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    import flowpost.methods as package

    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        if not info.ispkg and not info.name.endswith(".base"):
            importlib.import_module(info.name)
    _DISCOVERED = True


def method_registry() -> dict[str, type[Method]]:
    """All registered methods, discovering the modules of ``flowpost/methods/`` first."""
    _discover()
    return dict(_REGISTRY)


def get_method_class(name: str) -> type[Method]:
    """The method registered as ``name``; a one-line error lists the available ones."""
    registry = method_registry()
    if name not in registry:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]


def build_method(
    method: str | type[Method],
    config: MethodConfig,
    spec: DataSpec,
    net: NetConfig,
    **objects: Any,
) -> Method:
    """Construct a method with the user's objects (``model=``, ``reward=``...); ``None``
    values are left out, and an object the method does not take is a one-line error."""
    cls = get_method_class(method) if isinstance(method, str) else method
    given = {k: v for k, v in objects.items() if v is not None}
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = [k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    for key in given:
        if key not in params and not takes_any:
            raise ValueError(
                f"method {cls.name or cls.__name__!r} takes no {key}= "
                f"(it takes: {', '.join(accepted) or 'nothing'})"
            )
    return cls(config, spec, net, **given)
