"""Tests of flowpost/train/updater.py: steps, isolation between optimisers, NaN guard."""

import pytest
import torch

from flowpost.train.updater import NonFiniteLossError, OptimizerUpdater


def _two_nets():
    torch.manual_seed(0)
    policy, disc = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    up = OptimizerUpdater(
        {
            "policy": torch.optim.SGD(policy.parameters(), lr=0.1),
            "discriminator": torch.optim.SGD(disc.parameters(), lr=0.1),
        }
    )
    return policy, disc, up


def test_policy_step_leaves_discriminator_untouched_and_clears_grads() -> None:
    policy, disc, up = _two_nets()
    before_d = [p.clone() for p in disc.parameters()]
    before_p = [p.clone() for p in policy.parameters()]
    loss = disc(policy(torch.ones(3, 2))).mean()
    logs = up.step("policy", adv=loss)
    assert set(logs) == {"policy/adv"}
    assert all(torch.equal(a, b) for a, b in zip(before_d, disc.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_p, policy.parameters()))
    assert all(p.grad is None for p in list(disc.parameters()) + list(policy.parameters()))


def test_nonfinite_term_is_named_and_nothing_changes() -> None:
    policy, _, up = _two_nets()
    up.global_step = 17
    before = [p.clone() for p in policy.parameters()]
    good = policy(torch.ones(1, 2)).sum()
    with pytest.raises(NonFiniteLossError, match=r"step 17: term 'policy/reg' = nan"):
        up.step("policy", fm=good, reg=torch.tensor(float("nan")))
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_clipping_bounds_the_step() -> None:
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    up = OptimizerUpdater(
        {"policy": torch.optim.SGD(net.parameters(), lr=1.0)}, grad_clip={"policy": 0.5}
    )
    logs = up.step("policy", big=(net(torch.ones(1, 1)) * 1000).sum())
    assert abs(float(net.weight.detach()) + 0.5) < 1e-6
    assert logs["policy/grad_norm"] == pytest.approx(1000.0)  # before clipping, logged


def test_unknown_optimiser_is_a_clear_error() -> None:
    _, _, up = _two_nets()
    with pytest.raises(KeyError, match="no optimiser named 'gen'"):
        up.step("gen", x=torch.zeros(()))


def test_schedule_follows_training_iterations_not_optimiser_steps() -> None:
    net = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    up = OptimizerUpdater({"policy": opt}, lr_factor=lambda k: 1.0 / (1 + k))
    for iteration in (0, 4, 9):  # a role that skips iterations stays on the run's schedule
        up.global_step = iteration
        up.step("policy", x=net(torch.ones(1, 1)).sum())
        assert opt.param_groups[0]["lr"] == pytest.approx(1.0 / (1 + iteration))


def test_steps_reuse_the_gradient_accumulators_and_match_a_plain_loop() -> None:
    # the updater holds each parameter's AccumulateGrad node, so a step does not rebuild
    # them: a hook put on the nodes (no reference kept here) fires at every step; the
    # arithmetic is a plain loop's
    from torch.autograd.graph import get_gradient_edge

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    twin.load_state_dict(net.state_dict())
    up = OptimizerUpdater({"policy": torch.optim.Adam(net.parameters(), lr=0.1)})
    opt = torch.optim.Adam(twin.parameters(), lr=0.1)
    fired: list[int] = []
    for p in net.parameters():
        get_gradient_edge(p).node.register_prehook(lambda grads: fired.append(1))
    x = torch.randn(16, 3)
    for _ in range(3):
        up.step("policy", mse=net(x).pow(2).mean())
        twin(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert len(fired) == 3 * len(list(net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters()))
