"""ODE solvers for ``dx/dt = v(x, t, cond)`` on a time grid, differentiable on request.

Fixed-grid methods (``h = t_{k+1} - t_k``, which may be negative: a decreasing grid
integrates backward, data -> noise):

======== ================================================================ ===== =========
method   update                                                           order NFE/step
======== ================================================================ ===== =========
euler    ``x + h k1``                                                     1     1
midpoint ``x + h v(x + h/2 k1, t + h/2)``                                 2     2
heun     ``x + h/2 (k1 + v(x + h k1, t + h))``                            2     2
rk4      ``x + h/6 (k1 + 2 k2 + 2 k3 + k4)`` (classical Runge-Kutta)      4     4
dopri5   Dormand-Prince 5(4), adaptive step, FSAL                         5     6/step
======== ================================================================ ===== =========

with ``k1 = v(x, t)``. A field is called as ``field(x, t, cond)`` with ``t`` a tensor ``(B,)``.

Gradients: with ``grad=False`` (default) everything runs under ``torch.no_grad``. With
``grad=True`` autograd records the whole solve; ``checkpoint=True`` additionally wraps each
step in ``torch.utils.checkpoint`` (non-reentrant), so only each step's input state is kept
and the step's network activations are recomputed during backward: activation memory no
longer grows with the number of steps (the states themselves, one ``x`` per step, still do).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from flowpost.flows.recording import active_recorder
from flowpost.flows.timesteps import time_grid

__all__ = [
    "VelocityField",
    "SOLVERS",
    "Trajectory",
    "steps_for_nfe",
    "odeint",
    "dopri5",
    "sample",
    "encode",
    "guided",
]

VelocityField = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
SOLVERS = ("euler", "midpoint", "heun", "rk4", "dopri5")
_EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


@dataclass
class Trajectory:
    """States of a solve at every grid time: ``states`` ``(steps + 1, B, ...)``, ``times``.

    >>> traj = odeint(lambda x, t, c: -x, torch.ones(2, 1), time_grid(4), return_trajectory=True)
    >>> traj.states.shape, traj.times.tolist()
    (torch.Size([5, 2, 1]), [0.0, 0.25, 0.5, 0.75, 1.0])
    """

    states: Tensor
    times: Tensor

    @property
    def final(self) -> Tensor:
        """The last state ``states[-1]``."""
        return self.states[-1]


def steps_for_nfe(nfe: int, method: str) -> int:
    """Number of whole steps a fixed-grid ``method`` takes for ``nfe`` network evaluations.

    Rounds down; raises if ``nfe`` does not pay for a single step.

    >>> steps_for_nfe(8, "euler"), steps_for_nfe(8, "heun"), steps_for_nfe(10, "rk4")
    (8, 4, 2)
    """
    if method == "dopri5":
        raise ValueError(
            "dopri5 chooses its own steps, so nfe cannot be converted to steps; "
            "call dopri5(...) or odeint(..., method='dopri5') with tolerances instead"
        )
    if method not in _EVALS_PER_STEP:
        raise ValueError(f"unknown solver {method!r}; choose one of {SOLVERS}")
    per = _EVALS_PER_STEP[method]
    if nfe < per:
        raise ValueError(
            f"nfe={nfe} is smaller than one {method} step ({per} network evaluations); "
            f"use nfe >= {per} or a cheaper method such as 'euler'"
        )
    return nfe // per


# --------------------------------------------------------------------------- fixed steps
# Each step takes (field, x, cond, h, t_a, t_mid, t_b) with times already expanded to (B,), so
# the loop itself allocates nothing but the stage tensors. `x.add(k, alpha=h)` is one fused
# kernel (x + h * k would be two), and it is out of place, so autograd can record it.


def _euler(f: VelocityField, x: Tensor, c: Tensor | None, h: float,
           ta: Tensor, tm: Tensor | None, tb: Tensor) -> Tensor:  # fmt: skip
    return x.add(f(x, ta, c), alpha=h)


def _midpoint(f: VelocityField, x: Tensor, c: Tensor | None, h: float,
              ta: Tensor, tm: Tensor | None, tb: Tensor) -> Tensor:  # fmt: skip
    k1 = f(x, ta, c)
    return x.add(f(x.add(k1, alpha=0.5 * h), tm, c), alpha=h)  # type: ignore[arg-type]


def _heun(f: VelocityField, x: Tensor, c: Tensor | None, h: float,
          ta: Tensor, tm: Tensor | None, tb: Tensor) -> Tensor:  # fmt: skip
    k1 = f(x, ta, c)
    k2 = f(x.add(k1, alpha=h), tb, c)
    return x.add(k1.add(k2), alpha=0.5 * h)


def _rk4(f: VelocityField, x: Tensor, c: Tensor | None, h: float,
         ta: Tensor, tm: Tensor | None, tb: Tensor) -> Tensor:  # fmt: skip
    k1 = f(x, ta, c)
    k2 = f(x.add(k1, alpha=0.5 * h), tm, c)  # type: ignore[arg-type]
    k3 = f(x.add(k2, alpha=0.5 * h), tm, c)  # type: ignore[arg-type]
    k4 = f(x.add(k3, alpha=h), tb, c)
    return x.add(k1.add(k2.add(k3), alpha=2.0).add(k4), alpha=h / 6.0)


_STEPS = {"euler": _euler, "midpoint": _midpoint, "heun": _heun, "rk4": _rk4}


def grid_values(grid: Tensor) -> list[float]:
    """The times of a 1-D, strictly monotone, finite ``grid`` as floats (checked).

    >>> grid_values(torch.tensor([0.0, 0.5, 1.0]))
    [0.0, 0.5, 1.0]
    """
    if not isinstance(grid, Tensor) or grid.dim() != 1 or grid.shape[0] < 2:
        raise ValueError(
            f"grid must be a 1-D tensor of at least two times, e.g. time_grid(nfe); got {grid!r}"
        )
    ts = grid.tolist()
    d = [b - a for a, b in zip(ts[:-1], ts[1:])]
    if not (all(v > 0 for v in d) or all(v < 0 for v in d)):
        raise ValueError(
            "grid must be strictly increasing (noise -> data) or strictly decreasing "
            f"(data -> noise); got {ts}"
        )
    if not all(math.isfinite(v) for v in ts):
        raise ValueError(f"grid contains non-finite times: {ts}")
    return ts


def check_state(x: Tensor) -> None:
    """Refuse anything but a floating-point tensor ``(B, ...)`` as a solver state."""
    if not isinstance(x, Tensor) or x.dim() < 1 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor (B, ...), got {type(x).__name__}")


@overload
def odeint(
    field: VelocityField, x: Tensor, grid: Tensor, *, method: str = ...,
    cond: Tensor | None = ..., grad: bool = ..., checkpoint: bool = ...,
    return_trajectory: Literal[False] = ..., rtol: float = ..., atol: float = ...,
    max_steps: int = ...,
) -> Tensor: ...  # fmt: skip
@overload
def odeint(
    field: VelocityField, x: Tensor, grid: Tensor, *, method: str = ...,
    cond: Tensor | None = ..., grad: bool = ..., checkpoint: bool = ...,
    return_trajectory: Literal[True], rtol: float = ..., atol: float = ...,
    max_steps: int = ...,
) -> Trajectory: ...  # fmt: skip
@overload
def odeint(
    field: VelocityField, x: Tensor, grid: Tensor, *, method: str = ...,
    cond: Tensor | None = ..., grad: bool = ..., checkpoint: bool = ...,
    return_trajectory: bool, rtol: float = ..., atol: float = ..., max_steps: int = ...,
) -> Tensor | Trajectory: ...  # fmt: skip


def odeint(
    field: VelocityField,
    x: Tensor,
    grid: Tensor,
    *,
    method: str = "euler",
    cond: Tensor | None = None,
    grad: bool = False,
    checkpoint: bool = False,
    return_trajectory: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
) -> Tensor | Trajectory:
    """Integrate ``dx/dt = field(x, t, cond)`` from ``grid[0]`` to ``grid[-1]``.

    Args:
        field: velocity field, called as ``field(x, t, cond)`` with ``t`` of shape ``(B,)``.
        x: the state at ``grid[0]``, ``(B, ...)``.
        grid: 1-D times, strictly increasing or strictly decreasing (reverse integration).
        method: one of :data:`SOLVERS`. ``dopri5`` integrates each grid interval adaptively
            with ``rtol``, ``atol`` and ``max_steps`` (per interval).
        cond: passed unchanged to every field call.
        grad: record the solve for autograd (otherwise run under ``torch.no_grad``).
        checkpoint: with ``grad``, recompute each step in backward (memory flat in steps).
        return_trajectory: return a :class:`Trajectory` with the state at every grid time.

    >>> x1 = odeint(lambda x, t, c: -x, torch.ones(1, 1), time_grid(20), method="rk4")
    >>> round(float(x1), 6) == round(math.exp(-1.0), 6)
    True
    """
    check_state(x)
    ts = grid_values(grid)
    if method not in SOLVERS:
        raise ValueError(f"unknown solver {method!r}; choose one of {SOLVERS}")
    if checkpoint and not grad:
        raise ValueError("checkpoint=True only matters with grad=True; set grad=True or drop it")
    with torch.set_grad_enabled(grad):
        if method == "dopri5":
            return _odeint_adaptive(
                field, x, ts, grid, cond, checkpoint, return_trajectory, rtol, atol, max_steps
            )
        return _odeint_fixed(field, x, ts, grid, method, cond, checkpoint, return_trajectory)


def _odeint_fixed(
    field: VelocityField,
    x: Tensor,
    ts: list[float],
    grid: Tensor,
    method: str,
    cond: Tensor | None,
    checkpoint: bool,
    return_trajectory: bool,
) -> Tensor | Trajectory:
    step = _STEPS[method]
    n = len(ts) - 1
    b = x.shape[0]
    g = grid.detach().to(device=x.device, dtype=x.dtype)
    # All times the field will see, built once: (n+1, B) grid times and (n, B) midpoints.
    t_nodes = g.unsqueeze(1).expand(-1, b).contiguous().unbind(0)
    if method in ("midpoint", "rk4"):
        t_mid: list[Tensor | None] = list(
            (0.5 * (g[:-1] + g[1:])).unsqueeze(1).expand(-1, b).contiguous().unbind(0)
        )
    else:
        t_mid = [None] * n
    hs = [ts[i + 1] - ts[i] for i in range(n)]
    states = [x] if return_trajectory else None
    rec = active_recorder()
    for i in range(n):
        prev = x
        if checkpoint:
            x = _checkpoint(
                step, field, x, cond, hs[i], t_nodes[i], t_mid[i], t_nodes[i + 1],
                use_reentrant=False,
            )  # fmt: skip
        else:
            x = step(field, x, cond, hs[i], t_nodes[i], t_mid[i], t_nodes[i + 1])
        if rec is not None:
            rec.add(x - prev)
        if states is not None:
            states.append(x)
    if states is not None:
        return Trajectory(states=torch.stack(states), times=g)
    return x


# --------------------------------------------------------------------------- dopri5
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


def _odeint_adaptive(
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


# --------------------------------------------------------------------------- sampling API


def guided(model: VelocityField | nn.Module, scale: float, num_classes: int) -> VelocityField:
    """Classifier-free guidance field ``v_u + scale (v_c - v_u)`` in one batched forward.

    The batch is doubled: the first half carries the labels ``cond``, the second the null
    label ``num_classes``; ``scale = 1`` gives the conditional field, ``0`` the unconditional.

    >>> net = lambda x, t, c: x * c.to(x.dtype).unsqueeze(1)  # toy: velocity = label * x
    >>> f = guided(net, scale=2.0, num_classes=3)
    >>> f(torch.ones(1, 2), torch.zeros(1), torch.tensor([1])).tolist()  # 3 + 2 (1 - 3)
    [[-1.0, -1.0]]
    """
    null = int(num_classes)

    def field(x: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if cond is None:
            raise ValueError("classifier-free guidance needs class labels: pass cond=labels")
        c2 = torch.cat([cond, torch.full_like(cond, null)])
        v = model(torch.cat([x, x]), torch.cat([t, t]), c2)
        v_c, v_u = v.chunk(2)
        return v_u.add(v_c - v_u, alpha=scale)

    return field


def _resolve_field(
    model: VelocityField | nn.Module, guidance: float, num_classes: int | None
) -> VelocityField:
    if guidance == 1.0:
        return model
    k = num_classes if num_classes is not None else getattr(model, "num_classes", None)
    if k is None:
        raise ValueError(
            f"guidance={guidance} needs the null label: pass num_classes= (the model's "
            "number of classes) or use guidance=1.0"
        )
    return guided(model, guidance, int(k))


@overload
def sample(
    model: VelocityField | nn.Module, x0: Tensor, nfe: int | None, method: str = ..., *,
    cond: Tensor | None = ..., grid: str | Tensor = ..., shift: float = ...,
    guidance: float = ..., num_classes: int | None = ..., grad: bool = ...,
    checkpoint: bool = ..., return_trajectory: Literal[False] = ...,
) -> Tensor: ...  # fmt: skip
@overload
def sample(
    model: VelocityField | nn.Module, x0: Tensor, nfe: int | None, method: str = ..., *,
    cond: Tensor | None = ..., grid: str | Tensor = ..., shift: float = ...,
    guidance: float = ..., num_classes: int | None = ..., grad: bool = ...,
    checkpoint: bool = ..., return_trajectory: Literal[True],
) -> Trajectory: ...  # fmt: skip
@overload
def sample(
    model: VelocityField | nn.Module, x0: Tensor, nfe: int | None, method: str = ..., *,
    cond: Tensor | None = ..., grid: str | Tensor = ..., shift: float = ...,
    guidance: float = ..., num_classes: int | None = ..., grad: bool = ...,
    checkpoint: bool = ..., return_trajectory: bool,
) -> Tensor | Trajectory: ...  # fmt: skip


def sample(
    model: VelocityField | nn.Module,
    x0: Tensor,
    nfe: int | None,
    method: str = "euler",
    *,
    cond: Tensor | None = None,
    grid: str | Tensor = "uniform",
    shift: float = 1.0,
    guidance: float = 1.0,
    num_classes: int | None = None,
    grad: bool = False,
    checkpoint: bool = False,
    return_trajectory: bool = False,
) -> Tensor | Trajectory:
    """Generate: integrate ``model`` from noise ``x0`` (t = 0) to data (t = 1).

    Args:
        nfe: network evaluations; steps = ``nfe // evals_per_step(method)`` (euler 1, midpoint
            and heun 2, rk4 4). With guidance each evaluation is one doubled batch. Ignored
            (may be None) for ``dopri5``; must match ``grid`` if ``grid`` is a tensor.
        grid: ``"uniform"``, ``"shifted"`` (SD3 shift, see :func:`time_grid`) or a tensor.
        guidance: classifier-free guidance scale (1 = none); needs ``cond`` and the null label
            ``num_classes`` (read from ``model.num_classes`` when not given).

    >>> x = sample(lambda x, t, c: torch.ones_like(x), torch.zeros(3, 2), nfe=8, method="heun")
    >>> x.tolist()[0]
    [1.0, 1.0]
    """
    check_state(x0)
    field = _resolve_field(model, guidance, num_classes)
    if isinstance(grid, Tensor):
        g = grid
        if nfe is not None and method != "dopri5" and steps_for_nfe(nfe, method) != len(g) - 1:
            raise ValueError(
                f"nfe={nfe} gives {steps_for_nfe(nfe, method)} {method} steps but the grid has "
                f"{len(g) - 1}; pass nfe=None with an explicit grid"
            )
    elif method == "dopri5":
        g = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
    else:
        if nfe is None:
            raise ValueError("nfe is required unless an explicit grid tensor is given")
        if grid == "uniform" and shift != 1.0:
            raise ValueError(f"shift={shift} only applies to grid='shifted'")
        g = time_grid(steps_for_nfe(nfe, method), grid, shift, device=x0.device, dtype=x0.dtype)
    return odeint(
        field, x0, g, method=method, cond=cond, grad=grad, checkpoint=checkpoint,
        return_trajectory=return_trajectory,
    )  # fmt: skip


def encode(
    model: VelocityField | nn.Module,
    x1: Tensor,
    nfe: int = 128,
    method: str = "rk4",
    *,
    cond: Tensor | None = None,
    grid: str = "uniform",
    shift: float = 1.0,
    grad: bool = False,
) -> Tensor:
    """Encode data to noise: integrate ``model`` backward from ``t = 1`` to ``t = 0``.

    Uses the reversed sampling grid, so ``sample(model, encode(model, x1, n), n)`` returns
    ``x1`` up to the solver's error. Default: 32 RK4 steps (128 evaluations).

    >>> z = encode(lambda x, t, c: torch.ones_like(x), torch.ones(2, 2), nfe=8)
    >>> z.abs().max().item() < 1e-6
    True
    """
    check_state(x1)
    g = time_grid(steps_for_nfe(nfe, method), grid, shift, device=x1.device, dtype=x1.dtype)
    return odeint(model, x1, g.flip(0), method=method, cond=cond, grad=grad)
