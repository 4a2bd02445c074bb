"""Tests of flowpost/methods/components/anchors.py: the energy anchor is a divergence (lowest
at the expert distribution, higher for a clump or a blur) and its gradient pushes a clump's
samples apart, and only until the spreads match."""

from __future__ import annotations

import torch

from flowpost.methods.components.anchors import sample_energy, sample_recall

torch.set_num_threads(1)


def _randn(n: int, seed: int, d: int = 2) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_energy_is_lowest_at_the_expert_spread() -> None:
    y = _randn(2000, 0)
    values = {s: float(sample_energy(s * _randn(2000, 1), None, y, None)) for s in (0.3, 1.0, 2.0)}
    assert values[1.0] < values[0.3] - 0.2 and values[1.0] < values[2.0] - 0.2
    # the expert-expert half is left out: the minimum is E|Y - Y'| (2-D standard normal: sqrt(pi))
    assert abs(values[1.0] - torch.pi**0.5) < 0.05


def _radial_push(scale: float, anchor=sample_energy) -> float:  # type: ignore[no-untyped-def]
    """Mean outward component of -grad of the energy for policy samples of std ``scale``
    around each of two modes whose expert std is 0.1 (gradient descent moves along -grad)."""
    centres = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    which = torch.arange(1024) % 2
    y = centres[which] + 0.1 * _randn(1024, 2)
    x = (centres[which] + scale * _randn(1024, 3)).requires_grad_(True)
    anchor(x, None, y, None).backward()
    assert x.grad is not None
    out = x.detach() - centres[which]
    return float((-x.grad * out).sum(1).mean() / out.norm(dim=1).mean())


def test_energy_gradient_spreads_a_clump_and_rests_at_the_expert_spread() -> None:
    clump, matched, blur = _radial_push(0.03), _radial_push(0.1), _radial_push(0.3)
    assert clump > 0 and blur < 0  # a clump is pushed apart, a blur pulled together
    assert abs(matched) < 0.2 * min(clump, -blur)


def test_energy_per_class_ignores_the_other_classes() -> None:
    y = torch.cat([_randn(500, 4), _randn(500, 5) + 10.0])
    labels = torch.cat([torch.zeros(500), torch.ones(500)]).long()
    swapped = torch.cat([_randn(500, 6) + 10.0, _randn(500, 7)])  # classes swapped
    right = torch.cat([_randn(500, 8), _randn(500, 9) + 10.0])
    assert float(sample_energy(right, labels, y, labels)) < 2.0
    assert float(sample_energy(swapped, labels, y, labels)) > 10.0
    # without the labels the two sets look alike
    blind = [float(sample_energy(x, None, y, None)) for x in (swapped, right)]
    assert abs(blind[0] - blind[1]) < 0.2


def test_recall_spreads_a_clump_and_ignores_samples_no_demonstration_is_near() -> None:
    assert _radial_push(0.03, sample_recall) > 0  # the mode's edges pull the clump apart
    y = _randn(256, 10)
    stray = torch.tensor([[8.0, 8.0]])
    x = torch.cat([_randn(1024, 11), stray]).requires_grad_(True)
    sample_recall(x, None, y, None).backward()
    assert x.grad is not None and float(x.grad[-1].abs().sum()) == 0.0  # precision: not its job
    # covering the demonstrations lowers it: a clump leaves most of them uncovered
    clump = 0.1 * _randn(1024, 12)
    assert float(sample_recall(clump, None, y, None)) > 3 * float(
        sample_recall(x.detach(), None, y, None)
    )
