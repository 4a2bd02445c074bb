"""Tests for flowpost/flows/solvers.py: convergence orders, odeint with dopri5, reversibility,
gradients (the adaptive solver itself: test_dopri5.py)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch
from torch import Tensor

import flowpost.flows.solvers as solvers
from flowpost.flows.solvers import (
    Trajectory,
    encode,
    guided,
    odeint,
    sample,
    steps_for_nfe,
)
from flowpost.flows.timesteps import time_grid

torch.set_num_threads(1)

# dx/dt = a(t) A x with a(t) = 1 + t: A(t) commutes with itself at all times, so the exact
# solution is x(t) = expm((t + t^2 / 2) A) x(0). The rotation-plus-decay A exercises both the
# oscillating and the contracting parts, and the time dependence checks the stage times.
A = torch.tensor([[-0.3, 1.5], [-1.5, -0.3]], dtype=torch.float64)


def linear_field(x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
    return (1 + t).unsqueeze(1) * (x @ A.T)


def exact(x0: Tensor, t0: float, t1: float) -> Tensor:
    phase = (t1 + t1**2 / 2) - (t0 + t0**2 / 2)
    return x0 @ torch.linalg.matrix_exp(phase * A).T


X0 = torch.tensor([[1.0, 0.0], [0.3, -2.0], [-1.0, 0.5]], dtype=torch.float64)


def observed_order(method: str, steps: list[int]) -> float:
    errs = []
    for n in steps:
        grid = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        x1 = odeint(linear_field, X0, grid, method=method)
        errs.append(float((x1 - exact(X0, 0.0, 1.0)).abs().max()))
    slope = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    return -float(slope)


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_convergence_order(method: str, order: int) -> None:
    steps = [16, 32, 64, 128] if method != "euler" else [64, 128, 256, 512]
    p = observed_order(method, steps)
    assert abs(p - order) < 0.3, f"{method}: observed order {p:.3f}, expected {order}"


@pytest.mark.parametrize("method,order", [("midpoint", 2), ("rk4", 4)])
def test_order_on_nonuniform_decreasing_grid(method: str, order: int) -> None:
    # Backward from t = 1 to 0 on a shifted (non-uniform) grid: same order.
    errs = []
    steps = [16, 32, 64]
    for n in steps:
        grid = time_grid(n, "shifted", shift=2.0, dtype=torch.float64).flip(0)
        x0 = odeint(linear_field, X0, grid, method=method)
        errs.append(float((x0 - exact(X0, 1.0, 0.0)).abs().max()))
    p = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(p - order) < 0.3, (method, p)


def test_odeint_dopri5_on_grid_and_trajectory() -> None:
    grid = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    traj = odeint(linear_field, X0, grid, method="dopri5", rtol=1e-9, atol=1e-9,
                  return_trajectory=True)  # fmt: skip
    assert isinstance(traj, Trajectory)
    assert torch.allclose(traj.states[1], exact(X0, 0.0, 0.25), atol=1e-7)
    assert torch.allclose(traj.final, exact(X0, 0.0, 1.0), atol=1e-7)


def _mlp_field(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)

    class Field(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = torch.nn.Linear(3, 16)
            self.l2 = torch.nn.Linear(16, 2)

        def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
            return self.l2(torch.tanh(self.l1(torch.cat([x, t.unsqueeze(1)], 1))))

    return Field().double()


def test_reverse_then_forward_returns_input() -> None:
    f = _mlp_field()
    x1 = torch.randn(8, 2, dtype=torch.float64)
    z = encode(f, x1, nfe=4 * 64, method="rk4")
    back = sample(f, z, nfe=4 * 64, method="rk4")
    assert not torch.allclose(z, x1, atol=1e-2)  # the encoding actually moved the points
    assert (back - x1).abs().max() < 1e-9


@pytest.mark.parametrize("method", ["euler", "heun", "rk4"])
def test_gradients_match_finite_differences(method: str) -> None:
    f = _mlp_field(1)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    grid = time_grid(5, "shifted", shift=2.0, dtype=torch.float64)

    def fn(x_in: Tensor, w: Tensor) -> Tensor:
        def field(y: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
            return f(y, t) * w

        out = odeint(field, x_in, grid, method=method, grad=True)
        assert isinstance(out, Tensor)
        return out

    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x, w), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "dopri5"])
def test_checkpoint_gradients_equal_plain(method: str) -> None:
    f = _mlp_field(2)
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    grid = time_grid(6, dtype=torch.float64)
    grads = []
    for ckpt in (False, True):
        out = odeint(f, x, grid, method=method, grad=True, checkpoint=ckpt)
        assert isinstance(out, Tensor)
        (out.pow(2).sum() + out[:, 0].sin().sum()).backward()
        grads.append([x.grad] + [p.grad for p in f.parameters()])
        x.grad = None
        f.zero_grad(set_to_none=True)
    for a, b in zip(*grads):
        assert a is not None and b is not None
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_checkpoint_recomputes_forward_in_backward() -> None:
    calls = [0]
    lin = torch.nn.Linear(2, 2).double()

    def field(x: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        calls[0] += 1
        return torch.tanh(lin(x))

    x = torch.randn(2, 2, dtype=torch.float64)
    grid = time_grid(5, dtype=torch.float64)
    for ckpt, extra in ((False, 0), (True, 10)):  # heun: 2 evaluations x 5 steps recomputed
        calls[0] = 0
        out = odeint(field, x, grid, method="heun", grad=True, checkpoint=ckpt)
        assert calls[0] == 10
        out.sum().backward()  # type: ignore[union-attr]
        assert calls[0] == 10 + extra


def test_grad_flag_controls_autograd() -> None:
    f = _mlp_field()
    x = torch.randn(2, 2, dtype=torch.float64)
    out = sample(f, x, nfe=4)
    assert isinstance(out, Tensor) and not out.requires_grad
    out = sample(f, x, nfe=4, grad=True)
    assert isinstance(out, Tensor) and out.requires_grad
    with pytest.raises(ValueError, match="grad=True"):
        odeint(f, x, time_grid(2, dtype=torch.float64), checkpoint=True)


@pytest.mark.parametrize(
    "method,nfe,calls", [("euler", 7, 7), ("midpoint", 8, 8), ("heun", 9, 8), ("rk4", 10, 8)]
)
def test_sample_counts_network_evaluations(method: str, nfe: int, calls: int) -> None:
    n = [0]
    seen: list[float] = []

    def field(x: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        n[0] += 1
        seen.append(float(t[0]))
        assert t.shape == (x.shape[0],)
        return torch.ones_like(x)

    out = sample(field, torch.zeros(5, 3), nfe, method)
    assert n[0] == calls
    assert (
        steps_for_nfe(nfe, method) * {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[method]
        == calls
    )
    assert torch.allclose(out, torch.ones(5, 3), atol=1e-6)  # constant field, exact
    assert min(seen) >= 0.0 and max(seen) <= 1.0


def test_nfe_smaller_than_one_step_is_an_error() -> None:
    with pytest.raises(ValueError, match="smaller than one rk4 step"):
        sample(lambda x, t, c: x, torch.zeros(1, 1), nfe=3, method="rk4")
    with pytest.raises(ValueError, match="unknown solver"):
        steps_for_nfe(4, "rk45")


def test_shifted_grid_times_reach_the_field() -> None:
    seen: list[float] = []

    def field(x: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        seen.append(float(t[0]))
        return x

    sample(field, torch.zeros(1, 1), nfe=4, grid="shifted", shift=3.0)
    expected = time_grid(4, "shifted", shift=3.0)[:-1].tolist()
    assert np.allclose(seen, expected)
    with pytest.raises(ValueError, match="shift"):
        sample(field, torch.zeros(1, 1), nfe=4, grid="uniform", shift=3.0)


def test_guided_is_one_batched_forward_and_matches_formula() -> None:
    calls = []
    emb = torch.randn(4, 2)

    def model(x: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        calls.append(x.shape[0])
        assert c is not None
        return x * t.unsqueeze(1) + emb[c]

    x = torch.randn(3, 2)
    t = torch.full((3,), 0.4)
    c = torch.tensor([0, 2, 1])
    v = guided(model, 2.5, num_classes=3)(x, t, c)
    assert calls == [6]
    v_c = model(x, t, c)
    v_u = model(x, t, torch.full_like(c, 3))
    assert torch.allclose(v, v_u + 2.5 * (v_c - v_u), atol=1e-6)
    with pytest.raises(ValueError, match="class labels"):
        guided(model, 2.0, 3)(x, t, None)
    with pytest.raises(ValueError, match="num_classes"):
        sample(model, x, nfe=2, cond=c, guidance=2.0)
    calls.clear()
    sample(model, x, nfe=2, cond=c, guidance=2.0, num_classes=3)
    assert calls == [6, 6]


def test_trajectory_and_grid_validation() -> None:
    traj = sample(lambda x, t, c: -x, torch.ones(2, 3), nfe=8, method="midpoint",
                  return_trajectory=True)  # fmt: skip
    assert isinstance(traj, Trajectory)
    assert traj.states.shape == (5, 2, 3) and traj.times.shape == (5,)
    # Midpoint on dx/dt = -x multiplies by the degree-2 Taylor polynomial 1 - h + h^2 / 2.
    assert torch.allclose(traj.final, torch.full((2, 3), (1 - 0.25 + 0.25**2 / 2) ** 4))
    assert abs(float(traj.final[0, 0]) - math.exp(-1)) < 1e-2
    with pytest.raises(ValueError, match="strictly increasing"):
        odeint(lambda x, t, c: x, torch.ones(1, 1), torch.tensor([0.0, 0.5, 0.4, 1.0]))
    with pytest.raises(ValueError, match="at least two"):
        odeint(lambda x, t, c: x, torch.ones(1, 1), torch.tensor([0.0]))


def test_sample_with_dopri5_is_adaptive() -> None:
    x = sample(linear_field, X0, None, "dopri5")
    assert torch.allclose(x, exact(X0, 0.0, 1.0), atol=1e-4)
    with pytest.raises(ValueError, match="chooses its own steps"):
        encode(linear_field, X0, nfe=8, method="dopri5")


def test_doctests() -> None:
    assert doctest.testmod(solvers).failed == 0
