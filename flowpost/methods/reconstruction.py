"""FT-FM and ResFT-FM: fine-tuning a flow by maximum likelihood of its reconstructions.

The flow-matching loss never looks at what the few-step sampler actually produces. FT-FM
closes that gap by turning the flow into an autoencoder (``METHODS.md`` section 3):

* **encode** each target sample ``x1`` to noise ``z = E(x1)`` by integrating the ODE backward
  from ``t = 1`` to ``t = 0`` with an accurate solver (``encode_solver``, ``encode_nfe``), no
  gradient, with the frozen pretrained field (``encoder: frozen``) or the current one;
* **decode** ``x_hat = D_K(z)`` with the sampler that will be deployed (``solver``, ``nfe``
  evaluations), gradients on, each step checkpointed so memory stays flat in the steps;
* maximise the Gaussian likelihood ``N(x1; x_hat, sigma^2 I)`` per dimension:

  ``L_rec = mean_dims (x_hat - x1)^2 / (2 sigma^2) + log sigma``

  with ``sigma`` fixed or learned (``learn_sigma``), plus ``fm_weight * L_FM`` on the same
  batch as a regulariser that keeps the field a flow. Conditional models (labels or float
  vectors such as robot observations) encode and decode each sample with its own condition.

**ResFT-FM** keeps the pretrained field ``v_pre`` frozen and learns only a residual

  ``v = v_pre + r,   r(x, t, c) = -(L L^T + mu I)(x - m(t, c))``

(:class:`flowpost.nets.contracting.ContractingResidual`) whose symmetric Jacobian part is
``<= -mu I`` everywhere by construction: adding it lowers the one-sided Lipschitz constant of
the field by ``mu``, so a perturbation of the state injected mid-trajectory is damped by at
least ``exp(-mu (1 - t))`` relative to the pretrained field before it reaches the end.

Example:
    >>> import torch
    >>> from flowpost.data.base import DataSpec
    >>> from flowpost.nets.config import NetConfig
    >>> spec, net = DataSpec((4,), cond_dim=3), NetConfig(hidden=16, depth=1)
    >>> method = ResidualReconstruction(ResidualReconstructionConfig(mu=0.5), spec, net)
    >>> method.generate(torch.randn(5, 4), torch.randn(5, 3), nfe=2).shape
    torch.Size([5, 4])
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowpost.config import ConfigError, option
from flowpost.data.base import Batch, DataSpec
from flowpost.flows.random import randn_like
from flowpost.flows.solvers import encode, nfe_per_step, sample, steps_for_nfe
from flowpost.methods.base import (
    Method,
    MethodConfig,
    OptimizerSpec,
    Updater,
    frozen_copy,
    load_matching,
    register_method,
)
from flowpost.methods.components.common import drop_labels, flow_matching_loss
from flowpost.nets.config import NetConfig
from flowpost.nets.contracting import ANCHOR_MODES, OFFSETS, ResidualField
from flowpost.nets.factory import build_contracting_residual

FIXED_SOLVERS = ["euler", "midpoint", "heun", "rk4"]


@dataclass
class ReconstructionConfig(MethodConfig):
    """FT-FM settings: the deployed sampler, the encoder, the likelihood and the regulariser."""

    nfe: int = option(2, "network evaluations of the deployed sampler (the decoder)", min=1)
    solver: str = option("euler", "solver of the deployed sampler", choices=FIXED_SOLVERS)
    encode_nfe: int = option(
        32, "network evaluations of the accurate reverse-ODE encoder (no gradient)", min=1
    )
    encode_solver: str = option("rk4", "solver of the encoder", choices=FIXED_SOLVERS)
    encoder: str = option(
        "frozen",
        "field that encodes data to noise: the frozen pretrained one or the current one",
        choices=["frozen", "current"],
    )
    sigma: float = option(
        0.1, "std of the Gaussian reconstruction likelihood (initial value if learned)", min=1e-6
    )
    learn_sigma: bool = option(False, "learn sigma (a scalar) jointly with the field")
    fm_weight: float = option(
        1.0, "weight of the flow-matching loss kept as a regulariser (0: none)", min=0.0
    )
    label_dropout: float = option(
        0.0,
        "probability of the null label in the flow-matching term (class labels only)",
        min=0.0,
        max=1.0,
    )
    checkpoint: bool = option(
        True, "recompute each decoder step in backward (memory flat in the number of steps)"
    )
    code_noise: float = option(
        0.0,
        "std of Gaussian noise added to each code before decoding (a stochastic encoder; "
        "penalises the decoder's sensitivity to its code; 0: the plain autoencoder)",
        min=0.0,
    )
    also_nfe: list[int] = option(
        default_factory=list,
        help="further decoder step counts (same solver) whose reconstruction NLL is averaged "
        "with the deployed nfe's, so that the fine-tuned sampler also holds there (e.g. [1] "
        "beside nfe 2); each adds its decoding cost to a training step",
    )
    self_weight: float = option(
        0.0,
        "weight of a second reconstruction NLL whose targets are the frozen pretrained "
        "field's own accurate samples (encode_solver, encode_nfe) from the codes the "
        "deployed sampler will see, for the batch's conditions (0: off; see self_code_scale)",
        min=0.0,
    )
    self_code_scale: float = option(
        0.0,
        "std of those codes, z = self_code_scale * N(0, I): 0 is the deterministic "
        "deployment's z = 0 (eval.noise_scale 0), 1 the sampled one",
        min=0.0,
    )
    lr: float | None = option(None, "learning rate (None: train.lr)", min=0.0)

    @property
    def decode_nfes(self) -> list[int]:
        """Every step count the reconstruction loss decodes with: ``nfe`` first."""
        return [self.nfe, *(k for k in dict.fromkeys(self.also_nfe) if k != self.nfe)]

    def __post_init__(self) -> None:
        counts = [
            ("nfe", self.nfe, self.solver),
            ("encode_nfe", self.encode_nfe, self.encode_solver),
        ]
        counts += [("also_nfe", k, self.solver) for k in self.also_nfe]
        for key, nfe, solver in counts:
            try:
                steps_for_nfe(nfe, solver)
            except ValueError:
                raise ConfigError(
                    f"{key}: {nfe} evaluations do not pay for one {solver} step "
                    f"({nfe_per_step(solver)}); raise it or use a cheaper solver"
                ) from None


@dataclass
class ResidualReconstructionConfig(ReconstructionConfig):
    """ResFT-FM settings: FT-FM's, plus the contracting residual's."""

    # No value wins on both robot tasks (3 seeds each, docs/methods/reconstruction.md): on
    # Reacher 0.1 beats 1 by 0.13 success, on Pusher 1 beats 0.1 by 0.07; the recipes set it
    mu: float = option(
        1.0, "guaranteed contraction rate of the residual: sym. Jacobian part <= -mu (> 0)"
    )
    residual_hidden: int = option(128, "width of the residual's (t, cond) -> (L, m) MLP", min=1)
    residual_rank: int | None = option(
        None, "rank of the residual's gain factor L (None: full for <= 32 features, else 8)", min=1
    )
    residual_skew: bool = option(
        False, "add a skew-symmetric S(t, c) to the residual's gain (a rotation; same bound)"
    )
    residual_potential: int = option(
        0,
        "width of a convex potential phi whose gradient the residual also subtracts "
        "(nonlinear in x; same bound; 0: none)",
        min=0,
    )
    residual_max_gain: float | None = option(
        None,
        "cap on the largest eigenvalue of the residual's symmetric gain L L^T + mu I (> mu; "
        "None: no cap); <= 1 / h keeps every Euler step of size >= h from overshooting the "
        "residual's centre (1: safe down to the 1-step sampler)",
    )
    residual_offset: str = option(
        "centre",
        "what the residual's offset head outputs: centre (r = -K (x - m)) or force (r = -K x "
        "+ f, f = K m: the same family and bound, but the head moves the velocity directly "
        "instead of through K, which starts near mu I)",
        choices=list(OFFSETS),
    )
    residual_anchor: str = option(
        "none",
        "how the pretrained field's one-step end point a(c) = v_pre(0, 0, c) enters the "
        "residual: none, centre (m = t a(c) + learned), input (a feature of the (t, c) MLP), "
        "both (x-independent: same bound)",
        choices=ANCHOR_MODES,
    )
    residual_anchor_net: str = option(
        "frozen",
        "where the anchor a(c) comes from: frozen (the pretrained field) or trained (a copy of "
        "it, fine-tuned with the residual; still x-independent)",
        choices=["frozen", "trained"],
    )
    residual_path_net: bool = option(
        False,
        "add the force copy(p, t, c) - v_pre(p, t, c) of a trained copy of the pretrained "
        "field on the anchored path p = t a(c): x-independent (same bound), zero at the start, "
        "with the pretrained network's features (needs residual_anchor; with "
        "residual_anchor_net: trained the copy is the anchor's, a(c) = copy(0, 0, c))",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.residual_anchor_net == "trained" and self.residual_anchor == "none":
            raise ConfigError(
                "residual_anchor_net: 'trained' needs residual_anchor centre, input or both"
            )
        if self.residual_path_net and self.residual_anchor == "none":
            raise ConfigError(
                "residual_path_net: true needs residual_anchor centre, input or both (the "
                "path t a(c) it is read on is the anchor's)"
            )
        if self.residual_offset == "force" and self.residual_potential:
            raise ConfigError(
                "residual_offset: 'force' has no explicit centre for residual_potential to keep "
                "as its fixed point; use 'centre' with a potential"
            )
        if not self.mu > 0:
            raise ConfigError(
                f"mu: must be > 0 (the residual's guaranteed contraction rate), got {self.mu}"
            )
        # The guarantee is the ODE's. An Euler step h of the residual alone maps x - m to
        # (I - h K)(x - m) with K >= mu I: at h * mu >= 1 every direction lands on m or
        # past it, so the deployed sampler no longer contracts, it flips (on Reacher at 2
        # steps mu = 2 took success from 0.90 to 0.01; reconstruction.md, ResFT-FM's mu).
        if self.residual_max_gain is not None and not self.residual_max_gain > self.mu:
            raise ConfigError(
                f"residual_max_gain: must be > mu ({self.mu}), since the gain L L^T + mu I is "
                f"at least mu; got {self.residual_max_gain}"
            )
        steps = min(self.decode_nfes)  # euler: one evaluation per step; the largest step
        if self.solver == "euler" and self.mu / steps >= 1:
            raise ConfigError(
                f"mu: {self.mu} with {steps} Euler steps of {1 / steps:g}: step * mu = "
                f"{self.mu / steps:g} >= 1, so one step of the residual moves every state onto "
                f"its centre m or past it and the deployed sampler does not contract; use "
                f"mu < {steps:g} (or more steps)"
            )


def gaussian_nll(x_hat: Tensor, x1: Tensor, log_sigma: Tensor) -> Tensor:
    """Per-sample Gaussian negative log-likelihood per dimension, without ``log(2 pi) / 2``:
    ``mean_dims (x_hat - x1)^2 / (2 sigma^2) + log sigma`` (B,)."""
    sq = (x_hat - x1).pow(2).flatten(1).mean(1)
    return sq * torch.exp(-2.0 * log_sigma) / 2.0 + log_sigma


def reconstruct(
    decoder: nn.Module,
    encoder: nn.Module,
    x1: Tensor,
    cond: Tensor | None,
    *,
    nfe: int,
    solver: str,
    encode_nfe: int,
    encode_solver: str,
    checkpoint: bool = True,
    code_noise: float = 0.0,
) -> Tensor:
    """``D(E(x1) + code_noise * eps)``: encode with ``encoder`` (no gradient), decode with
    ``decoder`` (gradient)."""
    z = codes(
        encoder, x1, cond, encode_nfe=encode_nfe, encode_solver=encode_solver, code_noise=code_noise
    )
    return decode(decoder, z, cond, nfe=nfe, solver=solver, checkpoint=checkpoint)


def codes(
    encoder: nn.Module,
    x1: Tensor,
    cond: Tensor | None,
    *,
    encode_nfe: int,
    encode_solver: str,
    code_noise: float = 0.0,
) -> Tensor:
    """``E(x1) + code_noise * eps``: the reverse ODE of ``encoder`` from data to noise (and the
    stochastic encoder's noise), without gradient."""
    with torch.no_grad():
        z = encode(encoder, x1, encode_nfe, encode_solver, cond=cond)
        if code_noise > 0:
            z = z + code_noise * randn_like(z)
    return z.detach()


def decode(
    decoder: nn.Module,
    z: Tensor,
    cond: Tensor | None,
    *,
    nfe: int,
    solver: str,
    checkpoint: bool = True,
) -> Tensor:
    """``D(z)``: the deployed sampler of ``decoder`` from the codes, with gradient."""
    out = sample(decoder, z, nfe, solver, cond=cond, grad=True, checkpoint=checkpoint)
    assert isinstance(out, Tensor)
    return out


@register_method("ft_fm")
class Reconstruction(Method):
    """FT-FM: the policy is fine-tuned so that its deployed sampler reconstructs the data.

    Roles: ``policy`` (trained, EMA-evaluated) and ``reference`` (the frozen pretrained
    field, used as the encoder when ``encoder: frozen``). ``log_sigma`` is the likelihood's
    scale (a buffer, or a parameter trained with the policy when ``learn_sigma``).
    """

    config_class = ReconstructionConfig
    config: ReconstructionConfig
    toy_settings = {"encode_nfe": 8, "nfe": 2}

    def __init__(
        self,
        config: ReconstructionConfig,
        spec: DataSpec,
        net: NetConfig,
        *,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__(config, spec, net, model=model)
        self.policy = self.build_policy()
        self.reference = frozen_copy(self.base_field())
        log_sigma = torch.tensor(math.log(config.sigma))
        if config.learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    # -- roles --------------------------------------------------------------------------
    def build_policy(self) -> nn.Module:
        return self.velocity_net()

    def base_field(self) -> nn.Module:
        """The module pretrained weights load into (the whole policy for FT-FM)."""
        return self.policy

    def trained_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def optimizers(self) -> dict[str, OptimizerSpec]:
        params = self.trained_parameters()
        if self.config.learn_sigma:
            assert isinstance(self.log_sigma, nn.Parameter)
            params = [*params, self.log_sigma]
        return {"policy": OptimizerSpec(params, lr=self.config.lr)}

    def load_pretrained(self, state: Mapping[str, Tensor]) -> None:
        load_matching(self.base_field(), state, type(self).__name__)
        load_matching(self.reference, state, type(self).__name__)

    def encoder(self, roles: Mapping[str, nn.Module] | None = None) -> nn.Module:
        return self.reference if self.config.encoder == "frozen" else self.role("policy", roles)

    # -- training -----------------------------------------------------------------------
    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """The loss terms of one batch: ``rec`` (Gaussian NLL, averaged over the decoder
        step counts ``nfe`` and ``also_nfe``, all from the same codes) and ``fm`` (weighted)."""
        c = self.config
        z = codes(
            self.encoder(),
            batch.x,
            batch.cond,
            encode_nfe=c.encode_nfe,
            encode_solver=c.encode_solver,
            code_noise=c.code_noise,
        )
        terms = {"rec": self.decoded_nll(z, batch.cond, batch.x)}
        if c.self_weight > 0:
            terms["self_rec"] = c.self_weight * self.self_reconstruction_nll(batch)
        if c.fm_weight > 0:
            # independent coupling, uniform times, the linear path (flow_matching_loss's own)
            cond = drop_labels(batch.cond, c.label_dropout, self.spec.num_classes)
            terms["fm"] = c.fm_weight * flow_matching_loss(self.policy, batch.x, cond)
        return terms

    def self_reconstruction_nll(self, batch: Batch) -> Tensor:
        """The NLL of the deployed sampler against the frozen pretrained field's accurate
        map, on codes ``z = self_code_scale * eps`` with the batch's conditions (averaged over
        the decoder step counts, as ``rec``).

        These targets are samples of the pretrained model; the accurate encoder maps each
        back to its ``z`` (up to the solver's error), so this is the reconstruction loss on
        the model's own samples, with the encode skipped. Where ``rec`` asks the few-step
        sampler to reproduce the data at the codes the data have, this asks it to keep the
        accurate sampler's output at the codes it is deployed on (``z = 0`` for a
        deterministic policy), which ``rec`` reaches only by interpolation.
        """
        c = self.config
        x1 = batch.x
        z = torch.zeros_like(x1) if c.self_code_scale == 0 else c.self_code_scale * randn_like(x1)
        target = sample(self.reference, z, c.encode_nfe, c.encode_solver, cond=batch.cond)
        return self.decoded_nll(z, batch.cond, target.detach())

    def decoded_nll(self, z: Tensor, cond: Tensor | None, target: Tensor) -> Tensor:
        """The Gaussian NLL of the policy's decoding of ``z`` against ``target``, averaged over
        the batch and the decoder step counts ``nfe`` and ``also_nfe``."""
        c = self.config
        nll = [
            gaussian_nll(
                decode(self.policy, z, cond, nfe=k, solver=c.solver, checkpoint=c.checkpoint),
                target,
                self.log_sigma,
            ).mean()
            for k in c.decode_nfes
        ]
        return torch.stack(nll).mean()

    def train_step(self, batch: Batch, step: int, update: Updater) -> dict[str, float]:
        logs = update.step("policy", **self.losses(batch))
        logs["sigma"] = float(self.log_sigma.detach().exp())
        return logs


@register_method("resft_fm")
class ResidualReconstruction(Reconstruction):
    """ResFT-FM: ``policy = ResidualField(frozen pretrained, contracting residual)``; only the
    residual (and sigma, if learned) trains, with FT-FM's loss on the summed field."""

    config_class = ResidualReconstructionConfig
    config: ResidualReconstructionConfig

    def build_policy(self) -> nn.Module:
        c = self.config
        base = self.velocity_net()
        anchor_net = None
        if c.residual_anchor_net == "trained":
            anchor_net = copy.deepcopy(base)  # before ResidualField freezes the base
        path_net = None
        if c.residual_path_net:
            # with a trained anchor the two are one copy: the path is then read at t a(c)
            # with a(c) the copy's own end point, which the deterministic sampler follows
            path_net = anchor_net if anchor_net is not None else copy.deepcopy(base)
        residual = build_contracting_residual(
            self.spec,
            mu=c.mu,
            hidden=c.residual_hidden,
            rank=c.residual_rank,
            skew=c.residual_skew,
            potential=c.residual_potential,
            anchor=c.residual_anchor,
            anchor_net=anchor_net,
            max_gain=c.residual_max_gain,
            offset=c.residual_offset,
            path_net=path_net,
        )
        return ResidualField(base, residual)

    def anchor_net(self) -> nn.Module | None:
        """The trained anchor's network (a copy of the pretrained field), if there is one."""
        assert isinstance(self.policy, ResidualField)
        return getattr(self.policy.residual, "anchor_net", None)

    def path_net(self) -> nn.Module | None:
        """The path force's network (a copy of the pretrained field), if there is one."""
        assert isinstance(self.policy, ResidualField)
        return getattr(self.policy.residual, "path_net", None)

    def load_pretrained(self, state: Mapping[str, Tensor]) -> None:
        super().load_pretrained(state)
        for own in (self.anchor_net(), self.path_net()):
            if own is not None:  # the trained copies start as the pretrained field
                load_matching(own, state, type(self).__name__)

    def base_field(self) -> nn.Module:
        assert isinstance(self.policy, ResidualField) and isinstance(self.policy.base, nn.Module)
        return self.policy.base


__all__ = [
    "ReconstructionConfig",
    "ResidualReconstructionConfig",
    "Reconstruction",
    "ResidualReconstruction",
    "gaussian_nll",
    "reconstruct",
]
