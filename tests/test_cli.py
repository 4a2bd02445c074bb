"""Tests of flowpost/cli.py: verbs, help, and one-line errors with exit code 2."""

from __future__ import annotations

import numpy as np
import yaml
from typer.testing import CliRunner

from flowpost.cli import app

runner = CliRunner()
RECIPE = {
    "data": {"name": "moons", "n_heldout": 200},
    "model": {"hidden": 32, "depth": 2},
    "train": {"steps": 20, "batch_size": 32, "checkpoint_every": 10},
    "eval": {"nfe": 4, "n_samples": 200},
}


def test_help_on_every_verb() -> None:
    for verb in ("train", "sample", "eval", "demo", "methods", "options"):
        result = runner.invoke(app, [verb, "--help"])
        assert result.exit_code == 0, verb
        assert "Usage" in result.output


def test_train_sample_eval_roundtrip(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(recipe), "--out", str(run), "--no-progress", "--set", "train.steps=12"]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 12
    out = tmp_path / "s.npy"
    result = runner.invoke(app, ["sample", str(run), "--nfe", "4", "--n", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (10, 2)
    png = tmp_path / "s.png"
    assert runner.invoke(app, ["sample", str(run), "--n", "50", "--out", str(png)]).exit_code == 0
    assert png.stat().st_size > 1000
    result = runner.invoke(app, ["eval", str(run), "--nfe", "4", "--json"])
    assert result.exit_code == 0 and '"sliced_w2"' in result.output


def test_bad_override_is_one_line_exit_2(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    result = runner.invoke(app, ["train", str(recipe), "--set", "train.stepz=3"])
    assert result.exit_code == 2
    assert "error: unknown key 'train.stepz'" in result.output
    result = runner.invoke(app, ["train", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "recipe file not found" in result.output
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_methods_and_options_list_flow_matching() -> None:
    assert "flow_matching" in runner.invoke(app, ["methods"]).output
    out = runner.invoke(app, ["options", "flow_matching"]).output
    assert "method.coupling" in out and "train.steps" in out
