import numpy as np
import pytest

from flowpost.envs.demos import Normaliser, cache_dir, cached_demos, chunk_samples, read_demos
from flowpost.envs.tasks import get_task


def test_chunks_and_histories_by_hand() -> None:
    obs = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    act = obs * 2
    episode = np.array([0, 0, 0, 1, 1])
    cond, x = chunk_samples(obs, act, episode, history=2, chunk=3)
    assert cond.tolist() == [[0, 0], [1, 0], [2, 1], [10, 10], [11, 10]]
    assert x.tolist() == [[0, 2, 4], [2, 4, 4], [4, 4, 4], [20, 22, 22], [22, 22, 22]]


def test_demos_are_recorded_once_then_read_from_the_cache() -> None:
    task = get_task("reacher")
    first = cached_demos(task, episodes=2, seed=5)
    files = list(cache_dir().glob("reacher-2ep-seed5-*.npz"))
    assert len(files) == 1 and first["obs"].shape == (100, 10)
    again = cached_demos(task, episodes=2, seed=5)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["obs"], cached_demos(task, episodes=2, seed=6)["obs"])


def test_demonstrations_of_the_wrong_width_are_one_clear_line(tmp_path) -> None:
    path = tmp_path / "mine.npz"
    np.savez(path, obs=np.zeros((5, 11)), actions=np.zeros((5, 2)), episode=np.zeros(5, int))
    with pytest.raises(ValueError, match="width 11, but Reacher-v5 observations have 10") as err:
        read_demos(path, get_task("reacher"))
    assert "\n" not in str(err.value)


def test_normaliser_standardises() -> None:
    obs = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 4))
    z = Normaliser.fit(obs)(obs)
    assert np.allclose(z.mean(0), 0, atol=1e-5) and np.allclose(z.std(0), 1, atol=1e-4)
