"""Residual velocity fields that contract by construction (ResFT-FM's residual fine-tuning).

:class:`ContractingResidual` is

    r(x, t, c) = -K(t, c) (x - m(t, c)),    K = L L^T + mu I,

with ``L`` (lower-triangular, or a low-rank ``dim x rank`` factor for large inputs) and the
centre ``m`` regressed from ``(t, c)`` by a small MLP. Since ``dr/dx = -K`` and ``L L^T`` is
positive semi-definite, the symmetric part of the Jacobian is ``<= -mu I`` for every input:
two solutions of ``dx/dt = r`` approach each other at rate at least ``mu``, and adding ``r``
to any field lowers the field's one-sided Lipschitz constant by ``mu``. Images are flattened.

Two optional terms widen the family without touching the bound (the symmetric Jacobian part
stays ``-(L L^T + mu I) - H`` with ``H`` positive semi-definite):

- ``skew=True`` adds a skew-symmetric ``S(t, c) = U V^T - V U^T`` to ``K``: a rotation about
  ``m``, whose Jacobian has no symmetric part;
- ``potential=P > 0`` subtracts the gradient of a convex potential with ``P`` softplus units,
  ``phi(x) = sum_j a_j softplus((A x)_j + b_j)`` with ``a_j(t, c) >= 0``:
  ``grad phi = A^T (a * sigmoid(A x + b))``, nonlinear in ``x``, with Hessian
  ``A^T diag(a * sigmoid') A >= 0``. The field is then
  ``r = -K (x - m) - (grad phi(x) - grad phi(m))``: the potential less its linear part at
  ``m`` (still convex), so that ``m`` stays the residual's fixed point.

``anchor`` lets the residual see where the frozen pretrained field points for each condition:
``a(c) = base(0, 0, c)``, the pretrained field at the origin at ``t = 0`` (its one-step
prediction of the end point from the mean noise), is passed in by :class:`ResidualField`.
With ``anchor="centre"`` the centre is ``m = t a(c) + m_psi(t, c)``: the residual pulls
towards the straight path to that prediction plus a learned offset, instead of having to
regress the whole policy into ``m_psi`` from scratch; ``"input"`` feeds ``a(c)`` to the
``(t, c)`` MLP as a feature; ``"both"`` does both. ``a`` does not depend on ``x``, so the
Jacobian and the bound are unchanged. With ``anchor_net`` (a field shaped like the base, e.g.
a copy of it) the anchor is ``anchor_net(0, 0, c)`` instead, and trains with the residual:
the end point the residual pulls towards is then fine-tuned from the pretrained field's own
features, still without any dependence on ``x``.

``offset="force"`` reparametrises the same family: the offset head outputs the force
``f = K m`` instead of the centre, ``r = -K x + f`` (``K`` invertible, so ``m = K^-1 f``;
:meth:`ContractingResidual.factor_and_centre` solves for it). The Jacobian is still ``-K``
and the bound unchanged, but a step on the head moves the field by itself rather than
through ``K``, which starts near ``mu I``: with ``mu = 0.1`` a centre has to travel ten
times as far as a force for the same correction of the velocity. (Not with ``potential``,
whose term needs the centre explicitly.)

``path_net`` (a field shaped like the base, e.g. a copy of it; needs an anchor) adds the
force ``f_path(t, c) = path_net(p, t, c) - base(p, t, c)`` evaluated on the anchored path
``p(t, c) = t a(c)``, which does not depend on ``x``: the Jacobian and the bound are
unchanged, and with ``path_net`` a copy of the base the force starts at exactly zero. What
it brings is the pretrained network's features: a ``(t, c)`` MLP trained from scratch on a
few hundred demonstrations fits their chunks and does not carry to new conditions
(docs/methods/reconstruction.md), where a fine-tuned copy of the pretrained field is the
part of FT-FM that does. On the deterministic sampler's path from ``z = 0`` (which ``p``
follows while the force is small) the summed field is then the fine-tuned copy's, up to
the contraction; off it, the pretrained field shifted by that force. When ``path_net`` is
also the ``anchor_net`` (one trained copy), ``a(c) = path_net(0, 0, c)`` and, while the
learned offset of the centre is zero, Euler from ``z = 0`` visits exactly ``t a(c)`` at 1
and 2 steps, where the residual's pull is zero: the deterministic 1- and 2-step maps are
the trained copy's own.

:class:`ResidualField` adds such a residual to a frozen pretrained field:
``v = base(x, t, c) + residual(x, t, c)``.

Example:
    >>> import torch
    >>> r = ContractingResidual(3, hidden=16, mu=0.5)
    >>> x = torch.randn(4, 3)
    >>> r(x, torch.rand(4)).shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from flowpost.nets.embeddings import CondEmbedding, TimeEmbedding, check_time, conditioning

# how the pretrained field's anchor a(c) enters the residual (ContractingResidual's docstring)
ANCHOR_MODES = ("none", "centre", "input", "both")
# what the residual's offset head outputs: the centre m, or the force f = K m (docstring)
OFFSETS = ("centre", "force")


class ContractingResidual(nn.Module):
    """``r(x, t, c) = -(L L^T + mu I)(x - m)`` with ``L, m`` functions of ``(t, c)`` only.

    Args:
        dim: number of features (``prod(shape)`` for images).
        hidden: width of the ``(t, c) -> (L, m)`` MLP.
        mu: guaranteed contraction rate (> 0).
        num_classes: labels (with null label ``K``); ``cond_dim``: float conditions instead.
        rank: ``None`` picks a full lower-triangular ``L`` for ``dim <= 32`` and rank 8
            otherwise (a full factor of a 784-pixel image would need 300k outputs).
        skew: add a skew-symmetric ``S(t, c)`` (same rank as ``L``) to the gain.
        potential: width of the convex potential whose gradient is subtracted (0: none).
        anchor: ``"none"``, ``"centre"``, ``"input"`` or ``"both"``: how the pretrained
            field's anchor ``a(c)`` (module docstring) enters; every call then needs it.
        anchor_net: a trainable field ``(x, t, c) -> x``-shaped whose value at ``(0, 0, c)``
            is the anchor (:class:`ResidualField` evaluates it); ``None``: the frozen base's.
        offset: ``"centre"`` (the head outputs ``m``) or ``"force"`` (it outputs ``K m``;
            module docstring).
        path_net: a trainable field shaped like the base whose difference from the base on
            the anchored path ``t a(c)`` is added as an ``x``-independent force (module
            docstring; :class:`ResidualField` evaluates it); needs an anchor mode.
        max_gain: cap on the largest eigenvalue of ``L L^T + mu I`` (> ``mu``; ``None``: no
            cap). ``L`` is scaled down, per input, by ``sqrt((max_gain - mu) / lambda_max(L
            L^T))`` where that ratio is below 1. The bound is the ODE's; an explicit Euler step
            ``h`` maps ``x - m`` by ``I - h K``, which lands past ``m`` in a direction where
            ``h K > 1`` and expands where ``h K > 2``. With ``max_gain <= 1 / h`` (and neither
            ``skew`` nor ``potential``, which this cap does not reach) every Euler step of the
            residual alone shrinks ``x - m`` without overshooting, at any step size down to
            ``h``: ``max_gain = 1`` covers the 1-step sampler.

    ``m`` starts at zero and ``L`` small, so initially ``r ~ -mu x``: a mild pull towards the
    origin that training then re-centres. ``S`` starts at zero and the potential's weights
    ``a`` small (it then adds about ``a / 4 = 0.01`` to the gain), so the optional terms change
    little until trained.

    Example:
        >>> import torch
        >>> r = ContractingResidual(3, hidden=16, mu=0.5, skew=True, potential=8)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(r(x, torch.rand(4)), -0.5 * x, atol=0.1)  # near -mu x at init
        True
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 128,
        mu: float = 0.1,
        num_classes: int | None = None,
        cond_dim: int | None = None,
        *,
        rank: int | None = None,
        time_embed_dim: int = 64,
        time_scale: float = 1000.0,
        init_scale: float = 0.1,
        skew: bool = False,
        potential: int = 0,
        anchor: str = "none",
        anchor_net: nn.Module | None = None,
        max_gain: float | None = None,
        offset: str = "centre",
        path_net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not mu > 0:
            raise ValueError(f"mu must be > 0 for a contraction guarantee, got {mu}")
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be >= 1 or None (automatic), got {rank}")
        if potential < 0:
            raise ValueError(f"potential must be >= 0 (0: no convex potential), got {potential}")
        if anchor not in ANCHOR_MODES:
            raise ValueError(f"anchor must be one of {', '.join(ANCHOR_MODES)}, got {anchor!r}")
        if max_gain is not None and not max_gain > mu:
            raise ValueError(f"max_gain must be > mu ({mu}) or None, got {max_gain}")
        if offset not in OFFSETS:
            raise ValueError(f"offset must be one of {', '.join(OFFSETS)}, got {offset!r}")
        if offset == "force" and potential:
            raise ValueError("offset='force' has no centre for the potential to keep: use 'centre'")
        self.offset = offset
        self.dim = dim
        self.mu = float(mu)
        self.max_gain = None if max_gain is None else float(max_gain)
        self.anchor = anchor
        if anchor_net is not None and anchor == "none":
            raise ValueError("anchor_net needs an anchor mode (centre, input or both)")
        self.anchor_net = anchor_net
        if path_net is not None and anchor == "none":
            raise ValueError("path_net needs an anchor mode (centre, input or both)")
        self.path_net = path_net
        self.full = rank is None and dim <= 32
        self.rank = dim if self.full else (rank or 8)
        self.time_embed = TimeEmbedding(hidden, time_embed_dim, scale=time_scale)
        self.cond_embed = CondEmbedding(hidden, num_classes=num_classes, cond_dim=cond_dim)
        self.trunk = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        n_factor = dim * (dim + 1) // 2 if self.full else dim * self.rank
        self.factor_head = nn.Linear(hidden, n_factor)
        self.centre_head = nn.Linear(hidden, dim)
        # L must not start at zero: d(L L^T)/dL vanishes there and L would never move
        nn.init.zeros_(self.factor_head.weight)
        with torch.no_grad():
            self.factor_head.bias.normal_(0.0, init_scale / math.sqrt(self.rank))
        nn.init.zeros_(self.centre_head.weight)
        nn.init.zeros_(self.centre_head.bias)
        if self.full:
            rows, cols = torch.tril_indices(dim, dim)
            self.register_buffer("_rows", rows, persistent=False)
            self.register_buffer("_cols", cols, persistent=False)
        self.skew = skew
        if skew:
            # S = U V^T - V U^T: U starts at zero (S = 0), V random so that U gets a gradient
            self.skew_u_head = nn.Linear(hidden, dim * self.rank)
            self.skew_v_head = nn.Linear(hidden, dim * self.rank)
            for head in (self.skew_u_head, self.skew_v_head):
                nn.init.zeros_(head.weight)
            nn.init.zeros_(self.skew_u_head.bias)
            with torch.no_grad():
                self.skew_v_head.bias.normal_(0.0, 1.0 / math.sqrt(self.rank))
        self.potential = int(potential)
        if self.potential:
            # phi(x) = sum_j a_j softplus((A x)_j + b_j): A is shared; the biases b and the
            # weights a = softplus(.) >= 0 (what keeps phi convex) are per (t, c)
            # A^T A ~ I, so the potential's curvature is about a * sigmoid' in every direction
            self.potential_proj = nn.Parameter(
                torch.randn(self.potential, dim) / math.sqrt(self.potential)
            )
            self.potential_bias_head = nn.Linear(hidden, self.potential)
            self.potential_weight_head = nn.Linear(hidden, self.potential)
            nn.init.zeros_(self.potential_weight_head.weight)
            # a = softplus(-3) ~ 0.05 at init: the potential starts small, but not so small
            # that a few hundred steps of Adam (lr 1e-3 moves a bias ~0.001 a step) cannot
            # grow it (at softplus(-6) it stayed negligible through ResFT-FM's 400 steps)
            nn.init.constant_(self.potential_weight_head.bias, -3.0)
        # zero-initialised: the anchor as a feature changes nothing until training moves it
        self.anchor_embed = nn.Linear(dim, hidden) if anchor in ("input", "both") else None
        if self.anchor_embed is not None:
            nn.init.zeros_(self.anchor_embed.weight)
            nn.init.zeros_(self.anchor_embed.bias)

    def _anchor(self, anchor: Tensor | None, batch: int) -> Tensor | None:
        if self.anchor == "none":
            return None
        if anchor is None:
            raise ValueError(
                f"this ContractingResidual was built with anchor={self.anchor!r}: pass the "
                "pretrained field's anchor a(c) (ResidualField does)"
            )
        return anchor.reshape(batch, self.dim)

    def _features(self, t: Tensor, cond: Tensor | None, anchor: Tensor | None = None) -> Tensor:
        embedded = conditioning(self.time_embed, self.cond_embed, t, cond, t.shape[0], t.device)
        if self.anchor_embed is not None and anchor is not None:
            embedded = embedded + self.anchor_embed(anchor.to(embedded.dtype))
        return self.trunk(embedded)

    def factor_and_centre(
        self, t: Tensor, cond: Tensor | None = None, anchor: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``L`` (B, dim, rank) and ``m`` (B, dim) for times ``t`` (B,) and conditions (with
        ``offset="force"``, ``m = K^-1 f`` plus the anchor's part, solved here)."""
        a = self._anchor(anchor, t.shape[0])
        h = self._features(t, cond, a)
        factor, centre, force = self._heads(h, t, a)
        if force is not None:
            gain = self._gain_of(h, factor)
            centre = centre + torch.linalg.solve(gain, force[:, :, None])[:, :, 0]
        return factor, centre

    def _heads(
        self, h: Tensor, t: Tensor, anchor: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``L``, the centre that sits inside the gain, and the force (``offset="force"``:
        the offset head's output, added after the gain; else ``None``). The field is
        ``-K (x - centre) + force``."""
        b = h.shape[0]
        raw = self.factor_head(h)
        if self.full:
            factor = raw.new_zeros(b, self.dim, self.dim)
            factor[:, self._rows, self._cols] = raw
        else:
            factor = raw.reshape(b, self.dim, self.rank)
        if self.max_gain is not None:
            factor = self._cap_factor(factor, self.max_gain - self.mu)
        offset = self.centre_head(h)
        centre, force = (
            (offset, None) if self.offset == "centre" else (torch.zeros_like(offset), offset)
        )
        if anchor is not None and self.anchor in ("centre", "both"):
            centre = centre + t[:, None].to(centre.dtype) * anchor.to(centre.dtype)
        return factor, centre, force

    @staticmethod
    def _cap_factor(factor: Tensor, room: float) -> Tensor:
        """``L`` scaled so that the largest eigenvalue of ``L L^T`` is at most ``room``."""
        # L L^T (dim x dim) and L^T L (rank x rank) share their non-zero eigenvalues; the
        # second is the small one for a low-rank factor. float64: eigvalsh's gradient is
        # taken through its eigenvectors, which float32 resolves poorly for close eigenvalues
        gram = (factor.transpose(1, 2) @ factor).double()
        top = torch.linalg.eigvalsh(gram)[:, -1].to(factor.dtype)
        # sqrt(room / max(top, room)): 1 below the cap, so the cap is the identity there
        scale = torch.sqrt(room / torch.clamp(top, min=room))
        return factor * scale[:, None, None]

    def _skew_factors(self, h: Tensor) -> tuple[Tensor, Tensor]:
        b = h.shape[0]
        u = self.skew_u_head(h).reshape(b, self.dim, self.rank)
        return u, self.skew_v_head(h).reshape(b, self.dim, self.rank)

    def gain(self, t: Tensor, cond: Tensor | None = None, anchor: Tensor | None = None) -> Tensor:
        """The matrix ``K = L L^T + mu I (+ S)`` (B, dim, dim); its symmetric part's eigenvalues
        are all >= mu (``S``, with ``skew``, is skew-symmetric)."""
        a = self._anchor(anchor, t.shape[0])
        h = self._features(t, cond, a)
        factor, _, _ = self._heads(h, t, a)
        return self._gain_of(h, factor)

    def _gain_of(self, h: Tensor, factor: Tensor) -> Tensor:
        eye = torch.eye(self.dim, device=factor.device, dtype=factor.dtype)
        gain = factor @ factor.transpose(1, 2) + self.mu * eye
        if self.skew:
            u, v = self._skew_factors(h)
            gain = gain + u @ v.transpose(1, 2) - v @ u.transpose(1, 2)
        return gain

    def _potential_heads(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The potential's biases ``b`` and non-negative weights ``a`` (B, P) for features ``h``."""
        return self.potential_bias_head(h), nn.functional.softplus(self.potential_weight_head(h))

    def _heads_features(
        self, x: Tensor, t: Tensor, cond: Tensor | None, anchor: Tensor | None
    ) -> Tensor:
        b = x.shape[0]
        return self._features(check_time(t, b), cond, self._anchor(anchor, b))

    def potential_energy(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, anchor: Tensor | None = None
    ) -> Tensor:
        """The convex potential ``phi(x; t, c)`` (B,) whose gradient the field subtracts."""
        flat = x.reshape(x.shape[0], -1)
        if not self.potential:
            return flat.new_zeros(flat.shape[0])
        bias, weight = self._potential_heads(self._heads_features(x, t, cond, anchor))
        return (weight * nn.functional.softplus(flat @ self.potential_proj.T + bias)).sum(1)

    def potential_gradient(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, anchor: Tensor | None = None
    ) -> Tensor:
        """``grad_x phi(x; t, c)`` (B, dim) of the convex potential (zeros without one)."""
        flat = x.reshape(x.shape[0], -1)
        if not self.potential:
            return torch.zeros_like(flat)
        heads = self._potential_heads(self._heads_features(x, t, cond, anchor))
        return self._potential_gradient(flat, *heads)

    def _potential_gradient(self, flat: Tensor, bias: Tensor, weight: Tensor) -> Tensor:
        proj = self.potential_proj.to(flat.dtype)
        pre = flat @ proj.T + bias.to(flat.dtype)
        return (weight.to(flat.dtype) * torch.sigmoid(pre)) @ proj

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, anchor: Tensor | None = None
    ) -> Tensor:
        b = x.shape[0]
        flat = x.reshape(b, -1)
        if flat.shape[1] != self.dim:
            raise ValueError(
                f"ContractingResidual was built for {self.dim} features, got input "
                f"of shape {tuple(x.shape)}"
            )
        tb = check_time(t, b).to(x.device)
        a = self._anchor(anchor, b)
        h = self._features(tb, cond, a)
        factor, centre, force = self._heads(h, tb, a)
        d = flat - centre.to(flat.dtype)
        factor = factor.to(flat.dtype)
        # K d = L (L^T d) + mu d, without forming K (cheap for the low-rank factor)
        kd = (factor @ (factor.transpose(1, 2) @ d[:, :, None]))[:, :, 0] + self.mu * d
        if force is not None:
            kd = kd - force.to(flat.dtype)
        if self.skew:
            u, v = (f.to(flat.dtype) for f in self._skew_factors(h))
            col = d[:, :, None]
            kd = kd + (u @ (v.transpose(1, 2) @ col) - v @ (u.transpose(1, 2) @ col))[:, :, 0]
        if self.potential:
            heads = self._potential_heads(h)  # once for both evaluations
            centre = centre.to(flat.dtype)
            pull = self._potential_gradient(flat, *heads)
            kd = kd + pull - self._potential_gradient(centre, *heads)
        return (-kd).reshape(x.shape)


class ResidualField(nn.Module):
    """``v(x, t, c) = base(x, t, c) + residual(x, t, c)`` with the ``base`` field frozen.

    The base (a pretrained velocity network) gets ``requires_grad=False`` and stays in eval
    mode, so only the residual trains; gradients still flow through the base to ``x``.

    Example:
        >>> import torch
        >>> from flowpost.nets.mlp import MLPVelocity
        >>> field = ResidualField(MLPVelocity(2, hidden=16), ContractingResidual(2, hidden=16))
        >>> field(torch.randn(5, 2), torch.rand(5)).shape
        torch.Size([5, 2])
        >>> sum(p.numel() for p in field.parameters() if p.requires_grad) > 0
        True
    """

    def __init__(self, base: nn.Module | Callable[..., Tensor], residual: nn.Module) -> None:
        super().__init__()
        self.base = base
        if isinstance(base, nn.Module):
            base.requires_grad_(False)
            base.eval()
        self.residual = residual

    def train(self, mode: bool = True) -> ResidualField:
        super().train(mode)
        if isinstance(self.base, nn.Module):
            self.base.eval()  # frozen: dropout off, normalisation statistics fixed
        return self

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if getattr(self.residual, "anchor", "none") == "none":
            return self.base(x, t, cond) + self.residual(x, t, cond)
        b = x.shape[0]
        tb = check_time(t, b).to(x.device)
        own = getattr(self.residual, "anchor_net", None)
        if own is not None:  # a trained anchor: its own network, gradients kept
            anchor = own(torch.zeros_like(x), torch.zeros_like(tb), cond).reshape(b, -1)
            velocity = self.base(x, tb, cond)
        else:
            # the anchor a(c) = base(0, 0, c) rides in the same base call as the velocity
            # (one batch of 2B); it does not depend on x, so the residual's Jacobian is
            # unchanged
            both = self.base(
                torch.cat([x, torch.zeros_like(x)]),
                torch.cat([tb, torch.zeros_like(tb)]),
                None if cond is None else torch.cat([cond, cond]),
            )
            velocity, anchor = both[:b], both[b:].detach().reshape(b, -1)
        out = velocity + self.residual(x, tb, cond, anchor=anchor)
        path = getattr(self.residual, "path_net", None)
        if path is not None:
            out = out + self.path_force(path, anchor, tb, cond, x.shape)
        return out

    def path_force(
        self,
        path: nn.Module,
        anchor: Tensor,
        t: Tensor,
        cond: Tensor | None,
        shape: torch.Size,
    ) -> Tensor:
        """``path(p, t, c) - base(p, t, c)`` on the anchored path ``p = t a(c)``, shaped
        ``shape``: the residual's ``x``-independent force from a trained copy of the base
        (the :class:`ContractingResidual` docstring). The point is detached: the force is
        trained for its value, not for where it is read."""
        point = (t[:, None].to(anchor.dtype) * anchor.detach()).reshape(shape)
        with torch.no_grad():  # the base is frozen, and the point carries no gradient
            reference = self.base(point, t, cond)
        return path(point, t, cond) - reference


__all__ = ["ANCHOR_MODES", "OFFSETS", "ContractingResidual", "ResidualField"]
