"""Tests of flowpost/methods/components/jumps.py: the time pairs of two-time generators, the
transport cost, the weight schedules, the end-time check of a user's network, one jump, the
sampling chain and the source / real samples of a hop."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from flowpost.flows import random as frandom
from flowpost.methods.components.jumps import (
    any_step_times,
    fixed_k_times,
    jump,
    jump_chain,
    jump_samples,
    ot_loss,
    renoised_chain,
    scheduled_weight,
    shuffled_within,
    takes_end_time,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fixed_k_times(k: int) -> None:
    torch.manual_seed(0)
    a, b = fixed_k_times(4000, k)
    assert torch.allclose(b - a, torch.full_like(a, 1.0 / k))
    levels = torch.round(a * k).long()
    assert torch.allclose(a, levels.float() / k)
    counts = torch.bincount(levels, minlength=k).float() / 4000
    assert counts.shape == (k,) and bool((counts - 1 / k).abs().max() < 0.03)


@pytest.mark.parametrize("k", [3, 6, 7, 10])
def test_fixed_k_times_at_span_one_draws_what_it_drew_before_the_span(k: int) -> None:
    torch.manual_seed(1)
    a, _ = fixed_k_times(500, k)
    torch.manual_seed(1)
    assert torch.equal(a, frandom.randint(0, k, 500).float() / k)


def test_fixed_k_times_with_a_span_below_one() -> None:
    torch.manual_seed(0)
    a, b = fixed_k_times(400, 4, span=0.5)
    assert sorted(set((a * 8).round().long().tolist())) == [0, 1, 2, 3]
    assert torch.allclose(b - a, torch.full_like(a, 0.125))


def test_any_step_times() -> None:
    torch.manual_seed(0)
    a, b = any_step_times(20000)
    assert bool((a >= 0).all() and (b >= a).all() and (b <= 1).all())
    assert a.mean().item() == pytest.approx(0.5, abs=0.01)
    assert b.mean().item() == pytest.approx(0.75, abs=0.01)  # E[a + (1 - a) u] = 3/4


def test_scheduled_weight_and_transport_cost() -> None:
    assert scheduled_weight(0.2, 0.0, "step", 10, 9) == 0.2
    assert scheduled_weight(0.2, 0.0, "step", 10, 10) == 0.0
    assert scheduled_weight(0.2, 0.1, "cosine", 10, 5) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="unknown schedule"):
        scheduled_weight(0.2, 0.1, "linear", 10, 5)
    out, src = torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)
    assert float(ot_loss(out, src, torch.tensor([0.5]))) == pytest.approx(5.0)  # (5/2)/0.5


def test_takes_end_time() -> None:
    class WithEnd(nn.Module):
        def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None,
                    t_end: Tensor | None = None) -> Tensor:  # fmt: skip
            return x

    class Without(nn.Module):
        def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
            return x

    assert takes_end_time(WithEnd()) and not takes_end_time(Without())


class Scale(nn.Module):
    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, t_end=None) -> Tensor:
        return x * (t if t_end is None else t_end)[:, None]


def test_jump_direct_residual_and_end_time() -> None:
    x, a, b = torch.ones(2, 3), torch.tensor([0.0, 0.5]), torch.tensor([0.5, 1.0])
    direct = jump(Scale(), x, a, b, None, end_time=True, residual=False)
    assert torch.equal(direct, b[:, None].expand(2, 3))  # g = x * b
    residual = jump(Scale(), x, a, b, None, end_time=False, residual=True)
    assert torch.allclose(residual, x + (b - a)[:, None] * a[:, None] * x)  # g = x * a


def test_jump_chain_walks_the_grid_and_checks_nfe() -> None:
    seen: list[tuple[float, float]] = []

    def step(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        seen.append((float(a[0]), float(b[0])))
        return x + 1

    out = jump_chain(step, torch.zeros(2, 1), nfe=4, k=0)
    assert out.tolist() == [[4.0], [4.0]]
    assert seen == [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]
    with pytest.raises(ValueError, match="fixed 2-step"):
        jump_chain(step, torch.zeros(1, 1), nfe=4, k=2)
    with pytest.raises(ValueError, match=">= 1"):
        jump_chain(step, torch.zeros(1, 1), nfe=0, k=0)


def test_renoised_chain_jumps_to_the_data_and_renoises_with_fresh_noise() -> None:
    seen: list[tuple[float, float]] = []

    def step(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        seen.append((float(a[0]), float(b[0])))
        return 2 * x + 1  # a made-up "data prediction"

    z = torch.randn(3, 2)
    torch.manual_seed(5)
    out = renoised_chain(step, z, nfe=3, k=3)
    assert [a for a, _ in seen] == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert [b for _, b in seen] == [1.0, 1.0, 1.0]
    # by hand, replaying the same noise draws
    torch.manual_seed(5)
    x = z
    for t_next in (1 / 3, 2 / 3, None):
        x_hat = 2 * x + 1
        if t_next is None:
            break
        x = (1 - t_next) * frandom.randn_like(x_hat) + t_next * x_hat
    assert torch.allclose(out, x_hat, atol=1e-6)
    # a one-hop chain is the generator's one jump to the data, without noise
    assert torch.equal(renoised_chain(step, z, nfe=1, k=1), 2 * z + 1)
    with pytest.raises(ValueError, match="fixed 3-step"):
        renoised_chain(step, z, nfe=2, k=3)
    seen.clear()
    renoised_chain(step, z, nfe=2, k=2, span=0.5)  # the hops start at 0 and 1/4
    assert seen == [(0.0, 1.0), (0.25, 1.0)]
    with pytest.raises(ValueError, match="span"):
        renoised_chain(step, z, nfe=2, k=2, span=0.0)


def test_renoised_chain_feeds_each_hop_the_interpolant_when_the_hops_are_exact() -> None:
    """If every hop returns a data sample, the next hop's input has the interpolant's
    marginal (1 - t) z + t x: here data N(3, 0.5^2) in 1-D, so at t = 1/2 mean 1.5 and
    variance 0.25 + 0.0625."""
    inputs: list[Tensor] = []

    def exact(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        inputs.append(x)
        return 3 + 0.5 * torch.randn_like(x)

    torch.manual_seed(0)
    renoised_chain(exact, torch.randn(200_000, 1), nfe=2, k=2)
    mid = inputs[1]
    assert abs(float(mid.mean()) - 1.5) < 0.01 and abs(float(mid.var()) - 0.3125) < 0.01


@pytest.mark.parametrize("shared", [True, False])
def test_jump_samples_share_noise_only_when_asked(shared: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 2)
    a, b = torch.zeros(5), torch.zeros(5)  # both at the noise end: x_a = z, x_b = z'
    x_a, x_b = jump_samples(x, a, b, shared)
    assert torch.equal(x_a, x_b) == shared
    x_a, x_b = jump_samples(x, torch.ones(5), torch.ones(5), shared)  # data end
    assert torch.equal(x_a, x) and torch.equal(x_b, x)
    other = torch.randn(5, 2)  # the real sample built from other data points
    _, x_b = jump_samples(x, torch.ones(5), torch.ones(5), shared, real_data=other)
    assert torch.equal(x_b, other)


@pytest.mark.parametrize("labelled", [True, False])
def test_shuffled_within_is_a_uniform_permutation_within_labels(labelled: bool) -> None:
    torch.manual_seed(0)
    labels = torch.tensor([2, 0, 2, 1, 0, 2]) if labelled else None
    counts = torch.zeros(6, 6)
    for _ in range(3000):
        p = shuffled_within(labels, 6)
        assert sorted(p.tolist()) == list(range(6))  # a permutation
        if labels is not None:
            assert torch.equal(labels[p], labels)  # every row keeps its label
        counts[torch.arange(6), p] += 1
    # every allowed partner equally often: 1 / (rows of that label), 0 for other labels
    group = labels if labels is not None else torch.zeros(6, dtype=torch.long)
    same = (group[:, None] == group[None, :]).float()
    want = same / same.sum(1, keepdim=True)
    assert torch.allclose(counts / 3000, want, atol=0.04)


def test_shuffled_within_draws_every_arrangement_of_a_label_equally_often() -> None:
    # a fixed or cyclic pattern could give every row each partner equally often; all
    # 3! = 6 arrangements of one label's 3 rows must appear, each about 1/6 of the time
    torch.manual_seed(1)
    labels = torch.tensor([7, 1000003, 7, 7, 1000003])  # large labels sort exactly
    seen: dict[tuple[int, ...], int] = {}
    for _ in range(3000):
        p = shuffled_within(labels, 5)
        assert torch.equal(labels[p], labels)
        key = tuple(p[[0, 2, 3]].tolist())
        seen[key] = seen.get(key, 0) + 1
    assert len(seen) == 6
    assert all(abs(c / 3000 - 1 / 6) < 0.03 for c in seen.values())
