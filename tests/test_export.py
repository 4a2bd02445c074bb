"""Tests of flowpost/export.py for flowpost's own networks (the LoRA export of diffusers
runs is tested in tests/adapters/diffusers/test_runs.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from flowpost.cli import app
from flowpost.export import export_run, load_exported
from flowpost.train import Trainer
from flowpost.train.checkpoint import load_policy_state
from flowpost.train.config import build_run_config

RECIPE = {
    "data": {"name": "moons", "n_heldout": 64},
    "model": {"hidden": 16, "depth": 1},
    "train": {"steps": 4, "batch_size": 16, "ema_decay": 0.5},
    "eval": {"nfe": 2, "n_samples": 64, "plots": False},
}


def _trained(tmp_path, recipe=RECIPE):
    trainer = Trainer.from_config(build_run_config(recipe), tmp_path / "run", progress=False)
    trainer.fit()
    return trainer


def test_export_is_the_ema_policy_alone_and_loads_without_the_run(tmp_path) -> None:
    trainer = _trained(tmp_path)
    files = export_run(tmp_path / "run", tmp_path / "out")
    assert sorted(f.name for f in files) == ["config.json", "model.safetensors"]
    tensors = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert not any(k.startswith(("optim", "rng", "ema.", "model.")) for k in tensors)
    ema = trainer.ema_roles()["policy"]
    assert set(tensors) == set(ema.state_dict())
    (tmp_path / "run").rename(tmp_path / "moved")  # the run folder is not needed
    net = load_exported(tmp_path / "out")
    x, t = torch.randn(8, 2), torch.rand(8)
    with torch.no_grad():
        assert torch.equal(net(x, t), ema(x, t))
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["shape"] == [2] and meta["role"] == "policy"


def test_an_export_is_a_valid_init_from(tmp_path) -> None:
    _trained(tmp_path)
    export_run(tmp_path / "run", tmp_path / "out")
    state = load_policy_state(tmp_path / "out")
    follow = dict(RECIPE, init_from=str(tmp_path / "out"), method={"name": "flow_matching"})
    trainer = Trainer.from_config(build_run_config(follow), tmp_path / "next", progress=False)
    for key, value in trainer.method.policy.state_dict().items():
        assert torch.equal(value, state[key])


def test_generator_export_keeps_its_end_time_input(tmp_path) -> None:
    recipe = dict(RECIPE, method={"name": "adversarial", "nfe": 1})
    recipe["eval"] = dict(RECIPE["eval"], nfe=1)
    trainer = _trained(tmp_path, recipe)
    export_run(tmp_path / "run", tmp_path / "out")
    net = load_exported(tmp_path / "out")
    ema = trainer.ema_roles()["generator"]
    x, a = torch.randn(4, 2), torch.zeros(4)
    with torch.no_grad():
        assert torch.equal(net(x, a, None, a + 1), ema(x, a, None, a + 1))


def test_cli_export_and_its_errors(tmp_path) -> None:
    runner = CliRunner()
    _trained(tmp_path)
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "model.safetensors" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_the_core_never_imports_diffusers_or_peft() -> None:
    code = (
        "import sys, flowpost, flowpost.train, flowpost.methods, flowpost.cli\n"
        "from flowpost.train.config import build_run_config\n"
        "from flowpost.export import export_run\n"
        "build_run_config({'diffusers': {'lora_rank': 4}})\n"
        "bad = [m for m in ('diffusers', 'peft', 'transformers') if m in sys.modules]\n"
        "sys.exit(1 if bad else 0)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_export_picks_the_checkpoint_flowpost_load_picks(tmp_path) -> None:
    import flowpost

    _trained(tmp_path)
    post = dict(RECIPE, init_from=str(tmp_path / "run"), method={"name": "flow_matching"})
    post["data"] = dict(RECIPE["data"], n_train=200)
    Trainer.from_config(build_run_config(post), tmp_path / "post", progress=False).fit()
    x, t = torch.randn(8, 2), torch.rand(8)
    for last in (False, True):
        export_run(tmp_path / "post", tmp_path / f"out{last}", last=last)
        net = load_exported(tmp_path / f"out{last}")
        loaded = flowpost.load(tmp_path / "post", last=last)
        with torch.no_grad():
            assert torch.equal(net(x, t), loaded.roles["policy"](x, t)), last
