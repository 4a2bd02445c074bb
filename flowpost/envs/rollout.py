"""Roll out a conditional flow policy (or the scripted expert) on a robot task.

A policy is called on a batch of conditions and returns action chunks. Every
``execute`` steps each episode asks for a new chunk from its normalised observation history
and executes its first ``execute`` actions (receding horizon). All episodes run in lock-step,
so the policy sees one batch per re-planning step. Episode ``i`` resets with seed
``1_000_000_000 + 10_000 * seed + i``, disjoint from the demonstrations' seeds.

Reported: ``success_rate`` (fraction of episodes whose final distance is below the task's
threshold), ``final_distance`` (mean over episodes) and ``return`` (mean undiscounted
environment reward).

Example:
    >>> from flowpost.envs.tasks import get_task
    >>> m = expert_rollouts(get_task("reacher"), episodes=4)
    >>> m["success_rate"]
    1.0
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flowpost.envs.demos import Normaliser, history_condition
from flowpost.envs.tasks import RobotTask

EVAL_SEED_BASE = 1_000_000_000

# conditions (B, history * obs_dim) -> action chunks (B, chunk, act_dim), in [-1, 1] units
ChunkPolicy = Callable[[np.ndarray], np.ndarray]


def eval_seed(seed: int, i: int) -> int:
    return EVAL_SEED_BASE + 10_000 * seed + i


def rollouts(
    task: RobotTask,
    policy: ChunkPolicy,
    *,
    episodes: int,
    seed: int = 0,
    history: int = 1,
    execute: int = 1,
    normaliser: Normaliser | None = None,
    distances: list[float] | None = None,
) -> dict[str, float]:
    """Run ``episodes`` episodes with ``policy`` and return the task metrics; with a list
    ``distances``, also append every episode's final distance to it, in episode order (what
    a paired comparison of two policies on the same episodes needs)."""
    if episodes < 1 or history < 1 or execute < 1:
        raise ValueError("episodes, history and execute must be >= 1")
    envs = [task.make_env() for _ in range(episodes)]
    obs = np.stack([env.reset(seed=eval_seed(seed, i))[0] for i, env in enumerate(envs)])
    norm = normaliser or Normaliser(np.zeros(task.obs_dim, np.float32), np.ones(task.obs_dim))
    past = [norm(obs)] * history
    returns = np.zeros(episodes)
    chunk: np.ndarray | None = None
    for k in range(task.steps):
        if k % execute == 0:
            chunk = np.asarray(policy(history_condition(past)), dtype=np.float64)
            if chunk.ndim != 3 or chunk.shape[1] < execute or chunk.shape[0] != episodes:
                raise ValueError(
                    f"policy returned shape {chunk.shape}; expected ({episodes}, >= {execute}, "
                    f"{task.act_dim})"
                )
        assert chunk is not None
        actions = np.clip(chunk[:, k % execute] * task.action_scale, -task.action_scale,
                          task.action_scale)  # fmt: skip
        for i, env in enumerate(envs):
            o, r, _, _, _ = env.step(actions[i].astype(np.float32))
            obs[i] = o
            returns[i] += r
        past = [norm(obs), *past[:-1]]
    dist = np.array([task.distance(env) for env in envs])
    if distances is not None:
        distances.extend(float(d) for d in dist)
    for env in envs:
        env.close()
    return {
        "success_rate": float((dist < task.threshold).mean()),
        "final_distance": float(dist.mean()),
        "return": float(returns.mean()),
    }


def expert_rollouts(task: RobotTask, *, episodes: int, seed: int = 0) -> dict[str, float]:
    """The scripted expert's metrics on the evaluation episodes: the ceiling of the task."""

    def policy(cond: np.ndarray) -> np.ndarray:
        return task.expert(cond[:, : task.obs_dim])[:, None] / task.action_scale

    return rollouts(task, policy, episodes=episodes, seed=seed)


__all__ = ["rollouts", "expert_rollouts", "eval_seed", "ChunkPolicy"]
