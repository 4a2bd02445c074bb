"""FAIL: Flow Matching Adversarial Imitation Learning (METHODS.md section 1).

A pretrained flow ``v_theta`` (the *policy*) is post-trained toward a set of expert samples
without any reward: a discriminator ``D_phi(x, cond) -> logit`` learns to tell expert samples
(label 1) from samples of the policy's *deployed* sampler (label 0), and the policy is
trained to fool it. Because the policy is scored on what its few-step sampler actually
produces, FAIL corrects the sampler's own discretisation error, which the flow-matching
(SFT) loss never sees.

Schedule (see :meth:`FAILMethod.phase`):

1. ``cold_start``: ``cold_start_steps`` steps of the flow-matching loss on the expert data;
2. ``disc_warmup``: ``disc_warmup_steps`` discriminator-only steps;
3. ``adversarial``: each step, ``disc_steps`` discriminator updates then one policy update.

Policy objectives (``variant``):

* ``pd`` (pathwise derivative), minimising ``softplus(-D(x_hat)) = -log sigmoid(D(x_hat))``:

  - ``pd_estimator="pathwise"``: ``x_hat`` is the ODE solution from noise with gradients
    through every solver step (checkpointed per step, so memory is flat in the step count);
  - ``pd_estimator="local"``: roll out ``x1`` without gradients keeping its noise ``x0``, pick
    ``pd_timesteps`` grid times ``t`` per sample, re-noise ``x_t = (1-t) x0 + t x1``, take one
    differentiable Euler step of size ``dt`` and form the clean estimate
    ``x_hat = (x_{t+dt} - (1-t') x0) / t'`` with ``t' = max(t + dt, pd_t_min)``
    (:func:`~flowpost.methods.components.pathwise.local_clean_estimate`). If ``v`` is the
    straight-line velocity ``x1 - x0``, ``x_hat = x1`` exactly.

* ``pg`` (policy gradient, black box): reward ``r(x) = softplus(D(x))``, group-normalised
  advantages and a PPO-clipped loss on a likelihood ratio from either the flow-matching
  surrogate (``pg_estimator="fpo"``) or the Gaussian transition log-densities of an
  Euler-Maruyama rollout (``pg_estimator="sde"``, Flow-GRPO style).

Both may add ``ref_weight * ||v_theta - v_ref||^2`` against the frozen starting model (the
``reference`` role).

Groups for PG: with class labels, ``batch_size // pg_group_size`` labels of the expert batch
are each rolled out ``pg_group_size`` times, so advantages compare rollouts of the same condition.
Without labels every rollout has "the same condition", and groups are simply consecutive
chunks of ``pg_group_size`` independent rollouts of the batch (group normalisation is then a
per-chunk standardisation of the reward).

Your own discriminator: any ``nn.Module`` whose ``forward(x, cond)`` returns one logit per
sample ``(B,)`` works. Pass it as ``FAILMethod(config, spec, net, discriminator=my_module)``
(and your own policy network as ``model=``),
or name a factory in the config, ``discriminator_factory: "my_pkg.my_mod:make_disc"``, a
function called as ``make_disc(spec)`` that returns the module (this path works from YAML).

The building blocks live in :mod:`flowpost.methods.components` (the policy update in
``policy``, the discriminator side in ``imitation``), which reward fine-tuning composes too.

Example:
    >>> import torch
    >>> from flowpost.data.base import DataSpec
    >>> from flowpost.nets.config import NetConfig, DiscriminatorConfig
    >>> cfg = FAILConfig(discriminator=DiscriminatorConfig(hidden=16, depth=1))
    >>> m = FAILMethod(cfg, DataSpec((2,)), NetConfig(hidden=16, depth=1))
    >>> sorted(m.optimizers()), m.phase(0), m.phase(25)
    (['discriminator', 'policy'], 'disc_warmup', 'adversarial')
    >>> m.generate(torch.randn(3, 2), nfe=2).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowpost.methods.base import register_method
from flowpost.methods.components.adversarial import adversarial_policy_loss, fail_reward
from flowpost.methods.components.sampler_method import SamplerPolicyConfig, SamplerPolicyMethod

__all__ = ["FAILConfig", "FAILMethod", "POLICY_RENAMES", "IMITATION_RENAMES"]

POLICY_RENAMES = {
    "policy_lr": "lr",
    "beta": "ref_weight",
    "mc_timesteps": "pd_timesteps",
    "local_t_min": "pd_t_min",
    "checkpoint": "pd_checkpoint",
    "group_size": "pg_group_size",
    "clip_eps": "pg_clip",
    "ppo_epochs": "pg_epochs",
    "mc_draws": "pg_draws",
    "adv_clip": "pg_adv_clip",
    "sde_noise": "pg_sde_noise",
}
"""Keys of the policy settings renamed in the shared vocabulary (old -> new)."""
IMITATION_RENAMES = {"r1_weight": "gp_weight", "expert_in_policy_loss": "pd_expert"}
"""Keys of the discriminator settings renamed in the shared vocabulary (old -> new)."""


@dataclass
class FAILConfig(SamplerPolicyConfig):
    """FAIL's settings (the ``method`` section of a recipe): the deployed sampler and its
    estimator (``PolicyConfig``) and the discriminator (``ImitationConfig``)."""

    renamed_keys = {**POLICY_RENAMES, **IMITATION_RENAMES}


@register_method("fail")
class FAILMethod(SamplerPolicyMethod):
    """FAIL post-training: roles ``policy`` (trained flow, or your ``model=``), ``reference``
    (frozen start) and ``discriminator`` (or your ``discriminator=``)."""

    config_class = FAILConfig
    config: FAILConfig
    toy_settings = {
        "nfe": 2,
        "disc_warmup_steps": 1,
        "disc_lr": 1e-3,
        "gp_weight": 1.0,
        "discriminator": {"hidden": 16, "depth": 1},
    }

    def score(self, x: Tensor, cond: Tensor | None) -> dict[str, Tensor]:
        """Per-sample PD loss: ``softplus(-D(x))`` (the policy wants the expert label)."""
        assert self.discriminator is not None
        return {"adv": adversarial_policy_loss(self.discriminator(x, cond))}

    def sample_reward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """Black-box PG reward ``softplus(D(x))``, no grad."""
        assert self.discriminator is not None
        with torch.no_grad():
            return fail_reward(self.discriminator(x, cond))
