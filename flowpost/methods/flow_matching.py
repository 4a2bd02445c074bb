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

from dataclasses import dataclass

from torch import Tensor, nn

from flowpost.config import option
from flowpost.data.base import Batch, DataSpec
from flowpost.flows.couplings import make_coupling
from flowpost.flows.paths import LinearPath, ProbabilityPath, StochasticBridge
from flowpost.flows.timesteps import TimeSampler, make_time_sampler
from flowpost.methods.base import Method, MethodConfig, OptimizerSpec, Updater, register_method
from flowpost.methods.components.common import drop_labels, flow_matching_loss
from flowpost.nets.config import NetConfig

__all__ = ["FlowMatchingConfig", "FlowMatching", "flow_matching_loss", "drop_labels"]


@dataclass
class FlowMatchingConfig(MethodConfig):
    """Flow matching / SFT settings."""

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


@register_method("flow_matching")
class FlowMatching(Method):
    """Flow-matching pretraining and SFT; the role ``policy`` is the velocity network (the
    user's ``model`` if given)."""

    config_class = FlowMatchingConfig
    config: FlowMatchingConfig
    toy_settings = {}

    def __init__(
        self,
        config: FlowMatchingConfig,
        spec: DataSpec,
        net: NetConfig,
        *,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__(config, spec, net, model=model)
        self.policy = self.velocity_net()
        kwargs = {"reg": config.sinkhorn_reg} if config.coupling == "sinkhorn" else {}
        self.coupling = make_coupling(config.coupling, **kwargs)
        self.time_sampler = _time_sampler(config)
        self.path: ProbabilityPath = (
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

    def guidance(self, cond: Tensor | None) -> float:
        return self.config.guidance if cond is not None else 1.0


def _time_sampler(config: FlowMatchingConfig) -> TimeSampler:
    if config.time_sampler == "logit_normal":
        return make_time_sampler(
            "logit_normal", mean=config.logit_normal_mean, std=config.logit_normal_std
        )
    if config.time_sampler == "shifted":
        return make_time_sampler("shifted", shift=config.time_shift)
    return make_time_sampler("uniform")
