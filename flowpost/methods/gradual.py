"""Gradual Fine-Tuning (GFT) of a stochastic flow under a distribution shift.

The trained drift ``b_theta`` of ``dX = b dt + g(t) dW`` regresses, at temperature ``tau``,
onto a mixture of the data's drift and the frozen pretrained drift (the *anchor*):

``L_tau(theta) = E || b_theta(x_t, t) - [(1 - tau) b_data(x_t, t) + tau b_pre(x_t, t)] ||^2``

along the stochastic bridge of :class:`~flowpost.flows.stochastic.StochasticFlow`, with
``(x0, x1)`` from a coupling (independent or minibatch OT). ``b_data`` is either the
conditional drift ``b(x_t | x0, x1)`` (``objective: conditional``) or its minibatch posterior
mean, the marginal drift (``objective: marginal``); both objectives have the same gradient
in expectation when the marginal is exact, hence the same minimiser
``b*_tau = (1 - tau) b_marg + tau b_pre``, which moves on a straight segment from the
pretrained drift (``tau = 1``) to the target's drift (``tau = 0``). The temperature follows a
schedule (linear, cosine, exponential, adaptive) that reaches 0 after ``temperature_steps``
iterations; the rest of the run trains at the target. Derivation: ``docs/methods/gradual.md``.

With ``sigma = 0``, ``tau = 0`` and the independent coupling the loss is flow matching's,
draw for draw. Sampling is Euler-Maruyama with the schedule's ``g(t)`` (the Euler ODE solve,
bit for bit, when ``sigma = 0``).

Example:
    >>> import torch
    >>> from flowpost.data.base import DataSpec
    >>> from flowpost.nets.config import NetConfig
    >>> cfg = GradualConfig(sigma=0.1, temperature_steps=10)
    >>> method = Gradual(cfg, DataSpec((2,)), NetConfig(hidden=16, depth=1))
    >>> method.temperature.value(0), method.temperature.value(5), method.temperature.value(10)
    (1.0, 0.5, 0.0)
    >>> method.generate(torch.randn(5, 2), nfe=4).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flowpost.config import ConfigError, option
from flowpost.data.base import Batch, DataSpec
from flowpost.flows import random as frandom
from flowpost.flows.couplings import make_coupling
from flowpost.flows.solvers import VelocityField, guided
from flowpost.flows.stochastic import SIGMA_SCHEDULES, StochasticFlow, marginal_drift
from flowpost.flows.timesteps import make_time_sampler
from flowpost.methods.base import (
    Method,
    MethodConfig,
    OptimizerSpec,
    Updater,
    frozen_copy,
    register_method,
)
from flowpost.methods.components.common import drop_labels
from flowpost.methods.temperature import SCHEDULES, TemperatureSchedule
from flowpost.nets.config import NetConfig

__all__ = ["GradualConfig", "Gradual", "gft_loss"]


@dataclass
class GradualConfig(MethodConfig):
    """GFT settings: noise, temperature schedule, objective, coupling."""

    sigma: float = option(
        0.1, "noise level of the stochastic flow (bridge std and g(t)); 0: deterministic", min=0.0
    )
    sigma_schedule: str = option(
        "vanishing", "diffusion g(t): constant sigma, or vanishing at t=0 and t=1",
        choices=list(SIGMA_SCHEDULES),
    )  # fmt: skip
    objective: str = option(
        "conditional", "regress on the conditional drift or its minibatch marginal",
        choices=["conditional", "marginal"],
    )  # fmt: skip
    coupling: str = option(
        "ot", "pairing of noise and data", choices=["independent", "ot", "sinkhorn"]
    )
    sinkhorn_reg: float = option(0.05, "entropic regularisation of the Sinkhorn coupling", min=0)
    coupling_within_class: bool = option(
        True,
        "with class labels, pair noise and data within each label (the noise stays independent "
        "of the label, as sampling assumes); false: across the whole batch",
    )
    temperature_schedule: str = option(
        "linear", "how the temperature goes to 0", choices=list(SCHEDULES)
    )
    temperature_start: float = option(
        1.0, "initial temperature (1: start at the pretrained drift)", min=0.0, max=1.0
    )
    temperature_steps: int = option(
        800, "training iterations over which the temperature reaches 0 (<= train.steps)", min=1
    )
    temperature_rate: float = option(4.0, "decay rate of the exponential schedule", min=1e-6)
    temperature_levels: int = option(10, "temperature levels of the adaptive schedule", min=1)
    temperature_patience: int = option(
        25, "adaptive: iterations without improvement before lowering the temperature", min=1
    )
    temperature_tolerance: float = option(
        0.02, "adaptive: relative loss improvement that counts as progress", min=0.0
    )
    label_dropout: float = option(
        0.1, "probability of replacing a label by the null label", min=0.0, max=1.0
    )
    guidance: float = option(1.0, "classifier-free guidance scale at sampling (1: none)", min=0)
    sample_seed: int = option(0, "seed of the Brownian increments when sampling")
    lr: float | None = option(None, "learning rate (None: train.lr)", min=0.0)

    def check_run(self, run: Any) -> None:
        """Cross-section check: the temperature must reach 0 within the run."""
        steps = run.train.steps
        if self.temperature_steps > steps:
            raise ConfigError(
                f"method.temperature_steps ({self.temperature_steps}) exceeds train.steps "
                f"({steps}): the temperature would not reach 0, so the run would never train on "
                "the target; "
                "lower method.temperature_steps or raise train.steps"
            )
        if self.objective == "marginal" and self.coupling != "independent" and self.sigma == 0:
            raise ConfigError(
                "method.objective: 'marginal' with a coupling needs method.sigma > 0 (at "
                "sigma = 0 each point lies on its own pair's line only); use 'conditional'"
            )


def gft_loss(
    pred: Tensor, data_drift: Tensor, anchor: Tensor | None, temperature: float
) -> tuple[Tensor, Tensor]:
    """``(loss, fit)``: the GFT regression onto ``(1 - tau) data + tau anchor`` and the plain
    data term ``||pred - data||^2`` (per-sample means over dims, then over the batch).

    >>> p, d, a = torch.zeros(2, 1), torch.ones(2, 1), torch.full((2, 1), 3.0)
    >>> [round(float(v), 3) for v in gft_loss(p, d, a, 0.5)]
    [4.0, 1.0]
    """
    # the anchor is the frozen reference's output: bf16 under autocast, while the data drift
    # is float32; lerp needs one dtype, and the target is kept in the data's precision
    target = data_drift if anchor is None or temperature == 0.0 else (
        torch.lerp(data_drift, anchor.to(data_drift.dtype), temperature)
    )  # fmt: skip
    loss = (pred - target).pow(2).mean()
    fit = loss.detach() if target is data_drift else (pred - data_drift).pow(2).mean().detach()
    return loss, fit


@register_method("gft")
class Gradual(Method):
    """GFT: roles ``policy`` (the trained drift) and ``reference`` (the frozen anchor)."""

    config_class = GradualConfig
    config: GradualConfig
    toy_settings = {"temperature_steps": 1}

    def __init__(
        self,
        config: GradualConfig,
        spec: DataSpec,
        net: NetConfig,
        *,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__(config, spec, net, model=model)
        self.policy = self.velocity_net()
        self.reference = frozen_copy(self.policy)
        kwargs = {"reg": config.sinkhorn_reg} if config.coupling == "sinkhorn" else {}
        self.coupling = make_coupling(config.coupling, **kwargs)
        self.flow = StochasticFlow(config.sigma, config.sigma_schedule)
        self.time_sampler = make_time_sampler("uniform")
        self.temperature = TemperatureSchedule(
            config.temperature_schedule,
            start=config.temperature_start,
            steps=config.temperature_steps,
            rate=config.temperature_rate,
            levels=config.temperature_levels,
            patience=config.temperature_patience,
            tolerance=config.temperature_tolerance,
        )

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"policy": OptimizerSpec(list(self.policy.parameters()), lr=self.config.lr)}

    def pair(
        self, x0: Tensor, x1: Tensor, cond: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The coupling of ``(x0, x1)``; with class labels (and ``coupling_within_class``) within
        each label, so that the noise paired with a label is still N(0, I): sampling draws the
        noise independently of the label, and a batch-wide OT plan would not."""
        if cond is None or self.config.coupling_within_class:
            return self.coupling(x0, x1, cond)  # OT pairs within each integer label
        return self.coupling(x0, x1, None)[0], x1, cond

    def train_step(self, batch: Batch, step: int, update: Updater) -> dict[str, float]:
        tau = self.temperature.value(step)
        cond = drop_labels(batch.cond, self.config.label_dropout, self.spec.num_classes)
        x1 = batch.x
        x0 = frandom.randn_like(x1)
        x0, x1, cond = self.pair(x0, x1, cond)
        t = self.time_sampler.sample(x1.shape[0], device=x1.device)
        point = self.flow.sample_path(x0, x1, t)
        if self.config.objective == "marginal":
            with torch.no_grad():
                data = marginal_drift(
                    self.flow, point.x_t, t, x0, x1,
                    independent=self.config.coupling == "independent",
                )  # fmt: skip
        else:
            data = point.velocity
        anchor = None
        if tau > 0:
            with torch.no_grad():
                anchor = self.reference(point.x_t, t, cond)
        pred = self.policy(point.x_t, t, cond)
        loss, fit = gft_loss(pred, data, anchor, tau)
        logs = update.step("policy", gft=loss)
        self.temperature.observe(step, float(loss.detach()))
        logs.update({"temperature": tau, "fit": float(fit)})
        return logs

    def phase(self, step: int) -> str:
        return "target" if self.temperature.value(step) == 0.0 else "anneal"

    def generate(
        self,
        noise: Tensor,
        cond: Tensor | None = None,
        *,
        nfe: int,
        solver: str = "euler",
        roles: Mapping[str, nn.Module] | None = None,
    ) -> Tensor:
        """Euler-Maruyama with ``g(t)`` (the Euler ODE when ``sigma = 0``); ``solver`` must be
        ``euler`` (an SDE has no higher-order solver here)."""
        if solver != "euler":
            raise ValueError(
                f"GFT samples its SDE with Euler-Maruyama; solver {solver!r} is not available "
                "(set eval.solver: euler)"
            )
        model = self.role("policy", roles)
        field: VelocityField = model
        if cond is not None and self.config.guidance != 1.0 and self.spec.num_classes is not None:
            field = guided(model, self.config.guidance, self.spec.num_classes)
        gen = torch.Generator(device=noise.device).manual_seed(self.config.sample_seed)
        out = self.flow.sample(field, noise, nfe, cond=cond, generator=gen)
        assert isinstance(out, Tensor)
        return out

    def extra_state(self) -> dict[str, Any]:
        return {"temperature": self.temperature.state_dict()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if "temperature" in state:
            self.temperature.load_state_dict(state["temperature"])
