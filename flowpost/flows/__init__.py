"""flowpost.flows: the mathematics of flows (no training loop, no I/O).

Paths, couplings, timestep samplers and grids, ODE/SDE solvers and trajectory measures.
Time convention: ``t = 0`` noise, ``t = 1`` data. See ``docs/flows.md``.
"""

from flowpost.flows.couplings import (
    Coupling,
    IndependentCoupling,
    OTCoupling,
    make_coupling,
    ot_plan,
)
from flowpost.flows.measures import path_length, rms_norm, straightness
from flowpost.flows.paths import LinearPath, PathSample, StochasticBridge, expand_like
from flowpost.flows.sde import SDEResult, euler_maruyama, gaussian_log_prob, transition_log_prob
from flowpost.flows.solvers import (
    SOLVERS,
    Trajectory,
    VelocityField,
    dopri5,
    encode,
    guided,
    odeint,
    sample,
    steps_for_nfe,
)
from flowpost.flows.timesteps import (
    LogitNormalTime,
    ShiftedTime,
    TimeSampler,
    UniformTime,
    make_time_sampler,
    shift_time,
    time_grid,
)

__all__ = [
    "Coupling",
    "IndependentCoupling",
    "OTCoupling",
    "make_coupling",
    "ot_plan",
    "path_length",
    "rms_norm",
    "straightness",
    "LinearPath",
    "PathSample",
    "StochasticBridge",
    "expand_like",
    "SDEResult",
    "euler_maruyama",
    "gaussian_log_prob",
    "transition_log_prob",
    "SOLVERS",
    "Trajectory",
    "VelocityField",
    "dopri5",
    "encode",
    "guided",
    "odeint",
    "sample",
    "steps_for_nfe",
    "LogitNormalTime",
    "ShiftedTime",
    "TimeSampler",
    "UniformTime",
    "make_time_sampler",
    "shift_time",
    "time_grid",
]
