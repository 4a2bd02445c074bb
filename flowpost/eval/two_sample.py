"""A two-sample test: can these samples tell two distributions apart?

:func:`energy_test` is the permutation test of the energy distance (Szekely and Rizzo 2004):
its statistic is the unbiased energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (within-set
means over distinct pairs), and its p-value is the fraction of random relabellings of the
pooled points whose statistic is at least the observed one (counting the observed labelling,
so ``p >= 1 / (permutations + 1)`` and the test is exact at every level; 1000 relabellings
by default: the p-value's own Monte Carlo error near 0.05 is then about 0.007).

The trainer uses it once per post-training run (``train.start_test``): when all the
demonstrations cannot tell the starting model's samples from their own distribution (which is
not evidence that the two are equal), post-training has little they can steer it by; on the
task suite such runs ended worse than their start about as often as better.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(64, 2, generator=g), torch.randn(500, 2, generator=g)
    >>> energy_test(x, y).p > 0.05  # one distribution: nothing to tell apart
    True
    >>> energy_test(x + 1.0, y).p < 0.01  # shifted by one sd
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TwoSampleTest:
    """The observed statistic, its permutation p-value, and how many permutations."""

    statistic: float
    p: float
    permutations: int


def energy_test(
    x: Tensor, y: Tensor, *, permutations: int = 1000, seed: int = 0, chunk: int = 25
) -> TwoSampleTest:
    """Permutation test of ``x`` and ``y`` (``(n, ...)`` and ``(m, ...)``, flattened per row)
    having one distribution, on the energy distance. ``seed`` seeds a private generator (the
    global random stream is not touched); ``chunk``: relabellings evaluated at once."""
    a = x.reshape(x.shape[0], -1).double().cpu()
    b = y.reshape(y.shape[0], -1).double().cpu()
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"energy_test needs at least 2 points per set, got {n} and {m}")
    pooled = torch.cat([a, b])
    # the direct difference form: cdist's matrix-product form leaves rounding on the diagonal
    dist = torch.cdist(pooled, pooled, compute_mode="donot_use_mm_for_euclid_dist")
    total, rows = dist.sum(), dist.sum(1)
    # relabellings equal to the observed one up to rounding must count: the sums above cancel
    # at the scale of the mean distance, not of the statistic
    tol = 1e-9 * float(total) / (n + m) ** 2

    def statistics(labels: Tensor) -> Tensor:
        # labels: (p, n + m), 1 for the points labelled x. With D the distance matrix,
        # s' D s sums the x-x distances; s' D 1 - s' D s the x-y ones; the rest the y-y ones.
        s = labels.double()
        within_x = ((s @ dist) * s).sum(1)
        between = s @ rows - within_x
        within_y = total - 2 * between - within_x
        return 2 * between / (n * m) - within_x / (n * (n - 1)) - within_y / (m * (m - 1))

    observed = torch.zeros(1, n + m, dtype=torch.bool)
    observed[0, :n] = True
    value = float(statistics(observed)[0])
    g = torch.Generator().manual_seed(seed)
    exceed, done = 0, 0
    while done < permutations:
        p = min(chunk, permutations - done)
        # float64 keys: float32 ones tie often enough at a few thousand points to bias argsort
        keys = torch.rand(p, n + m, generator=g, dtype=torch.float64)
        order = torch.argsort(keys, dim=1)
        labels = order < n  # a uniformly random n-subset of the pooled points per row
        exceed += int((statistics(labels) >= value - tol).sum())
        done += p
    return TwoSampleTest(value, (1 + exceed) / (1 + permutations), permutations)
