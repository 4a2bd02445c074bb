import json

import numpy as np
import torch
from typer.testing import CliRunner

from flowpost.cli import app
from flowpost.data import DataConfig, load_data
from flowpost.envs.data import load_robot_data


def test_an_oracle_generate_succeeds_through_the_policy_plumbing() -> None:
    train, held, robot = load_robot_data("reacher", demos=4, history=2, chunk=4, execute=1)
    assert train.spec.shape == (8,) and train.spec.cond_dim == 20 and len(held) == 50
    task, norm = robot.task, robot.normaliser

    def generate(noise: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        obs = cond[:, : task.obs_dim].numpy() * norm.std + norm.mean  # newest observation
        a = torch.from_numpy(task.expert(obs)).float()
        return a.repeat(1, 4) + 0 * noise  # the expert's action, held over the chunk

    m = robot.evaluate(generate, episodes=6, seed=0)
    assert m["success_rate"] == 1.0 and m["final_distance"] < task.threshold


def test_registry_builds_robot_splits() -> None:
    split = load_data(DataConfig(name="reacher", demos=4, chunk=2, history=1))
    assert split.robot is not None and split.spec.cond_dim == 10 and split.spec.shape == (4,)


def test_cli_eval_reports_success_rate(tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "data: {name: reacher, demos: 4}\nmodel: {hidden: 16, depth: 1}\n"
        "train: {steps: 2, batch_size: 16, checkpoint_every: 0}\n"
        "eval: {nfe: 2, n_samples: 20, episodes: 3, plots: false}\n"
    )
    runner = CliRunner()
    run = tmp_path / "run"
    out = runner.invoke(app, ["train", str(recipe), "--out", str(run), "--no-progress"])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["eval", str(run), "--nfe", "2", "--json"])
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.output)
    assert 0.0 <= metrics["success_rate"] <= 1.0 and np.isfinite(metrics["final_distance"])
