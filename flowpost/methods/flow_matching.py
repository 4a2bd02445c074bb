"""Flow matching: pretraining, and supervised fine-tuning (SFT) from a pretrained flow.

``L_FM = E_{t, (x0, x1) ~ pi} || v(x_t, t, c) - (x1 - x0) ||^2`` on the linear path (or the
stochastic bridge when ``bridge_sigma > 0``), with a coupling ``pi`` (independent or
minibatch OT) and a time sampler. SFT is the same loss on the target data, starting from a
pretrained run (``init_from``); it is the baseline every other method is compared with.
Class labels are dropped with probability ``label_dropout`` (replaced by the null label) so
that classifier-free guidance with scale ``guidance`` is available at sampling.

Example:
    >>> import torch
    >>> from flowpost.data.base import DataSpec
    >>> from flowpost.nets.config import NetConfig
    >>> method = FlowMatching(FlowMatchingConfig(), DataSpec((2,)), NetConfig(hidden=16, depth=1))
    >>> method.generate(torch.randn(5, 2), nfe=4).shape
    torch.Size([5, 2])
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowpost.config import option
from flowpost.data.base import Batch, DataSpec
from flowpost.flows.couplings import Coupling, make_coupling
from flowpost.flows.paths import LinearPath, StochasticBridge
from flowpost.flows.solvers import sample
from flowpost.flows.timesteps import TimeSampler, make_time_sampler
from flowpost.methods.base import Method, MethodConfig, OptimizerSpec, Updater, register_method
from flowpost.nets.config import NetConfig
from flowpost.nets.factory import build_velocity_net


@dataclass
class FlowMatchingConfig(MethodConfig):
    """Flow matching / SFT settings."""

    name: str = option("flow_matching", "method name")
    coupling: str = option(
        "independent", "pairing of noise and data", choices=["independent", "ot", "sinkhorn"]
    )
    sinkhorn_reg: float = option(0.05, "entropic regularisation of the Sinkhorn coupling", min=0)
    time_sampler: str = option(
        "uniform", "training time distribution", choices=["uniform", "logit_normal", "shifted"]
    )
    logit_normal_mean: float = option(0.0, "mean of the logit-normal time sampler")
    logit_normal_std: float = option(1.0, "std of the logit-normal time sampler", min=1e-6)
    time_shift: float = option(
        3.0, "shift of the shifted time sampler (>1: more noise-side)", min=1e-6
    )
    bridge_sigma: float = option(
        0.0, "noise of the stochastic bridge path (0: linear path)", min=0.0
    )
    label_dropout: float = option(
        0.1, "probability of replacing a label by the null label", min=0.0, max=1.0
    )
    guidance: float = option(1.0, "classifier-free guidance scale at sampling (1: none)", min=0)
    lr: float | None = option(None, "learning rate (None: train.lr)", min=0.0)


def drop_labels(cond: Tensor | None, p: float, num_classes: int | None) -> Tensor | None:
    """Replace each label by the null label ``num_classes`` with probability ``p``."""
    if cond is None or p <= 0 or num_classes is None:
        return cond
    drop = torch.rand(cond.shape, device=cond.device) < p
    return torch.where(drop, torch.full_like(cond, num_classes), cond)


def flow_matching_loss(
    model: nn.Module,
    x1: Tensor,
    cond: Tensor | None,
    *,
    coupling: Coupling,
    time_sampler: TimeSampler,
    path: LinearPath | StochasticBridge,
) -> Tensor:
    """Mean over the batch of the per-sample ``||v(x_t, t) - u_t||^2 / n``."""
    x0 = torch.randn_like(x1)
    x0, x1, cond = coupling(x0, x1, cond)
    t = time_sampler.sample(x1.shape[0], device=x1.device)
    point = path.sample(x0, x1, t)
    pred = model(point.x_t, point.t, cond)
    return (pred - point.velocity).pow(2).mean()


@register_method("flow_matching")
class FlowMatching(Method):
    """Flow-matching pretraining and SFT; the role ``policy`` is the velocity network."""

    config_class = FlowMatchingConfig
    config: FlowMatchingConfig

    def __init__(self, config: FlowMatchingConfig, spec: DataSpec, net: NetConfig) -> None:
        super().__init__(config, spec, net)
        self.policy = build_velocity_net(net, spec)
        kwargs = {"reg": config.sinkhorn_reg} if config.coupling == "sinkhorn" else {}
        self.coupling = make_coupling(config.coupling, **kwargs)
        self.time_sampler = _time_sampler(config)
        self.path: LinearPath | StochasticBridge = (
            StochasticBridge(config.bridge_sigma) if config.bridge_sigma > 0 else LinearPath()
        )

    def optimizers(self) -> dict[str, OptimizerSpec]:
        return {"policy": OptimizerSpec(list(self.policy.parameters()), lr=self.config.lr)}

    def train_step(self, batch: Batch, step: int, update: Updater) -> dict[str, float]:
        cond = drop_labels(batch.cond, self.config.label_dropout, self.spec.num_classes)
        loss = flow_matching_loss(
            self.policy,
            batch.x,
            cond,
            coupling=self.coupling,
            time_sampler=self.time_sampler,
            path=self.path,
        )
        return update.step("policy", fm=loss)

    def generate(
        self,
        noise: Tensor,
        cond: Tensor | None = None,
        *,
        nfe: int,
        solver: str = "euler",
        roles: Mapping[str, nn.Module] | None = None,
    ) -> Tensor:
        guidance = self.config.guidance if cond is not None else 1.0
        out = sample(
            self.role("policy", roles),
            noise,
            nfe,
            solver,
            cond=cond,
            guidance=guidance,
            num_classes=self.spec.num_classes,
        )
        assert isinstance(out, Tensor)
        return out


def _time_sampler(config: FlowMatchingConfig) -> TimeSampler:
    if config.time_sampler == "logit_normal":
        return make_time_sampler(
            "logit_normal", mean=config.logit_normal_mean, std=config.logit_normal_std
        )
    if config.time_sampler == "shifted":
        return make_time_sampler("shifted", shift=config.time_shift)
    return make_time_sampler("uniform")
