"""Tests of flowpost/api.py: ``flowpost.fit`` with a user's own network and tensor data,
fine-tuning from a Run / a folder / a module, a reward callable, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import flowpost
from flowpost.config import ConfigError
from flowpost.data.base import ArrayData

CENTER = torch.tensor([1.0, -1.0])
QUICK_EVAL = {"nfe": 4, "n_samples": 300, "plots": False}


class Velocity(nn.Module):
    """A user's own velocity network: any module called as ``model(x, t, cond=None)``."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
        return self.net(torch.cat([x, t[:, None]], 1))


def _gaussian(n: int, center: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return 0.3 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) + center


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A flow trained with a user module on a tensor, shared by the tests of this file."""
    out = tmp_path_factory.mktemp("api") / "pre"
    model = Velocity()
    run = flowpost.fit(
        "flow_matching",
        data=_gaussian(1024, CENTER),
        model=model,
        out=out,
        train={"steps": 300, "batch_size": 128, "lr": 3e-3, "ema_decay": 0.9},
        eval=QUICK_EVAL,
    )
    return run, model


def test_fit_with_a_user_module_and_a_tensor_learns_the_target(pretrained) -> None:
    run, model = pretrained
    x = run.sample(2000, nfe=8)
    assert (x.mean(0) - CENTER).abs().max() < 0.15
    assert 0.2 < float(x.std(0).min()) and float(x.std(0).max()) < 0.45  # target std 0.3
    assert run.model is not model  # the evaluated network is the EMA copy of the user's module
    assert isinstance(run.method.role("policy"), Velocity)
    assert run.user_model is not None and run.user_model.endswith("Velocity")
    assert "w2" in run.summary and run.summary["step"] == 300
    # the tensor is kept in the run folder (20% held out), so the folder alone suffices
    assert (run.path / "data.safetensors").is_file()
    assert run.config.data.name == "file" and len(run.reference()) == 205
    assert run.evaluate(nfe=8)["w2"] < 0.3


def test_load_needs_the_users_module_and_then_samples_identically(pretrained) -> None:
    run, _ = pretrained
    with pytest.raises(ValueError, match=r"your own network \(.*Velocity\); pass a fresh one"):
        flowpost.load(run.path)
    loaded = flowpost.load(run.path, model=Velocity())
    assert torch.equal(loaded.sample(50, nfe=4, seed=5), run.sample(50, nfe=4, seed=5))
    assert loaded.summary == run.summary
    with pytest.raises(Exception, match="does not fit the network you passed"):
        flowpost.load(run.path, model=Velocity(hidden=32))


def test_sft_from_a_run_moves_to_the_new_target_and_leaves_the_run_alone(
    pretrained, tmp_path
) -> None:
    run, _ = pretrained
    before = run.sample(500, nfe=8, seed=1)
    new_center = torch.tensor([-1.0, 1.0])
    sft = flowpost.fit(
        "flow_matching",
        data=_gaussian(512, new_center, seed=1),
        init_from=run,
        out=tmp_path / "sft",
        train={"steps": 200, "batch_size": 128, "lr": 3e-3, "ema_decay": 0.9},
        eval=QUICK_EVAL,
    )
    x = sft.sample(1000, nfe=8)
    assert (x.mean(0) - new_center).abs().max() < 0.2
    assert torch.equal(run.sample(500, nfe=8, seed=1), before)  # fine-tuned a copy
    assert sft.config.init_from == str(run.path)
    # post-training keeps the best checkpoint on held-out demos; load uses it, as fit's Run does
    best = flowpost.load(sft.path, model=Velocity())
    assert best.best and best.checkpoint is not None and best.checkpoint.parent.name == "best"
    assert torch.equal(best.sample(200, nfe=4, seed=3), sft.sample(200, nfe=4, seed=3))
    assert sft.best and sft.checkpoint == best.checkpoint
    last = flowpost.load(sft.path, model=Velocity(), last=True)
    assert not last.best and last.checkpoint.name == "step_00000200"


def test_init_from_a_folder_or_a_module_starts_from_those_weights(pretrained, tmp_path) -> None:
    run, _ = pretrained
    data = _gaussian(64, CENTER, seed=2)
    frozen = {"steps": 0, "ema_decay": 0.0}
    with pytest.raises(ConfigError, match="trained with your own network .* as model="):
        flowpost.fit("flow_matching", data=data, init_from=str(run.path), out=tmp_path / "a")
    from_folder = flowpost.fit(
        "flow_matching",
        data=data,
        model=Velocity(),
        init_from=str(run.path),
        out=tmp_path / "b",
        train=frozen,
        eval=QUICK_EVAL,
    )
    from_module = flowpost.fit(
        "flow_matching",
        data=data,
        init_from=run.model,
        out=tmp_path / "c",
        train=frozen,
        eval=QUICK_EVAL,
    )
    expected = run.sample(100, nfe=4, seed=9)
    assert torch.equal(from_folder.sample(100, nfe=4, seed=9), expected)
    assert torch.equal(from_module.sample(100, nfe=4, seed=9), expected)
    with pytest.raises(ConfigError, match="give the network once"):
        flowpost.fit("flow_matching", data=data, model=Velocity(), init_from=Velocity())


def test_reward_callable_raises_the_reward(pretrained, tmp_path) -> None:
    run, _ = pretrained
    goal = torch.tensor([1.5, -0.5])

    def reward(x: torch.Tensor) -> torch.Tensor:
        return -(x - goal).norm(dim=1)

    rew = flowpost.fit(
        "reward",
        reward=reward,
        init_from=run,
        out=tmp_path / "reward",
        method={"nfe": 2},
        train={"steps": 40, "batch_size": 128, "lr": 1e-3, "ema_decay": 0.0},
        eval=QUICK_EVAL,
    )
    before = float(reward(run.sample(1000, nfe=2)).mean())
    after = float(reward(rew.sample(1000, nfe=2)).mean())
    assert after > before + 0.4, (before, after)  # measured: -0.73 -> -0.02
    assert rew.info["reward"].endswith("reward")  # the callable is recorded by name
    assert rew.config.data.path == run.config.data.path  # no data given: the run's


def test_data_as_a_path_or_labelled_arrays(tmp_path) -> None:
    path = tmp_path / "points.npy"
    np.save(path, _gaussian(200, CENTER).numpy())
    common = {
        "model": {"hidden": 16, "depth": 1},
        "train": {"steps": 3, "batch_size": 16},
        "eval": {"nfe": 2, "n_samples": 50, "plots": False},
    }
    from_file = flowpost.fit("flow_matching", data=path, out=tmp_path / "f", **common)
    assert from_file.config.data.path == str(path.resolve()) and from_file.spec.shape == (2,)
    labels = torch.arange(200) % 3
    labelled = ArrayData(_gaussian(200, CENTER), labels)
    run = flowpost.fit("flow_matching", data=labelled, out=tmp_path / "l", **common)
    assert run.spec.num_classes == 3
    assert run.sample(4, nfe=2, cond=2).shape == (4, 2)
    pair = flowpost.fit("flow_matching", data=(labelled.x, labels), out=tmp_path / "p", **common)
    assert pair.spec.num_classes == 3
    fields = {"x": labelled.x, "heldout_fraction": 0.5}
    half = flowpost.fit("flow_matching", data=fields, out=tmp_path / "h", **common)
    assert len(half.reference()) == 100 and half.spec.num_classes is None
    toy = flowpost.fit(
        "flow_matching", data={"name": "moons", "n_heldout": 50}, out=tmp_path / "t", **common
    )
    assert toy.dataset == "moons"


def test_bad_arguments_are_one_line_errors(tmp_path) -> None:
    x = _gaussian(50, CENTER)
    cases = [
        (dict(trian={"steps": 1}), ConfigError, "unknown key 'trian'"),
        (dict(train={"stepz": 1}), ConfigError, "unknown key 'train.stepz'"),
        (dict(train={"lr": -1.0}), ConfigError, "train.lr: -1.0 is below the minimum"),
        (dict(method={"name": "fail"}), ConfigError, "contradicts fit's method"),
        (dict(train=3), ConfigError, "train: expected a dict"),
    ]
    cases.append((dict(data={"x": x, "name": "moons"}), ConfigError, "data.name: set by fit"))
    cases.append((dict(model=3), ConfigError, "model: expected an nn.Module or a dict"))
    for kwargs, error, message in cases:
        kwargs.setdefault("data", x)
        with pytest.raises(error, match=message) as info:
            flowpost.fit("flow_matching", out=tmp_path / "bad", **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="method.name: unknown method 'nope'"):
        flowpost.fit("nope", data=x, out=tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="missing.npy does not exist"):
        flowpost.fit("flow_matching", data=tmp_path / "missing.npy", out=tmp_path / "bad")
    with pytest.raises(ConfigError, match="no data"):
        flowpost.fit("flow_matching", out=tmp_path / "bad")
    with pytest.raises(ConfigError, match="expected a tensor"):
        flowpost.fit("flow_matching", data=[[1.0, 2.0]], out=tmp_path / "bad")
    with pytest.raises(ValueError, match="sample 3 contains NaN"):
        bad = x.clone()
        bad[3, 0] = float("nan")
        flowpost.fit("flow_matching", data=bad, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing written for a refused call


def test_an_existing_run_is_kept_unless_overwrite(tmp_path) -> None:
    from flowpost.train.runfolder import RunFolderError

    x = _gaussian(64, CENTER)
    tiny = {"model": {"hidden": 8, "depth": 1}, "train": {"steps": 2, "batch_size": 8}}
    first = flowpost.fit("flow_matching", data=x, out=tmp_path / "r", eval=QUICK_EVAL, **tiny)
    with pytest.raises(RunFolderError, match="already holds a run"):
        flowpost.fit("flow_matching", data=x + 1, out=first.path, eval=QUICK_EVAL, **tiny)
    again = flowpost.fit(
        "flow_matching", data=x + 1, out=first.path, overwrite=True, eval=QUICK_EVAL, **tiny
    )
    assert torch.equal(again.reference().x, flowpost.load(again.path).reference().x)
    assert float(again.reference().x.mean()) > float(x.mean()) + 0.5  # the new data, not the old
