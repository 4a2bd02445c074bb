"""Adversarial Flow Models (AF): a generator ``G(x_a, a, b)`` that jumps from time ``a`` to
time ``b > a`` in one network evaluation, trained adversarially with an optimal-transport term.

Conventions (METHODS.md section 2, in this library's time: ``t = 0`` noise, ``t = 1`` data;
the authors' code runs the other way, ``t_theirs = 1 - t``):

* Source ``x_a = (1 - a) z + a x`` (``x_0 = z`` is noise); real target sample at ``b``:
  ``x_b = (1 - b) z' + b x`` with fresh noise ``z'`` (``real_noise: fresh``, the paper) or the
  generator's own ``z`` (``shared``, the authors' 1-D notebook).
* ``G = g(x_a, a, b)`` (direct, one step) or ``G = x_a + (b - a) g(x_a, a, b)`` (residual).
* The discriminator ``D(x_b, b, cond)`` never sees ``x_a``. With ``f(u) = softplus(-u)``,
  ``w = max(|b - a|, 0.001)`` and ``n`` the number of dimensions of a sample::

      L_D = f(D(real) - D(fake))
            + lambda_gp * mean_i w_i [(D(real_i) - D(real_i + eps n_i))^2
                                     + (D(fake_i) - D(fake_i + eps n_i))^2] / eps^2
            + lambda_cp * mean (D(real) + D(fake))^2
      L_G = f(D(phi(fake)) - D(real)) + lambda_ot(step) * mean_i ||G_i - x_a,i||^2 / (n w_i)

  The finite-difference R1/R2 term is averaged over the first ``gp_fraction`` of the batch
  and ``w`` multiplies it per sample, inside that average (as METHODS.md writes it and the
  authors' notebook computes it), so short hops, whose real and fake samples lie close to
  one another, are smoothed less.
* ``phi`` (:class:`GradientNormalizer`) is the identity forward; backward divides the
  incoming gradient ``g`` by ``sqrt(EMA_0.9(||g||^2 * numel(g))) + 1e-8``. Multiplying by
  ``numel`` equals the paper's division by ``sqrt(n)`` while keeping the statistic
  independent of the batch size; it puts the adversarial gradient on the scale of the
  OT term's, so ``lambda_ot`` transfers across models.

Initialised from a pretrained flow (:meth:`AdversarialFlow.load_pretrained`), the generator
holds the flow's weights with a zero end-time embedding and the residual form, so the
1-NFE generator starts as the flow's one-Euler-step map ``z + v(z, 0)`` (and the k-step
chain as the flow's k-step Euler sampler).

Example:
    >>> cfg = AFConfig(lambda_ot=0.2, ot_schedule="cosine", ot_end=0.005, ot_decay_steps=100)
    >>> [round(ot_weight(cfg, s), 4) for s in (0, 50, 100, 1000)]
    [0.2, 0.1025, 0.005, 0.005]
    >>> a, b = fixed_k_times(6, k=4)
    >>> set((4 * a).round().int().tolist()) <= {0, 1, 2, 3}, bool(((b - a) == 0.25).all())
    (True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowpost.config import option
from flowpost.data.base import Batch, DataSpec
from flowpost.flows.paths import expand_like
from flowpost.methods.base import (
    Method,
    MethodConfig,
    OptimizerSpec,
    Updater,
    _load_matching,
    frozen,
    register_method,
)
from flowpost.nets.config import DiscriminatorConfig, NetConfig

__all__ = [
    "AFConfig",
    "AdversarialFlow",
    "GradientNormalizer",
    "ot_weight",
    "fixed_k_times",
    "any_step_times",
    "relativistic_loss",
    "finite_difference_penalty",
    "centering_penalty",
    "ot_loss",
    "augment_pair",
]


@dataclass
class AFConfig(MethodConfig):
    """The ``method`` section for Adversarial Flow Models (``name: adversarial``)."""

    name: str = option("adversarial", "method name")
    steps: int = option(
        1,
        "k: train for fixed k-step sampling (a in {0, 1/k, ..}, b = a + 1/k); "
        "0 = any-step training (a ~ U(0,1), b ~ U(a,1)), sampled at any nfe",
        min=0,
    )
    parameterization: str = option(
        "auto",
        "generator form: direct G = g(z) (one step only), residual "
        "G = x_a + (b-a) g; auto = direct for k=1 from scratch, residual otherwise",
        choices=["auto", "direct", "residual"],
    )
    real_noise: str = option(
        "fresh",
        "noise of the real sample x_b = (1-b) z' + b x: fresh z' (paper) or the "
        "generator's own z (shared, the authors' 1-D notebook)",
        choices=["fresh", "shared"],
    )
    lambda_gp: float = option(0.01, "weight of the finite-difference R1 + R2 penalty", min=0.0)
    gp_eps: float = option(0.01, "finite-difference step eps of the R1/R2 penalty", min=1e-8)
    gp_fraction: float = option(
        0.25, "fraction of the batch the R1/R2 penalty is computed on", min=0.0, max=1.0
    )
    lambda_cp: float = option(0.01, "weight of the logit-centering penalty", min=0.0)
    lambda_ot: float = option(0.05, "optimal-transport weight at step 0", min=0.0)
    ot_schedule: str = option(
        "constant",
        "lambda_ot over training: constant, cosine decay to ot_end over "
        "ot_decay_steps, or a step drop to ot_end at ot_decay_steps",
        choices=["constant", "cosine", "step"],
    )
    ot_end: float = option(0.005, "lambda_ot floor (cosine) / value after the drop (step)", min=0.0)
    ot_decay_steps: int = option(100_000, "length of the cosine decay / step of the drop", min=1)
    grad_norm: bool = option(True, "normalise the adversarial gradient reaching G (phi)")
    grad_norm_decay: float = option(
        0.9, "EMA decay of the gradient-norm statistic", min=0.0, max=1.0
    )
    d_updates: int = option(1, "discriminator updates per generator update", min=1)
    lr: float = option(
        1e-4,
        "learning rate of D (and of G, divided by model.repeats); AF uses this, not train.lr",
        min=0.0,
    )
    betas: list[float] = option(
        default_factory=lambda: [0.0, 0.9], help="Adam betas of the generator and discriminator"
    )
    augment_p: float = option(
        0.0,
        "images: probability of a random translation and of a cutout, applied "
        "identically to the real and fake inputs of D",
        min=0.0,
        max=1.0,
    )
    lambda_cg: float = option(0.0, "classifier-guidance weight (needs class labels)", min=0.0)
    cg_t_min: float = option(0.9, "guidance time t' ~ U(cg_t_min, 1)", min=0.0, max=1.0)
    discriminator: DiscriminatorConfig = field(
        default_factory=DiscriminatorConfig,
        metadata={"help": "the discriminator network (sees x_b, b and the label only)"},
    )


# ----------------------------------------------------------------------------- schedules, times


def ot_weight(cfg: AFConfig, step: int) -> float:
    """``lambda_ot`` at optimiser ``step``: a pure function of the step, so resuming is exact."""
    if cfg.ot_schedule == "constant":
        return cfg.lambda_ot
    progress = min(max(step, 0) / cfg.ot_decay_steps, 1.0)
    if cfg.ot_schedule == "cosine":
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.ot_end + (cfg.lambda_ot - cfg.ot_end) * cosine
    if cfg.ot_schedule == "step":
        return cfg.lambda_ot if step < cfg.ot_decay_steps else cfg.ot_end
    raise ValueError(f"unknown ot_schedule {cfg.ot_schedule!r}; use constant, cosine or step")


def fixed_k_times(n: int, k: int, device: Any = None) -> tuple[Tensor, Tensor]:
    """``a`` uniform on ``{0, 1/k, ..., 1 - 1/k}`` and ``b = a + 1/k`` (each (n,))."""
    a = torch.randint(0, k, (n,), device=device).float() / k
    return a, a + 1.0 / k


def any_step_times(n: int, device: Any = None) -> tuple[Tensor, Tensor]:
    """``a ~ U(0, 1)``, ``b ~ U(a, 1)`` (each (n,))."""
    a = torch.rand(n, device=device)
    return a, a + (1.0 - a) * torch.rand(n, device=device)


# ----------------------------------------------------------------------------- loss terms


def relativistic_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """``mean softplus(-(pos - neg))``: small when ``pos`` logits exceed ``neg`` logits."""
    return F.softplus(neg - pos).mean()


def finite_difference_penalty(logits: Tensor, perturbed: Tensor, w: Tensor, eps: float) -> Tensor:
    """``mean_i w_i (D(x_i) - D(x_i + eps n_i))^2 / eps^2``, an R1/R2 gradient-norm estimate."""
    return (w * (logits - perturbed).square()).mean() / eps**2


def centering_penalty(real: Tensor, fake: Tensor) -> Tensor:
    """``mean (D(real) + D(fake))^2``: keeps the logits centred at zero."""
    return (real + fake).square().mean()


def ot_loss(out: Tensor, source: Tensor, w: Tensor) -> Tensor:
    """``mean_i ||out_i - source_i||^2 / (n w_i)``: the transport cost of the jump."""
    return ((out - source).square().flatten(1).mean(1) / w).mean()


# ----------------------------------------------------------------------------- gradient norm


class _NormalizeGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, square_avg: Tensor, decay: float, eps: float) -> Tensor:  # type: ignore[override]
        ctx.square_avg = square_avg
        ctx.decay = decay
        ctx.eps = eps
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        # ||g||^2 * numel: equals dividing by sqrt(n) afterwards, but does not depend on the
        # (local) batch size, since g itself carries the 1/B of the batch mean
        stat = grad.detach().float().square().sum() * grad.numel()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the mean of the local statistics (gloo has no AVG, so SUM / world size)
            torch.distributed.all_reduce(stat)
            stat = stat / torch.distributed.get_world_size()
        square_avg: Tensor = ctx.square_avg
        square_avg.lerp_(stat.to(square_avg.dtype), 1.0 - ctx.decay)
        return grad / (square_avg.sqrt() + ctx.eps).to(grad.dtype), None, None, None


class GradientNormalizer(nn.Module):
    """``phi``: identity forward; backward divides the gradient by
    ``sqrt(EMA(||g||^2 * numel)) + eps``. The EMA is a buffer, so it is checkpointed.

    >>> phi = GradientNormalizer(decay=0.0)
    >>> x = torch.ones(4, 3, requires_grad=True)
    >>> (1000 * phi(x)).sum().backward()
    >>> round(float(x.grad.norm() * x.numel() ** 0.5), 4)  # scale-free: ||g'|| = 1/sqrt(numel)
    1.0
    """

    square_avg: Tensor

    def __init__(self, decay: float = 0.9, eps: float = 1e-8) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"gradient-norm EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.eps = eps
        self.register_buffer("square_avg", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return x
        return _NormalizeGrad.apply(x, self.square_avg, self.decay, self.eps)


# ----------------------------------------------------------------------------- augmentation


def augment_pair(real: Tensor, fake: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Random translation (up to 1/8 of the size, zero fill) and cutout (a half-size square),
    each with probability ``p`` per sample, with the *same* draw for ``real[i]`` and
    ``fake[i]`` so the discriminator cannot tell them apart by their augmentation."""
    if p <= 0 or real.ndim != 4:
        return real, fake
    b, _, h, w = real.shape
    dev = real.device
    both = torch.cat([real, fake], 0)
    s = max(1, h // 8)
    on = (torch.rand(b, device=dev) < p).long()
    dy = torch.randint(-s, s + 1, (b,), device=dev) * on
    dx = torch.randint(-s, s + 1, (b,), device=dev) * on
    padded = F.pad(both, (s, s, s, s))
    ys = (torch.arange(h, device=dev)[None] + s - dy[:, None]).repeat(2, 1)  # (2B, H)
    xs = (torch.arange(w, device=dev)[None] + s - dx[:, None]).repeat(2, 1)
    idx = torch.arange(2 * b, device=dev)[:, None, None]
    both = padded.permute(0, 2, 3, 1)[idx, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2)
    cut = torch.rand(b, device=dev) < p
    cy = torch.randint(0, h, (b,), device=dev)
    cx = torch.randint(0, w, (b,), device=dev)
    yy = torch.arange(h, device=dev)[None, :, None]
    xx = torch.arange(w, device=dev)[None, None, :]
    hole = ((yy - cy[:, None, None]).abs() < h // 4 + 1) & (
        (xx - cx[:, None, None]).abs() < w // 4 + 1
    )
    keep = (~(hole & cut[:, None, None])).to(both.dtype)[:, None].repeat(2, 1, 1, 1)
    both = both * keep
    return both[:b], both[b:]


# ----------------------------------------------------------------------------- the method


@register_method("adversarial")
class AdversarialFlow(Method):
    """Adversarial Flow Models: roles ``generator``, ``discriminator`` (and ``classifier``
    when ``lambda_cg > 0``), buffer ``grad_norm.square_avg``.

    ``generator`` / ``discriminator`` may be given (tests, custom networks); otherwise they
    are built with :func:`flowpost.nets.factory.build_velocity_net` (``end_time=True``) and
    ``build_discriminator`` (``time_conditional=True``).

    >>> class G(nn.Module):
    ...     def forward(self, x, t, cond=None, t_end=None): return 2 * x
    >>> class D(nn.Module):
    ...     def forward(self, x, cond=None, t=None): return x.sum(1)
    >>> m = AdversarialFlow(AFConfig(steps=2), DataSpec((3,)), NetConfig(),
    ...                     generator=G(), discriminator=D())
    >>> m.generate(torch.ones(2, 3), nfe=2).tolist()  # residual: x + (1/2) 2x, twice
    [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]]
    """

    config_class = AFConfig
    config: AFConfig

    def __init__(
        self,
        config: AFConfig,
        spec: DataSpec,
        net: NetConfig,
        *,
        generator: nn.Module | None = None,
        discriminator: nn.Module | None = None,
        classifier: nn.Module | None = None,
    ) -> None:
        super().__init__(config, spec, net)
        if config.parameterization == "direct" and config.steps != 1:
            raise ValueError(
                f"parameterization 'direct' (G = g(z)) only fits one-step training (steps: 1), "
                f"got steps: {config.steps}; use parameterization: residual"
            )
        if len(config.betas) != 2:
            raise ValueError(f"method.betas must be two numbers, got {config.betas}")
        if config.lambda_cg > 0 and spec.num_classes is None:
            raise ValueError(
                "lambda_cg > 0 (classifier guidance) needs labelled data; "
                "set method.lambda_cg: 0 or use a dataset with classes"
            )
        if generator is None or discriminator is None:
            from flowpost.nets.factory import build_discriminator, build_velocity_net

            if generator is None:
                generator = build_velocity_net(net, spec, end_time=True)
            if discriminator is None:
                discriminator = build_discriminator(
                    config.discriminator, spec, time_conditional=True
                )
        self.generator = generator
        self.discriminator = discriminator
        if config.lambda_cg > 0 and classifier is None:
            from flowpost.nets.classifier import TimeClassifier

            classifier = TimeClassifier(spec)
        self.classifier = classifier if config.lambda_cg > 0 else None
        self.grad_norm = GradientNormalizer(config.grad_norm_decay)
        self.residual = config.parameterization == "residual" or (
            config.parameterization == "auto" and config.steps != 1
        )

    # -- interface ---------------------------------------------------------------------------
    def optimizers(self) -> dict[str, OptimizerSpec]:
        betas = (float(self.config.betas[0]), float(self.config.betas[1]))
        lr = self.config.lr
        specs = {
            # deep (repeated-block) generators take smaller steps, as in the paper
            "generator": OptimizerSpec(
                list(self.generator.parameters()),
                lr=lr / max(self.net_config.repeats, 1),
                betas=betas,
            ),
            "discriminator": OptimizerSpec(
                list(self.discriminator.parameters()), lr=lr, betas=betas
            ),
        }
        if self.classifier is not None:
            specs["classifier"] = OptimizerSpec(list(self.classifier.parameters()), lr=lr)
        return specs

    def ema_roles(self) -> tuple[str, ...]:
        return ("generator",)

    def extra_state(self) -> dict[str, Any]:
        return {"residual": self.residual}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.residual = bool(state.get("residual", self.residual))

    def load_pretrained(self, state: Mapping[str, Tensor]) -> None:
        """Load a flow's weights into the generator; its end-time embedding stays zero.

        With ``parameterization: auto`` the generator switches to the residual form, so the
        one-step generator starts exactly as the flow's one Euler step ``z + v(z, 0)``.
        """
        _load_matching(self.generator, state, "AdversarialFlow")
        if self.config.parameterization == "auto":
            self.residual = True
        elif not self.residual:
            raise ValueError(
                "a pretrained flow predicts a velocity; initialise from it with "
                "parameterization: residual (or auto), not direct"
            )

    def phase(self, step: int) -> str:
        return f"af k={self.config.steps or 'any'}"

    # -- pieces --------------------------------------------------------------------------------
    def jump(
        self, net: nn.Module, x_a: Tensor, a: Tensor, b: Tensor, cond: Tensor | None = None
    ) -> Tensor:
        """``G(x_a, a, b)``: one network evaluation from time ``a`` to time ``b``."""
        out = net(x_a, a, cond, b)
        if self.residual:
            return x_a + expand_like(b - a, x_a) * out
        return out

    def sample_times(self, n: int, device: Any) -> tuple[Tensor, Tensor]:
        if self.config.steps == 0:
            return any_step_times(n, device)
        return fixed_k_times(n, self.config.steps, device)

    def draw(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Times ``a, b``, the source ``x_a`` and the real sample ``x_b`` for data ``x``."""
        a, b = self.sample_times(x.shape[0], x.device)
        z = torch.randn_like(x)
        x_a = (1 - expand_like(a, x)) * z + expand_like(a, x) * x
        z_real = z if self.config.real_noise == "shared" else torch.randn_like(x)
        x_b = (1 - expand_like(b, x)) * z_real + expand_like(b, x) * x
        return a, b, x_a, x_b

    def discriminator_terms(
        self, real: Tensor, fake: Tensor, a: Tensor, b: Tensor, cond: Tensor | None
    ) -> dict[str, Tensor]:
        """``L_D``'s terms (adv, gp, cp) for real and (detached) fake samples at time ``b``."""
        cfg = self.config
        d = self.discriminator
        real, fake = augment_pair(real, fake, cfg.augment_p if self.spec.is_image else 0.0)
        r, f = d(real, cond, b), d(fake, cond, b)
        terms = {"adv": relativistic_loss(r, f)}
        m = int(math.ceil(cfg.gp_fraction * real.shape[0]))
        if cfg.lambda_gp > 0 and m > 0:
            w = (b[:m] - a[:m]).abs().clamp_min(1e-3)
            c = None if cond is None else cond[:m]
            r_eps = d(real[:m] + cfg.gp_eps * torch.randn_like(real[:m]), c, b[:m])
            f_eps = d(fake[:m] + cfg.gp_eps * torch.randn_like(fake[:m]), c, b[:m])
            terms["gp"] = cfg.lambda_gp * (
                finite_difference_penalty(r[:m], r_eps, w, cfg.gp_eps)
                + finite_difference_penalty(f[:m], f_eps, w, cfg.gp_eps)
            )
        if cfg.lambda_cp > 0:
            terms["cp"] = cfg.lambda_cp * centering_penalty(r, f)
        return terms

    def generator_terms(
        self, x_a: Tensor, real: Tensor, a: Tensor, b: Tensor, cond: Tensor | None, step: int
    ) -> tuple[dict[str, Tensor], Tensor]:
        """``L_G``'s terms (adv, ot, cg) and the generated sample."""
        cfg = self.config
        out = self.generator(x_a, a, cond, b)
        fake = x_a + expand_like(b - a, x_a) * out if self.residual else out
        adv_in = self.grad_norm(fake) if cfg.grad_norm else fake
        real_in, adv_in = augment_pair(real, adv_in, cfg.augment_p if self.spec.is_image else 0.0)
        with frozen(self.discriminator):
            r = self.discriminator(real_in, cond, b).detach()
            f = self.discriminator(adv_in, cond, b)
        terms = {"adv": relativistic_loss(f, r)}
        lam = ot_weight(cfg, step)
        if lam > 0:
            terms["ot"] = lam * ot_loss(fake, x_a, (b - a).abs().clamp_min(1e-3))
        if self.classifier is not None and cond is not None:
            # data estimate: the direct output, or the velocity extrapolated to t = 1
            x_hat = x_a + expand_like(1 - a, x_a) * out if self.residual else out
            t = cfg.cg_t_min + (1 - cfg.cg_t_min) * torch.rand(x_a.shape[0], device=x_a.device)
            te = expand_like(t, x_hat)
            x_t = (1 - te) * torch.randn_like(x_hat) + te * x_hat
            with frozen(self.classifier):
                terms["cg"] = cfg.lambda_cg * F.cross_entropy(self.classifier(x_t, t), cond)
        return terms, fake

    # -- training ------------------------------------------------------------------------------
    def train_step(self, batch: Batch, step: int, update: Updater) -> dict[str, float]:
        x, cond = batch.x, batch.cond
        logs: dict[str, float] = {}
        for _ in range(self.config.d_updates):
            a, b, x_a, x_b = self.draw(x)
            with torch.no_grad():
                fake = self.jump(self.generator, x_a, a, b, cond)
            logs.update(
                update.step("discriminator", **self.discriminator_terms(x_b, fake, a, b, cond))
            )
        if self.classifier is not None and cond is not None:
            t = torch.rand(x.shape[0], device=x.device)
            x_t = (1 - expand_like(t, x)) * torch.randn_like(x) + expand_like(t, x) * x
            ce = F.cross_entropy(self.classifier(x_t, t), cond)
            logs.update(update.step("classifier", ce=ce))
        a, b, x_a, x_b = self.draw(x)
        terms, _ = self.generator_terms(x_a, x_b, a, b, cond, step)
        logs.update(update.step("generator", **terms))
        logs["lambda_ot"] = ot_weight(self.config, step)
        logs["grad_norm_ema"] = float(self.grad_norm.square_avg.sqrt())
        return logs

    # -- sampling ------------------------------------------------------------------------------
    def generate(
        self,
        noise: Tensor,
        cond: Tensor | None = None,
        *,
        nfe: int,
        solver: str = "euler",
        roles: Mapping[str, nn.Module] | None = None,
    ) -> Tensor:
        """The ``nfe``-step chain ``x <- G(x, t_i, t_{i+1})`` on a uniform grid from noise.

        A fixed-``k`` model samples with ``nfe = k`` only; an any-step model (``steps: 0``)
        with any ``nfe``. ``solver`` is ignored: each step is one generator evaluation.
        """
        k = self.config.steps
        if nfe < 1:
            raise ValueError(f"nfe must be >= 1, got {nfe}")
        if k > 0 and nfe != k:
            raise ValueError(
                f"this AF generator was trained for fixed {k}-step sampling, so it samples "
                f"with nfe={k} only (got nfe={nfe}); pass eval.nfe={k}, or train with "
                "method.steps: 0 (any-step) to sample at any nfe"
            )
        net = self.role("generator", roles)
        x = noise
        grid = torch.linspace(0.0, 1.0, nfe + 1, device=noise.device)
        for i in range(nfe):
            a = grid[i].expand(x.shape[0])
            b = grid[i + 1].expand(x.shape[0])
            x = self.jump(net, x, a, b, cond)
        return x
