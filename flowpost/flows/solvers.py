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

from typing import Literal, overload

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from flowpost.flows.dopri5 import dopri5, odeint_adaptive
from flowpost.flows.ode import Trajectory, VelocityField, check_state, grid_values
from flowpost.flows.recording import active_recorder
from flowpost.flows.timesteps import time_grid

__all__ = [
    "VelocityField",
    "SOLVERS",
    "Trajectory",
    "nfe_per_step",
    "steps_for_nfe",
    "odeint",
    "dopri5",
    "sample",
    "encode",
    "guided",
    "check_state",
    "grid_values",
]

SOLVERS = ("euler", "midpoint", "heun", "rk4", "dopri5")
_EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


def nfe_per_step(method: str) -> int:
    """Network evaluations one step of a fixed-grid ``method`` costs.

    >>> nfe_per_step("euler"), nfe_per_step("heun"), nfe_per_step("rk4")
    (1, 2, 4)
    """
    if method not in _EVALS_PER_STEP:
        raise ValueError(f"unknown fixed-step solver {method!r}; choose one of {SOLVERS[:-1]}")
    return _EVALS_PER_STEP[method]


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
    per = nfe_per_step(method)
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

    >>> import math
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
            return odeint_adaptive(
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
