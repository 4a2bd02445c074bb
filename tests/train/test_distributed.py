"""Real multi-process training (flowpost/flows/distributed.py and the trainer under torchrun).

Two CPU processes (torchrun, gloo, ``train.device: auto``) train flow matching, FAIL-PD and
FAIL-PG (whose groups never straddle two processes) with the same seed and global batch as
one process. The final weights must agree to 1e-4 (relative), and each process must have
computed on its own half of the global batch: the two halves differ, and side by side they
are the one-process batch, step by step. So the equality cannot come from every process
repeating the whole job. One process also takes the acceptance check's first discriminator
step both ways (whole batch, or two halves as DDP sums them), which must agree.

Run as a script (``torchrun --nproc_per_node 2 tests/train/test_distributed.py OUT INIT``),
this file is the job each process runs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowpost.flows.distributed import all_gather_rows, all_mean, any_true, mean_scalars

TINY = {"hidden": 32, "depth": 2}
EVAL = {"nfe": 4, "n_samples": 200, "plots": False, "extra_nfe": []}
JOBS: dict[str, dict[str, Any]] = {
    "fm": {
        "data": {"name": "8gaussians", "n_heldout": 200},
        "model": TINY,
        "method": {"name": "flow_matching"},
        "train": {"steps": 12, "batch_size": 64, "checkpoint_every": 6, "lr": 2e-3},
        "eval": EVAL,
    },
    "fail_pd": {
        "data": {"name": "8gaussians", "transform": "rotate:22.5", "n_train": 256, "seed": 1},
        "model": TINY,
        "method": {
            "name": "fail",
            "variant": "pd",
            "nfe": 4,
            "disc_warmup_steps": 3,
            "discriminator": {"hidden": 32, "depth": 2},
        },
        "train": {"steps": 10, "batch_size": 64, "checkpoint_every": 5, "lr": 5e-4},
        "eval": EVAL,
    },
    "fail_pg": {
        "data": {"name": "8gaussians", "transform": "rotate:22.5", "n_train": 256, "seed": 1},
        "model": TINY,
        "method": {
            "name": "fail",
            "variant": "pg",
            "nfe": 4,
            "disc_warmup_steps": 3,
            "pg_group_size": 4,
            "discriminator": {"hidden": 32, "depth": 2},
        },
        "train": {"steps": 8, "batch_size": 64, "checkpoint_every": 4, "lr": 5e-4},
        "eval": EVAL,
    },
}


def run_job(name: str, out: Path, init_from: Path | None) -> None:
    """Train job ``name`` into ``out/<name>``, recording every train_step's local batch in
    ``out/<name>-batches-rank<r>.npy``."""
    from flowpost.train import Trainer
    from flowpost.train.config import build_run_config

    recipe = dict(JOBS[name])
    if init_from is not None:
        recipe["init_from"] = str(init_from)
    trainer = Trainer.from_config(build_run_config(recipe), out / name, progress=False)
    seen: list[np.ndarray] = []
    step_once = trainer.method.train_step

    def recorded(batch, step, update):  # type: ignore[no-untyped-def]
        seen.append(batch.x.detach().cpu().numpy().copy())
        return step_once(batch, step, update)

    trainer.method.train_step = recorded  # type: ignore[method-assign]
    trainer.fit()
    rank = trainer.accelerator.process_index
    np.save(out / f"{name}-batches-rank{rank}.npy", np.stack(seen))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from flowpost.train.checkpoint import latest_checkpoint, load_checkpoint

    tensors, _ = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema."))}


def test_reductions_are_no_ops_on_one_process() -> None:
    x = torch.randn(3, 2)
    assert all_mean(x) is x and all_gather_rows(x) is x
    assert any_true(True) and not any_true(False)
    assert mean_scalars({"a": 0.25}) == {"a": 0.25}


def test_two_processes_equal_one_process_and_each_computes_its_half(tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    run_job("fm", one, None)
    run_job("fail_pd", one, one / "fm")
    run_job("fail_pg", one, one / "fm")
    root = str(Path(__file__).resolve().parents[2])  # the checkout, for the worker's imports
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*torchrun, "--standalone", __file__, str(two), str(one / "fm")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    reductions = json.loads((two / "reductions.json").read_text())
    assert reductions["mean"] == [0.5, 1.5] and reductions["gathered"] == [0.0, 1.0]
    assert reductions["any"] == [True, True] and reductions["logs"] == {"loss": 0.5}

    report = {}
    for name in JOBS:
        summary = json.loads((two / name / "summary.json").read_text())
        assert summary["num_processes"] == 2
        # each process computed on its own half of the global batch
        full = np.load(one / f"{name}-batches-rank0.npy")
        halves = [np.load(two / f"{name}-batches-rank{r}.npy") for r in (0, 1)]
        assert halves[0].shape[1] == halves[1].shape[1] == full.shape[1] // 2
        assert not np.array_equal(halves[0], halves[1])
        np.testing.assert_array_equal(np.concatenate(halves, axis=1), full)
        # ... and the result is the one-process result
        a, b = _weights(one / name), _weights(two / name)
        assert a.keys() == b.keys()
        rel = max(float((a[k] - b[k]).abs().max() / (a[k].abs().max() + 1e-12)) for k in a)
        assert rel <= 1e-4, f"{name}: 2-process weights differ by {rel:.2e} (relative)"
        report[name] = rel
    print(f"max relative weight difference, 2 vs 1 process: {report}")


def _discriminator_after(split: bool, disc_eps: float | None, seed: int, tmp: Path) -> list:
    """The discriminator of the ddp-two-process acceptance check's FAIL-PD run (width 256,
    lr 1e-3, betas 0.5/0.9, R1 1.0; the optimiser as the trainer builds it) after its first
    update on a global batch of 256 expert and 256 policy samples, the gradient taken on the
    whole batch (one process) or, as DDP on two processes takes it, as the mean of the two
    halves' gradients: the same sum, rounded in another order."""
    from flowpost.data.base import Batch
    from flowpost.methods.components.common import Rollout
    from flowpost.methods.components.imitation import discriminator_terms
    from flowpost.train import Trainer
    from flowpost.train.config import build_run_config

    recipe = dict(JOBS["fail_pd"])
    method = dict(recipe["method"], disc_lr=1e-3, disc_betas=[0.5, 0.9], gp_weight=1.0)
    method["discriminator"] = {"hidden": 256, "depth": 2}
    if disc_eps is not None:
        method["disc_eps"] = disc_eps
    recipe.update(method=method, train=dict(recipe["train"], batch_size=256, seed=seed))
    trainer = Trainer.from_config(build_run_config(recipe), tmp, progress=False)
    disc, opt = trainer.method.discriminator, trainer.optimizers["discriminator"]
    assert opt.param_groups[0]["eps"] == (1e-8 if disc_eps is None else disc_eps)
    real, _ = trainer._next_batch()
    # policy samples: the expert mixture turned back by 22.5 degrees, as the pretrained
    # flow's are, so the two are hard to tell apart and the gradient's halves cancel
    c, s = math.cos(math.pi / 8), math.sin(math.pi / 8)
    fake = real.x @ torch.tensor([[c, s], [-s, c]])
    parts = (slice(0, 128), slice(128, 256)) if split else (slice(0, 256),)
    for part in parts:
        x1 = fake[part]
        rolled = Rollout(torch.zeros_like(x1), x1, None)
        terms, _, _ = discriminator_terms(disc, Batch(real.x[part], None), rolled, 1.0)
        (sum(terms.values()) / len(parts)).backward()  # DDP: the mean of the processes' grads
    opt.step()
    return [p.detach().clone() for p in disc.parameters()]


def _split_gap(disc_eps: float | None, tmp: Path) -> float:
    """Largest relative weight difference, whole vs split batch, over three seeds."""
    gaps = []
    for seed in range(3):
        a = _discriminator_after(False, disc_eps, seed, tmp / f"{seed}a")
        b = _discriminator_after(True, disc_eps, seed, tmp / f"{seed}b")
        gaps += [float((x - y).abs().max() / x.abs().max()) for x, y in zip(a, b, strict=True)]
    return max(gaps)


def test_discriminator_step_does_not_amplify_the_rounding_of_a_split_batch(tmp_path) -> None:
    """The 2-process FAIL-PD discriminator of the acceptance check drifted 8.4e-4 from the
    one-process one. Entries of its gradient near zero (|g| ~ 1e-8) differ by float rounding
    between the two ways of summing the batch, and Adam's first step, g / (|g| + eps), turns
    that into weight changes of a good fraction of the learning rate. With AdamW's eps the
    split moved the weights by more than 1e-4 (relative) in one step on the CI machines (on an
    AMD EPYC one by 1.1e-5: how far the two sums round apart depends on the CPU's kernels);
    with the toy recipes' ``disc_eps: 1e-5`` by less than 2e-5 on every machine seen (on the
    EPYC one 1.45e-5: where the sums hardly differ, eps has nothing to remove)."""
    default, robust = _split_gap(None, tmp_path / "default"), _split_gap(1e-5, tmp_path / "eps")
    assert robust < 2e-5, (robust, default)  # disc_eps bounds the drift on every machine


ROBOT = {
    "data": {"name": "reacher", "demos": 4, "history": 2, "chunk": 4, "execute": 2},
    "model": TINY,
    "train": {"steps": 4, "batch_size": 32, "checkpoint_every": 0, "select_rollouts": 4,
              "validate_every": 2},
    "eval": {"nfe": 2, "noise_scale": 0, "n_samples": 20, "episodes": 2, "plots": False},
}  # fmt: skip


def test_roll_out_selection_runs_once_and_agrees_on_two_processes(tmp_path) -> None:
    """Under torchrun the main process rolls the validation episodes out and every process
    gets its outcomes (train.select_rollouts): the run finishes on both processes (no
    process waits at a rollback the other never reached) and records each check once."""
    import pytest

    pytest.importorskip("gymnasium", reason="robot tasks need the [robot] extra")
    pytest.importorskip("mujoco", reason="robot tasks need the [robot] extra")
    from flowpost.data.registry import load_data
    from flowpost.train.config import build_run_config

    cache = tmp_path / "cache"
    os.environ["FLOWPOST_CACHE"] = str(cache)  # record the demonstrations once, here
    try:
        load_data(build_run_config(ROBOT).data)
    finally:
        del os.environ["FLOWPOST_CACHE"]
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "FLOWPOST_CACHE": str(cache)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*torchrun, "--standalone", __file__, "rollouts", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "robot" / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["validation_episodes"] == 4
    assert len(summary["validation"]["start"]["solved"]) == 4
    logged = (tmp_path / "robot" / "metrics.jsonl").read_text().splitlines()
    checks = [json.loads(line) for line in logged if "validation/success_rate" in line]
    assert [c["step"] for c in checks] == [0, 2, 4]


def _worker(out: Path, init_from: Path) -> None:
    """What each torchrun process runs: the reductions, then both jobs."""
    out.mkdir(parents=True, exist_ok=True)
    run_job("fm", out, None)  # sets up the process group (train.device: auto -> gloo)
    rank = int(os.environ["RANK"])
    checks = {
        "mean": all_mean(torch.tensor([0.0, 1.0]) + rank).tolist(),
        "gathered": all_gather_rows(torch.tensor([float(rank)])).tolist(),
        "any": [any_true(rank == 1), not any_true(False)],
        "logs": mean_scalars({"loss": float(rank)}),
    }
    if rank == 0:
        (out / "reductions.json").write_text(json.dumps(checks))
    run_job("fail_pd", out, init_from)
    run_job("fail_pg", out, init_from)


if __name__ == "__main__":
    if sys.argv[1] == "rollouts":  # the roll-out selection job (its own test, above)
        from flowpost.train import run_training

        run_training(ROBOT, Path(sys.argv[2]) / "robot")
    else:
        _worker(Path(sys.argv[1]), Path(sys.argv[2]))
