"""Tests of flowpost/methods/temperature.py: every schedule starts at its start value, never
rises, and is exactly 0 from its last step on; the adaptive one drops when the loss has
converged and still meets the deadline when it never does."""

from __future__ import annotations

import math

import pytest

from flowpost.methods.temperature import SCHEDULES, TemperatureSchedule


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("start", [1.0, 0.6])
def test_schedules_reach_their_end_values(kind: str, start: float) -> None:
    s = TemperatureSchedule(kind, start=start, steps=200, levels=8)
    values = [s.value(k) for k in range(260)]
    assert values[0] == start
    assert values[200:] == [0.0] * 60
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[199] > 0.0  # not at 0 before the end


def test_shapes_at_mid_anneal() -> None:
    mid = {k: TemperatureSchedule(k, steps=100).value(50) for k in SCHEDULES}
    assert mid["linear"] == 0.5 and mid["cosine"] == pytest.approx(0.5)
    r = 4.0
    assert mid["exponential"] == pytest.approx(
        (math.exp(-r / 2) - math.exp(-r)) / (1 - math.exp(-r))
    )


def test_adaptive_drops_early_when_the_objective_has_converged() -> None:
    s = TemperatureSchedule("adaptive", steps=1000, levels=10, patience=10, tolerance=0.01)
    for k in range(15):
        s.observe(k, 0.5)  # flat: converged after `patience` iterations without progress
    assert s.value(15) == pytest.approx(0.9)  # one level down long before its deadline (100)
    for k in range(15, 40):
        s.observe(k, 0.5)
    assert s.value(40) == pytest.approx(0.7)


def test_adaptive_waits_while_the_objective_improves_but_meets_the_deadline() -> None:
    s = TemperatureSchedule("adaptive", steps=100, levels=4, patience=5, tolerance=0.01)
    for k in range(100):
        # always improving by 10% a step: the staircase moves at its deadlines only
        assert s.value(k) == 1 - math.floor(4 * k / 100) / 4
        s.observe(k, 0.9**k)
    assert s.value(100) == 0.0


def test_adaptive_state_round_trip() -> None:
    a = TemperatureSchedule("adaptive", steps=100, patience=2)
    for k in range(7):
        a.observe(k, 1.0)
    b = TemperatureSchedule("adaptive", steps=100, patience=2)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() and b.value(7) == a.value(7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "step"}, "unknown temperature schedule"),
        ({"start": 1.5}, "must lie in"),
        ({"steps": 0}, "steps >= 1 to reach 0"),
        ({"kind": "exponential", "rate": 0.0}, "rate > 0"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TemperatureSchedule(**kwargs)
