"""The ``data`` section of a recipe and the one entry point that turns it into data.

Example:
    >>> split = load_data(DataConfig(name="moons", n_train=500, n_heldout=200))
    >>> len(split.train), len(split.heldout), split.name, split.spec.shape
    (500, 200, 'moons', (2,))
    >>> load_data(DataConfig(name="8gaussians", transform="rotate", n_train=10)).name
    '8gaussians@rotate'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowpost.config import option
from flowpost.data.base import ArrayData, DataSpec
from flowpost.data.files import load_array_file, load_image_folder
from flowpost.data.images import IMAGE_DATASETS, load_image_dataset
from flowpost.data.toys import TOYS, sample_toy

# robot tasks: demonstrations of a scripted expert (flowpost.envs, the [robot] extra)
ROBOT_TASKS: tuple[str, ...] = ("reacher", "pusher")
DATASETS: tuple[str, ...] = (*TOYS, *IMAGE_DATASETS, "file", "folder", *ROBOT_TASKS, "latents")

# Held-out toy samples come from a generator seeded with seed + this offset, a stream the
# training set (seeded with `seed`) never uses for any seed below it.
_HELDOUT_SEED_OFFSET = 1_000_003


@dataclass
class DataConfig:
    """Which data to train on and hold out (the ``data`` section of a recipe)."""

    name: str = option("8gaussians", "dataset", choices=list(DATASETS))
    path: str | None = option(
        None,
        "for name=file: a .npy/.npz/.safetensors file; for name=folder: an image folder; "
        "for a robot task: your own demonstrations .npz (obs, actions, episode); "
        "for name=latents: a folder of latent + text-embedding shards (docs/scaling.md)",
    )
    transform: str = option(
        "none",
        "target variant for fine-tuning: toys none|shift[:d]|rotate[:deg]|scale[:s]|unbalanced; "
        "images none|thick|invert|balance:w0,...,w9 (see docs/data.md)",
    )
    n_train: int | None = option(
        None,
        "limit the training set to this many samples (few demonstrations); None: all "
        "(toys: toy_size samples)",
        min=1,
    )
    n_heldout: int = option(
        2000, "held-out samples drawn for toys (images and files use their fixed split)", min=1
    )
    toy_size: int = option(20000, "training samples drawn for a toy when n_train is None", min=1)
    seed: int = option(0, "seed of toy sampling and of the n_train subset", min=0)
    image_size: int | None = option(
        None,
        "for name=folder: resize every image to this side (None: keep, sizes must match)",
        min=1,
    )
    heldout_fraction: float = option(
        0.2,
        "for name=file/folder: fraction of the samples held out (0: evaluate on train)",
        min=0.0,
        max=0.9,
    )
    labels: bool = option(
        True, "keep class labels as conditions (false: train an unconditional model)"
    )
    demos: int = option(200, "robot tasks: demonstration episodes of the scripted expert", min=1)
    demo_noise: float = option(
        0.1, "robot tasks: std of the noise added to executed expert actions", min=0.0
    )
    history: int = option(2, "robot tasks: observations in the policy's condition", min=1)
    chunk: int = option(4, "robot tasks: actions per sample (the action chunk)", min=1)
    execute: int = option(2, "robot tasks: actions executed before re-planning", min=1)


@dataclass
class DataSplit:
    """Training and held-out data of one dataset. ``name`` is the dataset name, followed by
    ``@transform`` when a target transform is applied (``"digits@thick"``); pass it as
    ``dataset=`` to :func:`flowpost.eval.evaluate_samples`."""

    train: ArrayData  # or LatentData (name=latents): read from disk a batch at a time
    heldout: ArrayData
    name: str
    robot: Any = None  # flowpost.envs.data.RobotData for robot tasks: roll-out evaluation

    @property
    def spec(self) -> DataSpec:
        return self.train.spec


def _subset(data: ArrayData, n: int | None, seed: int) -> ArrayData:
    if n is None or n >= len(data):
        return data
    g = torch.Generator().manual_seed(seed)
    return take(data, torch.randperm(len(data), generator=g)[:n].sort().values)


def take(data: ArrayData, idx: Tensor) -> ArrayData:
    """The samples ``idx`` of ``data`` (with their conditions), as an :class:`ArrayData`."""
    return ArrayData(
        data.x[idx],
        None if data.cond is None else data.cond[idx],
        num_classes=data.spec.num_classes,
        name=data.name,
    )


def split_off(data: ArrayData, k: int, seed: int) -> tuple[ArrayData, ArrayData]:
    """(the rest, ``k`` samples): a seeded random split of ``data``, each part in data order.

    >>> rest, held = split_off(ArrayData(torch.arange(10.0)[:, None]), 3, seed=0)
    >>> len(rest), len(held)
    (7, 3)
    """
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return take(data, perm[k:].sort().values), take(data, perm[:k].sort().values)


def _split_file(data: ArrayData, fraction: float, seed: int) -> tuple[ArrayData, ArrayData]:
    n = len(data)
    k = int(round(fraction * n))
    if fraction == 0.0:
        return data, data
    if k < 1 or k >= n:
        raise ValueError(
            f"{data.name}: {n} samples are too few to hold out a fraction {fraction}; add "
            "samples or set data.heldout_fraction=0"
        )
    return split_off(data, k, seed)


def _drop_labels(data: ArrayData) -> ArrayData:
    return ArrayData(data.x, None, name=data.name)


def load_data(cfg: DataConfig) -> DataSplit:
    """Build the train / held-out split described by ``cfg`` (nothing is downloaded)."""
    if cfg.name not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.name!r}; choose one of {', '.join(DATASETS)}")
    transform = cfg.transform.strip() or "none"
    key = cfg.name if transform == "none" else f"{cfg.name}@{transform}"
    if cfg.name in TOYS:
        n = cfg.n_train if cfg.n_train is not None else cfg.toy_size
        g_train = torch.Generator().manual_seed(cfg.seed)
        g_held = torch.Generator().manual_seed(cfg.seed + _HELDOUT_SEED_OFFSET)
        train = ArrayData(sample_toy(cfg.name, n, g_train, transform), name=key)
        heldout = ArrayData(sample_toy(cfg.name, cfg.n_heldout, g_held, transform), name=key)
        return DataSplit(train, heldout, key)
    if cfg.name in ROBOT_TASKS:
        if transform != "none":
            raise ValueError(f"data.transform is not available for robot task {cfg.name}")
        from flowpost.envs.data import load_robot_data

        train, heldout, robot = load_robot_data(
            cfg.name,
            path=cfg.path,
            demos=cfg.demos,
            history=cfg.history,
            chunk=cfg.chunk,
            execute=cfg.execute,
            noise=cfg.demo_noise,
            seed=cfg.seed,
            heldout_fraction=cfg.heldout_fraction,
        )
        return DataSplit(_subset(train, cfg.n_train, cfg.seed), heldout, key, robot)
    if cfg.name == "latents":
        return _load_latents(cfg, key)
    if cfg.name in IMAGE_DATASETS:
        train, heldout = load_image_dataset(cfg.name, transform, seed=cfg.seed)
    else:
        if cfg.path is None:
            raise ValueError(f"data.name={cfg.name} needs data.path (the {cfg.name} to load)")
        if transform != "none":
            raise ValueError(
                f"data.transform={transform!r} is not available for data.name={cfg.name}; "
                "transform your data before saving it, or leave transform=none"
            )
        if cfg.name == "file":
            full = load_array_file(cfg.path)
        else:
            full = load_image_folder(cfg.path, image_size=cfg.image_size)
        return split_arrays(full, cfg)
    train = _subset(train, cfg.n_train, cfg.seed)
    if not cfg.labels:
        train, heldout = _drop_labels(train), _drop_labels(heldout)
    return DataSplit(train, heldout, key)


def split_arrays(full: ArrayData, cfg: DataConfig) -> DataSplit:
    """The train / held-out split of in-memory samples, exactly as :func:`load_data` splits a
    file or folder of them (``heldout_fraction``, ``seed``, ``n_train``, ``labels``).

    Example:
        >>> split = split_arrays(ArrayData(torch.randn(10, 2)), DataConfig(name="file"))
        >>> len(split.train), len(split.heldout)
        (8, 2)
    """
    train, heldout = _split_file(full, cfg.heldout_fraction, cfg.seed)
    train = _subset(train, cfg.n_train, cfg.seed)
    if not cfg.labels:
        train, heldout = _drop_labels(train), _drop_labels(heldout)
    return DataSplit(train, heldout, cfg.name)


def _load_latents(cfg: DataConfig, key: str) -> DataSplit:
    from flowpost.data.latents import LatentData

    if cfg.path is None:
        raise ValueError("data.name=latents needs data.path (a folder of latent shards)")
    if transform_name(cfg) != "none":
        raise ValueError("data.transform is not available for latents; leave transform=none")
    full = LatentData(cfg.path, name=key)
    n = len(full)
    k = int(round(cfg.heldout_fraction * n))
    if cfg.heldout_fraction == 0.0:
        train, heldout = full, full
    else:
        if k < 1 or k >= n:
            raise ValueError(
                f"{cfg.path}: {n} samples are too few to hold out a fraction "
                f"{cfg.heldout_fraction}; add samples or set data.heldout_fraction=0"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
        train, heldout = full.subset(perm[k:].sort().values), full.subset(perm[:k].sort().values)
    if cfg.n_train is not None and cfg.n_train < len(train):
        g = torch.Generator().manual_seed(cfg.seed)
        train = train.subset(torch.randperm(len(train), generator=g)[: cfg.n_train].sort().values)
    return DataSplit(train, heldout, key)  # type: ignore[arg-type]


def transform_name(cfg: DataConfig) -> str:
    return cfg.transform.strip() or "none"


__all__ = [
    "ROBOT_TASKS",
    "DATASETS",
    "DataConfig",
    "DataSplit",
    "load_data",
    "split_arrays",
    "split_off",
    "take",
]
