"""The common frame of methods that train a flow's *deployed sampler* against per-sample
scores, with an optional discriminator of expert vs policy samples: FAIL (the score is the
discriminator's) and reward fine-tuning (a reward, plus FAIL's term with ``fail_weight > 0``).

A subclass says what a sample is scored by (:meth:`SamplerPolicyMethod.score` for PD,
:meth:`SamplerPolicyMethod.sample_reward` for PG) and whether it trains a discriminator
(:meth:`SamplerPolicyMethod.uses_discriminator`); the roles (``policy``, the frozen
``reference``, ``discriminator``), the optimisers, the schedule of
:mod:`~flowpost.methods.components.imitation`, the discriminator guard and the policy update
of :mod:`~flowpost.methods.components.policy` are shared here.

Example:
    >>> import torch
    >>> from flowpost.data.base import DataSpec
    >>> from flowpost.methods.fail import FAILConfig, FAILMethod
    >>> from flowpost.nets.config import DiscriminatorConfig, NetConfig
    >>> m = FAILMethod(FAILConfig(discriminator=DiscriminatorConfig(hidden=8, depth=1)),
    ...                DataSpec((2,)), NetConfig(hidden=8, depth=1))
    >>> isinstance(m, SamplerPolicyMethod), sorted(m.optimizers())
    (True, ['discriminator', 'policy'])
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from flowpost.data.base import Batch, DataSpec
from flowpost.methods.base import Method, OptimizerSpec, Updater, frozen_copy
from flowpost.methods.components.common import Rollout
from flowpost.methods.components.imitation import (
    ImitationConfig,
    adversarial_step,
    build_imitation_discriminator,
    discriminator_optimizer,
    expert_pd_terms,
    imitation_guard,
    imitation_phase,
)
from flowpost.methods.components.policy import PolicyConfig, policy_update
from flowpost.nets.config import NetConfig

__all__ = ["SamplerPolicyConfig", "SamplerPolicyMethod"]


@dataclass
class SamplerPolicyConfig(PolicyConfig, ImitationConfig):
    """The settings such a method has: the policy's (:class:`PolicyConfig`) and the
    discriminator's (:class:`ImitationConfig`). Subclass it with ``@dataclass``."""


class SamplerPolicyMethod(Method):
    """Roles ``policy`` (the trained flow, or the user's ``model``), ``reference`` (its frozen
    start) and, when :meth:`uses_discriminator`, ``discriminator`` (or the one given)."""

    config: SamplerPolicyConfig
    solo_phase: ClassVar[str] = "policy"
    """The phase shown after the cold start when there is no discriminator."""

    def __init__(
        self,
        config: SamplerPolicyConfig,
        spec: DataSpec,
        net: NetConfig,
        *,
        model: nn.Module | None = None,
        discriminator: nn.Module | None = None,
    ) -> None:
        super().__init__(config, spec, net, model=model)
        self.policy = self.velocity_net()
        self.reference = frozen_copy(self.policy)
        self.discriminator: nn.Module | None = None
        if self.uses_discriminator():
            self.discriminator = build_imitation_discriminator(config, spec, discriminator)
        self.guard = imitation_guard(config) if self.discriminator is not None else None

    # ---- what a subclass says

    def uses_discriminator(self) -> bool:
        """Whether a discriminator is trained (FAIL: always)."""
        return True

    @property
    def expert_weight(self) -> float:
        """Weight of the ``pd_expert`` term (the FAIL term's weight)."""
        return 1.0

    @abstractmethod
    def score(self, x: Tensor, cond: Tensor | None) -> dict[str, Tensor]:
        """Per-sample PD loss terms ``(B,)`` of samples ``x``, differentiable in ``x``."""

    @abstractmethod
    def sample_reward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """Per-sample PG reward ``(B,)`` of samples ``x``, without gradients."""

    # ---- shared

    def extra_state(self) -> dict[str, Any]:
        return {} if self.guard is None else {"guard": self.guard.state()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if self.guard is not None and "guard" in state:
            self.guard.load_state(state["guard"])

    def optimizers(self) -> dict[str, OptimizerSpec]:
        specs = {"policy": OptimizerSpec(list(self.policy.parameters()), lr=self.config.lr)}
        if self.discriminator is not None:
            specs["discriminator"] = discriminator_optimizer(self.discriminator, self.config)
        return specs

    def phase(self, step: int) -> str:
        c = self.config
        if self.discriminator is None:
            return "cold_start" if step < c.cold_start_steps else self.solo_phase
        return imitation_phase(
            step, cold_start_steps=c.cold_start_steps, warmup_steps=c.disc_warmup_steps
        )

    def policy_step(self, batch: Batch, update: Updater, first: Rollout | None) -> dict[str, float]:
        """One policy update (PD on :meth:`score`, reusing the roll-out ``first``; or PG on
        :meth:`sample_reward`), with the ``pd_expert`` term when asked for."""
        c, disc = self.config, self.discriminator
        expert: Callable[[], dict[str, Tensor]] | None = None
        if c.pd_expert and disc is not None:
            weight = self.expert_weight
            expert = lambda: expert_pd_terms(self.policy, disc, batch, c, weight)  # noqa: E731
        return policy_update(
            self.policy,
            self.reference,
            batch,
            c,
            update,
            score=self.score,
            reward=self.sample_reward,
            pd_rollout=first,
            extra_pd_terms=expert,
        )

    def train_step(self, batch: Batch, step: int, update: Updater) -> dict[str, float]:
        return adversarial_step(
            self.phase(step),
            batch,
            update,
            policy=self.policy,
            discriminator=self.discriminator,
            cfg=self.config,
            nfe=self.config.nfe,
            solver=self.config.solver,
            policy_step=lambda first: self.policy_step(batch, update, first),
            guard=self.guard,
        )
