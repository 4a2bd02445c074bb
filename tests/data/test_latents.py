"""Tests of flowpost/data/latents.py: shards streamed from disk a batch at a time."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from flowpost.data import DataConfig, load_data
from flowpost.data.latents import LatentData, toy_latents, write_latent_shards


def _write(root, n=10, shard=4):
    lat, prompt, pooled = toy_latents(n, channels=4, size=4, text_len=2, text_dim=8, pooled_dim=3)
    write_latent_shards(root, lat, prompt, pooled, shard_size=shard, dtype=torch.float32)
    return lat, prompt, pooled


def test_batches_across_shards_equal_the_source_rows(tmp_path) -> None:
    lat, prompt, pooled = _write(tmp_path)
    data = LatentData(tmp_path)
    assert len(data) == 10 and len(data.shards) == 3 and data.spec.shape == (4, 4, 4)
    index = torch.tensor([9, 0, 4, 3, 4])
    batch = data.batch(index)
    assert torch.equal(batch.x, lat[index])
    assert batch.cond is not None
    assert torch.equal(batch.cond, torch.cat([prompt[index].flatten(1), pooled[index]], 1))
    sub = data.subset(torch.tensor([1, 5]))
    assert torch.equal(sub.x, lat[[1, 5]])


def test_split_and_n_train(tmp_path) -> None:
    _write(tmp_path, n=20, shard=7)
    split = load_data(DataConfig(name="latents", path=str(tmp_path), heldout_fraction=0.25))
    assert len(split.train) == 15 and len(split.heldout) == 5
    assert set(split.train.index.tolist()).isdisjoint(split.heldout.index.tolist())
    few = load_data(DataConfig(name="latents", path=str(tmp_path), n_train=4))
    assert len(few.train) == 4


def test_bad_shards_are_one_line_errors(tmp_path) -> None:
    lat = torch.randn(3, 4, 4, 4)
    lat[1, 0, 0, 0] = float("nan")
    save_file({"latents": lat}, str(tmp_path / "a.safetensors"))
    data = LatentData(tmp_path)
    assert data.batch(torch.tensor([0])).cond is None  # unconditional data
    with pytest.raises(ValueError, match="sample 1 contains NaN"):
        data.batch(torch.tensor([0, 1]))
    save_file({"latents": torch.randn(2, 4, 8, 8)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        LatentData(tmp_path)
    (tmp_path / "c").mkdir()
    save_file({"x": torch.randn(2, 3)}, str(tmp_path / "c" / "x.safetensors"))
    with pytest.raises(ValueError, match="holds no 'latents'"):
        LatentData(tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        LatentData(tmp_path / "missing")
