"""Couplings ``pi(x0, x1)`` between a batch of source noise and a batch of data.

A coupling re-orders the *source* batch ``x0`` so that row ``i`` of the result is paired
with row ``i`` of ``x1``. The data ``x1`` and its labels ``cond`` are never re-ordered, so a
sample keeps its label.

* :class:`IndependentCoupling`: the pairs as drawn (``pi = p0 x p1``).
* :class:`OTCoupling`: minibatch optimal transport with the squared Euclidean cost
  ``C_ij = ||x0_i - x1_j||^2`` on flattened samples and uniform weights. ``"exact"`` solves the
  linear program with ``ot.emd``; for equal batch sizes its optimum is a permutation (a vertex
  of the Birkhoff polytope), read off directly. ``"sinkhorn"`` solves the entropic problem
  ``min <P, C> - reg * H(P)`` with ``ot.sinkhorn`` (plain iterations for ``reg >= 0.02``,
  epsilon scaling below, where plain kernels underflow),
  where the cost is first divided by its mean so that ``reg`` does not depend on the data's
  scale; then for each target ``j`` a source index is drawn from the column ``P[:, j]``.
  With integer class labels the plan is solved within each label (``within_labels``): the
  sampler draws the noise independently of the label, so the noise paired with a label must
  stay N(0, I); a batch-wide plan sends the noise nearest each class's samples to that class
  and biases every class-conditional model trained on it. Float (vector) conditions are
  unique per sample, so they are paired batch-wide.
  Straighter pairings give straighter flow-matching paths (Tong et al. 2023, Pooladian et
  al. 2023).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod

import numpy as np
import ot
import torch
from torch import Tensor

__all__ = ["Coupling", "IndependentCoupling", "OTCoupling", "make_coupling", "ot_plan"]


def _check(x0: Tensor, x1: Tensor, cond: Tensor | None) -> None:
    if x0.dim() == 0 or x1.dim() == 0 or x0.shape[1:] != x1.shape[1:]:
        raise ValueError(
            f"x0 and x1 must be batches of samples of the same shape, got {tuple(x0.shape)} "
            f"and {tuple(x1.shape)}"
        )
    if x0.shape[0] == 0 or x1.shape[0] == 0:
        raise ValueError("cannot couple an empty batch; give at least one sample on each side")
    if cond is not None and cond.shape[0] != x1.shape[0]:
        raise ValueError(
            f"cond has {cond.shape[0]} rows but x1 has {x1.shape[0]}; labels belong to x1"
        )


class Coupling(ABC):
    """Re-orders ``x0`` to pair it with ``x1``; returns ``(x0_paired, x1, cond)``."""

    @abstractmethod
    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Pair ``x0`` with ``x1`` row by row (``x1`` and ``cond`` are returned unchanged)."""


class IndependentCoupling(Coupling):
    """The independent coupling: pairs are kept as drawn.

    >>> x0, x1 = torch.randn(4, 2), torch.randn(4, 2)
    >>> a, b, c = IndependentCoupling()(x0, x1)
    >>> bool(torch.equal(a, x0) and torch.equal(b, x1)), c
    (True, None)
    """

    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        _check(x0, x1, cond)
        if x0.shape[0] != x1.shape[0]:
            raise ValueError(
                f"independent coupling needs equal batch sizes, got {x0.shape[0]} and "
                f"{x1.shape[0]}; draw one noise sample per data sample"
            )
        return x0, x1, cond


def ot_plan(
    x0: Tensor,
    x1: Tensor,
    method: str = "exact",
    reg: float = 0.05,
    num_iter_max: int | None = None,
) -> np.ndarray:
    """Transport plan ``(n0, n1)`` (float64, sums to 1) between two batches, squared-L2 cost.

    >>> p = ot_plan(torch.tensor([[0.0], [1.0]]), torch.tensor([[1.1], [0.1]]))
    >>> (p * 2).round().tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    a = x0.detach().flatten(1).to("cpu", torch.float64)
    b = x1.detach().flatten(1).to("cpu", torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("cannot couple samples that contain NaN or inf; check the data")
    cost = torch.cdist(a, b).pow_(2).numpy()
    w0 = np.full(a.shape[0], 1.0 / a.shape[0])
    w1 = np.full(b.shape[0], 1.0 / b.shape[0])
    if method == "exact":
        plan = ot.emd(w0, w1, cost, numItermax=num_iter_max or 1_000_000)
    elif method == "sinkhorn":
        scale = cost.mean()
        cost = cost / scale if scale > 0 else cost
        # Plain Sinkhorn is fast but exp(-C / reg) underflows for small reg; epsilon scaling
        # (reg decreased gradually, log-stabilised) stays accurate there. Its inner loops warn
        # freely, so the marginals are checked here instead.
        solver = "sinkhorn" if reg >= 0.02 else "sinkhorn_epsilon_scaling"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = ot.sinkhorn(
                w0, w1, cost, reg, method=solver, numItermax=num_iter_max or 1000, stopThr=1e-9
            )
        plan = np.asarray(plan, dtype=np.float64)
        if np.isfinite(plan).all():
            marg = np.abs(plan.sum(0) - w1).sum() + np.abs(plan.sum(1) - w0).sum()
            if marg > 1e-3:
                warnings.warn(
                    f"sinkhorn (reg={reg}) did not converge (marginal error {marg:.1e}); "
                    "increase reg or num_iter_max, or use method='exact'",
                    stacklevel=3,
                )
    else:
        raise ValueError(f"unknown OT method {method!r}; choose 'exact' or 'sinkhorn'")
    plan = np.asarray(plan, dtype=np.float64)
    if not np.isfinite(plan).all() or plan.sum() <= 0:
        raise RuntimeError(
            f"OT plan ({method}, reg={reg}) is not finite; reg may be too small for "
            "sinkhorn: increase reg or use method='exact'"
        )
    return plan


class OTCoupling(Coupling):
    """Minibatch optimal-transport coupling (exact or Sinkhorn), squared Euclidean cost.

    Args:
        method: ``"exact"`` (``ot.emd``) or ``"sinkhorn"`` (entropic, ``ot.sinkhorn``).
        reg: entropic regularisation for Sinkhorn, relative to the mean pairwise cost.
        num_iter_max: iteration cap for the solver (default 1e6 for exact, 1000 for sinkhorn).
        within_labels: with integer labels, pair only within each label (default True).

    >>> x0 = torch.tensor([[0.0], [10.0], [5.0]])
    >>> x1 = torch.tensor([[9.0], [1.0], [6.0]])
    >>> a, b, c = OTCoupling()(x0, x1)
    >>> a[:, 0].tolist(), b[:, 0].tolist(), c
    ([10.0, 0.0, 5.0], [9.0, 1.0, 6.0], None)
    >>> labels = torch.tensor([0, 0, 1])  # the noise for label 1 stays its own draw
    >>> OTCoupling()(x0, x1, labels)[0][:, 0].tolist()
    [10.0, 0.0, 5.0]
    >>> OTCoupling()(x0, x1, torch.tensor([0, 1, 1]))[0][:, 0].tolist()
    [0.0, 5.0, 10.0]
    """

    def __init__(
        self,
        method: str = "exact",
        reg: float = 0.05,
        num_iter_max: int | None = None,
        within_labels: bool = True,
    ) -> None:
        if method not in ("exact", "sinkhorn"):
            raise ValueError(f"unknown OT method {method!r}; choose 'exact' or 'sinkhorn'")
        if method == "sinkhorn" and reg <= 0:
            raise ValueError(f"sinkhorn needs reg > 0, got {reg}; use method='exact' for reg 0")
        self.method = method
        self.reg = float(reg)
        self.num_iter_max = num_iter_max
        self.within_labels = within_labels

    def source_indices(
        self, x0: Tensor, x1: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Index into ``x0`` for each row of ``x1`` (LongTensor ``(n1,)`` on ``x0``'s device)."""
        plan = ot_plan(x0, x1, self.method, self.reg, self.num_iter_max)
        if self.method == "exact" and plan.shape[0] == plan.shape[1]:
            # A vertex solution of the balanced square problem is a permutation matrix / n.
            idx = torch.from_numpy(plan.argmax(axis=0))
        else:
            # Draw one source per target from the plan's column (the conditional pi(x0 | x1)).
            dev = generator.device if generator is not None else torch.device("cpu")
            cols = torch.from_numpy(plan.T.copy()).to(dev)
            cols = cols / cols.sum(dim=1, keepdim=True)
            idx = torch.multinomial(cols, 1, generator=generator).squeeze(1)
        return idx.to(x0.device)

    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        cond: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        _check(x0, x1, cond)
        labelled = (
            self.within_labels
            and cond is not None
            and cond.dim() == 1
            and not cond.is_floating_point()
            and x0.shape[0] == x1.shape[0]
        )
        if not labelled:
            return x0[self.source_indices(x0, x1, generator)], x1, cond
        assert cond is not None
        idx = torch.arange(x0.shape[0], device=x0.device)
        for label in torch.unique(cond):
            rows = (cond == label).nonzero(as_tuple=True)[0]
            if rows.numel() > 1:
                idx[rows] = rows[self.source_indices(x0[rows], x1[rows], generator)]
        return x0[idx], x1, cond


def make_coupling(name: str, **kwargs: float | str) -> Coupling:
    """Build a coupling by name: ``"independent"``, ``"ot"`` (exact), ``"sinkhorn"`` (reg=...).

    >>> type(make_coupling("sinkhorn", reg=0.1)).__name__, make_coupling("ot").method
    ('OTCoupling', 'exact')
    """
    try:
        if name == "independent":
            return IndependentCoupling(**kwargs)  # type: ignore[arg-type]
        if name == "ot":
            return OTCoupling(**{"method": "exact", **kwargs})  # type: ignore[arg-type]
        if name == "sinkhorn":
            return OTCoupling(**{"method": "sinkhorn", **kwargs})  # type: ignore[arg-type]
    except TypeError as e:
        raise ValueError(f"bad options {kwargs} for coupling {name!r}: {e}") from None
    raise ValueError(f"unknown coupling {name!r}; choose 'independent', 'ot' or 'sinkhorn'")
