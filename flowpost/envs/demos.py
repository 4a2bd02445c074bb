"""Demonstrations of a robot task: recorded from its seeded scripted expert, cached, and cut
into (condition, action chunk) pairs for a conditional flow policy.

Recording: episode ``i`` resets the environment with seed ``seed * 100_000 + i``; the expert's
action is recorded at every step, and the executed action is that action plus Gaussian
noise of std ``noise`` (DART-style), so that demonstrations also cover states slightly off
the expert's path while the labels stay the expert's. Demonstrations are cached as ``.npz``
(arrays ``obs`` (N, obs_dim), ``actions`` (N, act_dim), ``episode`` (N,)) under
``$FLOWPOST_CACHE`` (default ``~/.cache/flowpost``)/``demos/``, and regenerated on first
use; a user's own file in the same format can be given instead.

Samples: at step ``k`` of an episode the condition is the normalised observations
``o_k, o_{k-1}, ..., o_{k-history+1}`` (the first one repeated before the start), and the
target is the chunk of the next ``chunk`` expert actions divided by the action scale
(the last action repeated past the end), flattened to ``(chunk * act_dim,)``.

Example:
    >>> import numpy as np
    >>> obs = np.arange(6, dtype=np.float32).reshape(3, 2); act = obs[:, :1]
    >>> c, x = chunk_samples(obs, act, np.zeros(3, int), history=2, chunk=2)
    >>> c[0].tolist(), x[2].tolist()
    ([0.0, 1.0, 0.0, 1.0], [4.0, 4.0])
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowpost.envs.tasks import RobotTask

DEMO_SEED_STRIDE = 100_000


def cache_dir() -> Path:
    return Path(os.environ.get("FLOWPOST_CACHE", Path.home() / ".cache" / "flowpost")) / "demos"


def record_demos(
    task: RobotTask, episodes: int, seed: int = 0, noise: float = 0.1
) -> dict[str, np.ndarray]:
    """Run the scripted expert for ``episodes`` episodes (see the module docstring)."""
    env = task.make_env()
    rng = np.random.default_rng(seed)
    obs_all, act_all, ep_all = [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed * DEMO_SEED_STRIDE + i)
        for _ in range(task.steps):
            action = task.expert(obs[None])[0]
            obs_all.append(obs.astype(np.float32))
            act_all.append(action.astype(np.float32))
            ep_all.append(i)
            noisy = action + noise * task.action_scale * rng.standard_normal(action.shape)
            obs, _, term, trunc, _ = env.step(np.clip(noisy, -task.action_scale, task.action_scale))
            if term or trunc:
                break
    env.close()
    return {
        "obs": np.stack(obs_all),
        "actions": np.stack(act_all),
        "episode": np.asarray(ep_all, dtype=np.int64),
    }


def cached_demos(
    task: RobotTask, episodes: int, seed: int = 0, noise: float = 0.1
) -> dict[str, np.ndarray]:
    """The demonstrations of :func:`record_demos`, recorded once and then read from the cache."""
    key = hashlib.sha1(f"{task.name}-{task.env_id}-{episodes}-{seed}-{noise}-v1".encode())
    path = cache_dir() / f"{task.name}-{episodes}ep-seed{seed}-{key.hexdigest()[:10]}.npz"
    if path.is_file():
        return read_demos(path, task)
    demos = record_demos(task, episodes, seed, noise)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, obs=demos["obs"], actions=demos["actions"], episode=demos["episode"])
    os.replace(tmp, path)
    return demos


def read_demos(path: str | Path, task: RobotTask) -> dict[str, np.ndarray]:
    """Demonstrations from an ``.npz`` file, checked against the task's widths."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"demonstrations file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as z:
            demos = {k: z[k] for k in z.files}
    except Exception as err:
        raise ValueError(f"{p}: could not read the demonstrations ({err})") from None
    missing = [k for k in ("obs", "actions", "episode") if k not in demos]
    if missing:
        raise ValueError(
            f"{p}: demonstrations need arrays obs, actions, episode; missing {missing}"
        )
    obs, act, ep = demos["obs"], demos["actions"], demos["episode"]
    if obs.ndim != 2 or obs.shape[1] != task.obs_dim:
        raise ValueError(
            f"{p}: observations have width {obs.shape[1] if obs.ndim == 2 else obs.shape}, but "
            f"{task.env_id} observations have {task.obs_dim}; record them on {task.env_id}"
        )
    if act.ndim != 2 or act.shape[1] != task.act_dim:
        raise ValueError(f"{p}: actions must have shape (N, {task.act_dim}), got {act.shape}")
    if not (len(obs) == len(act) == len(ep)) or len(obs) == 0:
        raise ValueError(f"{p}: obs, actions and episode must have the same non-zero length")
    if not (np.isfinite(obs).all() and np.isfinite(act).all()):
        raise ValueError(f"{p}: the demonstrations contain NaN or Inf")
    return {"obs": obs.astype(np.float32), "actions": act.astype(np.float32), "episode": ep}


def history_condition(history: list[np.ndarray]) -> np.ndarray:
    """Concatenate a list of (B, obs_dim) observations, newest first, into (B, h * obs_dim)."""
    return np.concatenate(history, axis=1)


def chunk_samples(
    obs: np.ndarray, actions: np.ndarray, episode: np.ndarray, *, history: int, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Conditions (N, history * obs_dim) and flattened action chunks (N, chunk * act_dim)."""
    conds, targets = [], []
    for e in np.unique(episode):
        idx = np.flatnonzero(episode == e)
        o, a = obs[idx], actions[idx]
        n = len(idx)
        for k in range(n):
            past = [o[max(k - j, 0)] for j in range(history)]
            conds.append(np.concatenate(past))
            ahead = [a[min(k + j, n - 1)] for j in range(chunk)]
            targets.append(np.concatenate(ahead))
    return np.stack(conds).astype(np.float32), np.stack(targets).astype(np.float32)


@dataclass(frozen=True)
class Normaliser:
    """Per-feature standardisation of observations (statistics of the training demos)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, obs: np.ndarray) -> Normaliser:
        return cls(obs.mean(0).astype(np.float32), np.maximum(obs.std(0), 1e-3).astype(np.float32))

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return ((obs - self.mean) / self.std).astype(np.float32)


__all__ = [
    "cache_dir",
    "record_demos",
    "cached_demos",
    "read_demos",
    "chunk_samples",
    "history_condition",
    "Normaliser",
]
