"""Sample quality as a function of the number of network evaluations (NFE).

:func:`error_vs_nfe` is generic: it calls ``generate(nfe)`` for each budget and scores the
result against a reference. :func:`flow_error_vs_nfe` does this for a velocity field with
the library's ODE solvers, from the SAME noise at every budget, so the curve shows only the
discretisation error (plus the model's own error), not sampling noise.

Example:
    >>> import torch
    >>> x0 = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    >>> field = lambda x, t, c: -x  # dx/dt = -x, so exactly x1 = x0 / e
    >>> curve = flow_error_vs_nfe(field, x0, x0 * torch.exp(torch.tensor(-1.0)), [1, 4, 16])
    >>> curve.errors[0] > curve.errors[1] > curve.errors[2]
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from flowpost.eval.metrics import sliced_w2, w2

Metric = Callable[[Tensor, Tensor], float]


@dataclass
class NFECurve:
    """Errors (one per NFE budget) of one sampler; ``label`` names it in plots."""

    nfes: list[int]
    errors: list[float]
    label: str = ""

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.nfes, self.errors))


def default_metric(samples: Tensor, reference: Tensor) -> float:
    """Exact W2 for up to 2000 samples per side, sliced W2 beyond."""
    if max(samples.shape[0], reference.shape[0]) <= 2000:
        return w2(samples, reference)
    return sliced_w2(samples, reference)


def error_vs_nfe(
    generate: Callable[[int], Tensor],
    reference: Tensor,
    nfes: Sequence[int],
    metric: Metric | None = None,
    label: str = "",
) -> NFECurve:
    """Score ``generate(nfe)`` against ``reference`` for each budget in ``nfes``."""
    if not nfes:
        raise ValueError("nfes is empty; give at least one budget, e.g. [1, 2, 4, 8]")
    if any(int(n) < 1 for n in nfes):
        raise ValueError(f"every NFE budget must be >= 1, got {list(nfes)}")
    score = metric or default_metric
    errors = []
    for n in nfes:
        with torch.no_grad():
            samples = generate(int(n))
        errors.append(float(score(samples, reference)))
    return NFECurve([int(n) for n in nfes], errors, label)


def flow_error_vs_nfe(
    model: Callable[..., Tensor],
    noise: Tensor,
    reference: Tensor,
    nfes: Sequence[int],
    method: str = "euler",
    *,
    cond: Tensor | None = None,
    metric: Metric | None = None,
    label: str | None = None,
) -> NFECurve:
    """Error vs NFE of a velocity field ``model(x, t, cond)`` integrated from ``noise`` with
    ``flowpost.flows.solvers.sample`` and solver ``method``."""
    from flowpost.flows.solvers import sample

    def generate(nfe: int) -> Tensor:
        out = sample(model, noise, nfe, method, cond=cond)
        assert isinstance(out, Tensor)
        return out

    return error_vs_nfe(generate, reference, nfes, metric, label if label is not None else method)


__all__ = ["NFECurve", "Metric", "default_metric", "error_vs_nfe", "flow_error_vs_nfe"]
