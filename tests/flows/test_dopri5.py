"""Tests of flowpost/flows/dopri5.py: the adaptive solver meets its tolerance, spends fewer
evaluations at looser tolerances, integrates backward, and stops with a clear error."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from flowpost.flows.dopri5 import dopri5

torch.set_num_threads(1)

# the linear, time-dependent test problem of test_solvers.py: exact solution by expm
A = torch.tensor([[-0.3, 1.5], [-1.5, -0.3]], dtype=torch.float64)
X0 = torch.tensor([[1.0, 0.0], [0.3, -2.0], [-1.0, 0.5]], dtype=torch.float64)


def linear_field(x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
    return (1 + t).unsqueeze(1) * (x @ A.T)


def exact(x0: Tensor, t0: float, t1: float) -> Tensor:
    phase = (t1 + t1**2 / 2) - (t0 + t0**2 / 2)
    return x0 @ torch.linalg.matrix_exp(phase * A).T


@pytest.mark.parametrize("tol", [1e-4, 1e-7, 1e-10])
def test_dopri5_meets_tolerance(tol: float) -> None:
    x1, nfe = dopri5(linear_field, X0, 0.0, 1.0, rtol=tol, atol=tol, return_nfe=True)
    err = float((x1 - exact(X0, 0.0, 1.0)).abs().max())
    # Local error control: the global error stays within a small multiple of the tolerance.
    assert err < 10 * tol, (tol, err)
    assert nfe >= 7


def test_dopri5_fewer_evaluations_for_looser_tolerance_and_backward() -> None:
    _, n_loose = dopri5(linear_field, X0, rtol=1e-3, atol=1e-3, return_nfe=True)
    _, n_tight = dopri5(linear_field, X0, rtol=1e-9, atol=1e-9, return_nfe=True)
    assert n_loose < n_tight
    back = dopri5(linear_field, X0, 1.0, 0.3, rtol=1e-9, atol=1e-9)
    assert torch.allclose(back, exact(X0, 1.0, 0.3), atol=1e-7)


def test_dopri5_max_steps_error() -> None:
    with pytest.raises(RuntimeError, match="max_steps=3"):
        dopri5(linear_field, X0, rtol=1e-12, atol=1e-12, max_steps=3)
