"""Reward fine-tuning of a flow, optionally regularised by FAIL against expert data.

The policy maximises a user-supplied reward ``R(x, cond) -> (B,)`` of the samples its
deployed sampler produces:

* ``variant: pd`` (differentiable reward): minimise ``-R(x_hat)`` where ``x_hat`` is the
  sample, differentiated through the sampler (``pd_estimator: pathwise``, a checkpointed
  solve; ``local`` uses FAIL's one-step estimate instead);
* ``variant: pg`` (black-box reward): the reward is only evaluated, never differentiated;
  FAIL-PG's group advantages and PPO-clipped ratio (FPO surrogate or SDE log-probs) train the
  policy.

With ``fail_weight > 0`` a discriminator is trained exactly as in FAIL (expert batch = label 1,
policy samples = label 0) and its term is added: ``fail_weight * softplus(-D(x_hat))`` to the
PD loss, or ``fail_weight * softplus(D(x))`` to the PG reward. It keeps the policy on the
expert distribution while it gains reward, where the reward alone would be hacked.

The reward is a Python callable given to the constructor (``RewardMethod(..., reward=fn)``,
or ``flowpost.fit("reward", reward=fn)``), called as ``fn(x)`` or ``fn(x, cond)`` and
returning one value per sample ``(B,)``; or, from a recipe, ``method.reward`` names a built-in
(:data:`REWARDS`) or ``"package.module:function"``, called as ``f(x, cond, **reward_args)``.

The machinery is shared with FAIL through :mod:`flowpost.methods.components`: the policy
update of the deployed sampler (``policy``) and the discriminator side (``imitation``).

Example:
    >>> import torch
    >>> r = make_reward("linear", direction=[1.0, 0.0])
    >>> r(torch.tensor([[2.0, 5.0], [-1.0, 0.0]]), None).tolist()
    [2.0, -1.0]
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flowpost.config import option
from flowpost.data.base import DataSpec
from flowpost.methods.base import register_method
from flowpost.methods.components.adversarial import adversarial_policy_loss, fail_reward
from flowpost.methods.components.common import load_object, per_sample_mse
from flowpost.methods.components.sampler_method import SamplerPolicyConfig, SamplerPolicyMethod
from flowpost.methods.fail import IMITATION_RENAMES, POLICY_RENAMES
from flowpost.nets.config import NetConfig

__all__ = [
    "RewardConfig",
    "RewardMethod",
    "REWARDS",
    "make_reward",
    "as_reward_fn",
    "linear_reward",
    "tanh_linear_reward",
    "gaussian_reward",
]

RewardFn = Callable[[Tensor, Tensor | None], Tensor]


def _direction(x: Tensor, direction: list[float] | None) -> Tensor:
    """Unit vector over the flattened sample; default: all ones (the mean "brightness")."""
    n = x[0].numel()
    if direction is None:
        d = torch.ones(n, device=x.device, dtype=x.dtype)
    else:
        d = torch.as_tensor(direction, device=x.device, dtype=x.dtype).flatten()
        if d.numel() != n:
            raise ValueError(
                f"reward direction has {d.numel()} entries but a sample has {n} values; "
                "give one entry per dimension of a sample"
            )
    norm = d.norm()
    if float(norm) == 0:
        raise ValueError("reward direction must not be the zero vector")
    return d / norm


def linear_reward(
    x: Tensor,
    cond: Tensor | None = None,
    *,
    direction: list[float] | None = None,
    scale: float = 1.0,
) -> Tensor:
    """``R(x) = scale * <x, d>`` with unit ``d``: grows without bound (a *hackable* reward:
    pushing samples far along ``d``, off any data distribution, keeps paying).

    >>> linear_reward(torch.tensor([[3.0, 4.0]]), direction=[0.0, 2.0]).tolist()
    [4.0]
    """
    return scale * x.flatten(1) @ _direction(x, direction)


def tanh_linear_reward(
    x: Tensor,
    cond: Tensor | None = None,
    *,
    direction: list[float] | None = None,
    scale: float = 1.0,
) -> Tensor:
    """``R(x) = tanh(scale * <x, d>)``: the linear reward saturated to ``(-1, 1)`` (bounded).

    >>> tanh_linear_reward(torch.tensor([[0.0, 0.0]]), direction=[1.0, 0.0]).tolist()
    [0.0]
    """
    return torch.tanh(linear_reward(x, cond, direction=direction, scale=scale))


def gaussian_reward(
    x: Tensor,
    cond: Tensor | None = None,
    *,
    center: list[float] | float = 0.0,
    width: float = 1.0,
) -> Tensor:
    """``R(x) = exp(-||x - c||^2 / (2 w^2))`` (per-sample mean square): bounded in ``(0, 1]``,
    maximal at ``center``.

    >>> gaussian_reward(torch.tensor([[1.0, 1.0]]), center=[1.0, 1.0]).tolist()
    [1.0]
    """
    c = torch.as_tensor(center, device=x.device, dtype=x.dtype)
    if c.dim() > 0:
        c = c.reshape(1, *x.shape[1:]) if c.numel() == x[0].numel() else c
    return torch.exp(-per_sample_mse(x, c.expand_as(x)) / (2 * width**2))


REWARDS: dict[str, Callable[..., Tensor]] = {
    "linear": linear_reward,
    "tanh_linear": tanh_linear_reward,
    "gaussian": gaussian_reward,
}


def make_reward(name: str, **kwargs: Any) -> RewardFn:
    """The reward ``R(x, cond) -> (B,)`` named by a built-in name or ``"module:function"``;
    ``kwargs`` are passed to it on every call."""
    fn = REWARDS.get(name)
    if fn is None:
        if ":" not in name:
            raise ValueError(
                f"unknown reward {name!r}; use a built-in ({', '.join(sorted(REWARDS))}) or "
                "'package.module:function'"
            )
        fn = load_object(name, "reward")
        if not callable(fn):
            raise ValueError(f"reward {name!r} is not callable")
    return functools.partial(fn, **kwargs)


def as_reward_fn(fn: Callable[..., Tensor]) -> RewardFn:
    """A user's callable as ``R(x, cond)``: one taking a single positional argument is called
    as ``fn(x)``, one taking two (or ``*args``) as ``fn(x, cond)``.

    >>> as_reward_fn(lambda x: x.sum(1))(torch.ones(2, 3), None).tolist()
    [3.0, 3.0]
    """
    if not callable(fn):
        raise ValueError(f"reward must be callable (tensor -> per-sample tensor), got {fn!r}")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: pass cond
        return fn
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in params) or len(positional) >= 2:
        return fn
    return lambda x, cond: fn(x)


@dataclass
class RewardConfig(SamplerPolicyConfig):
    """Reward fine-tuning: the reward, the policy estimator (``PolicyConfig``) and, with
    ``fail_weight > 0``, FAIL's discriminator (``ImitationConfig``)."""

    renamed_keys = {**POLICY_RENAMES, **IMITATION_RENAMES}

    reward: str | None = option(
        None,
        "built-in reward name or 'package.module:function' (null: the callable passed as "
        "reward= to flowpost.fit)",
    )
    reward_args: dict[str, Any] = option(
        default_factory=dict, help="keyword arguments passed to a named reward on every call"
    )
    pd_estimator: str = option(
        "pathwise",
        "PD: 'pathwise' checkpointed solve or FAIL's 'local' one-step estimate",
        choices=["local", "pathwise"],
    )
    fail_weight: float = option(
        0.0, "weight of the FAIL term against the expert data (0: reward only)", min=0.0
    )


@register_method("reward")
class RewardMethod(SamplerPolicyMethod):
    """Maximise ``R(x)`` (+ FAIL regulariser). Roles: ``policy``, ``reference`` and, with
    ``fail_weight > 0``, ``discriminator``.

    Example:
        >>> from flowpost.data.base import DataSpec
        >>> from flowpost.nets.config import NetConfig
        >>> m = RewardMethod(RewardConfig(), DataSpec((2,)), NetConfig(hidden=16, depth=1),
        ...                  reward=lambda x: -x.norm(dim=1))
        >>> sorted(m.optimizers()), m.phase(0)
        (['policy'], 'reward')
        >>> m.reward(torch.tensor([[3.0, 4.0]]), None).tolist()
        [-5.0]
    """

    config_class = RewardConfig
    config: RewardConfig
    targets_data = False  # the reward is the aim: held-out data does not score progress
    toy_settings = {
        "reward": "gaussian",
        "nfe": 2,
        "fail_weight": 1.0,
        "disc_warmup_steps": 1,
        "disc_lr": 1e-3,
        "discriminator": {"hidden": 16, "depth": 1},
    }
    solo_phase = "reward"

    def __init__(
        self,
        config: RewardConfig,
        spec: DataSpec,
        net: NetConfig,
        *,
        model: nn.Module | None = None,
        reward: Callable[..., Tensor] | None = None,
        discriminator: nn.Module | None = None,
    ) -> None:
        self._reward_fn: RewardFn | None = None
        if reward is not None:
            self._reward_fn = as_reward_fn(reward)
        elif config.reward is not None:
            self._reward_fn = make_reward(config.reward, **config.reward_args)
        super().__init__(config, spec, net, model=model, discriminator=discriminator)

    def uses_discriminator(self) -> bool:
        return self.config.fail_weight > 0

    @property
    def expert_weight(self) -> float:
        return self.config.fail_weight

    def reward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """The user's reward, checked to give one value per sample."""
        if self._reward_fn is None:
            raise ValueError(
                "the reward method has no reward: pass reward=callable (flowpost.fit) or set "
                "method.reward to a built-in name or 'package.module:function'"
            )
        r = self._reward_fn(x, cond)
        if not isinstance(r, Tensor) or r.shape != (x.shape[0],):
            shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ValueError(
                f"reward {self.config.reward or 'callable'!r} returned {shape}; it must "
                f"return one value per sample, shape ({x.shape[0]},)"
            )
        return r

    def score(self, x: Tensor, cond: Tensor | None) -> dict[str, Tensor]:
        """Per-sample PD loss terms: ``-R(x)`` and ``fail_weight * softplus(-D(x))``."""
        terms = {"reward": -self.reward(x, cond)}
        if self.discriminator is not None:
            terms["fail"] = self.config.fail_weight * adversarial_policy_loss(
                self.discriminator(x, cond)
            )
        return terms

    def sample_reward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """PG reward: ``R(x) + fail_weight * softplus(D(x))``, no grad."""
        with torch.no_grad():
            r = self.reward(x, cond)
            if self.discriminator is not None:
                r = r + self.config.fail_weight * fail_reward(self.discriminator(x, cond))
            return r
