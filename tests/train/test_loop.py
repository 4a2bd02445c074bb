"""Tests of flowpost/train/loop.py: this process's batch and shard, and a method's guard
warning reported as one line naming its step while the loop runs."""

from __future__ import annotations

import tempfile
import warnings

import torch

from flowpost.methods.components.guards import GuardWarning
from flowpost.train import Trainer, loop
from flowpost.train.config import build_run_config

torch.set_num_threads(1)

RECIPE = {
    "data": {"name": "moons", "n_train": 64, "n_heldout": 50},
    "model": {"hidden": 16, "depth": 1},
    "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 0},
    "eval": {"nfe": 2, "n_samples": 50, "plots": False},
}


def test_next_batch_is_the_whole_batch_on_one_process() -> None:
    trainer = Trainer.from_config(build_run_config(RECIPE), tempfile.mkdtemp(), progress=False)
    torch.manual_seed(0)
    batch, shard = loop.next_batch(trainer)
    torch.manual_seed(0)
    index = torch.randint(0, trainer.train_x.shape[0], (8,))  # type: ignore[union-attr]
    assert shard == (0, 8, 8)
    assert torch.equal(batch.x, trainer.train_x[index])  # type: ignore[index]


def test_guard_warning_becomes_one_line_with_its_step(capsys) -> None:
    trainer = Trainer.from_config(build_run_config(RECIPE), tempfile.mkdtemp(), progress=False)
    step_fn = trainer.method.train_step

    def warn_at_two(batch, step, update):  # type: ignore[no-untyped-def]
        if step == 2:
            warnings.warn("the discriminator dominates", GuardWarning, stacklevel=1)
        return step_fn(batch, step, update)

    trainer.method.train_step = warn_at_two  # type: ignore[method-assign]
    trainer.run_steps(4)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    assert lines == ["warning: step 2: the discriminator dominates"]
    assert trainer.step == 4
