"""The contract every registered method keeps, present and future: parametrised over
``method_registry()``, so a new method file is covered without editing this test.

Each method trains a few steps on a 2-D toy with its own ``toy_settings`` (and
``toy_recipe``, both class attributes in the method's file) through the real trainer;
checkpoints and resumes bit for bit (weights, EMA, optimiser moments, RNG); generates finite
samples; refuses an unknown or renamed config key with one line; and trains through
``flowpost.fit`` with a user's own ``nn.Module`` (and a Python reward where it takes one)."""

from __future__ import annotations

import copy
import inspect
import re
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor, nn
from typer.testing import CliRunner

from flowpost.cli import app
from flowpost.config import ConfigError
from flowpost.methods.base import Method, method_registry
from flowpost.train import Trainer
from flowpost.train.checkpoint import latest_checkpoint, load_checkpoint
from flowpost.train.config import build_run_config

METHODS = sorted(method_registry())
STEPS = 6  # straight run; the resumed one restarts from the checkpoint at step 3


def toy_recipe(name: str, **train: Any) -> dict[str, Any]:
    """The method's toy run: a 2-D toy, small networks, its own method settings."""
    cls = method_registry()[name]
    recipe: dict[str, Any] = {
        "data": {"name": "moons", "n_heldout": 100},
        "model": {"hidden": 16, "depth": 1},
        "method": {"name": name, **copy.deepcopy(cls.toy_settings)},
        "train": {
            "steps": STEPS,
            "batch_size": 32,
            "checkpoint_every": 3,
            "log_every": 1,
            "ema_decay": 0.9,
            "schedule": "cosine",
            "warmup_steps": 2,
            **train,
        },
        "eval": {"nfe": sampling_nfe(cls), "n_samples": 100, "plots": False},
    }
    for section, values in copy.deepcopy(cls.toy_recipe).items():
        recipe[section] = {**recipe.get(section, {}), **values}
    return recipe


def sampling_nfe(cls: type[Method]) -> int:
    return int(cls.toy_settings.get("nfe") or 2)


def trained_params(trainer: Trainer) -> dict[str, list[torch.Tensor]]:
    return {
        name: [p.detach().clone() for p in spec.params]
        for name, spec in trainer.method.optimizers().items()
    }


@pytest.mark.parametrize("name", METHODS)
def test_trains_resumes_exactly_and_samples(name: str, tmp_path: Path) -> None:
    recipe = toy_recipe(name)
    straight = Trainer.from_config(build_run_config(recipe), tmp_path / "straight", progress=False)
    before = trained_params(straight)
    straight.fit()

    # it trained: every optimiser moved its parameters, every logged loss is finite
    after = trained_params(straight)
    for role, params in before.items():
        assert any(not torch.equal(a, b) for a, b in zip(params, after[role])), role
    logs = [yaml.safe_load(line) for line in (tmp_path / "straight" / "metrics.jsonl").open()]
    values = [v for rec in logs for k, v in rec.items() if "/" in k and isinstance(v, float)]
    assert values and all(torch.isfinite(torch.tensor(values)))

    # it resumes bit for bit from the middle of the run
    ckpts = sorted((tmp_path / "straight" / "checkpoints").iterdir())
    assert ckpts[0].name == "step_00000003"
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpts[0], tmp_path / "resumed" / "checkpoints" / ckpts[0].name)
    resumed = Trainer.from_config(
        build_run_config(recipe), tmp_path / "resumed", progress=False, load_init=False
    )
    resumed.fit(resume=True)
    a_path = latest_checkpoint(tmp_path / "straight" / "checkpoints")
    b_path = latest_checkpoint(tmp_path / "resumed" / "checkpoints")
    assert a_path is not None and b_path is not None and a_path.name == b_path.name
    (a, a_state), (b, b_state) = load_checkpoint(a_path), load_checkpoint(b_path)
    assert a.keys() == b.keys()
    for prefix in ("model.", "ema.", "optim", "rng."):
        keys = [k for k in a if k.startswith(prefix)]
        assert keys, f"the checkpoint holds no {prefix} tensors"
        for key in keys:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs after resume"
    assert a_state["method"] == b_state["method"]

    # it samples: finite, shaped like the data, from the EMA roles
    samples = straight.evaluator().sample(64, sampling_nfe(type(straight.method)), seed=5)
    assert samples.shape == (64, *straight.data.spec.shape) and torch.isfinite(samples).all()


@pytest.mark.parametrize("name", METHODS)
def test_trains_under_bf16_autocast(name: str, tmp_path: Path) -> None:
    """``train.precision: bf16`` (autocast; on a GPU the same code path as here on the CPU):
    every method trains, its logged losses stay finite and its samples are finite. Mixed
    dtypes inside a method's loss (a bf16 network output against a float32 target) fail
    here before they fail on a user's GPU."""
    trainer = Trainer.from_config(
        build_run_config(toy_recipe(name, precision="bf16")), tmp_path / "bf16", progress=False
    )
    trainer.fit()
    logs = [yaml.safe_load(line) for line in (tmp_path / "bf16" / "metrics.jsonl").open()]
    values = [v for rec in logs for k, v in rec.items() if "/" in k and isinstance(v, float)]
    assert values and all(torch.isfinite(torch.tensor(values)))
    samples = trainer.evaluator().sample(64, sampling_nfe(type(trainer.method)), seed=5)
    assert samples.dtype == torch.float32 and torch.isfinite(samples).all()


@pytest.mark.parametrize("name", METHODS)
def test_unknown_and_renamed_keys_are_one_line_errors(name: str, tmp_path: Path) -> None:
    recipe = toy_recipe(name)
    bad = copy.deepcopy(recipe)
    bad["method"]["no_such_key"] = 1
    with pytest.raises(ConfigError) as err:
        build_run_config(bad)
    assert "method.no_such_key" in str(err.value) and "\n" not in str(err.value)

    cls = method_registry()[name]
    for old, new in cls.config_class.renamed_keys.items():
        bad = copy.deepcopy(recipe)
        bad["method"][old] = bad["method"].pop(new, 1)
        with pytest.raises(ConfigError, match=f"'method.{old}' was renamed to 'method.{new}'"):
            build_run_config(bad)

    # through the command line: exit status 2, one line, no traceback
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(
        app, ["train", str(path), "--out", str(tmp_path / "run"), "--set", "method.no_such_key=1"]
    )
    assert result.exit_code == 2, result.output
    assert "method.no_such_key" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("name", METHODS)
def test_config_round_trips_through_the_run_folder(name: str) -> None:
    """The written ``config.yaml`` (name included) rebuilds the same config."""
    from flowpost.train.config import run_config_to_dict

    cfg = build_run_config(toy_recipe(name))
    written = run_config_to_dict(cfg)
    assert written["method"]["name"] == name == cfg.method.name
    assert build_run_config(written) == cfg


class UserVelocity(nn.Module):
    """A user's own network: ``forward(x, t, cond=None)``, nothing from flowpost."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize("name", METHODS)
def test_fits_through_the_object_api_with_a_user_module(name: str, tmp_path: Path) -> None:
    """``flowpost.fit(name, data=tensor, model=module)``: the user's module is one of the
    method's roles (trained in place unless the method keeps its flow frozen, as a residual
    method does) and the run samples finite values; a method that takes a reward gets a
    Python callable."""
    import flowpost

    cls = method_registry()[name]
    recipe = toy_recipe(name, steps=4, checkpoint_every=0)
    method = {k: v for k, v in recipe["method"].items() if k != "name"}
    objects: dict[str, Any] = {}
    if "reward" in inspect.signature(cls.__init__).parameters:
        method.pop("reward", None)
        objects["reward"] = lambda x: -(x - 1.0).norm(dim=1)
    torch.manual_seed(0)
    target = torch.randn(256, 2) * 0.3 + 1.0
    user = UserVelocity()
    before = [p.detach().clone() for p in user.parameters()]
    run = flowpost.fit(
        name,
        data=target,
        model=user,
        out=tmp_path / "run",
        method=method,
        train=recipe["train"],
        eval=recipe["eval"],
        **objects,
    )
    assert any(m is user for m in run.method.modules()), "the user's module is not used"
    frozen = not any(p.requires_grad for p in user.parameters())
    moved = any(not torch.equal(a, b) for a, b in zip(before, user.parameters()))
    assert moved or frozen, "the user's module neither trained nor was kept frozen"
    x = run.sample(32, nfe=sampling_nfe(cls))
    assert x.shape == (32, 2) and torch.isfinite(x).all()


def test_the_documented_example_keeps_the_contract(tmp_path: Path) -> None:
    """docs/adding-a-method.md's complete example, loaded as a module and registered, passes
    the same checks as every registered method."""
    from flowpost.methods import base

    doc = (Path(__file__).parents[2] / "docs" / "adding-a-method.md").read_text()
    found = re.search(r"## A complete example.*?```python\n(.*?)```", doc, re.S)
    assert found is not None
    name = "flowpost.methods.anchored_sft"
    module = types.ModuleType(name)
    saved = dict(base._REGISTRY)
    sys.modules[name] = module
    try:
        exec(compile(found.group(1), "docs/adding-a-method.md", "exec"), module.__dict__)
        assert "anchored_sft" in method_registry()
        for sub in ("train", "keys"):
            (tmp_path / sub).mkdir()
        test_trains_resumes_exactly_and_samples("anchored_sft", tmp_path / "train")
        test_unknown_and_renamed_keys_are_one_line_errors("anchored_sft", tmp_path / "keys")
        test_config_round_trips_through_the_run_folder("anchored_sft")
    finally:
        del sys.modules[name]
        base._REGISTRY.clear()
        base._REGISTRY.update(saved)
