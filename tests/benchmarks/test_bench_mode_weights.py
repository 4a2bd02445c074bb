"""The mode-weight decomposition of the suite's mixture runs (benchmarks/bench_mode_weights.py):
the resampling to given weights, the rebuilt training split, and a run folder measured end to
end on hand-made samples."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
from bench_helpers import load_benchmark

bench = load_benchmark("bench_mode_weights")
tasks = load_benchmark("suite_tasks")


def test_docstring_examples():
    assert doctest.testmod(bench).failed == 0


def test_resampling_gives_exactly_the_asked_weights_and_keeps_the_off_mode_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 2))
    modes = rng.integers(-1, 3, size=1000)  # about a quarter off every mode
    out = bench.resample_to(x, modes, np.array([0.5, 0.3, 0.2]), seed=1)
    assert out.shape == x.shape
    off = x[modes < 0]
    np.testing.assert_array_equal(out[: len(off)], off)
    # every redrawn row is a sample of the mode it was drawn for, in the asked proportions
    rows = {tuple(r): m for r, m in zip(x.tolist(), modes.tolist())}
    drawn = np.array([rows[tuple(r)] for r in out[len(off) :].tolist()])
    assert np.bincount(drawn, minlength=3).tolist() == [
        round(w * (1000 - len(off))) for w in (0.5, 0.3, 0.2)
    ]
    # a mode with no sample gets none; its weight goes to the others
    empty = bench.resample_to(x[modes != 2], modes[modes != 2], np.array([0.25, 0.25, 0.5]))
    assert len(empty) == int((modes != 2).sum())
    # no sample on any mode asked for: nothing to redraw
    np.testing.assert_array_equal(bench.resample_to(x, modes, np.array([0.0, 0.0, 0.0])), x)


@pytest.fixture
def run_folder(tmp_path):
    """A FAIL-PD run folder of 8g-rotate at 64 demonstrations, as the suite writes it, with
    hand-made 2-step samples: exactly at the modes, with the target's (uniform) weights."""
    task = tasks.TASKS["8g-rotate"]
    demos = tmp_path / "demos.npy"
    np.save(demos, task.demos(64, seed=0))
    run = tmp_path / "runs" / "8g-rotate-fail_pd_pathwise-d64-k2-s0"
    run.mkdir(parents=True)
    text = open("recipes/vectors/fail_pd.yaml").read().replace("target.npy", str(demos))
    (run / "config.yaml").write_text(text)
    info, _ = bench.mode_structure("8g-rotate")
    centers = info.centers.numpy()
    samples = centers[np.arange(2000) % 8] + 0.05 * np.random.default_rng(0).normal(size=(2000, 2))
    np.save(run / "suite_samples_k2.npy", samples.astype(np.float32))
    return tmp_path, run


def test_a_run_is_measured_against_its_own_training_split(run_folder):
    work, run = run_folder
    split = bench.training_split(run)
    assert len(split) == 46  # 64, less 13 held out by the data section, less 5 for selection
    file_rows = {tuple(r) for r in np.load(work / "demos.npy").astype(np.float32).tolist()}
    assert all(tuple(r) in file_rows for r in split.tolist())
    r = bench.measure(run, "8g-rotate", 2)
    assert r["demos_trained_on"] == 46 and r["weights"] == [0.125] * 8
    # the model's own weights are the target's: the same draw, the same W2
    assert r["w2_own"] == r["w2_target"]
    # a 46-point split's weights are uneven: the model is flatter than them, not sharper
    assert r["entropy_change"] > 0 and r["w2_split"] > r["w2_target"]


def test_run_all_is_resumable_and_reports_a_table(run_folder, monkeypatch):
    work, run = run_folder
    results = work / "mode_weights.json"
    calls = []
    real = bench.measure
    monkeypatch.setattr(bench, "measure", lambda *a: calls.append(a) or real(*a))
    bench.run_all(work, results)
    bench.run_all(work, results)  # finished runs are never remeasured
    assert len(calls) == 1
    data = json.loads(results.read_text())
    assert list(data["runs"]) == ["8g-rotate/fail_pd_pathwise/d64/k2/s0"]
    suite = {"cells": {"8g-rotate/pretrained/d0/k0/s0": {"metrics": {"2": {"w2": 0.5}}}}}
    row = bench.table(data, suite).splitlines()[-1]
    assert row.startswith("| 8g-rotate, FAIL-PD, pathwise estimator, 64 demos, 2 steps, seed 0 |")
    assert "| 0.500 |" in row


def test_the_rebuilt_split_is_the_one_the_trainer_trains_on(run_folder, tmp_path):
    from flowpost.config import load_yaml
    from flowpost.data import load_data
    from flowpost.methods.base import get_method_class
    from flowpost.train.config import build_run_config
    from flowpost.train.trainer import Trainer

    _, run = run_folder
    raw = load_yaml(run / "config.yaml")
    cfg = build_run_config(raw)
    assert cfg.train.holdout_fraction is None  # the trainer's default rule decides
    data = load_data(cfg.data)
    method = get_method_class(cfg.method.name)(cfg.method, data.spec, cfg.model)
    trainer = Trainer(method, data, cfg, tmp_path / "out", progress=False)
    np.testing.assert_array_equal(trainer.data.train.x.numpy(), bench.training_split_of(raw))


def test_split_weights_from_the_recipes_match_a_run_of_them(run_folder):
    work, run = run_folder
    (work / "data").mkdir()
    np.save(work / "data" / "8g-rotate-d64-s0.npy", np.load(work / "demos.npy"))
    splits = bench.split_weights(work)
    assert sorted(splits) == sorted(f"8g-rotate/{c}/d64/s0" for c in bench.ADVERSARIAL)
    ran = bench.weights_of(bench.training_split(run), "8g-rotate").round(4).tolist()
    assert splits["8g-rotate/fail_pd_pathwise/d64/s0"] == ran
    # AF holds nothing out for selection: it trains on 51 of the 64, FAIL on 46
    assert splits["8g-rotate/af_scratch/d64/s0"] != ran
