"""The post-training task suite's source -> target pairs (issue 9), as arrays on disk.

Every pair is a *source* distribution (a flow is pretrained on it with
``recipes/vectors/pretrain.yaml``) and a *target* known only by demonstrations (64, 256 or
1024 samples, post-trained with ``recipes/vectors/{sft,fail_pd,fail_pg,af}.yaml``). Both
sides are written as ``.npy`` files and read by the trainer with ``data.name: file``, the
way a user brings their own data; the ``user`` pair exists *only* as such files (its shapes
are drawn here, in numpy, and have no name in ``flowpost.data``). Every run is scored against
a *fresh* target set that no demonstration comes from.

=================  ==========================  ====================================  =========
pair               source                      target                                kind
=================  ==========================  ====================================  =========
moons-spirals      moons                       spirals                               new shape
checker-rings      checkerboard                rings                                 new shape
8g-reweight        8gaussians                  8gaussians, mode weights 1:2:..:8     re-weight
moons-shift        moons                       moons + (0.5, 0.5)                    shift
spirals-scale      spirals                     spirals x 0.6                         scale
8g-rotate          8gaussians                  8gaussians rotated 22.5 degrees       rotation
user-npy           five Gaussians (pentagon)   a heart curve (user .npy files only)  user file
mix1d-reweight     mixture1d                   mixture1d, mode weights 1:2:3:4       1-D
digits-balance     sklearn digits (64-D)       digits 0-4 twice as frequent as 5-9   digits
digits-thick       sklearn digits (64-D)       thick-stroke digits                   digits
=================  ==========================  ====================================  =========

Digits are flattened to 64-D vectors in [-1, 1] (the vector recipes' MLP), unconditional;
their fresh target set is the target's fixed held-out split (never a demonstration), and
their demonstrations are capped by the target's training split (digits-balance: 1080).

Example:
    >>> t = TASKS["moons-spirals"]
    >>> t.demos(64, seed=0).shape, t.dim, t.label
    ((64, 2), 2, 'spirals')
    >>> bool((t.demos(64, seed=0) == t.demos(256, seed=0)[:64]).all())  # nested
    True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE_SIZE = 20000  # samples of a 2-D / 1-D source written for pretraining
REFERENCE_SIZE = 2000  # fresh target samples every run is scored against
REFERENCE_SEED = 987_654  # never a demonstration seed


# ----------------------------------------------------------------------------- distributions


def _toy(name: str, transform: str, n: int, seed: int) -> np.ndarray:
    import torch

    from flowpost.data.toys import sample_toy

    g = torch.Generator().manual_seed(seed)
    return sample_toy(name, n, generator=g, transform=transform).numpy().astype(np.float32)


def _blocks(
    draw: Callable[[np.random.Generator, int], np.ndarray], n: int, seed: int
) -> np.ndarray:
    """``n`` samples drawn in blocks of 1024, so the first ``m`` of ``n`` are the ``m``."""
    rng = np.random.default_rng(seed)
    out = [draw(rng, 1024) for _ in range(0, n, 1024)]
    return np.concatenate(out)[:n].astype(np.float32) if out else np.zeros((0, 2), np.float32)


def _pentagon(rng: np.random.Generator, n: int) -> np.ndarray:
    """Five equal Gaussians (std 0.12) on a circle of radius 1.2."""
    k = rng.integers(0, 5, n)
    ang = 2 * math.pi * k / 5 + math.pi / 2
    centers = 1.2 * np.stack([np.cos(ang), np.sin(ang)], 1)
    return (centers + 0.12 * rng.standard_normal((n, 2))).astype(np.float32)


def _heart(rng: np.random.Generator, n: int) -> np.ndarray:
    """The heart curve x = 16 sin^3 u, y = 13 cos u - 5 cos 2u - 2 cos 3u - cos 4u, scaled
    by 1/10 and centred, plus isotropic noise of std 0.05."""
    u = rng.uniform(0, 2 * math.pi, n)
    x = 16 * np.sin(u) ** 3
    y = 13 * np.cos(u) - 5 * np.cos(2 * u) - 2 * np.cos(3 * u) - np.cos(4 * u)
    pts = np.stack([x, y + 2.5], 1) / 10.0
    return (pts + 0.05 * rng.standard_normal((n, 2))).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _digits(transform: str) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) of sklearn digits after ``transform``, flattened to (n, 64)."""
    from flowpost.data.images import load_image_dataset

    train, held = load_image_dataset("digits", transform)
    flat = lambda d: d.x.reshape(len(d.x), -1).numpy().astype(np.float32)  # noqa: E731
    return flat(train), flat(held)


@dataclass(frozen=True)
class Dist:
    """One side of a pair: ``kind`` toy / user / digits, with its name and transform."""

    kind: str
    name: str
    transform: str = "none"

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.name}-{self.transform}".replace(":", "").replace(",", "")

    def draw(self, n: int, seed: int) -> np.ndarray:
        """``n`` samples with ``seed``; the first ``m`` of ``n`` equal ``draw(m, seed)``."""
        if self.kind == "toy":
            return _toy(self.name, self.transform, n, seed)
        if self.kind == "user":
            fn = {"pentagon": _pentagon, "heart": _heart}[self.name]
            return _blocks(fn, n, seed)
        train, _ = _digits(self.transform)
        order = np.random.default_rng(seed).permutation(len(train))
        return train[order[: min(n, len(train))]]

    def reference(self) -> np.ndarray:
        """The fresh set a run is scored against (digits: the fixed held-out split)."""
        if self.kind == "digits":
            return _digits(self.transform)[1]
        return self.draw(REFERENCE_SIZE, REFERENCE_SEED)

    def source_set(self, seed: int) -> np.ndarray:
        """What a flow is pretrained on (digits: the whole training split)."""
        if self.kind == "digits":
            return _digits(self.transform)[0]
        return self.draw(SOURCE_SIZE, 10_000 + seed)


@dataclass(frozen=True)
class Task:
    """A source -> target pair; ``label`` is what :func:`flowpost.eval.evaluate_samples`
    gets as ``dataset`` (mode metrics for the mixtures, classifier metrics for digits)."""

    name: str
    kind: str
    source: Dist
    target: Dist
    label: str | None

    @property
    def dim(self) -> int:
        return int(self.target.draw(1, 0).shape[1])

    @property
    def is_2d(self) -> bool:
        return self.dim == 2

    def demos(self, n: int, seed: int) -> np.ndarray:
        """The first ``n`` demonstrations of seed ``seed`` (nested in ``n``)."""
        return self.target.draw(n, 20_000 + seed)


def _t(name: str, kind: str, src: Dist, tgt: Dist, label: str | None) -> Task:
    return Task(name, kind, src, tgt, label)


_8G, _MOONS = Dist("toy", "8gaussians"), Dist("toy", "moons")
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _t("moons-spirals", "new shape", _MOONS, Dist("toy", "spirals"), "spirals"),
        _t("checker-rings", "new shape", Dist("toy", "checkerboard"), Dist("toy", "rings"), None),
        _t(
            "8g-reweight",
            "re-weighted modes",
            _8G,
            Dist("toy", "8gaussians", "unbalanced"),
            "8gaussians@unbalanced",
        ),
        _t("moons-shift", "shift", _MOONS, Dist("toy", "moons", "shift:0.5"), None),
        _t(
            "spirals-scale",
            "scale",
            Dist("toy", "spirals"),
            Dist("toy", "spirals", "scale:0.6"),
            None,
        ),
        _t(
            "8g-rotate",
            "rotation",
            _8G,
            Dist("toy", "8gaussians", "rotate:22.5"),
            "8gaussians@rotate:22.5",
        ),
        _t("user-npy", "user .npy only", Dist("user", "pentagon"), Dist("user", "heart"), None),
        _t(
            "mix1d-reweight",
            "1-D mixture",
            Dist("toy", "mixture1d"),
            Dist("toy", "mixture1d", "unbalanced"),
            "mixture1d@unbalanced",
        ),
        _t(
            "digits-balance",
            "digits (class re-balance)",
            Dist("digits", "digits"),
            Dist("digits", "digits", "balance:2,2,2,2,2,1,1,1,1,1"),
            "digits",
        ),
        _t(
            "digits-thick",
            "digits (thick strokes)",
            Dist("digits", "digits"),
            Dist("digits", "digits", "thick"),
            "digits@thick",
        ),
    )
}


def write_array(path: Path, x: np.ndarray) -> Path:
    """Write ``x`` to ``path`` atomically (several suite workers may race on it)."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{id(x)}.tmp.npy")
    np.save(tmp, x)
    tmp.replace(path)
    return path


def score(task: Task, samples: np.ndarray) -> dict[str, float]:
    """``flowpost.eval.evaluate_samples`` against the fresh target set, plus the exact W2 on
    the flattened vectors (digits: also the image metrics in the shipped classifier's
    features: ``frechet``, ``class_tv``, density / coverage)."""
    import torch

    from flowpost.eval import evaluate_samples
    from flowpost.eval.metrics import w2

    ref = task.target.reference()
    x = samples.reshape(len(samples), -1).astype(np.float32)
    if task.target.kind == "digits":
        img = lambda a: torch.from_numpy(a).reshape(-1, 1, 8, 8).clamp(-1, 1)  # noqa: E731
        out = evaluate_samples(img(x), img(ref), dataset=task.label)
        out["w2"] = w2(torch.from_numpy(x[:2000]), torch.from_numpy(ref[:2000]))
        return out
    return evaluate_samples(torch.from_numpy(x), torch.from_numpy(ref), dataset=task.label)


__all__ = ["TASKS", "Task", "Dist", "write_array", "score"]
