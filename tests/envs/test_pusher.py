import numpy as np
import pytest

from flowpost.data import DataConfig, load_data
from flowpost.envs.demos import read_demos
from flowpost.envs.pusher import _model, pusher_distance, pusher_expert, pusher_phase
from flowpost.envs.rollout import expert_rollouts, rollouts
from flowpost.envs.tasks import get_task


def test_pusher_expert_pushes_the_object_onto_the_goal() -> None:
    task = get_task("pusher")
    m = expert_rollouts(task, episodes=8, seed=3)
    assert m["success_rate"] >= 0.75 and m["final_distance"] < 0.1
    still = rollouts(task, lambda c: np.zeros((c.shape[0], 1, 7)), episodes=4, seed=3)
    assert still["success_rate"] == 0.0 and still["final_distance"] > 0.17  # starts >= 0.17 away


LOW_ARM = np.array([1.23, 0.76, 1.37, -1.37, 0.65, 0.0, -1.44])  # hand near (0.45, -0.25, -0.275)


def _state(env, arm: np.ndarray, obj_xy: np.ndarray) -> np.ndarray:
    """Set the arm's joints and the object's position; the observation of that state."""
    u = env.unwrapped
    qpos = u.data.qpos.copy()
    qpos[:7] = arm
    qpos[7:9] = [obj_xy[1] + 0.05, obj_xy[0] - 0.45]  # obj_slidey, obj_slidex
    u.set_state(qpos, np.zeros_like(u.data.qvel))
    return np.asarray(u._get_obs())


def test_observation_layout_and_the_experts_kinematics_match_the_environment() -> None:
    env = get_task("pusher").make_env()
    env.reset(seed=11)
    obs = _state(env, LOW_ARM + 0.1, np.array([0.3, -0.2]))
    u = env.unwrapped
    assert obs.shape == (23,) and np.allclose(obs[:7], LOW_ARM + 0.1)
    cols = {"tips_arm": slice(14, 17), "object": slice(17, 20), "goal": slice(20, 23)}
    for name, c in cols.items():
        assert np.allclose(obs[c], u.get_body_com(name))
    assert np.allclose(obs[17:19], [0.3, -0.2]) and np.allclose(obs[20:23], [0.45, -0.05, -0.323])
    assert pusher_distance(env) == pytest.approx(np.hypot(0.15, 0.15))
    pusher_phase(obs)  # the expert rebuilds the hand from the joint angles alone
    _, data, hand = _model()
    assert np.allclose(data.xpos[hand], obs[14:17], atol=1e-9)
    env.close()


def test_phases_follow_where_the_object_is_in_the_hand() -> None:
    env = get_task("pusher").make_env()
    obs, _ = env.reset(seed=0)
    assert pusher_phase(obs)[2] == "approach"  # the arm starts stretched out, high above
    low = _state(env, LOW_ARM, np.array([0.3, -0.2]))
    hand, x_axis = low[14:17], np.array([1.0, -0.05])
    assert abs(hand[2] + 0.275) < 0.01
    obs = _state(env, LOW_ARM, hand[:2] + 0.07 * x_axis)  # the object in the U
    target, _, phase = pusher_phase(obs)
    assert phase == "push"
    assert np.allclose(target[:2], hand[:2] + obs[20:22] - obs[17:19], atol=1e-6)
    obs = _state(env, LOW_ARM, hand[:2] - 0.07 * x_axis)  # the object behind the bar
    assert pusher_phase(obs)[2] != "push"
    env.close()


def test_expert_torques_are_bounded_and_batched() -> None:
    obs = np.random.default_rng(0).standard_normal((5, 23)) * 0.3
    obs[:, 20:23] = [0.45, -0.05, -0.323]
    a = pusher_expert(obs)
    assert a.shape == (5, 7) and np.isfinite(a).all() and np.abs(a).max() <= 2.0


def test_registry_builds_pusher_splits_and_refuses_the_wrong_width(tmp_path) -> None:
    split = load_data(DataConfig(name="pusher", demos=2, chunk=2, history=2))
    assert split.robot is not None and split.spec.cond_dim == 46 and split.spec.shape == (14,)
    assert float(split.train.x.abs().max()) <= 1.0  # torques divided by the bound 2
    path = tmp_path / "reacher_demos.npz"
    np.savez(path, obs=np.zeros((5, 10)), actions=np.zeros((5, 7)), episode=np.zeros(5, int))
    with pytest.raises(ValueError, match="width 10, but Pusher-v5 observations have 23") as err:
        read_demos(path, get_task("pusher"))
    assert "\n" not in str(err.value)
