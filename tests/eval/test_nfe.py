"""Error vs NFE: the discretisation error of the solvers shrinks at their order."""

import math

import pytest
import torch

from flowpost.eval.metrics import w2
from flowpost.eval.nfe import default_metric, error_vs_nfe, flow_error_vs_nfe


def test_error_vs_nfe_generic():
    ref = torch.zeros(10, 1)
    curve = error_vs_nfe(lambda n: torch.full((10, 1), 1.0 / n), ref, [1, 2, 4], label="x")
    assert curve.errors == pytest.approx([1.0, 0.5, 0.25])
    assert curve.as_dict() == pytest.approx({1: 1.0, 2: 0.5, 4: 0.25})
    assert curve.label == "x"
    with pytest.raises(ValueError, match=">= 1"):
        error_vs_nfe(lambda n: ref, ref, [0, 1])
    with pytest.raises(ValueError, match="empty"):
        error_vs_nfe(lambda n: ref, ref, [])


def test_flow_error_vs_nfe_orders():
    # dx/dt = -x: exact x1 = x0 / e. Euler has error ~ 1/NFE, RK4 ~ 1/NFE^4.
    x0 = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    exact = x0 * math.exp(-1.0)
    field = lambda x, t, c: -x  # noqa: E731
    euler = flow_error_vs_nfe(field, x0, exact, [4, 8, 16, 32], "euler")
    ratios = [a / b for a, b in zip(euler.errors, euler.errors[1:])]
    assert all(1.7 < r < 2.3 for r in ratios)
    rk4 = flow_error_vs_nfe(field, x0, exact, [4, 8, 16], "rk4")
    assert rk4.errors[0] > 10 * rk4.errors[1]
    assert rk4.errors[-1] < 1e-4 < euler.errors[-1]
    assert euler.label == "euler"


def test_default_metric_switches_to_sliced():
    a = torch.randn(100, 2)
    assert default_metric(a, a + 1) == pytest.approx(w2(a, a + 1))
    big = torch.randn(3000, 2)
    assert default_metric(big, big + torch.tensor([2.0, 0.0])) == pytest.approx(
        math.sqrt(2), rel=0.1
    )


def test_doctests():
    import doctest

    import flowpost.eval.nfe as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
