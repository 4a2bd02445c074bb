"""Path length of whatever sampler runs, recorded by the solvers themselves.

Inside :func:`record_path_length`, every fixed-grid ODE step (:func:`flowpost.flows.odeint`),
every adaptive segment and every Euler-Maruyama step (:func:`flowpost.flows.euler_maruyama`)
reports its deterministic displacement: ``x_{k+1} - x_k`` for an ODE step, the drift part
``b(x_k, t_k) dt`` for an SDE step (the Brownian increment is not a displacement of the
flow: its sum grows like ``sqrt(steps)`` and would make the length depend on the grid). The
recorder sums the per-sample RMS norms, so ``lengths`` is ``sum_k ||b dt||``, the Riemann sum
of the mean path length ``int_0^1 ||b(X_t, t)|| dt`` of the sampler that actually ran.

Outside the context nothing is recorded and the solvers pay nothing. A sampler that calls
no solver (a one-step generator) records no step; :attr:`PathLengthRecorder.steps` is then 0
and the caller decides what to report (the evaluation falls back to the chord
``||x_1 - x_0||``, which is exactly the path of a one-step map).

Example:
    >>> import torch
    >>> from flowpost.flows.solvers import sample
    >>> with record_path_length() as rec:
    ...     _ = sample(lambda x, t, c: torch.ones_like(x), torch.zeros(3, 2), nfe=4)
    >>> rec.steps, [round(v, 6) for v in rec.lengths.tolist()]
    (4, [1.0, 1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

__all__ = ["PathLengthRecorder", "record_path_length", "active_recorder"]


class PathLengthRecorder:
    """Sums per-sample RMS norms of the displacements the solvers report."""

    def __init__(self) -> None:
        self.lengths: Tensor | None = None
        self.steps = 0

    def add(self, displacement: Tensor) -> None:
        """Add one step's displacement ``(B, ...)`` (detached, summed per sample)."""
        with torch.no_grad():
            norms = displacement.detach().flatten(1).float().pow(2).mean(1).sqrt()
        self.lengths = norms if self.lengths is None else self.lengths + norms
        self.steps += 1

    def mean(self) -> float:
        """Mean path length over the samples (0 steps: ``nan``)."""
        if self.lengths is None:
            return float("nan")
        return float(self.lengths.mean())


_ACTIVE: ContextVar[PathLengthRecorder | None] = ContextVar("flowpost_path_length", default=None)


@contextmanager
def record_path_length() -> Iterator[PathLengthRecorder]:
    """Record the displacement of every solver step taken inside the block."""
    rec = PathLengthRecorder()
    token = _ACTIVE.set(rec)
    try:
        yield rec
    finally:
        _ACTIVE.reset(token)


def active_recorder() -> PathLengthRecorder | None:
    """The recorder of the innermost :func:`record_path_length` block, or ``None``.

    A solver looks it up once per solve and, only when there is one, reports each step with
    ``rec.add(displacement)`` (so an unrecorded solve computes no extra difference)."""
    return _ACTIVE.get()
