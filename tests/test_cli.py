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
    heun = tmp_path / "heun.npy"
    args = ["sample", str(run), "--nfe", "4", "--n", "10", "--solver", "heun", "--out", str(heun)]
    assert runner.invoke(app, args).exit_code == 0
    assert not np.allclose(np.load(heun), np.load(out))  # another solver, other samples
    result = runner.invoke(app, ["sample", str(run), "--method", "heun"])
    assert result.exit_code == 2  # --method (the solver) is now --solver
    result = runner.invoke(app, ["sample", str(run), "--solver", "nope", "--out", str(heun)])
    assert result.exit_code == 2 and "nope" in result.output


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


def _one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def _trained(tmp_path, **train):  # type: ignore[no-untyped-def]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "train": {**RECIPE["train"], **train}}))
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(recipe), "--out", str(run), "--no-progress"])
    assert result.exit_code == 0, result.output
    return recipe, run


def test_zero_samples_and_zero_nfe_are_one_line_errors(tmp_path) -> None:
    _, run = _trained(tmp_path, steps=2)
    result = runner.invoke(app, ["sample", str(run), "--n", "0", "--out", str(tmp_path / "s.npy")])
    assert result.exit_code == 2 and "n=0" in _one_error_line(result)
    assert not (tmp_path / "s.npy").exists()
    result = runner.invoke(app, ["eval", str(run), "--nfe", "0"])
    assert result.exit_code == 2 and "nfe=0" in _one_error_line(result)


def test_noise_scale_from_the_run_or_the_command_line(tmp_path) -> None:
    _, run = _trained(tmp_path, steps=2)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["eval"]["noise_scale"] == 1.0
    outs = {}
    for scale in ("1", "0"):
        out = tmp_path / f"s{scale}.npy"
        args = ["sample", str(run), "--nfe", "2", "--n", "20", "--noise-scale", scale]
        assert runner.invoke(app, [*args, "--out", str(out)]).exit_code == 0
        outs[scale] = np.load(out)
    assert outs["1"].std(0).min() > 0.1 and outs["0"].std(0).max() < 1e-6  # z = 0: one point
    cfg["eval"]["noise_scale"] = 0.0  # a run deployed at 0 samples its z = 0 map by default
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "d.npy"
    assert runner.invoke(app, ["sample", str(run), "--nfe", "2", "--out", str(out)]).exit_code == 0
    assert np.allclose(np.load(out), outs["0"][:1])
    result = runner.invoke(app, ["eval", str(run), "--nfe", "2", "--noise-scale", "-1"])
    assert result.exit_code == 2 and "noise_scale must be >= 0" in _one_error_line(result)


def test_non_finite_samples_are_refused_by_sample_and_eval(tmp_path, monkeypatch) -> None:
    import torch

    from flowpost.methods.flow_matching import FlowMatching

    _, run = _trained(tmp_path, steps=2)
    monkeypatch.setattr(
        FlowMatching, "generate", lambda self, noise, *a, **k: torch.full_like(noise, torch.nan)
    )
    out = tmp_path / "s.npy"
    result = runner.invoke(app, ["sample", str(run), "--nfe", "2", "--n", "5", "--out", str(out)])
    assert result.exit_code == 2 and "5 of 5 samples are not finite" in _one_error_line(result)
    assert not out.exists()
    result = runner.invoke(app, ["eval", str(run), "--nfe", "2"])
    assert result.exit_code == 2 and "not finite" in _one_error_line(result)


def test_train_refuses_an_existing_run_and_overwrite_moves_it_aside(tmp_path) -> None:
    recipe, run = _trained(tmp_path, steps=2)
    again = ["train", str(recipe), "--out", str(run), "--no-progress"]
    result = runner.invoke(app, again)
    assert result.exit_code == 2 and "already holds a run" in _one_error_line(result)
    result = runner.invoke(app, [*again, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "aside to" in result.output
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]) == 1


def test_read_only_run_folder_is_one_line_naming_the_path(tmp_path) -> None:
    import os
    import shutil
    import subprocess

    recipe, run = _trained(tmp_path, steps=2)
    if os.geteuid() == 0:  # root writes through permissions: make the folder immutable
        assert shutil.which("chattr"), "need chattr to make a read-only folder as root"
        subprocess.run(["chattr", "+i", str(run)], check=True)
    else:
        run.chmod(0o555)
    try:
        args = ["train", str(recipe), "--out", str(run), "--resume", "--set", "train.steps=4"]
        result = runner.invoke(app, [*args, "--no-progress"])
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(run)], check=True)
        run.chmod(0o755)
    assert result.exit_code == 2
    assert f"cannot write {run}" in _one_error_line(result) and "permission denied" in result.output


def test_sample_works_from_another_directory_with_a_relative_data_path(
    tmp_path, monkeypatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    np.save("points.npy", np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32))
    recipe = work / "r.yaml"
    data = {"name": "file", "path": "points.npy", "n_heldout": 100}
    recipe.write_text(yaml.safe_dump({**RECIPE, "data": data}))
    args = ["train", "r.yaml", "--out", "run", "--no-progress", "--set", "train.steps=2"]
    assert runner.invoke(app, args).exit_code == 0
    monkeypatch.chdir(tmp_path)
    for verb in (["sample", "work/run", "--nfe", "2", "--n", "4", "--out", "s.npy"], ["eval"]):
        args = verb if verb[0] == "sample" else ["eval", "work/run", "--nfe", "2"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output


def test_sample_a_run_of_a_user_module_is_a_one_line_error(tmp_path) -> None:
    import torch
    from torch import nn

    import flowpost

    class Velocity(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, t, cond=None):  # type: ignore[no-untyped-def]
            return self.lin(torch.cat([x, t[:, None]], 1))

    run = flowpost.fit(
        "flow_matching",
        data=torch.randn(40, 2),
        model=Velocity(),
        out=tmp_path / "run",
        train={"steps": 2, "batch_size": 8},
        eval={"nfe": 2, "n_samples": 8, "plots": False},
    )
    result = runner.invoke(app, ["sample", str(run.path), "--out", str(tmp_path / "s.npy")])
    assert result.exit_code == 2
    assert "error: " in result.output and "your own network" in result.output
    assert len(result.output.strip().splitlines()) == 1
