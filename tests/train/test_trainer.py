"""Tests of flowpost/train/trainer.py: a run end to end, exact resume after SIGKILL and after
SIGTERM, run folders that are never mixed, resume with changed settings, the NaN guard, user
errors with clear messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from flowpost.config import ConfigError
from flowpost.train import Trainer, run_training
from flowpost.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from flowpost.train.config import build_run_config
from flowpost.train.runfolder import RunFolderError
from flowpost.train.updater import DivergenceError, NonFiniteLossError

TINY = {
    "data": {"name": "moons", "n_heldout": 300},
    "model": {"hidden": 32, "depth": 2},
    "train": {"steps": 30, "batch_size": 64, "checkpoint_every": 10, "log_every": 5},
    "eval": {"nfe": 8, "n_samples": 300, "plots": False},
}


def test_run_folder_contents_and_summary(tmp_path) -> None:
    summary = run_training(TINY, tmp_path)
    assert summary["step"] == 30 and np.isfinite(summary["sliced_w2"])
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "tensorboard"):
        assert (tmp_path / name).exists(), name
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len([ln for ln in lines if '"policy/fm"' in ln]) == 6
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000030"


def test_training_reduces_loss_and_distance_to_data(tmp_path) -> None:
    untrained = run_training(dict(TINY, train={"steps": 0}), tmp_path / "zero")
    cfg = dict(
        TINY, train={**TINY["train"], "steps": 300, "log_every": 50, "lr": 3e-3, "ema_decay": 0.9}
    )
    trained = run_training(cfg, tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    losses = [r["policy/fm"] for r in map(yaml.safe_load, lines) if "policy/fm" in r]
    assert losses[-1] < 0.9 * losses[0]
    assert trained["sliced_w2"] < 0.5 * untrained["sliced_w2"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema.", "optim."))}


def test_resume_after_sigkill_and_after_sigterm_is_bit_exact(tmp_path) -> None:
    recipe = {
        **TINY,
        "train": {
            "steps": 600,
            "batch_size": 64,
            "checkpoint_every": 100,
            "log_every": 50,
            "lr": 1e-3,
            "schedule": "cosine",
            "warmup_steps": 20,
        },
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "flowpost", "train", str(path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run([*command, "--out", str(straight)], check=True, env=env, capture_output=True)

    for sig in (signal.SIGKILL, signal.SIGTERM):
        run = tmp_path / sig.name
        proc = subprocess.Popen(
            [*command, "--out", str(run)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while not (run / "checkpoints" / "step_00000200").exists():
            assert proc.poll() is None, "run finished before it could be killed"
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(0.3 if sig == signal.SIGTERM else 0.0)  # between two checkpoints
        proc.send_signal(sig)
        _, err = proc.communicate()
        interrupted_at = latest_checkpoint(run / "checkpoints")
        assert interrupted_at is not None and interrupted_at.name != "step_00000600"
        if sig == signal.SIGTERM:
            # the current step finished, a checkpoint was written there, and it says how to go on
            assert proc.returncode == 128 + signal.SIGTERM, err
            step = int(interrupted_at.name.split("_")[1])
            assert f"interrupted by SIGTERM at step {step}; checkpoint {interrupted_at}" in err
            assert f"resume with: flowpost train {path} --out {run} --resume" in err
            assert "Traceback" not in err and not (run / ".lock").exists()
        subprocess.run(
            [*command, "--out", str(run), "--resume"], check=True, env=env, capture_output=True
        )
        a, b = _weights(straight), _weights(run)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"resumed after {sig.name} differs"
        steps = [
            yaml.safe_load(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()
        ]
        assert steps == sorted(steps), "metrics.jsonl has replayed steps after resume"


def test_nan_guard_names_step_and_term_and_keeps_last_checkpoint(tmp_path) -> None:
    cfg = dict(
        TINY,
        train={
            "steps": 300,
            "batch_size": 64,
            "lr": 1e6,
            "grad_clip": 0.0,
            "checkpoint_every": 1,
            "keep_checkpoints": 2,
        },
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+: term 'policy/fm'"):
        run_training(cfg, tmp_path)
    last = latest_checkpoint(tmp_path / "checkpoints")
    tensors, _ = load_checkpoint(last)  # intact and loadable
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


def test_user_errors_have_clear_messages(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        build_run_config({"train": {"stepz": 3}})
    with pytest.raises(ConfigError, match="train.lr: -1.0 is below the minimum"):
        build_run_config({"train": {"lr": -1.0}})
    with pytest.raises(ConfigError, match="method.name: unknown method 'nope'"):
        build_run_config({"method": {"name": "nope"}})
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        build_run_config({"trian": {}})
    bad = tmp_path / "bad.npy"
    x = np.zeros((10, 2), dtype=np.float32)
    x[7, 1] = np.nan
    np.save(bad, x)
    with pytest.raises(ValueError, match=r"bad\.npy.*7|7.*bad\.npy"):
        run_training({**TINY, "data": {"name": "file", "path": str(bad)}}, tmp_path / "r1")
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        run_training({**TINY, "data": {"name": "file", "path": str(empty)}}, tmp_path / "r2")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        run_training(
            {**TINY, "data": {"name": "file", "path": str(tmp_path / "missing.npy")}},
            tmp_path / "r3",
        )
    with pytest.raises(CheckpointError, match="no checkpoint"):
        Trainer.from_config(build_run_config(TINY), tmp_path / "fresh", progress=False).fit(
            resume=True
        )


def test_resume_from_truncated_checkpoint_is_refused(tmp_path) -> None:
    run_training(TINY, tmp_path)
    last = latest_checkpoint(tmp_path / "checkpoints")
    blob = (last / "tensors.safetensors").read_bytes()
    (last / "tensors.safetensors").write_bytes(blob[:100])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        run_training(TINY, tmp_path, resume=True)


def test_sft_from_pretrained_run_moves_toward_target(tmp_path) -> None:
    pre = dict(
        TINY,
        train={"steps": 300, "batch_size": 128, "lr": 3e-3, "checkpoint_every": 0},
        eval={"nfe": 16, "n_samples": 500, "plots": False},
    )
    run_training(pre, tmp_path / "pre")
    target = {"name": "moons", "transform": "shift:1.0", "n_train": 256, "n_heldout": 500}
    common = {
        "data": target,
        "model": TINY["model"],
        "init_from": str(tmp_path / "pre"),
        "eval": pre["eval"],
    }
    before = run_training({**common, "train": {"steps": 0, "ema_decay": 0.0}}, tmp_path / "b")
    after = run_training(
        {
            **common,
            "train": {
                "steps": 300,
                "batch_size": 128,
                "lr": 2e-3,
                "checkpoint_every": 0,
                "ema_decay": 0.9,
            },
        },
        tmp_path / "a",
    )
    assert before["w2"] > 0.6  # the pretrained model sits a whole shift away
    assert after["w2"] < 0.5 * before["w2"]


def test_trainer_from_objects_records_spec_meta_and_files(tmp_path) -> None:
    from flowpost.data import DataConfig, load_data
    from flowpost.methods.base import get_method_class

    cfg = build_run_config({**TINY, "train": {"steps": 2, "batch_size": 16}})
    data = load_data(DataConfig(name="moons", n_train=64, n_heldout=50))
    method = get_method_class("flow_matching")(cfg.method, data.spec, cfg.model)
    meta = {"model": {"user": "mine.Net"}}
    trainer = Trainer(method, data, cfg, tmp_path, progress=False, meta=meta, files={"a.bin": b"x"})
    trainer.fit()
    assert (tmp_path / "a.bin").read_bytes() == b"x"
    assert (tmp_path / "config.yaml").read_text().startswith('# model: {"user": "mine.Net"}')
    _, state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert state["run"] == {
        "data": {"shape": [2], "num_classes": None, "cond_dim": None, "name": "moons"},
        "model": {"user": "mine.Net"},
    }
    wrong = load_data(DataConfig(name="mixture1d", n_train=8, n_heldout=8))
    with pytest.raises(ValueError, match="does not match the method's"):
        Trainer(method, wrong, cfg, tmp_path / "x", progress=False)


def test_evaluation_reports_the_path_length_of_the_sampler_that_ran(tmp_path) -> None:
    """``path_length`` is the recorded sum of ||x_{k+1} - x_k|| of the evaluation's solve; a
    straighter sampler (more steps of the same field change little) and a GFT run report it
    too."""
    trainer = Trainer.from_config(build_run_config(dict(TINY, train={"steps": 0})), tmp_path / "fm")
    m4, m32 = trainer.evaluate(nfe=4), trainer.evaluate(nfe=32)
    assert 0 < m4["path_length"] < 10 and 0 < m32["path_length"] < 10
    gft = dict(TINY, method={"name": "gft", "temperature_steps": 5}, train={"steps": 5})
    metrics = run_training(gft, tmp_path / "gft")
    assert 0 < metrics["path_length"] < 10 and "nfe8/path_length" not in metrics


def _files(run: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and "tensorboard" not in p.parts
    }


def test_training_into_an_existing_run_is_refused_unless_resumed_or_overwritten(
    tmp_path, capsys
) -> None:
    run = tmp_path / "run"
    first = run_training(TINY, run)
    assert first["num_processes"] == 1
    before = _files(run)
    with pytest.raises(RunFolderError, match="already holds a run"):
        run_training({**TINY, "train": {**TINY["train"], "steps": 12}}, run)
    assert _files(run) == before, "a refused run changed the run folder"
    second = run_training({**TINY, "train": {**TINY["train"], "steps": 12}}, run, overwrite=True)
    assert second["step"] == 12
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and _files(aside[0]) == before
    assert f"moved the existing run {run} aside to {aside[0]}" in capsys.readouterr().err
    # the new run's checkpoints were not pruned by the old run's later ones
    assert latest_checkpoint(run / "checkpoints").name == "step_00000012"
    assert not (run / ".lock").exists()


def test_divergence_names_the_last_finite_checkpoint_or_that_there_is_none(tmp_path) -> None:
    diverge = {"steps": 300, "batch_size": 64, "lr": 1e6, "grad_clip": 0.0}
    cfg = dict(TINY, train={**diverge, "checkpoint_every": 0})
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written before it") as err:
        run_training(cfg, tmp_path / "none")
    assert "last good checkpoint" not in str(err.value)
    assert latest_checkpoint(tmp_path / "none" / "checkpoints") is None

    cfg = dict(TINY, train={**diverge, "checkpoint_every": 1})
    with pytest.raises(NonFiniteLossError) as err:
        run_training(cfg, tmp_path / "some")
    last = latest_checkpoint(tmp_path / "some" / "checkpoints")
    assert f"the last finite checkpoint is {last}" in str(err.value)


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch) -> None:
    from flowpost.methods.flow_matching import FlowMatching

    step_once = FlowMatching.train_step

    def poisoned(self, batch, step, update):  # type: ignore[no-untyped-def]
        logs = step_once(self, batch, step, update)
        if step == 4:  # an update that leaves a NaN weight behind a finite loss
            with torch.no_grad():
                next(self.policy.parameters()).view(-1)[0] = float("nan")
        return logs

    monkeypatch.setattr(FlowMatching, "train_step", poisoned)
    cfg = dict(TINY, train={**TINY["train"], "checkpoint_every": 1, "keep_checkpoints": 10})
    with pytest.raises(
        DivergenceError, match=r"non-finite weights at step 5: tensor 'model\."
    ) as e:
        run_training(cfg, tmp_path)
    assert "step_00000004" in str(e.value)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step_00000004"


def test_resume_applies_safe_changes_and_refuses_others(tmp_path, capsys) -> None:
    cfg = {**TINY, "train": {**TINY["train"], "steps": 20, "lr": 1e-3}}
    run_training(cfg, tmp_path)
    with pytest.raises(
        ConfigError, match=r"train.steps: 10 is below the step 20 of .*step_00000020"
    ):
        run_training({**cfg, "train": {**cfg["train"], "steps": 10}}, tmp_path, resume=True)
    unsafe = {**cfg, "model": {"hidden": 16, "depth": 2}, "train": {**cfg["train"], "seed": 3}}
    with pytest.raises(ConfigError) as err:
        run_training(unsafe, tmp_path, resume=True)
    msg = str(err.value)
    assert "model.hidden 32 -> 16" in msg and "train.seed 0 -> 3" in msg and "\n" not in msg

    capsys.readouterr()
    changed = {**cfg, "train": {**cfg["train"], "steps": 30, "lr": 5e-4}}
    summary = run_training(changed, tmp_path, resume=True)
    said = capsys.readouterr().err
    assert "with changed settings: train.lr 0.001 -> 0.0005, train.steps 20 -> 30" in said
    assert summary["resumes"] == [
        {"step": 20, "changed": {"train.lr": [1e-3, 5e-4], "train.steps": [20, 30]}}
    ]
    records = [yaml.safe_load(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resume" for r in records)
    lrs = {r["step"]: r["lr/policy"] for r in records if "lr/policy" in r}
    assert lrs[20] == 1e-3 and lrs[25] == lrs[30] == 5e-4  # the new lr is the one that ran
    _, state = load_checkpoint(latest_checkpoint(tmp_path / "checkpoints"))
    assert state["resumes"] == summary["resumes"]


def test_init_from_another_model_size_names_the_tensor_and_shapes(tmp_path) -> None:
    run_training({**TINY, "train": {**TINY["train"], "steps": 2}}, tmp_path / "pre")
    wide = {**TINY, "model": {"hidden": 48, "depth": 2}, "init_from": str(tmp_path / "pre")}
    with pytest.raises(CheckpointError) as err:
        run_training(wide, tmp_path / "ft")
    msg = str(err.value)
    assert "\n" not in msg and "tensor '" in msg
    assert "(32," in msg and "(48," in msg


def test_relative_data_path_is_stored_resolved(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.save("points.npy", np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32))
    cfg = {**TINY, "data": {"name": "file", "path": "points.npy", "n_heldout": 100}}
    run_training({**cfg, "train": {**TINY["train"], "steps": 2}}, "run")
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["path"]
    assert stored == str(tmp_path / "points.npy")
