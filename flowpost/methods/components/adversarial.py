"""Adversarial losses and regularisers shared by FAIL, reward + FAIL and Adversarial Flows.

Conventions: a discriminator returns one logit per sample ``(B,)``; "real" is the expert /
data side, "fake" the model's samples.

* :func:`discriminator_loss`: binary cross-entropy (FAIL),
  ``softplus(-D(real)) + softplus(D(fake))``.
* :func:`adversarial_policy_loss` / :func:`fail_reward`: the non-saturating generator loss
  ``softplus(-D(x))`` and the reward ``softplus(D(x)) = -log(1 - sigmoid(D(x)))``.
* :func:`relativistic_loss`: ``softplus(-(D(pos) - D(neg)))`` (AF, R3GAN).
* :func:`r1_penalty`: the exact ``E ||grad_x D(x)||^2`` (R1).
* :func:`finite_difference_penalty` / :func:`fd_gradient_penalty`: the finite-difference
  R1/R2 estimate ``w (D(x) - D(x + eps n))^2 / eps^2``.
* :func:`hop_fd_penalty`: that estimate on real and fake samples of hops ``a -> b``, the
  discriminator given ``b`` (or another time input, ``d_time``), weighted by the hop length
  (AF).
* :func:`centering_penalty`: ``(D(real) + D(fake))^2``, keeps logits centred.
* :class:`GradientNormalizer`: identity forward, backward divides the gradient by the root
  of an EMA of its squared norm (AF's ``phi``).
* :func:`augment_pair`: translation + cutout drawn once per pair of real and fake images.

Example:
    >>> import torch
    >>> round(float(discriminator_loss(torch.zeros(3), torch.zeros(3))), 4)  # 2 log 2
    1.3863
    >>> round(float(relativistic_loss(torch.zeros(2), torch.zeros(2))), 4)  # log 2
    0.6931
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowpost.flows import random

__all__ = [
    "discriminator_loss",
    "adversarial_policy_loss",
    "fail_reward",
    "relativistic_loss",
    "r1_penalty",
    "finite_difference_penalty",
    "fd_gradient_penalty",
    "hop_fd_penalty",
    "centering_penalty",
    "discriminator_accuracy",
    "GradientNormalizer",
    "augment_pair",
]


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Binary cross-entropy, expert label 1, policy label 0: ``mean softplus(-D(real)) +
    mean softplus(D(fake))`` (the sum of the two halves' mean BCE)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def adversarial_policy_loss(logits: Tensor) -> Tensor:
    """Per-sample ``-log sigmoid(D(x)) = softplus(-D(x))`` (the generator wants label 1).

    >>> adversarial_policy_loss(torch.tensor([0.0])).tolist()  # log 2
    [0.6931471824645996]
    """
    return F.softplus(-logits)


def fail_reward(logits: Tensor) -> Tensor:
    """FAIL-PG reward ``r = -log(1 - sigmoid(D)) = softplus(D)``, high for expert-like samples.

    >>> fail_reward(torch.tensor([0.0])).tolist()
    [0.6931471824645996]
    """
    return F.softplus(logits)


def relativistic_loss(pos: Tensor, neg: Tensor) -> Tensor:
    """``mean softplus(-(pos - neg))``: small when ``pos`` logits exceed ``neg`` logits."""
    return F.softplus(neg - pos).mean()


def r1_penalty(discriminator: Callable[..., Tensor], x: Tensor, cond: Tensor | None) -> Tensor:
    """``E ||grad_x D(x)||^2`` on expert samples (R1; the caller multiplies by ``gamma / 2``)."""
    x = x.detach().requires_grad_(True)
    logits = discriminator(x, cond)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def finite_difference_penalty(logits: Tensor, perturbed: Tensor, w: Tensor, eps: float) -> Tensor:
    """``mean_i w_i (D(x_i) - D(x_i + eps n_i))^2 / eps^2``, an R1/R2 gradient-norm estimate."""
    return (w * (logits - perturbed).square()).mean() / eps**2


def fd_gradient_penalty(
    discriminator: Callable[[Tensor], Tensor],
    x: Tensor,
    logits: Tensor,
    w: Tensor,
    eps: float,
) -> Tensor:
    """:func:`finite_difference_penalty` of ``discriminator`` at ``x`` (whose logits are given)
    with a fresh Gaussian direction per sample; ``discriminator`` takes the inputs only."""
    perturbed = discriminator(x + eps * random.randn_like(x))
    return finite_difference_penalty(logits, perturbed, w, eps)


def hop_fd_penalty(
    discriminator: Callable[[Tensor, Tensor | None, Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    logits: tuple[Tensor, Tensor],
    a: Tensor,
    b: Tensor,
    cond: Tensor | None,
    fraction: float,
    eps: float,
    by_hop: bool = True,
    d_time: Tensor | None = None,
) -> Tensor | None:
    """R1 + R2 by :func:`fd_gradient_penalty` of ``discriminator(x, cond, d_time)`` (``d_time``
    defaults to ``b``) at ``real`` and ``fake`` (their logits given), on the first
    ``ceil(fraction * B)`` samples, each weighted by its hop length ``w = max(|b - a|, 0.001)``
    (``by_hop``, the paper) or by 1; ``None`` when that is no sample."""
    m = int(math.ceil(fraction * real.shape[0]))
    if m == 0:
        return None
    w = (b[:m] - a[:m]).abs().clamp_min(1e-3) if by_hop else torch.ones_like(b[:m])
    c = None if cond is None else cond[:m]
    t = (b if d_time is None else d_time)[:m]
    d_m = lambda y: discriminator(y, c, t)  # noqa: E731
    r, f = logits
    return fd_gradient_penalty(d_m, real[:m], r[:m], w, eps) + fd_gradient_penalty(
        d_m, fake[:m], f[:m], w, eps
    )


def centering_penalty(real: Tensor, fake: Tensor) -> Tensor:
    """``mean (D(real) + D(fake))^2``: keeps the logits centred at zero."""
    return (real + fake).square().mean()


def discriminator_accuracy(real_logits: Tensor, fake_logits: Tensor) -> dict[str, float]:
    """Fractions of real samples called real and fake samples called fake (for logging).

    >>> discriminator_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([-2.0]))
    {'discriminator/acc_real': 0.5, 'discriminator/acc_fake': 1.0}
    """
    return {
        "discriminator/acc_real": float((real_logits > 0).float().mean()),
        "discriminator/acc_fake": float((fake_logits < 0).float().mean()),
    }


# ----------------------------------------------------------------------------- gradient norm


class _NormalizeGrad(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, square_avg: Tensor, group: Tensor | None, decay: float, eps: float
    ) -> Tensor:
        ctx.square_avg = square_avg
        ctx.group = group
        ctx.decay = decay
        ctx.eps = eps
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        # ||g||^2 * numel: equals dividing by sqrt(n) afterwards, but does not depend on the
        # (local) batch size, since g itself carries the 1/B of the batch mean
        square_avg: Tensor = ctx.square_avg
        rows = grad.detach().float().flatten(1).square().sum(1)
        if ctx.group is None:
            stat, count = rows.sum().reshape(1), torch.ones(1, device=grad.device)
        else:  # per group: its own rows' mean square, at the whole batch's scale
            k = square_avg.numel()
            stat = torch.zeros(k, device=grad.device).index_add_(0, ctx.group, rows)
            ones = torch.ones_like(rows)
            count = torch.zeros(k, device=grad.device).index_add_(0, ctx.group, ones)
            stat = stat * grad.shape[0] / count.clamp_min(1)
        stat = stat * grad.numel()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # the mean of the local statistics (gloo has no AVG, so SUM / world size)
            both = torch.stack([stat * (count > 0), (count > 0).float()])
            torch.distributed.all_reduce(both)
            stat, count = both[0] / both[1].clamp_min(1), both[1]
        seen = (count > 0).reshape(square_avg.shape)
        new = square_avg.lerp(stat.reshape(square_avg.shape).to(square_avg.dtype), 1.0 - ctx.decay)
        square_avg.copy_(torch.where(seen, new, square_avg))  # an empty group keeps its EMA
        scale = square_avg.reshape(-1).sqrt() + ctx.eps
        if ctx.group is None:
            return grad / scale[0].to(grad.dtype), None, None, None, None
        div = scale[ctx.group].to(grad.dtype).reshape(-1, *([1] * (grad.ndim - 1)))
        return grad / div, None, None, None, None


class GradientNormalizer(nn.Module):
    """``phi``: identity forward; backward divides the gradient by
    ``sqrt(EMA(||g||^2 * numel)) + eps``. The EMA is a buffer, so it is checkpointed.

    With ``groups = k > 1`` the rows of a batch belong to ``k`` groups (``group``, (B,)
    integers, e.g. the hop of a ``k``-step AF generator) and each group is normalised by its
    own EMA of ``(B / B_j) ||g_j||^2 * numel`` (its rows' mean square at the whole batch's
    scale): every group's normalised gradient then has the size one group alone would get.

    >>> phi = GradientNormalizer(decay=0.0)
    >>> x = torch.ones(4, 3, requires_grad=True)
    >>> (1000 * phi(x)).sum().backward()
    >>> round(float(x.grad.norm() * x.numel() ** 0.5), 4)  # scale-free: ||g'|| = 1/sqrt(numel)
    1.0
    >>> phi2, y = GradientNormalizer(decay=0.0, groups=2), torch.ones(4, 3, requires_grad=True)
    >>> up = torch.tensor([[1.0], [1.0], [100.0], [100.0]])  # group 1: 100x the gradient
    >>> (up * phi2(y, torch.tensor([0, 0, 1, 1]))).sum().backward()
    >>> [round(float(v) * 12, 4) for v in y.grad[:, 0]]  # both groups at 1/numel per element
    [1.0, 1.0, 1.0, 1.0]
    """

    square_avg: Tensor

    def __init__(self, decay: float = 0.9, eps: float = 1e-8, groups: int = 1) -> None:
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"gradient-norm EMA decay must be in [0, 1], got {decay}")
        if groups < 1:
            raise ValueError(f"gradient-norm groups must be >= 1, got {groups}")
        self.decay = decay
        self.eps = eps
        self.groups = groups
        self.register_buffer("square_avg", torch.zeros(()) if groups == 1 else torch.zeros(groups))

    def forward(self, x: Tensor, group: Tensor | None = None) -> Tensor:
        """``x`` unchanged; ``group`` (B,) in ``[0, groups)`` is needed when ``groups > 1``."""
        if not torch.is_grad_enabled() or not x.requires_grad:
            return x
        if self.groups > 1 and group is None:
            raise ValueError(f"this normaliser has {self.groups} groups; pass group=(B,) ids")
        g = None if self.groups == 1 or group is None else group.long()
        out: Tensor = _NormalizeGrad.apply(x, self.square_avg, g, self.decay, self.eps)
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # a checkpoint of one global statistic (older flowpost) seeds every group with it
        key = prefix + "square_avg"
        value = state_dict.get(key)
        if value is not None and value.ndim == 0 and self.square_avg.ndim == 1:
            state_dict[key] = value.expand(self.groups).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# ----------------------------------------------------------------------------- augmentation


def augment_pair(real: Tensor, fake: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Random translation (up to 1/8 of the size, zero fill) and cutout (a half-size square),
    each with probability ``p`` per sample, with the *same* draw for ``real[i]`` and
    ``fake[i]`` so the discriminator cannot tell them apart by their augmentation.

    >>> r, f = augment_pair(torch.ones(2, 1, 8, 8), torch.ones(2, 1, 8, 8), p=1.0)
    >>> torch.equal(r, f)
    True
    """
    if p <= 0 or real.ndim != 4:
        return real, fake
    b, _, h, w = real.shape
    dev = real.device
    both = torch.cat([real, fake], 0)
    s = max(1, h // 8)
    on = (random.rand(b, device=dev) < p).long()
    dy = random.randint(-s, s + 1, b, device=dev) * on
    dx = random.randint(-s, s + 1, b, device=dev) * on
    padded = F.pad(both, (s, s, s, s))
    ys = (torch.arange(h, device=dev)[None] + s - dy[:, None]).repeat(2, 1)  # (2B, H)
    xs = (torch.arange(w, device=dev)[None] + s - dx[:, None]).repeat(2, 1)
    idx = torch.arange(2 * b, device=dev)[:, None, None]
    both = padded.permute(0, 2, 3, 1)[idx, ys[:, :, None], xs[:, None, :]].permute(0, 3, 1, 2)
    cut = random.rand(b, device=dev) < p
    cy = random.randint(0, h, b, device=dev)
    cx = random.randint(0, w, b, device=dev)
    yy = torch.arange(h, device=dev)[None, :, None]
    xx = torch.arange(w, device=dev)[None, None, :]
    hole = ((yy - cy[:, None, None]).abs() < h // 4 + 1) & (
        (xx - cx[:, None, None]).abs() < w // 4 + 1
    )
    keep = (~(hole & cut[:, None, None])).to(both.dtype)[:, None].repeat(2, 1, 1, 1)
    both = both * keep
    return both[:b], both[b:]
