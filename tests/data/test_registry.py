"""DataConfig + load_data: every dataset kind, the held-out stream, n_train, labels, errors."""

import numpy as np
import pytest
import torch

from flowpost.config import ConfigError, from_dict
from flowpost.data import DataConfig, DataSplit, load_data
from flowpost.data.toys import sample_toy


def test_toy_split_seeded_and_disjoint_streams():
    cfg = DataConfig(name="8gaussians", n_train=300, n_heldout=200, seed=4)
    a, b = load_data(cfg), load_data(cfg)
    assert isinstance(a, DataSplit) and a.name == "8gaussians"
    assert a.train.x.shape == (300, 2) and a.heldout.x.shape == (200, 2)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.heldout.x, b.heldout.x)
    # the training set is the seed's stream; the held-out set is another stream
    assert torch.equal(a.train.x, sample_toy("8gaussians", 300, torch.Generator().manual_seed(4)))
    assert (a.heldout.x[:, None] - a.train.x[None]).abs().sum(-1).min() > 0
    # more training samples extend the same stream (prefix property): n_train = few demos
    big = load_data(DataConfig(name="8gaussians", n_train=600, seed=4))
    assert torch.equal(big.train.x[:300], a.train.x)
    assert len(load_data(DataConfig(name="moons", toy_size=123)).train) == 123


def test_toy_transform_named_and_applied():
    s = load_data(DataConfig(name="mixture1d", transform="shift:1", n_train=50, n_heldout=50))
    assert s.name == "mixture1d@shift:1"
    base = load_data(DataConfig(name="mixture1d", n_train=50, n_heldout=50))
    assert torch.allclose(s.train.x, base.train.x + 1)
    assert torch.allclose(s.heldout.x, base.heldout.x + 1)


def test_images_subset_and_labels():
    s = load_data(DataConfig(name="digits", n_train=50, seed=1))
    assert s.train.x.shape == (50, 1, 8, 8) and s.spec.num_classes == 10
    assert len(s.heldout) == 359  # the held-out set is never cut
    s2 = load_data(DataConfig(name="digits", n_train=50, seed=2))
    assert not torch.equal(s.train.x, s2.train.x)
    u = load_data(DataConfig(name="digits", labels=False))
    assert u.train.cond is None and u.heldout.cond is None and u.spec.num_classes is None
    assert load_data(DataConfig(name="digits", transform="thick")).name == "digits@thick"


def test_file_and_folder(tmp_path):
    x = np.random.RandomState(0).randn(50, 3).astype(np.float32)
    np.save(tmp_path / "d.npy", x)
    s = load_data(DataConfig(name="file", path=str(tmp_path / "d.npy"), heldout_fraction=0.2))
    assert len(s.train) == 40 and len(s.heldout) == 10
    both = torch.cat([s.train.x, s.heldout.x])
    assert torch.allclose(both.sort(0).values, torch.from_numpy(x).sort(0).values)
    s0 = load_data(DataConfig(name="file", path=str(tmp_path / "d.npy"), heldout_fraction=0.0))
    assert len(s0.train) == 50 and s0.heldout is s0.train
    np.save(tmp_path / "tiny.npy", x[:1])
    with pytest.raises(ValueError, match="too few"):
        load_data(DataConfig(name="file", path=str(tmp_path / "tiny.npy")))
    with pytest.raises(ValueError, match="needs data.path"):
        load_data(DataConfig(name="folder"))
    with pytest.raises(ValueError, match="not available"):
        load_data(DataConfig(name="file", path=str(tmp_path / "d.npy"), transform="shift"))


def test_config_validation():
    cfg = from_dict(DataConfig, {"name": "rings", "n_train": 10})
    assert cfg.n_train == 10
    with pytest.raises(ConfigError, match="name"):
        from_dict(DataConfig, {"name": "cifar"})
    with pytest.raises(ConfigError, match="n_train"):
        from_dict(DataConfig, {"n_train": 0})


def test_doctests():
    import doctest

    import flowpost.data.registry as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_package_doctest():
    import doctest

    import flowpost.data as package

    result = doctest.testmod(package)
    assert result.attempted > 0 and result.failed == 0


def test_split_arrays_equals_loading_the_same_samples_from_a_file(tmp_path):
    from flowpost.data.base import ArrayData
    from flowpost.data.registry import split_arrays

    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(50) % 4
    np.savez(tmp_path / "d.npz", x=x.numpy(), labels=labels.numpy())
    cfg = DataConfig(name="file", path=str(tmp_path / "d.npz"), n_train=30, seed=3)
    loaded, direct = load_data(cfg), split_arrays(ArrayData(x, labels), cfg)
    for a, b in ((loaded.train, direct.train), (loaded.heldout, direct.heldout)):
        assert torch.equal(a.x, b.x) and torch.equal(a.cond, b.cond)
    assert len(direct.train) == 30 and len(direct.heldout) == 10 and direct.name == "file"
