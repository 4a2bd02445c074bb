"""Tests of flowpost/methods/fail.py: losses vs hand-computed values, estimator identities,
gradient routing between roles, and a short 2-D run."""

from __future__ import annotations

import math

import ot
import pytest
import torch
from torch import Tensor, nn

from flowpost.data.base import Batch, DataSpec
from flowpost.methods.base import get_method_class
from flowpost.methods.components.adversarial import (
    adversarial_policy_loss,
    discriminator_loss,
    fail_reward,
)
from flowpost.methods.components.common import solver_grid
from flowpost.methods.components.pathwise import local_pd_points, pathwise_sample
from flowpost.methods.components.policy import policy_rollout
from flowpost.methods.components.policy_gradient import (
    FPODraws,
    fpo_surrogate,
    group_advantages,
    ppo_clip_loss,
)
from flowpost.methods.components.sde import sde_log_prob, sde_rollout
from flowpost.methods.fail import FAILConfig, FAILMethod
from flowpost.nets.config import DiscriminatorConfig, NetConfig

torch.set_num_threads(1)


class RecordingUpdater:
    """An Updater that back-propagates and records which roles received gradients.

    With ``lr`` > 0 it also takes a plain SGD step, so that training can be observed.
    """

    def __init__(self, method: FAILMethod, lr: float = 0.0) -> None:
        self.method = method
        self.lr = lr
        self.calls: list[tuple[str, dict[str, bool]]] = []

    def step(self, name: str, **terms: Tensor) -> dict[str, float]:
        total = sum(terms.values())
        assert isinstance(total, Tensor)
        total.backward()
        got = {}
        for role in ("policy", "reference", "discriminator"):
            module = getattr(self.method, role)
            grads = [p.grad for p in module.parameters()]
            got[role] = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
        self.calls.append((name, got))
        with torch.no_grad():
            for p in self.method.parameters():
                if p.grad is not None:
                    if self.lr > 0:
                        p.sub_(self.lr * p.grad)
                    p.grad = None
        return {f"{name}/{k}": float(v.detach()) for k, v in terms.items()}


def tiny_method(**overrides: object) -> FAILMethod:
    cfg = FAILConfig(
        disc_warmup_steps=0,
        discriminator=DiscriminatorConfig(hidden=16, depth=1),
        **overrides,  # type: ignore[arg-type]
    )
    return FAILMethod(cfg, DataSpec((2,)), NetConfig(hidden=16, depth=1, time_embed_dim=8))


def test_registered_under_fail() -> None:
    assert get_method_class("fail") is FAILMethod


def test_discriminator_loss_matches_hand_computed_bce() -> None:
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5])
    # BCE with label 1: log(1 + e^{-l}); label 0: log(1 + e^{l})
    want = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2 + math.log(
        1 + math.exp(0.5)
    )
    assert float(discriminator_loss(real, fake)) == pytest.approx(want, abs=1e-6)


def test_policy_loss_and_reward_are_softplus_of_logits() -> None:
    logits = torch.tensor([0.0, 1.0, -2.0])
    want_loss = [-math.log(1 / (1 + math.exp(-v))) for v in (0.0, 1.0, -2.0)]
    want_reward = [-math.log(1 - 1 / (1 + math.exp(-v))) for v in (0.0, 1.0, -2.0)]
    assert adversarial_policy_loss(logits).tolist() == pytest.approx(want_loss, abs=1e-6)
    assert fail_reward(logits).tolist() == pytest.approx(want_reward, abs=1e-6)


def test_local_estimator_hand_computed() -> None:
    c = torch.tensor([3.0, -1.0])
    policy = lambda x, t, cond: c.expand_as(x)  # noqa: E731
    x0 = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    x1 = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    grid = solver_grid(2)  # [0, 0.5, 1]
    pts = local_pd_points(policy, x0, x1, grid, mc_timesteps=1, t_min=1e-3,
                          step_index=torch.tensor([0, 1]))  # fmt: skip
    # step 0: t = 0, dt = 0.5, t' = 0.5: x_hat = (x0 + 0.5 c - 0.5 x0) / 0.5 = x0 + c
    assert pts.x_hat[0].tolist() == pytest.approx([4.0, 1.0])
    # step 1: t = 0.5, t' = 1: x_hat = x_t + 0.5 c = 0.5 (x0 + x1) + 0.5 c
    assert pts.x_hat[1].tolist() == pytest.approx([2.5, 1.0])
    # the policy loss is softplus(-D(x_hat)); for D(x) = x_0 - x_1 by hand:
    loss = adversarial_policy_loss(pts.x_hat[:, 0] - pts.x_hat[:, 1])
    assert loss.tolist() == pytest.approx([math.log(1 + math.exp(-3.0)),
                                           math.log(1 + math.exp(-1.5))], abs=1e-6)  # fmt: skip


@pytest.mark.parametrize("nfe", [1, 4, 7])
def test_local_estimate_is_x1_for_the_straight_line_velocity(nfe: int) -> None:
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    m = 3
    u = (x1 - x0).repeat_interleave(m, dim=0)
    pts = local_pd_points(lambda x, t, c: u, x0, x1, solver_grid(nfe), mc_timesteps=m, t_min=1e-6)
    assert torch.allclose(pts.x_hat, x1.repeat_interleave(m, dim=0), atol=1e-5)
    assert set(pts.t.tolist()) <= set(solver_grid(nfe)[:-1].tolist())


class LinearField(nn.Module):
    """v(x, t) = A x + b t: a tiny model whose ODE solution is smooth in (A, b)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.A = nn.Parameter(0.3 * torch.randn(2, 2, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(2, generator=g, dtype=torch.float64))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return x @ self.A.T + t[:, None] * self.b


@pytest.mark.parametrize("checkpoint", [True, False])
def test_pathwise_gradient_matches_finite_differences(checkpoint: bool) -> None:
    model = LinearField()
    w = torch.tensor([1.0, -0.5], dtype=torch.float64)
    x0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def loss() -> Tensor:
        x_hat = pathwise_sample(model, x0, nfe=3, solver="euler",
                                checkpoint=checkpoint)  # fmt: skip
        return adversarial_policy_loss(x_hat @ w).mean()

    loss().backward()
    assert model.A.grad is not None
    auto = model.A.grad.clone()
    eps = 1e-6
    fd = torch.zeros_like(auto)
    with torch.no_grad():
        for i in range(2):
            for j in range(2):
                model.A[i, j] += eps
                up = float(loss())
                model.A[i, j] -= 2 * eps
                down = float(loss())
                model.A[i, j] += eps
                fd[i, j] = (up - down) / (2 * eps)
    assert torch.allclose(auto, fd, rtol=1e-5, atol=1e-8)


def test_group_advantages_zero_mean_unit_variance_per_group() -> None:
    r = torch.randn(12, generator=torch.Generator().manual_seed(3)) * 5 + 2
    a = group_advantages(r, 4).reshape(3, 4)
    assert torch.allclose(a.mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(a.var(1, correction=0), torch.ones(3), atol=1e-5)
    # the clip at +-5 binds for a large group with one outlier: sqrt(G - 1) > 5
    big = torch.zeros(40)
    big[0] = 1.0
    assert float(group_advantages(big, 40).max()) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)


def test_ppo_clip_loss_hand_computed() -> None:
    rho, adv = torch.tensor([0.5, 1.5, 1.1]), torch.tensor([1.0, -1.0, 2.0])
    # per sample max(-rho A, -clip(rho) A): max(-0.5, -0.8) = -0.5; max(1.5, 1.2) = 1.5;
    # max(-2.2, -2.2) = -2.2
    assert float(ppo_clip_loss(rho, adv, 0.2)) == pytest.approx((-0.5 + 1.5 - 2.2) / 3, abs=1e-6)


def test_fpo_surrogate_hand_computed() -> None:
    c = torch.tensor([1.0, 1.0])
    x1 = torch.tensor([[1.0, 0.0]])
    draws = FPODraws(t=torch.tensor([0.3, 0.7]), noise=torch.tensor([[0.0, 0.0], [1.0, 1.0]]),
                     draws=2)  # fmt: skip
    terms = fpo_surrogate(lambda x, t, cond: c.expand_as(x), x1, draws)
    # targets x1 - x0: [1, 0] and [0, -1]; errors [0, 1] -> 0.5 and [1, 2] -> 2.5
    assert terms.loss.tolist() == pytest.approx([1.5])
    # x_t = (1 - t) x0 + t x1
    assert terms.x_t.flatten().tolist() == pytest.approx([0.3, 0.0, 1.0, 0.3])


def test_sde_log_prob_scores_the_rollout_and_the_rollout_keeps_marginals_for_exact_field() -> None:
    # data = a point mass at m: the exact velocity is v(x, t) = (m - x) / (1 - t)
    m = torch.tensor([1.0, -2.0])

    def v(x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return (m - x) / (1 - t[:, None]).clamp_min(1e-3)

    torch.manual_seed(0)
    traj = sde_rollout(v, torch.randn(2000, 2), solver_grid(50), 0.8)
    # the marginal-preserving SDE ends (close to) the point mass as the ODE would
    assert float((traj.final - m).abs().max()) < 0.2
    lp = sde_log_prob(v, traj, 0.8)
    assert lp.shape == (2000,) and bool(torch.isfinite(lp).all())


def test_phase_schedule() -> None:
    m = tiny_method(cold_start_steps=3)
    m.config.disc_warmup_steps = 2
    assert [m.phase(s) for s in range(6)] == ["cold_start"] * 3 + ["disc_warmup"] * 2 + [
        "adversarial"
    ]


def _batch(n: int = 8) -> Batch:
    return Batch(torch.randn(n, 2, generator=torch.Generator().manual_seed(5)) + 2.0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"variant": "pd", "pd_estimator": "local", "ref_weight": 0.1, "pd_expert": True},
        {"variant": "pd", "pd_estimator": "pathwise", "ref_weight": 0.1},
        {"variant": "pg", "pg_estimator": "fpo", "ref_weight": 0.1, "pg_epochs": 2},
        {"variant": "pg", "pg_estimator": "sde"},
    ],
)
def test_gradients_reach_only_the_role_being_trained(overrides: dict[str, object]) -> None:
    torch.manual_seed(0)
    m = tiny_method(disc_steps=2, nfe=3, **overrides)
    up = RecordingUpdater(m)
    logs = m.train_step(_batch(), 0, up)
    names = [name for name, _ in up.calls]
    epochs = int(overrides.get("pg_epochs", 1))  # type: ignore[call-overload]
    assert names == ["discriminator", "discriminator"] + ["policy"] * epochs
    for name, got in up.calls:
        assert got["reference"] is False
        if name == "discriminator":
            assert got == {"policy": False, "reference": False, "discriminator": True}
        else:
            assert got == {"policy": True, "reference": False, "discriminator": False}
    if overrides["variant"] == "pg":
        # the PG ratio is exactly 1 before the first update (old policy = current policy)
        assert logs["pg/ratio_first"] == 1.0


def test_cold_start_and_warmup_train_one_role_each() -> None:
    m = tiny_method(cold_start_steps=1)
    m.config.disc_warmup_steps = 1
    up = RecordingUpdater(m)
    m.train_step(_batch(), 0, up)
    m.train_step(_batch(), 1, up)
    assert [n for n, _ in up.calls] == ["policy", "discriminator"]
    assert up.calls[0][1]["discriminator"] is False
    assert up.calls[1][1]["policy"] is False


def test_user_discriminator_module_and_factory() -> None:
    class Mine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
            return self.lin(x).squeeze(1)

    cfg = FAILConfig(disc_warmup_steps=0)
    m = FAILMethod(cfg, DataSpec((2,)), NetConfig(hidden=8, depth=1), discriminator=Mine())
    assert isinstance(m.discriminator, Mine)
    up = RecordingUpdater(m)
    m.train_step(_batch(), 0, up)
    assert [n for n, _ in up.calls] == ["discriminator", "policy"]
    with pytest.raises(ValueError, match="module:function"):
        FAILMethod(FAILConfig(discriminator_factory="nocolon"), DataSpec((2,)), NetConfig())
    with pytest.raises(ValueError, match="cannot import"):
        FAILMethod(FAILConfig(discriminator_factory="no_such_mod:f"), DataSpec((2,)), NetConfig())


def test_pg_needs_a_batch_of_a_whole_group() -> None:
    m = tiny_method(variant="pg", pg_group_size=16)
    with pytest.raises(ValueError, match="pg_group_size"):
        m.train_step(_batch(8), 0, RecordingUpdater(m))


def test_conditional_groups_share_a_label() -> None:
    spec = DataSpec((2,), num_classes=3)
    cfg = FAILConfig(variant="pg", pg_group_size=3, discriminator=DiscriminatorConfig(hidden=8))
    m = FAILMethod(cfg, spec, NetConfig(hidden=8, depth=1))
    batch = Batch(torch.randn(7, 2), torch.tensor([2, 0, 1, 1, 0, 2, 2]))
    r = policy_rollout(m.policy, batch, cfg, grouped=True)
    assert r.cond is not None and r.cond.tolist() == [2, 2, 2, 0, 0, 0]
    assert r.x1.shape == (6, 2)


def _w2(a: Tensor, b: Tensor) -> float:
    cost = torch.cdist(a.double(), b.double()).pow(2).numpy()
    return float(ot.emd2([], [], cost)) ** 0.5


def test_short_toy_run_moves_the_policy_to_the_expert() -> None:
    """From a random init (samples ~ noise), FAIL-PD pulls the 4-step sampler's output toward
    an expert Gaussian at (2, -1): W2 must fall to under a third, and the discriminator, which
    separates the two almost perfectly at first, ends near chance (BCE near 2 log 2)."""
    from flowpost.train.updater import OptimizerUpdater

    torch.manual_seed(0)
    cfg = FAILConfig(disc_warmup_steps=10, nfe=4, gp_weight=1.0,
                     discriminator=DiscriminatorConfig(hidden=32, depth=2))  # fmt: skip
    m = FAILMethod(cfg, DataSpec((2,)), NetConfig(hidden=32, depth=2, time_embed_dim=8))
    assert m.discriminator is not None
    up = OptimizerUpdater({
        "policy": torch.optim.Adam(m.policy.parameters(), lr=3e-3, betas=(0.5, 0.9)),
        "discriminator": torch.optim.Adam(m.discriminator.parameters(), lr=3e-3, betas=(0.5, 0.9)),
    })  # fmt: skip
    target = torch.tensor([2.0, -1.0])
    noise = torch.randn(256, 2)
    expert_eval = target + 0.5 * torch.randn(256, 2)
    before = _w2(m.generate(noise, nfe=4), expert_eval)
    bce = []
    for step in range(150):
        logs = m.train_step(Batch(target + 0.5 * torch.randn(128, 2)), step, up)
        bce.append(logs["discriminator/bce"])
    after = _w2(m.generate(noise, nfe=4), expert_eval)
    assert before > 1.5
    assert after < before / 3
    assert min(bce[:12]) < 1.0  # the discriminator wins during its warm-up...
    assert sum(bce[-20:]) / 20 > 1.3  # ...and is near chance (2 log 2 = 1.386) at the end


def test_load_pretrained_fills_policy_and_frozen_reference() -> None:
    m = tiny_method()
    other = tiny_method()
    with torch.no_grad():
        for p in other.policy.parameters():
            p.add_(1.0)
    m.load_pretrained(other.policy.state_dict())
    for a, b, c in zip(m.policy.parameters(), m.reference.parameters(),
                       other.policy.parameters()):  # fmt: skip
        assert torch.equal(a, c) and torch.equal(b, c)
        assert a.requires_grad and not b.requires_grad
    assert "reference" not in m.optimizers()
