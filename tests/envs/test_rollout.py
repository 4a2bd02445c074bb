import numpy as np
import pytest

from flowpost.envs.rollout import eval_seed, rollouts
from flowpost.envs.tasks import get_task


def test_a_still_policy_rarely_succeeds_and_metrics_are_consistent() -> None:
    task = get_task("reacher")
    m = rollouts(task, lambda c: np.zeros((c.shape[0], 2, 2)), episodes=6, execute=2)
    assert m["success_rate"] <= 1 / 6 and m["final_distance"] > task.threshold
    assert m["return"] < 0  # Reacher's reward is minus the distance (minus control cost)


def test_chunks_of_the_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="policy returned shape"):
        rollouts(get_task("reacher"), lambda c: np.zeros((c.shape[0], 2)), episodes=2)


def test_evaluation_seeds_never_meet_demonstration_seeds() -> None:
    assert eval_seed(0, 0) > 100_000 * 1000


def test_recorded_distances_are_each_episode_s_and_make_up_the_metrics() -> None:
    """The per-episode final distances (what paired roll-out selection compares) are in
    episode order, and the reported mean and success rate are theirs."""
    task = get_task("reacher")
    still = lambda c: np.zeros((c.shape[0], 2, 2))  # noqa: E731
    distances: list[float] = []
    m = rollouts(task, still, episodes=5, execute=2, seed=3, distances=distances)
    assert len(distances) == 5
    assert m["final_distance"] == pytest.approx(np.mean(distances))
    assert m["success_rate"] == pytest.approx(np.mean(np.array(distances) < task.threshold))
    first: list[float] = []
    rollouts(task, still, episodes=2, execute=2, seed=3, distances=first)
    assert first == distances[:2]  # episode i is the same episode in any batch size
