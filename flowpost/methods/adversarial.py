"""Adversarial Flow Models (AF): a generator ``G(x_a, a, b)`` that jumps from time ``a`` to
time ``b > a`` in one network evaluation, trained adversarially with an optimal-transport term.

Conventions (METHODS.md section 2, in this library's time: ``t = 0`` noise, ``t = 1`` data;
the authors' code runs the other way, ``t_theirs = 1 - t``):

* Source ``x_a = (1 - a) z + a x`` (``x_0 = z`` is noise); real target sample at ``b``:
  ``x_b = (1 - b) z' + b x`` with fresh noise ``z'`` (``real_noise: fresh``, the paper) or the
  generator's own ``z`` (``shared``, the authors' 1-D notebook); ``x`` is the row's own data
  point (``real_data: same``, the paper) or another row's of the same label (``shuffled``).
* ``G = g(x_a, a, b)`` (direct: one step, or hops to the data) or
  ``G = x_a + (b - a) g(x_a, a, b)`` (residual).
* The discriminator ``D(x_b, t, cond)`` never sees ``x_a``; its time input ``t`` is ``b``
  (the paper), or the hop's start ``a`` for hops that all end at ``b = 1`` (``hops: to_data``,
  ``disc_time: auto``), where ``b`` could not tell the hops apart. With ``f(u) = softplus(-u)``,
  ``w = max(|b - a|, 0.001)`` and ``n`` the number of dimensions of a sample::

      L_D = f(D(real) - D(fake))
            + gp_weight * mean_i w_i [(D(real_i) - D(real_i + eps n_i))^2
                                     + (D(fake_i) - D(fake_i + eps n_i))^2] / eps^2
            + cp_weight * mean (D(real) + D(fake))^2
      L_G = f(D(phi(fake)) - D(real)) + ot_weight(step) * mean_i ||G_i - x_a,i||^2 / (n w_i)

  (the paper's ``lambda_gp, lambda_cp, lambda_ot, lambda_cg`` are ``gp_weight, cp_weight,
  ot_weight, cg_weight`` here).

  The finite-difference R1/R2 term is averaged over the first ``gp_fraction`` of the batch
  and ``w`` multiplies it per sample, inside that average (as METHODS.md writes it and the
  authors' notebook computes it), so short hops, whose real and fake samples lie close to
  one another, are smoothed less.
* ``phi`` (:class:`~flowpost.methods.components.adversarial.GradientNormalizer`) normalises
  the adversarial gradient reaching ``G``, so ``ot_weight`` transfers across models.

Initialised from a pretrained flow (:meth:`AdversarialFlow.load_pretrained`), the generator
holds the flow's weights with a zero end-time embedding and the residual form, so the
1-NFE generator starts as the flow's one-Euler-step map ``z + v(z, 0)`` (and the k-step
chain as the flow's k-step Euler sampler).

Your own generator: ``model=`` any ``nn.Module``. With ``forward(x, t, cond=None, t_end=None)``
it gets the end time ``b``; with ``forward(x, t, cond=None)`` it trains fixed ``k``-step
generators (``nfe: k``), whose end time ``b = a + 1/k`` follows from ``a``; any-step training
(``nfe: 0``) needs the ``t_end`` input. Learning rates: the generator's is ``lr`` (null:
``train.lr``) divided by ``model.repeats``; the discriminator's ``disc_lr`` (null: ``lr``).
The ``ot_*`` keys and their schedule: :class:`~flowpost.methods.components.jumps.TransportConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flowpost.config import ConfigError, option
from flowpost.data.base import Batch, DataSpec
from flowpost.methods.base import (
    Method,
    OptimizerSpec,
    Updater,
    frozen,
    load_matching,
    register_method,
)
from flowpost.methods.components.adversarial import (
    GradientNormalizer,
    augment_pair,
    centering_penalty,
    discriminator_accuracy,
    hop_fd_penalty,
    relativistic_loss,
)
from flowpost.methods.components.guidance import GuidanceConfig, noised_cross_entropy
from flowpost.methods.components.imitation import check_betas
from flowpost.methods.components.jumps import (
    TransportConfig,
    any_step_times,
    chain_sources,
    every_hop_times,
    fixed_k_times,
    jump,
    jump_chain,
    jump_samples,
    ot_loss,
    renoised_chain,
    shuffled_within,
    takes_end_time,
)
from flowpost.nets.config import DiscriminatorConfig, NetConfig

__all__ = [
    "AFConfig",
    "AdversarialFlow",
    "fixed_k_times",
    "any_step_times",
    "ot_loss",
]


@dataclass
class AFConfig(GuidanceConfig, TransportConfig):
    """The ``method`` section for Adversarial Flow Models (``name: adversarial``); the
    classifier-guidance keys ``cg_*`` come from
    :class:`~flowpost.methods.components.guidance.GuidanceConfig`."""

    renamed_keys = {
        "steps": "nfe",
        "lambda_gp": "gp_weight",
        "lambda_cp": "cp_weight",
        "lambda_ot": "ot_weight",
        "lambda_cg": "cg_weight",
        "d_updates": "disc_steps",
    }

    nfe: int = option(
        1,
        "k: train for fixed k-step sampling (a in {0, 1/k, ..}, b = a + 1/k); "
        "0 = any-step training (a ~ U(0,1), b ~ U(a,1)), sampled at any nfe",
        min=0,
    )
    parameterization: str = option(
        "auto",
        "generator form: direct G = g(x_a, a, b) (k = 1, or hops: to_data), residual "
        "G = x_a + (b-a) g; auto = direct for k=1 from scratch, residual otherwise",
        choices=["auto", "direct", "residual"],
    )
    real_noise: str = option(
        "fresh",
        "noise of the real sample x_b = (1-b) z' + b x: fresh z' (paper) or the "
        "generator's own z (shared, the authors' 1-D notebook)",
        choices=["fresh", "shared"],
    )
    real_data: str = option(
        "same",
        "data point of the real sample x_b: the same x its batch row's source x_a is made "
        "from (same, paper) or another row's (shuffled, within the row's label), so that on "
        "short hops near the data a fake is not judged beside its own data point",
        choices=["same", "shuffled"],
    )
    chain_fraction: float = option(
        0.0,
        "fixed k > 1: fraction of a batch whose hop starts where the generator's own chain "
        "is at a (no gradient), not at the interpolant (1-a) z + a x (0: the paper)",
        min=0.0,
        max=1.0,
    )
    hops: str = option(
        "interval",
        "fixed k > 1: interval = each hop from a to b = a + 1/k, sampled as a chain (paper); "
        "to_data = each hop from a straight to b = 1, sampled by re-noising its output to the "
        "next grid time with fresh noise (a consistency-model sampler)",
        choices=["interval", "to_data"],
    )
    hop_span: float = option(
        1.0,
        "hops: to_data only: the hops start at a = hop_span * i / k (i < k), in training and "
        "in the sampler; 1 = the uniform grid, < 1 keeps every hop's input noisier",
        min=0.05,
        max=1.0,
    )
    all_hops: bool = option(
        False,
        "fixed k > 1: every data row of a batch trains every hop (the batch repeated k times, "
        "k x the compute of a step), instead of one random hop per row",
    )
    disc_time: str = option(
        "auto",
        "the discriminator's time input: end = the hop's end b (paper), start = its start a "
        "(a hop label); auto = start with hops: to_data and nfe > 1 (every hop ends at b = 1, "
        "so b alone cannot tell the hops apart), end otherwise",
        choices=["auto", "end", "start"],
    )
    lr: float | None = option(
        None, "generator learning rate (null: train.lr), divided by model.repeats", min=0.0
    )
    betas: list[float] = option(
        default_factory=lambda: [0.0, 0.9], help="Adam betas of the generator"
    )
    disc_lr: float | None = option(None, "discriminator learning rate (null: lr)", min=0.0)
    disc_betas: list[float] | None = option(None, "discriminator Adam betas (null: betas)")
    disc_steps: int = option(1, "discriminator updates per generator update", min=1)
    gp_weight: float = option(0.01, "weight of the finite-difference R1 + R2 penalty", min=0.0)
    gp_eps: float = option(0.01, "finite-difference step eps of the R1/R2 penalty", min=1e-8)
    gp_by_hop: bool = option(
        True, "weight each sample's R1/R2 by its hop length b - a (paper); false: weight 1"
    )
    gp_fraction: float = option(
        0.25, "fraction of the batch the R1/R2 penalty is computed on", min=0.0, max=1.0
    )
    cp_weight: float = option(0.01, "weight of the logit-centering penalty", min=0.0)
    grad_norm: bool = option(True, "normalise the adversarial gradient reaching G (phi)")
    grad_norm_decay: float = option(
        0.9, "EMA decay of the gradient-norm statistic", min=0.0, max=1.0
    )
    grad_norm_per_hop: bool = option(
        False, "fixed k > 1: one gradient-norm statistic per hop (false: one for the batch)"
    )
    augment_p: float = option(
        0.0, "images: P(random translation) = P(cutout), same for D's real and fake", min=0, max=1
    )
    discriminator: DiscriminatorConfig = option(
        default_factory=DiscriminatorConfig,
        help="the discriminator network (sees x_b, its time input (disc_time) and the label only)",
    )

    def __post_init__(self) -> None:
        check_betas(self.betas, "betas")
        check_betas(self.disc_betas)
        if self.chain_fraction > 0 and self.nfe == 0:
            raise ConfigError(
                "method.chain_fraction > 0 needs fixed k-step training (method.nfe: k); "
                "any-step training (nfe: 0) has no chain to start from"
            )
        if self.all_hops and self.nfe == 0:
            raise ConfigError(
                "method.all_hops needs fixed k-step training (method.nfe: k); any-step "
                "training (nfe: 0) has no fixed hops to repeat the batch over"
            )
        if self.hop_span != 1.0 and self.hops != "to_data":
            raise ConfigError(
                f"method.hop_span: {self.hop_span} needs hops: to_data (chained interval hops "
                "must reach the data at t = 1); set hop_span: 1 or hops: to_data"
            )
        if self.hops == "to_data" and (self.nfe == 0 or self.chain_fraction > 0):
            raise ConfigError(
                "method.hops: to_data needs fixed k-step training (method.nfe: k) and its hops "
                "start at the interpolant (method.chain_fraction: 0), which is exactly what "
                "its re-noising sampler feeds them"
            )
        # a direct hop predicts its end point outright: fine when every hop ends on the
        # data (one step, or hops: to_data), not for short interval hops that end near x_a
        if self.disc_time == "start" and self.nfe == 0:
            raise ConfigError(
                "method.disc_time: start labels fixed k-step hops by their start; any-step "
                "training (nfe: 0) draws b independently of a, so its discriminator needs b: "
                "use disc_time: end (or auto)"
            )
        if self.parameterization == "direct" and self.nfe != 1 and self.hops != "to_data":
            raise ConfigError(
                f"parameterization 'direct' (G = g(x_a, a, b)) only fits hops that end on the "
                f"data (nfe: 1, or hops: to_data), got nfe: {self.nfe} with hops: {self.hops}; "
                f"use parameterization: residual"
            )


# ----------------------------------------------------------------------------- the method


@register_method("adversarial")
class AdversarialFlow(Method):
    """Adversarial Flow Models: roles ``generator``, ``discriminator`` (and ``classifier``
    when ``cg_weight > 0``), buffer ``grad_norm.square_avg``.

    ``model`` (the generator), ``discriminator`` and ``classifier`` may be given (your own
    networks); otherwise they are built with :func:`flowpost.nets.factory.build_velocity_net`
    (``end_time=True``), ``build_discriminator`` (``time_conditional=True``) and
    :class:`~flowpost.nets.classifier.TimeClassifier`.

    >>> class G(nn.Module):
    ...     def forward(self, x, t, cond=None, t_end=None): return 2 * x
    >>> class D(nn.Module):
    ...     def forward(self, x, cond=None, t=None): return x.sum(1)
    >>> m = AdversarialFlow(AFConfig(nfe=2), DataSpec((3,)), NetConfig(),
    ...                     model=G(), discriminator=D())
    >>> m.generate(torch.ones(2, 3), nfe=2).tolist()  # residual: x + (1/2) 2x, twice
    [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]]
    """

    config_class = AFConfig
    config: AFConfig
    toy_settings = {"nfe": 2, "lr": 1e-3, "discriminator": {"hidden": 16, "depth": 1}}

    def __init__(
        self,
        config: AFConfig,
        spec: DataSpec,
        net: NetConfig,
        *,
        model: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        classifier: nn.Module | None = None,
    ) -> None:
        super().__init__(config, spec, net, model=model)
        if config.cg_weight > 0 and spec.num_classes is None:
            raise ValueError(
                "cg_weight > 0 (classifier guidance) needs labelled data; "
                "set method.cg_weight: 0 or use a dataset with classes"
            )
        self.generator = self.velocity_net(end_time=True)
        self.end_time = takes_end_time(self.generator)
        if not self.end_time and config.nfe == 0:
            raise ValueError(
                "AF any-step training (method.nfe: 0) needs a generator that takes the end "
                "time, forward(x, t, cond=None, t_end=None); train fixed k-step (nfe: k) "
                "instead, where the end time follows from the start time"
            )
        if discriminator is None:
            from flowpost.nets.factory import build_discriminator

            discriminator = build_discriminator(config.discriminator, spec, time_conditional=True)
        self.discriminator = discriminator
        if config.cg_weight > 0 and classifier is None:
            from flowpost.nets.classifier import TimeClassifier

            classifier = TimeClassifier(spec)
        self.classifier = classifier if config.cg_weight > 0 else None
        self.hop_groups = config.nfe if config.grad_norm_per_hop and config.nfe > 1 else 1
        self.grad_norm = GradientNormalizer(config.grad_norm_decay, groups=self.hop_groups)
        # D's logits on real / fake at its last update (logged as its accuracy)
        self.last_logits: tuple[Tensor, Tensor] = (torch.zeros(1), torch.zeros(1))
        self.residual = config.parameterization == "residual" or (
            config.parameterization == "auto" and config.nfe != 1
        )
        # the discriminator's time input, resolved once and saved with the run, so that a run
        # trained before this option existed (always b) keeps it when loaded
        self.disc_mode = config.disc_time
        if self.disc_mode == "auto":  # one-step models keep the paper's b = 1 (a = 0 for all)
            to_data = config.hops == "to_data" and config.nfe > 1
            self.disc_mode = "start" if to_data else "end"

    # -- interface ---------------------------------------------------------------------------
    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.config
        betas = check_betas(c.betas, "betas")
        disc_lr = c.disc_lr if c.disc_lr is not None else c.lr
        specs = {
            # deep (repeated-block) generators take smaller steps, as in the paper
            "generator": OptimizerSpec(
                list(self.generator.parameters()),
                lr=c.lr,
                betas=betas,
                lr_scale=1.0 / max(self.net_config.repeats, 1),
            ),
            "discriminator": OptimizerSpec(
                list(self.discriminator.parameters()),
                lr=disc_lr,
                betas=check_betas(c.disc_betas) or betas,
            ),
        }
        if self.classifier is not None:
            specs["classifier"] = OptimizerSpec(list(self.classifier.parameters()), lr=c.lr)
        return specs

    def ema_roles(self) -> tuple[str, ...]:
        return ("generator",)

    def extra_state(self) -> dict[str, Any]:
        return {"residual": self.residual, "disc_time": self.disc_mode}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.residual = bool(state.get("residual", self.residual))
        self.disc_mode = str(state.get("disc_time", "end"))  # saved before the option: b

    def load_pretrained(self, state: Mapping[str, Tensor]) -> None:
        """Load a flow's weights into the generator; its end-time embedding stays zero.

        With ``parameterization: auto`` the generator switches to the residual form, so the
        one-step generator starts exactly as the flow's one Euler step ``z + v(z, 0)``.
        """
        load_matching(self.generator, state, "AdversarialFlow")
        if self.config.parameterization == "auto":
            self.residual = True
        elif not self.residual:
            raise ValueError(
                "a pretrained flow predicts a velocity; initialise from it with "
                "parameterization: residual (or auto), not direct"
            )

    def phase(self, step: int) -> str:
        return f"af k={self.config.nfe or 'any'}"

    # -- pieces --------------------------------------------------------------------------------
    def jump(
        self, net: nn.Module, x_a: Tensor, a: Tensor, b: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """``G(x_a, a, b)``: one network evaluation from time ``a`` to time ``b``."""
        return jump(net, x_a, a, b, cond, end_time=self.end_time, residual=self.residual)

    def disc_time(self, a: Tensor, b: Tensor) -> Tensor:
        """The discriminator's time input for hops ``a -> b`` (``method.disc_time``).

        Why ``a`` with ``hops: to_data``: every hop's real sample is then the data itself, and
        a discriminator told only ``b = 1`` judges the *mixture* of the hops' outputs, so the
        game is solved when that mixture matches the data, however wrong each hop is alone;
        told the hop's start it judges each hop against the data separately.
        """
        return a if self.disc_mode == "start" else b

    def draw(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Times ``a, b``, the source ``x_a`` (``chain_fraction``: the first rows from the
        sampler's chain) and the real sample ``x_b`` for data ``x``."""
        k = self.config.nfe
        n = x.shape[0]
        if k > 1 and self.config.all_hops:  # x: every row repeated once per hop (hop_batch)
            a, b = every_hop_times(n, k, x.device, self.config.hop_span)
        elif k:
            a, b = fixed_k_times(n, k, x.device, self.config.hop_span)
        else:
            a, b = any_step_times(n, x.device)
        if self.config.hops == "to_data":
            b = torch.ones_like(b)  # every hop lands on the data; the sampler re-noises
        m = int(round(self.config.chain_fraction * n)) if k > 1 else 0
        step = lambda y, s, t, c: self.jump(self.generator, y, s, t, c)  # noqa: E731
        src = (lambda z: chain_sources(step, z, x, a, k, m, cond)) if m > 0 else None
        other = None
        if self.config.real_data == "shuffled":
            if cond is not None and (cond.dim() != 1 or cond.is_floating_point()):
                raise ValueError(
                    "method.real_data: shuffled pairs a row with another row of the same label; "
                    f"it needs unlabelled or class-labelled data, got a {tuple(cond.shape)} "
                    f"{cond.dtype} condition; use real_data: same"
                )
            other = x[shuffled_within(cond, n, x.device)]
        x_a, x_b = jump_samples(x, a, b, self.config.real_noise == "shared", src, other)
        return a, b, x_a, x_b

    def discriminator_terms(
        self, real: Tensor, fake: Tensor, a: Tensor, b: Tensor, cond: Tensor | None
    ) -> dict[str, Tensor]:
        """``L_D``'s terms (adv, gp, cp) for real and (detached) fake samples of hops
        ``a -> b``, the discriminator given :meth:`disc_time`."""
        cfg = self.config
        d = self.discriminator
        real, fake = augment_pair(real, fake, cfg.augment_p if self.spec.is_image else 0.0)
        t = self.disc_time(a, b)
        r, f = d(real, cond, t), d(fake, cond, t)
        self.last_logits = (r.detach(), f.detach())
        terms = {"adv": relativistic_loss(r, f)}
        if cfg.gp_weight > 0:
            gp = hop_fd_penalty(
                d,
                real,
                fake,
                (r, f),
                a,
                b,
                cond,
                cfg.gp_fraction,
                cfg.gp_eps,
                by_hop=cfg.gp_by_hop,
                d_time=t,
            )
            if gp is not None:
                terms["gp"] = cfg.gp_weight * gp
        if cfg.cp_weight > 0:
            terms["cp"] = cfg.cp_weight * centering_penalty(r, f)
        return terms

    def generator_terms(
        self, x_a: Tensor, real: Tensor, a: Tensor, b: Tensor, cond: Tensor | None, step: int
    ) -> tuple[dict[str, Tensor], Tensor]:
        """``L_G``'s terms (adv, ot, cg) and the generated sample."""
        cfg = self.config
        fake = self.jump(self.generator, x_a, a, b, cond)
        # hop i starts at a = hop_span * i / k
        hop = (a * self.hop_groups / cfg.hop_span).round().long().clamp(0, self.hop_groups - 1)
        adv_in = self.grad_norm(fake, hop) if cfg.grad_norm else fake
        real_in, adv_in = augment_pair(real, adv_in, cfg.augment_p if self.spec.is_image else 0.0)
        t = self.disc_time(a, b)
        with frozen(self.discriminator):
            r = self.discriminator(real_in, cond, t).detach()
            f = self.discriminator(adv_in, cond, t)
        terms = {"adv": relativistic_loss(f, r)}
        lam = cfg.ot_weight_at(step)
        if lam > 0:
            terms["ot"] = lam * ot_loss(fake, x_a, (b - a).abs().clamp_min(1e-3))
        if self.classifier is not None and cond is not None:
            with frozen(self.classifier):
                terms["cg"] = cfg.guidance(self.classifier, fake, b, cond, one_step=cfg.nfe == 1)
        return terms, fake

    # -- training ------------------------------------------------------------------------------
    def hop_batch(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The batch a training step draws its hops from: every row of ``x`` (and ``cond``)
        repeated once per hop, copies side by side, with ``all_hops`` and ``k > 1`` (each hop
        then sees every row, as a one-step model does), else as given."""
        k = self.config.nfe
        if not (self.config.all_hops and k > 1):
            return x, cond
        return x.repeat_interleave(k, 0), None if cond is None else cond.repeat_interleave(k, 0)

    def train_step(self, batch: Batch, step: int, update: Updater) -> dict[str, float]:
        x, cond = self.hop_batch(batch.x, batch.cond)
        logs: dict[str, float] = {}
        for _ in range(self.config.disc_steps):
            a, b, x_a, x_b = self.draw(x, cond)
            with torch.no_grad():
                fake = self.jump(self.generator, x_a, a, b, cond)
            logs.update(
                update.step("discriminator", **self.discriminator_terms(x_b, fake, a, b, cond))
            )
        # how well D separates (logits are centred by cp): the collapse guard's domination cue
        logs.update(discriminator_accuracy(*self.last_logits))
        if self.classifier is not None and batch.cond is not None:
            ce = noised_cross_entropy(self.classifier, batch.x, batch.cond)
            logs.update(update.step("classifier", ce=ce))
        a, b, x_a, x_b = self.draw(x, cond)
        terms, _ = self.generator_terms(x_a, x_b, a, b, cond, step)
        logs.update(update.step("generator", **terms))
        logs["ot_weight"] = self.config.ot_weight_at(step)
        logs["grad_norm_ema"] = float(self.grad_norm.square_avg.sqrt().mean())
        return logs

    # -- sampling ------------------------------------------------------------------------------
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
        """The ``nfe``-step chain ``x <- G(x, t_i, t_{i+1})`` on a uniform grid from noise
        (:func:`~flowpost.methods.components.jumps.jump_chain`); with ``hops: to_data``,
        ``x <- (1 - t_{i+1}) z_i + t_{i+1} G(x, t_i, 1)`` with fresh noise ``z_i``, the last
        output ``G(x, t_{k-1}, 1)`` (:func:`~flowpost.methods.components.jumps.renoised_chain`).

        A fixed-``k`` model samples with ``nfe = k`` only; an any-step model (``nfe: 0``)
        with any ``nfe``. ``solver`` is ignored: each step is one generator evaluation.
        """
        net = self.role("generator", roles)
        step = lambda x, a, b: self.jump(net, x, a, b, cond)  # noqa: E731
        if self.config.hops == "to_data":
            return renoised_chain(step, noise, nfe, self.config.nfe, self.config.hop_span)
        return jump_chain(step, noise, nfe, self.config.nfe)
