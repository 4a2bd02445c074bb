"""Robot tasks (gymnasium + MuJoCo, state only, no rendering) and their scripted experts.

A :class:`RobotTask` names a gymnasium environment, a seeded scripted expert that acts from
the observation alone, the distance that decides success and the threshold it is held to.

* ``reacher`` (``Reacher-v5``, 50 steps of 0.02 s): a 2-link planar arm must bring its
  fingertip onto a random target. The expert solves the arm's inverse kinematics analytically
  (keeping the current elbow sign) and drives the joints there with a PD law
  ``a = clip(4 (q* - q) - 0.4 dq)``; it ends on average a few micrometres from the target.
  **Success: the fingertip is within 0.01 (1 cm; the arm's reach is 0.21) of the target at
  the last step.** The final distance is the Euclidean fingertip-target distance read from
  the simulator at the end of the episode.
* ``pusher`` (``Pusher-v5`` run for **300** steps of 0.05 s instead of its default 100): a
  7-joint arm must push a cylinder to a goal on a table. The expert
  (:mod:`flowpost.envs.pusher`) cradles the object in its U-shaped hand and pushes it.
  **Success: the object's centre is within 0.03 (3 cm; the object's radius is 5 cm) of the
  goal in the table plane at the last step.** The horizon is longer than the default
  because Pusher-v5's object is so light that contact moves it at about 0.03 m/s: in 100
  steps (5 s) no pusher can bring it the at least 0.17 it starts from the goal.

gymnasium and MuJoCo are the ``[robot]`` extra; nothing in the core imports this module.

Example:
    >>> task = get_task("reacher")
    >>> task.env_id, task.threshold, task.obs_dim, task.act_dim
    ('Reacher-v5', 0.01, 10, 2)
    >>> get_task("pusher").obs_dim, get_task("pusher").steps
    (23, 300)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowpost.envs.pusher import pusher_distance, pusher_expert

_L1, _L2 = 0.1, 0.11  # Reacher link lengths (shoulder -> elbow, elbow -> fingertip)


def reacher_expert(obs: np.ndarray, kp: float = 4.0, kd: float = 0.4) -> np.ndarray:
    """Analytic IK + PD expert for ``Reacher-v5`` on a batch of observations (B, 10) -> (B, 2).

    >>> a = reacher_expert(np.zeros((1, 10)) + [1, 1, 0, 0, 0.1, 0.1, 0, 0, 0, 0])
    >>> a.shape, bool(np.abs(a).max() <= 1)
    ((1, 2), True)
    """
    obs = np.atleast_2d(obs)
    q = np.arctan2(obs[:, 2:4], obs[:, 0:2])
    qd = obs[:, 6:8]
    tx, ty = obs[:, 4], obs[:, 5]
    c2 = np.clip((tx * tx + ty * ty - _L1**2 - _L2**2) / (2 * _L1 * _L2), -1.0, 1.0)
    q2 = np.where(q[:, 1] >= 0, 1.0, -1.0) * np.arccos(c2)
    q1 = np.arctan2(ty, tx) - np.arctan2(_L2 * np.sin(q2), _L1 + _L2 * np.cos(q2))
    err = np.stack([q1, q2], axis=1) - q
    err = (err + np.pi) % (2 * np.pi) - np.pi
    return np.clip(kp * err - kd * qd, -1.0, 1.0)


def reacher_distance(env: Any) -> float:
    """Fingertip-target distance of a ``Reacher-v5`` environment, from the simulator."""
    u = env.unwrapped
    return float(np.linalg.norm(u.get_body_com("fingertip") - u.get_body_com("target")))


@dataclass(frozen=True)
class RobotTask:
    """An environment, its scripted expert and its success criterion."""

    name: str
    env_id: str
    obs_dim: int
    act_dim: int
    action_scale: float  # actions are in [-scale, scale]; policies see them divided by it
    steps: int  # episode length
    threshold: float  # success: final distance < threshold
    expert: Callable[[np.ndarray], np.ndarray]  # (B, obs_dim) -> (B, act_dim)
    distance: Callable[[Any], float]  # final distance read from the environment

    def make_env(self) -> Any:
        """A fresh environment, with a one-line error when it cannot be made."""
        return make_env(self.env_id, max_episode_steps=self.steps)


TASKS: dict[str, RobotTask] = {
    "reacher": RobotTask(
        name="reacher",
        env_id="Reacher-v5",
        obs_dim=10,
        act_dim=2,
        action_scale=1.0,
        steps=50,
        threshold=0.01,
        expert=reacher_expert,
        distance=reacher_distance,
    ),
    "pusher": RobotTask(
        name="pusher",
        env_id="Pusher-v5",
        obs_dim=23,
        act_dim=7,
        action_scale=2.0,
        steps=300,
        threshold=0.03,
        expert=pusher_expert,
        distance=pusher_distance,
    ),
}


def get_task(name: str) -> RobotTask:
    if name not in TASKS:
        raise ValueError(f"unknown robot task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def make_env(env_id: str, max_episode_steps: int | None = None) -> Any:
    """``gymnasium.make(env_id)``, turning a missing extra or an unknown id into one line."""
    try:
        import gymnasium as gym
    except ImportError:
        raise ValueError(
            f"environment {env_id!r} needs gymnasium and MuJoCo: pip install 'flowpost[robot]'"
        ) from None
    try:
        return gym.make(env_id, max_episode_steps=max_episode_steps)
    except ImportError as err:
        raise ValueError(
            f"environment {env_id!r} cannot be made ({err}); pip install 'flowpost[robot]'"
        ) from None
    except gym.error.Error as err:
        raise ValueError(
            f"environment {env_id!r} is not installed ({type(err).__name__}: {err}); "
            "pip install 'flowpost[robot]' or check the id"
        ) from None


__all__ = ["RobotTask", "TASKS", "get_task", "make_env", "reacher_expert", "reacher_distance"]
