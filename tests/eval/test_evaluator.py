"""Tests of flowpost/eval/evaluator.py: reproducible samples, conditions, metrics that tell a
right sampler from a wrong one, and training's random stream left untouched."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import Tensor, nn

from flowpost.data.base import ArrayData, DataSpec
from flowpost.eval.evaluator import Evaluator


class AffineSampler(nn.Module):
    """A stand-in method: samples are ``scale * noise + shift (+ label)``; it also draws
    from torch's global generator, as a stochastic sampler does."""

    def __init__(self, scale: float, shift: float, num_classes: int | None = None) -> None:
        super().__init__()
        self.spec = DataSpec((2,), num_classes)
        self.scale = nn.Parameter(torch.tensor(scale))
        self.shift = shift
        self.seen_cond: Tensor | None = None

    def generate(
        self,
        noise: Tensor,
        cond: Tensor | None = None,
        *,
        nfe: int,
        solver: str = "euler",
        roles: Mapping[str, nn.Module] | None = None,
    ) -> Tensor:
        self.seen_cond = cond
        jitter = 1e-3 * torch.randn_like(noise)
        out = self.scale * noise + self.shift + jitter
        return out if cond is None else out + cond[:, None].float()


def _target(n: int, seed: int) -> Tensor:
    return 0.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) + 1.0


def test_samples_are_reproducible_and_leave_the_global_stream_alone() -> None:
    ev = Evaluator(AffineSampler(0.5, 1.0))  # type: ignore[arg-type]
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    a = ev.sample(100, nfe=2, seed=3)
    assert torch.equal(torch.rand(3), expected_next)  # training's stream did not move
    assert torch.equal(a, ev.sample(100, nfe=2, seed=3))
    assert not torch.equal(a, ev.sample(100, nfe=2, seed=4))
    assert a.dtype == torch.float32 and a.device.type == "cpu"


class NoiseEcho(nn.Module):
    """A stand-in stochastic sampler that returns its starting noise beside its first draw
    from the global stream (an SDE increment, a re-noising)."""

    spec = DataSpec((2,))

    def generate(self, noise: Tensor, cond: Tensor | None = None, **_: object) -> Tensor:
        return torch.cat([noise, torch.randn_like(noise)], dim=1)


def test_a_samplers_own_draws_are_fresh_not_the_starting_noise_again() -> None:
    ev = Evaluator(NoiseEcho())  # type: ignore[arg-type]
    out = ev.sample(2000, nfe=2, seed=3)
    start, drawn = out[:, :2], out[:, 2:]
    assert not torch.allclose(start, drawn)
    corr = torch.corrcoef(torch.stack([start.flatten(), drawn.flatten()]))[0, 1]
    assert abs(float(corr)) < 0.05  # independent draws (was exactly 1 before the fix)
    assert torch.equal(out, ev.sample(2000, nfe=2, seed=3))  # and still reproducible


def test_metrics_separate_a_right_sampler_from_a_wrong_one() -> None:
    reference = ArrayData(_target(1000, 0))
    right = Evaluator(AffineSampler(0.5, 1.0), reference=reference)  # type: ignore[arg-type]
    wrong = Evaluator(AffineSampler(0.5, 0.0), reference=reference)  # type: ignore[arg-type]
    good = right.evaluate(nfe=2, n_samples=1000)
    bad = wrong.evaluate(nfe=2, n_samples=1000)
    assert good["w2"] < 0.2  # same distribution: only finite-sample error (~0.1 at n=1000)
    assert 1.2 < bad["w2"] < 1.6  # a shift by (1, 1): W2 = sqrt(2)
    assert good == right.evaluate(nfe=2, n_samples=1000)


def test_conditions_follow_the_reference_or_the_caller() -> None:
    method = AffineSampler(0.0, 0.0, num_classes=3)
    labels = torch.tensor([2, 2, 0, 1])
    ev = Evaluator(method, reference=ArrayData(torch.zeros(4, 2), labels))  # type: ignore[arg-type]
    x = ev.sample(6, nfe=1)
    assert method.seen_cond is not None
    assert method.seen_cond.tolist() == [2, 2, 0, 1, 2, 2]  # held-out class mix, cycled
    assert torch.allclose(x[:, 0], method.seen_cond.float(), atol=0.01)
    ev.sample(3, nfe=1, cond=1)
    assert method.seen_cond.tolist() == [1, 1, 1]
    bare = Evaluator(method)  # type: ignore[arg-type]
    bare.sample(5, nfe=1)
    assert method.seen_cond.tolist() == [0, 1, 2, 0, 1]


def test_user_errors_are_clear(tmp_path) -> None:
    plain = Evaluator(AffineSampler(1.0, 0.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no held-out reference"):
        plain.evaluate(nfe=2)
    with pytest.raises(ValueError, match="without class labels"):
        plain.sample(3, nfe=2, cond=1)
    labelled = Evaluator(AffineSampler(1.0, 0.0, num_classes=2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        labelled.sample(3, nfe=2, cond=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        labelled.sample(2, nfe=2, cond=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="nfe must be >= 1"):
        plain.sample(3, nfe=0)


def test_evaluate_saves_a_plot(tmp_path) -> None:
    ev = Evaluator(AffineSampler(0.5, 1.0), reference=ArrayData(_target(200, 1)))  # type: ignore[arg-type]
    ev.evaluate(nfe=2, n_samples=200, plot=tmp_path / "p.png", title="t")
    assert (tmp_path / "p.png").stat().st_size > 1000


class RecordingRobot:
    """A stand-in robot task: one roll-out step that feeds ``generate`` unit noise and
    reports the mean absolute action it got back."""

    def evaluate(  # type: ignore[no-untyped-def]
        self, generate, *, episodes: int, seed: int, device, distances=None
    ) -> dict[str, float]:
        actions = generate(torch.ones(4, 2), None)
        return {"mean_abs_action": float(actions.detach().abs().mean())}


def test_noise_scale_scales_the_starting_noise_of_samples_and_roll_outs() -> None:
    # samples are scale * noise + shift: the noise scale multiplies their spread around the
    # shift, 0 gives the deterministic map of z = 0
    for noise_scale, spread in ((1.0, 0.5), (0.5, 0.25), (0.0, 0.0)):
        ev = Evaluator(AffineSampler(0.5, 1.0), noise_scale=noise_scale)  # type: ignore[arg-type]
        x = ev.sample(4000, nfe=2, seed=0)
        assert x.std(0).mean().item() == pytest.approx(spread, abs=0.02)
        assert x.mean().item() == pytest.approx(1.0, abs=0.03)
    robot = Evaluator(AffineSampler(1.0, 0.0), robot=RecordingRobot(), noise_scale=0.25)  # type: ignore[arg-type]
    out = robot.rollouts(nfe=2, episodes=1)
    assert out["mean_abs_action"] == pytest.approx(0.25, abs=0.01)  # 1.0 * (0.25 * 1) + 0
    with pytest.raises(ValueError, match="noise_scale must be >= 0"):
        Evaluator(AffineSampler(0.5, 1.0), noise_scale=-1.0)  # type: ignore[arg-type]
