"""Shard-invariant draws: N processes' slices reassemble the one-process draw exactly."""

import pytest
import torch

from flowpost.flows.random import batch_shard, current_shard, rand, randint, randn, randn_like


def _one_process(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return randn(6, 3), rand(6), randint(0, 10, 6)


@pytest.mark.parametrize("world", [2, 3])
def test_slices_of_a_sharded_draw_equal_the_one_process_draw(world: int) -> None:
    full = _one_process(7)
    local = 6 // world
    parts = []
    for rank in range(world):
        torch.manual_seed(7)  # every process starts from the same seed
        with batch_shard(offset=rank * local, local=local, total=6):
            parts.append((randn(local, 3), rand(local), randint(0, 10, local)))
    for i in range(3):
        assert torch.equal(torch.cat([p[i] for p in parts]), full[i])


def test_generators_stay_in_step_across_ranks() -> None:
    states = []
    for rank in range(2):
        torch.manual_seed(3)
        with batch_shard(offset=rank * 2, local=2, total=4):
            randn_like(torch.zeros(2, 5))
            rand(2)
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1])


def test_outside_a_shard_draws_are_plain_torch_draws() -> None:
    torch.manual_seed(1)
    ours = randn(4, 2)
    torch.manual_seed(1)
    assert torch.equal(ours, torch.randn(4, 2))
    assert current_shard() is None


def test_draws_of_another_size_are_not_sliced() -> None:
    with batch_shard(offset=0, local=2, total=4):
        assert randn(3, 1).shape == (3, 1)


def test_bad_shard_is_refused() -> None:
    with pytest.raises(ValueError, match="bad shard"), batch_shard(offset=3, local=2, total=4):
        pass


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_randn_like_outside_a_shard_is_randn_of_the_shape(dtype: torch.dtype, layout: str) -> None:
    # its quick path (torch.randn_like) must draw what randn and the sharded path draw,
    # whatever the memory layout of the tensor it copies the shape of
    x = torch.zeros(4, 3, 5, 5, dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(2, 3)
    torch.manual_seed(5)
    quick = randn_like(x)
    torch.manual_seed(5)
    with batch_shard(offset=0, local=4, total=4):  # one process: the general path
        general = randn_like(x)
    torch.manual_seed(5)
    plain = torch.randn(tuple(x.shape), dtype=dtype)
    assert torch.equal(quick, plain) and torch.equal(general, plain)
    assert quick.is_contiguous() and quick.dtype == dtype
