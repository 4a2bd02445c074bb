"""Residual velocity fields that contract by construction (ResFT-FM's residual fine-tuning).

:class:`ContractingResidual` is

    r(x, t, c) = -K(t, c) (x - m(t, c)),    K = L L^T + mu I,

with ``L`` (lower-triangular, or a low-rank ``dim x rank`` factor for large inputs) and the
centre ``m`` regressed from ``(t, c)`` by a small MLP. Since ``dr/dx = -K`` and ``L L^T`` is
positive semi-definite, the symmetric part of the Jacobian is ``<= -mu I`` for every input:
two solutions of ``dx/dt = r`` approach each other at rate at least ``mu``, and adding ``r``
to any field lowers the field's one-sided Lipschitz constant by ``mu``. Images are flattened.

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


class ContractingResidual(nn.Module):
    """``r(x, t, c) = -(L L^T + mu I)(x - m)`` with ``L, m`` functions of ``(t, c)`` only.

    Args:
        dim: number of features (``prod(shape)`` for images).
        hidden: width of the ``(t, c) -> (L, m)`` MLP.
        mu: guaranteed contraction rate (> 0).
        num_classes: labels (with null label ``K``); ``cond_dim``: float conditions instead.
        rank: ``None`` picks a full lower-triangular ``L`` for ``dim <= 32`` and rank 8
            otherwise (a full factor of a 784-pixel image would need 300k outputs).

    ``m`` starts at zero and ``L`` small, so initially ``r ~ -mu x``: a mild pull towards the
    origin that training then re-centres.
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
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not mu > 0:
            raise ValueError(f"mu must be > 0 for a contraction guarantee, got {mu}")
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be >= 1 or None (automatic), got {rank}")
        self.dim = dim
        self.mu = float(mu)
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

    def factor_and_centre(self, t: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``L`` (B, dim, rank) and ``m`` (B, dim) for times ``t`` (B,) and conditions."""
        b = t.shape[0]
        h = self.trunk(conditioning(self.time_embed, self.cond_embed, t, cond, b, t.device))
        raw = self.factor_head(h)
        if self.full:
            factor = raw.new_zeros(b, self.dim, self.dim)
            factor[:, self._rows, self._cols] = raw
        else:
            factor = raw.reshape(b, self.dim, self.rank)
        return factor, self.centre_head(h)

    def gain(self, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The matrix ``K = L L^T + mu I`` (B, dim, dim); its eigenvalues are all >= mu."""
        factor, _ = self.factor_and_centre(t, cond)
        eye = torch.eye(self.dim, device=factor.device, dtype=factor.dtype)
        return factor @ factor.transpose(1, 2) + self.mu * eye

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        flat = x.reshape(b, -1)
        if flat.shape[1] != self.dim:
            raise ValueError(
                f"ContractingResidual was built for {self.dim} features, got input "
                f"of shape {tuple(x.shape)}"
            )
        factor, centre = self.factor_and_centre(check_time(t, b).to(x.device), cond)
        d = flat - centre.to(flat.dtype)
        factor = factor.to(flat.dtype)
        # K d = L (L^T d) + mu d, without forming K (cheap for the low-rank factor)
        kd = (factor @ (factor.transpose(1, 2) @ d[:, :, None]))[:, :, 0] + self.mu * d
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
        return self.base(x, t, cond) + self.residual(x, t, cond)


__all__ = ["ContractingResidual", "ResidualField"]
