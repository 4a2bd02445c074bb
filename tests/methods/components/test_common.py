"""Tests of flowpost/methods/components/common.py: per-sample errors, user objects by name,
the deployed sampler's grid and roll-outs."""

from __future__ import annotations

import pytest
import torch

from flowpost.methods.components.common import (
    load_object,
    per_sample_mse,
    repeat_rows,
    rollout,
    solver_grid,
)

torch.set_num_threads(1)


def test_per_sample_mse_and_repeat_rows() -> None:
    a = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    assert per_sample_mse(a, torch.zeros(2, 2)).tolist() == [5.0, 0.0]
    assert repeat_rows(torch.tensor([1, 2]), 2).tolist() == [1, 1, 2, 2]
    assert repeat_rows(None, 3) is None


def test_load_object_errors_say_what_to_fix() -> None:
    assert load_object("math:sqrt", "thing")(4.0) == 2.0
    with pytest.raises(ValueError, match="must look like 'package.module:function'"):
        load_object("math.sqrt", "thing")
    with pytest.raises(ValueError, match="cannot import module"):
        load_object("no_such_module_xyz:f", "thing")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_object("math:nope", "thing")


def test_rollout_follows_the_deployed_sampler() -> None:
    # v = 1: two Euler steps move the noise by exactly 1
    roll = rollout(lambda x, t, c: torch.ones_like(x), torch.zeros(6, 3), None, 2, "euler")
    assert torch.allclose(roll.x1, roll.x0 + 1.0)
    assert solver_grid(2, "heun").tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="pg_group_size"):
        rollout(lambda x, t, c: x, torch.zeros(3, 2), None, 1, "euler", group_size=4)
