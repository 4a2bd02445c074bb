"""Tests of flowpost/run.py: a Run loaded from its folder samples without the training data,
reproduces the trainer's own evaluation, and refuses what it cannot load in one line."""

from __future__ import annotations

import pytest
import torch

import flowpost
from flowpost.train.checkpoint import CheckpointError

SETTINGS = {
    "model": {"hidden": 32, "depth": 2},
    "train": {"steps": 60, "batch_size": 64, "lr": 3e-3},
    "eval": {"nfe": 4, "n_samples": 200, "plots": False, "extra_nfe": [2]},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):  # type: ignore[no-untyped-def]
    target = torch.randn(500, 2, generator=torch.Generator().manual_seed(0)) + 2.0
    return flowpost.fit(
        "flow_matching", data=target, out=tmp_path_factory.mktemp("run") / "r", **SETTINGS
    )


def test_loaded_run_reproduces_the_trainers_evaluation(trained) -> None:
    loaded = flowpost.load(trained.path)
    assert loaded.user_model is None and loaded.config.method.name == "flow_matching"
    again = loaded.evaluate()
    for key in ("w2", "sliced_w2", "mmd", "energy"):
        assert again[key] == pytest.approx(trained.summary[key], rel=1e-5, abs=1e-7), key
    assert loaded.evaluate(nfe=2)["w2"] == pytest.approx(trained.summary["nfe2/w2"], rel=1e-5)
    x = loaded.sample(300, nfe=4, seed=2)
    assert torch.equal(x, trained.sample(300, nfe=4, seed=2))
    assert (x.mean(0) - 2.0).abs().max() < 0.4  # 60 steps already move the noise to the data


def test_sampling_needs_no_training_data(trained, tmp_path) -> None:
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(trained.path, moved)
    (trained.path / "data.safetensors").rename(tmp_path / "data.safetensors")
    try:
        loaded = flowpost.load(moved)
        assert loaded.sample(5, nfe=2, solver="heun").shape == (5, 2)
        with pytest.raises(FileNotFoundError, match="data.safetensors"):
            loaded.evaluate()
    finally:
        (tmp_path / "data.safetensors").rename(trained.path / "data.safetensors")


def test_load_refuses_what_is_not_a_finished_run(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        flowpost.load(tmp_path)
    (tmp_path / "config.yaml").write_text("train: {steps: 1}\n")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        flowpost.load(tmp_path)


def test_a_loaded_af_run_started_from_a_flow_samples_the_map_it_trained(trained) -> None:
    """AF initialised from a flow trains in the residual form ``G = z + g(z)``, which its
    one-step config (``parameterization: auto``) would otherwise read as the direct ``G = g``:
    the loaded run must restore the form, or ``flowpost sample`` draws ``g(z)`` alone."""
    target = torch.randn(500, 2, generator=torch.Generator().manual_seed(1)) + 2.0
    af = flowpost.fit(
        "adversarial",
        data=target,
        init_from=trained,
        out=trained.path.parent / "af",
        method={"nfe": 1},
        train={"steps": 5, "batch_size": 64},
        eval={"nfe": 1, "n_samples": 200, "plots": False},
    )
    assert af.method.residual  # type: ignore[attr-defined]
    loaded = flowpost.load(af.path)
    assert loaded.method.residual  # type: ignore[attr-defined]
    x = loaded.sample(300, nfe=1, seed=2)
    assert torch.equal(x, af.sample(300, nfe=1, seed=2))
    assert (x.mean(0) - 2.0).abs().max() < 0.5  # z + v(z, 0) of the flow: near the data
