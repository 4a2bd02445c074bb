"""Tests of flowpost/methods/components/guards.py: the discriminator guard's hysteresis,
penalty boost and single warning, and that FAIL pauses a dominating discriminator."""

from __future__ import annotations

import warnings

import pytest
import torch

from flowpost.data.base import Batch, DataSpec
from flowpost.methods.components.guards import DiscriminatorGuard, GuardWarning
from flowpost.methods.fail import FAILConfig, FAILMethod
from flowpost.nets.config import DiscriminatorConfig, NetConfig
from flowpost.train.updater import OptimizerUpdater


def test_guard_hysteresis_boost_and_one_warning() -> None:
    g = DiscriminatorGuard(decay=0.5, threshold=0.9, release=0.75)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert not g.observe(0.95, 0.95)  # running accuracy 0.725: not yet
        assert not g.observe(1.0, 1.0)  # 0.86
        assert g.observe(1.0, 1.0) and not g.allow_update()  # 0.93
        assert g.gp_scale == 2.0
        assert g.observe(0.8, 0.8)  # 0.87 > release: still dominating
        assert not g.observe(0.5, 0.5) and g.allow_update()  # 0.68 < release
        g.observe(1.0, 1.0), g.observe(1.0, 1.0), g.observe(1.0, 1.0)  # dominates again
    assert g.events == 2 and g.gp_scale == 4.0 and g.skipped == 1
    assert [issubclass(w.category, GuardWarning) for w in seen] == [True]  # warned once
    fresh = DiscriminatorGuard()
    fresh.load_state(g.state())
    assert fresh.state() == g.state()
    off = DiscriminatorGuard(enabled=False, decay=0.0)
    assert not off.observe(1.0, 1.0) and off.allow_update()
    with pytest.raises(ValueError, match="release"):
        DiscriminatorGuard(threshold=0.8, release=0.9)


def _run(guard: bool) -> tuple[FAILMethod, list[dict[str, float]]]:
    """A discriminator 30x faster than the policy on a target far from the policy: it
    separates the two perfectly within a few steps."""
    torch.manual_seed(0)
    cfg = FAILConfig(disc_warmup_steps=5, nfe=2, gp_weight=0.1, disc_guard=guard,
                     discriminator=DiscriminatorConfig(hidden=32, depth=2))  # fmt: skip
    m = FAILMethod(cfg, DataSpec((2,)), NetConfig(hidden=16, depth=1, time_embed_dim=8))
    up = OptimizerUpdater({
        "policy": torch.optim.Adam(m.policy.parameters(), lr=1e-4),
        "discriminator": torch.optim.Adam(m.discriminator.parameters(), lr=3e-3),
    })  # fmt: skip
    logs = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for step in range(60):
            logs.append(
                m.train_step(Batch(torch.tensor([4.0, 4.0]) + torch.randn(64, 2)), step, up)
            )
    m.seen = [w for w in seen if issubclass(w.category, GuardWarning)]  # type: ignore[attr-defined]
    return m, logs


def test_fail_pauses_a_dominating_discriminator_and_warns_once() -> None:
    guarded, logs = _run(True)
    assert len(guarded.seen) == 1 and "dominates" in str(guarded.seen[0].message)  # type: ignore[attr-defined]
    assert guarded.guard is not None and guarded.guard.skipped > 10
    assert logs[-1]["guard/gp_scale"] >= 2.0
    # while paused the discriminator takes no step (no bce logged), and it is checkpointed
    assert any("discriminator/bce" not in rec for rec in logs[10:])
    assert guarded.extra_state()["guard"]["events"] >= 1
    plain, plain_logs = _run(False)
    assert plain.guard is None and len(plain.seen) == 0  # type: ignore[attr-defined]
    assert all("discriminator/bce" in rec for rec in plain_logs)
