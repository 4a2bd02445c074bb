"""Tests for flowpost/flows/timesteps.py: samplers against their formulas, grids."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import flowpost.flows.timesteps as timesteps
from flowpost.flows.timesteps import (
    LogitNormalTime,
    ShiftedTime,
    UniformTime,
    make_time_sampler,
    shift_time,
    time_grid,
)

torch.set_num_threads(1)
N = 20000
# Kolmogorov-Smirnov critical value at the 0.1 % level: 1.95 / sqrt(n).
KS = 1.95 / math.sqrt(N)


def ks_stat(samples: torch.Tensor, cdf) -> float:  # type: ignore[no-untyped-def]
    x = samples.double().sort().values
    f = cdf(x)
    i = torch.arange(1, len(x) + 1, dtype=torch.float64)
    return float(torch.maximum(i / len(x) - f, f - (i - 1) / len(x)).max())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_uniform_moments_and_cdf() -> None:
    t = UniformTime().sample(N, generator=gen(0))
    assert t.shape == (N,) and t.dtype == torch.float32
    assert abs(float(t.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / N)
    assert abs(float(t.var()) - 1 / 12) < 0.005
    assert ks_stat(t, lambda x: x) < KS


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (-0.8, 0.5)])
def test_logit_normal_matches_its_cdf(mean: float, std: float) -> None:
    t = LogitNormalTime(mean, std).sample(N, generator=gen(1))
    normal = torch.distributions.Normal(mean, std)
    assert ks_stat(t, lambda x: normal.cdf(torch.log(x / (1 - x)))) < KS
    assert abs(float(t.median()) - 1 / (1 + math.exp(-mean))) < 0.02
    # The test has power: a wrong mean is rejected.
    wrong = torch.distributions.Normal(mean + 0.2, std)
    assert ks_stat(t, lambda x: wrong.cdf(torch.log(x / (1 - x)))) > KS


@pytest.mark.parametrize("shift", [3.0, 0.5])
def test_shifted_matches_its_cdf_and_sd3_formula(shift: float) -> None:
    t = ShiftedTime(shift).sample(N, generator=gen(2))
    assert ks_stat(t, lambda a: shift * a / (1 + (shift - 1) * a)) < KS
    # SD3/FLUX noise-level form: s = 1 - t, s' = shift s / (1 + (shift - 1) s), t' = 1 - s'.
    u = torch.rand(100, generator=gen(3), dtype=torch.float64)
    s = 1 - u
    assert torch.allclose(shift_time(u, shift), 1 - shift * s / (1 + (shift - 1) * s))
    if shift > 1:
        assert float(t.mean()) < 0.5  # more training at high noise


def test_same_generator_same_times_and_device_dtype() -> None:
    for name in ("uniform", "logit_normal", "shifted"):
        s = make_time_sampler(name)
        assert torch.equal(s.sample(7, generator=gen(5)), s.sample(7, generator=gen(5)))
        out = s.sample(3, device="cpu")
        assert out.shape == (3,) and ((out >= 0) & (out <= 1)).all()


def test_time_grid() -> None:
    g = time_grid(8)
    assert g.shape == (9,) and g[0] == 0 and g[-1] == 1
    assert torch.allclose(g.diff(), torch.full((8,), 1 / 8))
    gs = time_grid(8, "shifted", shift=3.0, dtype=torch.float64)
    assert gs[0] == 0 and gs[-1] == 1 and (gs.diff() > 0).all()
    u = torch.arange(9, dtype=torch.float64) / 8
    assert torch.allclose(gs, u / (u + 3 * (1 - u)))
    assert gs.diff()[0] < gs.diff()[-1]  # denser near noise
    assert torch.equal(time_grid(5, "shifted", shift=1.0), time_grid(5))


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown time sampler"):
        make_time_sampler("cosine")
    with pytest.raises(ValueError, match="bad options"):
        make_time_sampler("uniform", shift=3.0)
    with pytest.raises(ValueError, match="std"):
        LogitNormalTime(0.0, 0.0)
    with pytest.raises(ValueError, match="at least one step"):
        time_grid(0)
    with pytest.raises(ValueError, match="kind"):
        time_grid(4, "cosine")


def test_doctests() -> None:
    assert doctest.testmod(timesteps).failed == 0
