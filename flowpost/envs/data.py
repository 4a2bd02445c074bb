"""A robot task as a dataset: (observation history -> action chunk) pairs, and the hook that
scores a policy by rolling it out.

:func:`load_robot_data` returns the training and held-out :class:`~flowpost.data.ArrayData`
(held out: the last ``heldout_fraction`` of the episodes) with float condition vectors, and
a :class:`RobotData` that knows how to turn a flow's ``generate(noise, cond)`` into a
closed-loop policy and report :func:`flowpost.envs.rollout.rollouts` metrics.

Example:
    >>> import tempfile, os
    >>> os.environ["FLOWPOST_CACHE"] = tempfile.mkdtemp()
    >>> train, held, robot = load_robot_data("reacher", demos=4, history=2, chunk=4)
    >>> train.spec.shape, train.spec.cond_dim, len(train) + len(held)
    ((8,), 20, 200)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flowpost.data.base import ArrayData
from flowpost.envs.demos import Normaliser, cached_demos, chunk_samples, read_demos
from flowpost.envs.rollout import rollouts
from flowpost.envs.tasks import RobotTask, get_task

# noise (B, chunk * act_dim), conditions (B, cond_dim) -> action chunks (B, chunk * act_dim)
Generate = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class RobotData:
    """How samples map to actions for one task: history, chunk, re-planning, normaliser."""

    task: RobotTask
    history: int
    chunk: int
    execute: int
    normaliser: Normaliser

    def evaluate(
        self,
        generate: Generate,
        *,
        episodes: int,
        seed: int = 0,
        device: torch.device | str = "cpu",
        distances: list[float] | None = None,
    ) -> dict[str, float]:
        """Roll out ``generate`` as a policy; noise comes from a generator seeded ``seed``
        (``distances``: a list each episode's final distance is appended to)."""
        gen = torch.Generator().manual_seed(seed)
        dim = self.chunk * self.task.act_dim

        def policy(cond: np.ndarray) -> np.ndarray:
            noise = torch.randn((cond.shape[0], dim), generator=gen).to(device)
            c = torch.from_numpy(cond).to(device)
            with torch.no_grad():
                x = generate(noise, c).float().cpu().numpy()
            return x.reshape(cond.shape[0], self.chunk, self.task.act_dim)

        return rollouts(
            self.task,
            policy,
            episodes=episodes,
            seed=seed,
            history=self.history,
            execute=self.execute,
            normaliser=self.normaliser,
            distances=distances,
        )


def load_robot_data(
    name: str,
    *,
    path: str | None = None,
    demos: int = 200,
    history: int = 2,
    chunk: int = 4,
    execute: int = 2,
    noise: float = 0.1,
    seed: int = 0,
    heldout_fraction: float = 0.1,
) -> tuple[ArrayData, ArrayData, RobotData]:
    """Training and held-out (condition, chunk) data of task ``name`` and its roll-out hook."""
    task = get_task(name)
    if min(demos, history, chunk, execute) < 1:
        raise ValueError("data.demos, data.history, data.chunk and data.execute must be >= 1")
    if execute > chunk:
        raise ValueError(f"data.execute={execute} exceeds data.chunk={chunk}")
    raw = read_demos(path, task) if path else cached_demos(task, demos, seed, noise)
    episodes = np.unique(raw["episode"])
    n_held = int(round(heldout_fraction * len(episodes)))
    if heldout_fraction > 0 and len(episodes) > 1:
        n_held = min(max(n_held, 1), len(episodes) - 1)
    held_eps = episodes[len(episodes) - n_held :] if n_held else episodes[:0]
    is_held = np.isin(raw["episode"], held_eps)
    train_mask = ~is_held if n_held < len(episodes) else np.ones_like(is_held)
    normaliser = Normaliser.fit(raw["obs"][train_mask])
    obs = normaliser(raw["obs"])
    actions = raw["actions"] / task.action_scale

    def part(mask: np.ndarray) -> ArrayData:
        c, x = chunk_samples(
            obs[mask], actions[mask], raw["episode"][mask], history=history, chunk=chunk
        )
        return ArrayData(torch.from_numpy(x), torch.from_numpy(c), name=name)

    train = part(train_mask)
    held = part(is_held) if n_held else train
    return train, held, RobotData(task, history, chunk, execute, normaliser)


__all__ = ["RobotData", "load_robot_data"]
