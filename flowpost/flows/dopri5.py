"""Dormand-Prince 5(4): the adaptive solver behind ``method="dopri5"`` of
:func:`flowpost.flows.solvers.odeint` and :func:`flowpost.flows.solvers.sample`.

The 5th-order solution is propagated and the embedded 4th-order one only estimates the error;
a step is accepted when the worst sample's RMS of ``err / (atol + rtol max(|x|, |x_new|))`` is
at most 1. The last stage is evaluated at the new point, so it is the next step's first stage
(first same as last, 6 evaluations per step).

Example:
    >>> y = dopri5(lambda x, t, c: -x, torch.ones(1, 1), rtol=1e-8, atol=1e-8)
    >>> abs(float(y) - math.exp(-1.0)) < 1e-7
    True
"""

from __future__ import annotations

import math
from typing import Literal, overload

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from flowpost.flows.ode import Trajectory, VelocityField, check_state
from flowpost.flows.recording import active_recorder

__all__ = ["dopri5", "odeint_adaptive"]

# Dormand & Prince (1980) 5(4) tableau; the 5th-order solution is propagated and the embedded
# 4th-order one only estimates the error. The last stage is evaluated at the new point, so it
# is the next step's first stage (first same as last, 6 evaluations per step).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# Difference between the 5th- and 4th-order weights (the 7th stage enters the 4th-order one).
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def _err_norm(v: Tensor, scale: Tensor) -> float:
    # Per-sample RMS, worst sample: every sample of the batch meets the tolerance.
    r = (v / scale).flatten(1).pow(2).mean(1).sqrt()
    return float(r.max())


def _dopri5_core(
    field: VelocityField,
    x: Tensor,
    t0: float,
    t1: float,
    cond: Tensor | None,
    rtol: float,
    atol: float,
    max_steps: int,
    first_step: float | None,
) -> tuple[Tensor, int]:
    b = x.shape[0]
    direction = 1.0 if t1 >= t0 else -1.0
    span = abs(t1 - t0)
    if span == 0.0:
        return x, 0

    def f(y: Tensor, t: float) -> Tensor:
        return field(y, torch.full((b,), t, dtype=y.dtype, device=y.device), cond)

    nfe = 1
    k1 = f(x, t0)
    if first_step is not None:
        h = min(abs(first_step), span)
    else:
        # Hairer, Norsett & Wanner, Solving ODEs I, II.4: starting step from the first
        # derivative and a finite-difference estimate of the second.
        with torch.no_grad():
            sc = atol + rtol * x.abs()
            d0, d1 = _err_norm(x, sc), _err_norm(k1, sc)
            h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
            h0 = min(h0, span)
            k2 = f(x + direction * h0 * k1, t0 + direction * h0)
            nfe += 1
            d2 = _err_norm(k2 - k1, sc) / h0
            dm = max(d1, d2)
            h1 = max(1e-6, h0 * 1e-3) if dm <= 1e-15 else (0.01 / dm) ** 0.2
            h = min(100 * h0, h1, span)
    t = t0
    steps = 0
    while direction * (t1 - t) > 0:
        if steps >= max_steps:
            raise RuntimeError(
                f"dopri5 exceeded max_steps={max_steps} before reaching t={t1} (stopped at "
                f"t={t:.6g}, step {h:.3g}); the field may be stiff or blow up: raise max_steps, "
                "loosen rtol/atol, or use a fixed-step method"
            )
        steps += 1
        remaining = abs(t1 - t)
        last = h >= remaining * (1 - 1e-12)
        if last:
            h = remaining
        hs = direction * h
        ks = [k1]
        for i in range(1, 6):
            yi = x
            for a, k in zip(_A[i], ks):
                if a != 0.0:
                    yi = yi.add(k, alpha=hs * a)
            ks.append(f(yi, t + hs * _C[i]))
        x_new = x
        for w, k in zip(_B, ks):
            if w != 0.0:
                x_new = x_new.add(k, alpha=hs * w)
        k7 = f(x_new, t1 if last else t + hs)
        nfe += 6
        with torch.no_grad():
            err = torch.zeros_like(x)
            for w, k in zip(_E, [*ks, k7]):
                if w != 0.0:
                    err.add_(k, alpha=hs * w)
            sc = atol + rtol * torch.maximum(x.abs(), x_new.abs())
            e = _err_norm(err, sc)
        if not math.isfinite(e):
            raise RuntimeError(
                f"dopri5 produced a non-finite state at t={t:.6g}; the field returned "
                "NaN/inf (check the model and its input)"
            )
        if e <= 1.0:
            t = t1 if last else t + hs
            x, k1 = x_new, k7
            factor = 10.0 if e == 0.0 else min(10.0, max(0.2, 0.9 * e**-0.2))
        else:
            factor = min(1.0, max(0.2, 0.9 * e**-0.2))
        h = h * factor
        if h < 1e-14 * max(1.0, abs(t)):
            raise RuntimeError(
                f"dopri5 step size underflow at t={t:.6g}; the tolerance rtol={rtol}, "
                f"atol={atol} cannot be met (loosen them or check the field for NaN)"
            )
    return x, nfe


@overload
def dopri5(
    field: VelocityField, x: Tensor, t0: float = ..., t1: float = ..., *,
    cond: Tensor | None = ..., rtol: float = ..., atol: float = ..., max_steps: int = ...,
    first_step: float | None = ..., grad: bool = ..., return_nfe: Literal[False] = ...,
) -> Tensor: ...  # fmt: skip
@overload
def dopri5(
    field: VelocityField, x: Tensor, t0: float = ..., t1: float = ..., *,
    cond: Tensor | None = ..., rtol: float = ..., atol: float = ..., max_steps: int = ...,
    first_step: float | None = ..., grad: bool = ..., return_nfe: Literal[True],
) -> tuple[Tensor, int]: ...  # fmt: skip


def dopri5(
    field: VelocityField,
    x: Tensor,
    t0: float = 0.0,
    t1: float = 1.0,
    *,
    cond: Tensor | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
    first_step: float | None = None,
    grad: bool = False,
    return_nfe: bool = False,
) -> Tensor | tuple[Tensor, int]:
    """Adaptive Dormand-Prince 5(4) solve from ``t0`` to ``t1`` (``t1 < t0`` integrates back).

    A step is accepted when the worst sample's RMS of ``err / (atol + rtol max(|x|, |x_new|))``
    is at most 1; the next step is scaled by ``0.9 err^(-1/5)`` clipped to ``[0.2, 10]``.

    Args:
        max_steps: attempted steps allowed before a ``RuntimeError``.
        first_step: initial step size (estimated from the field if None).
        grad: record the solve for autograd (step sizes are treated as constants).
        return_nfe: also return the number of field evaluations.

    >>> y, n = dopri5(lambda x, t, c: -x, torch.ones(1, 1), rtol=1e-8, atol=1e-8, return_nfe=True)
    >>> abs(float(y) - math.exp(-1.0)) < 1e-7, n > 6
    (True, True)
    """
    check_state(x)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if rtol < 0 or atol < 0 or rtol + atol == 0:
        raise ValueError(f"tolerances must be >= 0 and not both 0, got rtol={rtol}, atol={atol}")
    with torch.set_grad_enabled(grad):
        y, nfe = _dopri5_core(
            field, x, float(t0), float(t1), cond, rtol, atol, max_steps, first_step
        )
    return (y, nfe) if return_nfe else y


def odeint_adaptive(
    field: VelocityField,
    x: Tensor,
    ts: list[float],
    grid: Tensor,
    cond: Tensor | None,
    checkpoint: bool,
    return_trajectory: bool,
    rtol: float,
    atol: float,
    max_steps: int,
) -> Tensor | Trajectory:
    """Adaptive solve from grid time to grid time (``ts`` the grid's floats), each interval
    to ``rtol``/``atol``; ``checkpoint`` recomputes each interval in backward."""
    states = [x]
    rec = active_recorder()
    for a, b in zip(ts[:-1], ts[1:]):
        args = (field, x, a, b, cond, rtol, atol, max_steps, None)
        if checkpoint:
            # The recomputation repeats the same accepted/rejected steps (deterministic).
            x = _checkpoint(lambda *z: _dopri5_core(*z)[0], *args, use_reentrant=False)
        else:
            x = _dopri5_core(*args)[0]
        if rec is not None:  # one adaptive segment counts as one step (its chord)
            rec.add(x - states[-1])
        states.append(x)
    if return_trajectory:
        return Trajectory(torch.stack(states), grid.detach().to(device=x.device, dtype=x.dtype))
    return x
