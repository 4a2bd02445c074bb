import numpy as np
import pytest

from flowpost.envs.rollout import expert_rollouts
from flowpost.envs.tasks import get_task, make_env, reacher_expert


def test_reacher_expert_is_precise() -> None:
    m = expert_rollouts(get_task("reacher"), episodes=8, seed=3)
    assert m["success_rate"] == 1.0 and m["final_distance"] < 1e-3


def test_reacher_expert_actions_are_bounded_and_batched() -> None:
    obs = np.random.default_rng(0).standard_normal((16, 10))
    a = reacher_expert(obs)
    assert a.shape == (16, 2) and np.abs(a).max() <= 1.0


def test_an_env_id_that_is_not_installed_is_one_clear_line() -> None:
    with pytest.raises(ValueError, match="'NoSuchRobot-v9' is not installed") as err:
        make_env("NoSuchRobot-v9")
    assert "\n" not in str(err.value)


def test_unknown_task_names_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of reacher"):
        get_task("walker")
