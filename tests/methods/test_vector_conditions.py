"""Float condition vectors (observations, goals) through every registered method, end to end:
an ``.npz`` with a ``cond`` array of floats -> data -> nets -> method -> trainer -> samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowpost.methods.base import method_registry
from flowpost.train import Trainer
from flowpost.train.config import build_run_config


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    rng = np.random.default_rng(0)
    cond = rng.standard_normal((96, 2)).astype(np.float32)
    x = np.concatenate([cond, cond[:, :1] ** 2], axis=1) + 0.1 * rng.standard_normal((96, 3))
    path = tmp_path_factory.mktemp("vec") / "pairs.npz"
    np.savez(path, x=x.astype(np.float32), cond=cond)
    return str(path)


@pytest.mark.parametrize("name", sorted(method_registry()))
def test_every_method_trains_and_samples_with_vector_conditions(
    name: str, vector_file: str, tmp_path
) -> None:
    settings = dict(method_registry()[name].toy_settings)
    nfe = int(settings.get("nfe") or 2)
    cfg = build_run_config(
        {
            "data": {"name": "file", "path": vector_file},
            "model": {"hidden": 16, "depth": 1},
            "method": {"name": name, **settings},
            "train": {"steps": 2, "batch_size": 16, "checkpoint_every": 0},
            "eval": {"nfe": nfe, "n_samples": 19, "plots": False},
        }
    )
    trainer = Trainer.from_config(cfg, tmp_path, progress=False)
    assert trainer.method.spec.cond_dim == 2
    summary = trainer.fit()
    assert summary["step"] == 2 and np.isfinite(summary["w2"])
    evaluator = trainer.evaluator()
    cond = evaluator.conditions(7)
    assert cond is not None and cond.shape == (7, 2) and cond.dtype == torch.float32
    assert evaluator.sample(7, nfe, seed=0).shape == (7, 3)
