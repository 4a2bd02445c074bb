"""Distances between two sample sets (flattened to vectors) and between Gaussians.

All functions take tensors or arrays of shape (n, ...) and flatten each sample; they compute
in float64 and return Python floats (or small tensors for per-mode results).

* :func:`w2`: exact 2-Wasserstein distance (POT's network simplex on squared Euclidean
  cost, uniform weights); cubic cost, so at most ``max_samples`` (5000) per side.
* :func:`sliced_w2`: the square root of the mean over random unit directions of the 1-D
  squared W2 of the projections. For a pure shift ``s`` in ``d`` dimensions it equals
  ``|s| / sqrt(d)``.
* :func:`mmd`: squared maximum mean discrepancy with a sum of RBF kernels at several
  bandwidths (biased V-statistic, >= 0, or the unbiased U-statistic).
* :func:`energy_distance`: ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic, >= 0).
* :func:`mode_weights`, :func:`within_mode_std`: per-mode mass and (plain) spread of a mixture;
  :func:`robust_mode_spread`: per-mode spread that tight clumps joined by bridges cannot fake
  (a median absolute deviation about the mode's median); :func:`between_modes`: the mass
  farther than a core radius from every mode.
* :func:`knn_precision_recall`: density and coverage (Naeem et al. 2020) and precision and
  recall (Kynkaenniemi et al. 2019) from k-nearest-neighbour balls: fidelity and diversity
  for any data, no modes needed.
* :func:`frechet_distance`: squared W2 between Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)``
  (the FID formula); :func:`gaussian_w2` is its square root.

Example:
    >>> import torch
    >>> x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    >>> round(w2(x, x + torch.tensor([3.0, 4.0])), 4)
    5.0
    >>> w2(x, x)
    0.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray

MAX_EXACT_SAMPLES = 5000


def _flat(x: ArrayLike, name: str = "samples") -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    t = t.detach().to("cpu", torch.float64)
    if t.ndim == 1:
        t = t.unsqueeze(1)
    t = t.reshape(t.shape[0], -1)
    if t.shape[0] == 0:
        raise ValueError(f"{name}: no samples (shape {tuple(t.shape)}); give at least one")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t).all(1)).nonzero()[0, 0])
        raise ValueError(f"{name}: sample {bad} contains NaN or Inf")
    return t


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[Tensor, Tensor]:
    a, b = _flat(x, "x"), _flat(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"the two sample sets have different dimensions: {a.shape[1]} and {b.shape[1]}"
        )
    return a, b


def w2(x: ArrayLike, y: ArrayLike, *, max_samples: int = MAX_EXACT_SAMPLES) -> float:
    """Exact 2-Wasserstein distance between the empirical measures of ``x`` and ``y``."""
    import ot

    a, b = _pair(x, y)
    if max(a.shape[0], b.shape[0]) > max_samples:
        raise ValueError(
            f"exact W2 on {a.shape[0]} x {b.shape[0]} samples is too slow (limit "
            f"{max_samples} per side); subsample first or use sliced_w2"
        )
    cost = torch.cdist(a, b).pow(2).numpy()
    wa = np.full(a.shape[0], 1.0 / a.shape[0])
    wb = np.full(b.shape[0], 1.0 / b.shape[0])
    value = float(ot.emd2(wa, wb, cost, numItermax=10_000_000))
    return float(np.sqrt(max(value, 0.0)))


def _quantiles(sorted_proj: Tensor, levels: Tensor) -> Tensor:
    """Empirical quantile functions (P, L) of sorted columns (n, P) at ``levels`` (L,)."""
    n = sorted_proj.shape[0]
    # the empirical quantile at level u is the ceil(u * n)-th order statistic
    idx = torch.clamp(torch.ceil(levels * n).long() - 1, 0, n - 1)
    return sorted_proj[idx].T


def sliced_w2(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_projections: int = 256,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> float:
    """Sliced 2-Wasserstein distance over ``n_projections`` random unit directions.

    Directions come from ``generator`` when given, else from a generator seeded with ``seed``
    (so repeated evaluations of the same sets agree).
    """
    a, b = _pair(x, y)
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_projections, generator=g).double()
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa = (a @ dirs).sort(dim=0).values
    pb = (b @ dirs).sort(dim=0).values
    if pa.shape[0] == pb.shape[0]:
        sq = (pa - pb).pow(2).mean(dim=0)
    else:
        # unequal sizes: integrate the squared difference of the quantile functions exactly
        # over the merged breakpoints of the two step functions
        na, nb = pa.shape[0], pb.shape[0]
        cuts = torch.cat(
            [
                torch.arange(1, na + 1, dtype=torch.float64) / na,
                torch.arange(1, nb + 1, dtype=torch.float64) / nb,
            ]
        ).unique()
        widths = torch.diff(cuts, prepend=torch.zeros(1, dtype=torch.float64))
        mids = cuts - widths / 2
        qa, qb = _quantiles(pa, mids), _quantiles(pb, mids)
        sq = ((qa - qb).pow(2) * widths).sum(dim=1)
    return float(sq.mean().sqrt())


def _median_sq_distance(z: Tensor, max_points: int = 1000) -> float:
    sub = z[:max_points]
    d2 = torch.cdist(sub, sub).pow(2)
    off = d2[~torch.eye(sub.shape[0], dtype=torch.bool)]
    med = float(off.median()) if off.numel() else 1.0
    return med if med > 0 else 1.0


def mmd(
    x: ArrayLike,
    y: ArrayLike,
    *,
    bandwidths: Sequence[float] | None = None,
    unbiased: bool = False,
) -> float:
    """Squared MMD with ``k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2))``.

    ``bandwidths=None`` uses the median heuristic of the pooled samples times
    (0.25, 0.5, 1, 2, 4), so the kernel sees both fine and coarse differences. The biased
    estimator is >= 0 and exactly 0 for identical sets; the unbiased one (needs >= 2 samples
    per side) has zero mean when both sets come from the same distribution.
    """
    a, b = _pair(x, y)
    if bandwidths is None:
        # half the points from each set: the first rows of cat([a, b]) would all be a's, and a
        # collapsed sample set would then shrink every bandwidth
        h0 = float(np.sqrt(_median_sq_distance(torch.cat([a[:500], b[:500]]))))
        hs = [h0 * m for m in (0.25, 0.5, 1.0, 2.0, 4.0)]
    else:
        hs = [float(h) for h in bandwidths]
        if not hs or any(h <= 0 for h in hs):
            raise ValueError(f"bandwidths must be positive numbers, got {list(bandwidths)}")

    def kernel(p: Tensor, q: Tensor) -> Tensor:
        d2 = torch.cdist(p, q).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in hs)  # type: ignore[return-value]

    kxx, kyy, kxy = kernel(a, a), kernel(b, b), kernel(a, b)
    n, m = a.shape[0], b.shape[0]
    if unbiased:
        if n < 2 or m < 2:
            raise ValueError("the unbiased MMD needs at least 2 samples in each set")
        sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        return float(sxx + syy - 2 * kxy.mean())
    return float(max(float(kxx.mean() + kyy.mean() - 2 * kxy.mean()), 0.0))


def energy_distance(x: ArrayLike, y: ArrayLike) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic; 0 iff equal sets)."""
    a, b = _pair(x, y)
    value = 2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()
    return float(max(float(value), 0.0))


def mode_weights(samples: ArrayLike, centers: ArrayLike, radius: float) -> tuple[Tensor, float]:
    """Fraction of samples (K,) within ``radius`` of each center (nearest center wins), and
    the fraction assigned to no mode."""
    from flowpost.data.toys import assign_modes

    x = _flat(samples)
    c = _flat(centers, "centers")
    idx = assign_modes(x, c, radius)
    counts = torch.bincount(idx[idx >= 0], minlength=c.shape[0]).double()
    return counts / x.shape[0], float((idx < 0).double().mean())


def within_mode_std(samples: ArrayLike, centers: ArrayLike, radius: float) -> Tensor:
    """Per-mode standard deviation (K,) of the samples assigned to each mode (RMS over
    coordinates of the per-coordinate std); NaN for modes with fewer than 2 samples."""
    return _per_mode(samples, centers, radius, lambda pts: float(pts.var(dim=0).mean().sqrt()))


def robust_mode_spread(samples: ArrayLike, centers: ArrayLike, radius: float) -> Tensor:
    """Per-mode robust standard deviation (K,): ``1.4826 * median |x - median(x)|`` over the
    coordinates of the samples assigned to each mode (nearest center, within ``radius``);
    NaN for modes with fewer than 2 samples.

    Unlike :func:`within_mode_std`, a minority of samples strewn between the modes (bridges)
    barely moves it: the median absolute deviation has a 50% breakdown point, so tight clumps
    joined by bridges report the clumps' spread, not the assignment radius's. For a Gaussian
    mode it estimates the per-coordinate std.

    >>> x = torch.cat([torch.zeros(90, 2), torch.linspace(-0.5, 0.5, 10)[:, None].expand(10, 2)])
    >>> float(robust_mode_spread(x, torch.zeros(1, 2), 0.6)[0])  # 90% in a point: 0
    0.0
    """

    def mad(pts: Tensor) -> float:
        return 1.4826 * float(_median((pts - pts.median(dim=0).values).abs().flatten()))

    return _per_mode(samples, centers, radius, mad)


def _per_mode(
    samples: ArrayLike, centers: ArrayLike, radius: float, stat: Callable[[Tensor], float]
) -> Tensor:
    """``stat`` of the samples assigned to each mode (K,); NaN where fewer than 2."""
    from flowpost.data.toys import assign_modes

    x = _flat(samples)
    c = _flat(centers, "centers")
    idx = assign_modes(x, c, radius)
    out = torch.full((c.shape[0],), float("nan"), dtype=torch.float64)
    for k in range(c.shape[0]):
        pts = x[idx == k]
        if pts.shape[0] >= 2:
            out[k] = stat(pts)
    return out


def _median(v: Tensor) -> Tensor:
    """The median as the mean of the two middle values (torch's ``median`` takes the lower)."""
    s = v.sort().values
    n = s.numel()
    return 0.5 * (s[(n - 1) // 2] + s[n // 2])


def between_modes(samples: ArrayLike, centers: ArrayLike, core: float) -> float:
    """Fraction of samples farther than ``core`` from every center (mass between the modes).

    >>> between_modes(torch.tensor([[0.0], [0.1], [1.0]]), torch.zeros(1, 1), 0.3)
    0.3333333333333333
    """
    x = _flat(samples)
    c = _flat(centers, "centers")
    return float((torch.cdist(x, c).min(dim=1).values > core).double().mean())


def knn_precision_recall(
    samples: ArrayLike, reference: ArrayLike, *, k: int = 5
) -> dict[str, float]:
    """Fidelity and diversity of ``samples`` against ``reference`` from k-NN balls.

    Each reference point ``r_i`` gets the ball of radius its distance to its ``k``-th nearest
    reference neighbour (and each sample likewise among the samples):

    * ``density`` = ``sum_j #{i: y_j in B(r_i)} / (k m)`` (Naeem et al. 2020): about 1 when the
      sets match, above 1 when samples crowd the dense parts of the reference;
    * ``coverage`` = fraction of reference points whose ball holds at least one sample: drops
      when parts of every mode are missed (collapse inside a mode), and cannot be inflated by
      piling samples up, unlike recall;
    * ``precision`` = fraction of samples inside some reference ball (Kynkaenniemi et al.
      2019), ``recall`` = fraction of reference points inside some sample ball.

    Two sets from one distribution score density about 1, coverage about
    ``1 - 2^-k`` (0.97 for ``k = 5``). Quadratic in memory: subsample to a few thousand first.

    >>> g = torch.Generator().manual_seed(0)
    >>> ref, x = torch.randn(1000, 2, generator=g), torch.randn(1000, 2, generator=g)
    >>> m = knn_precision_recall(x, ref)
    >>> 0.85 < m["density"] < 1.15, m["coverage"] > 0.9
    (True, True)
    >>> knn_precision_recall(0.05 * x, ref)["coverage"] < 0.3  # collapsed to the centre
    True
    """
    y, r = _pair(samples, reference)
    if min(y.shape[0], r.shape[0]) <= k:
        raise ValueError(
            f"knn_precision_recall with k={k} needs more than {k} samples per set, got "
            f"{y.shape[0]} and {r.shape[0]}"
        )
    d_rr = torch.cdist(r, r)
    d_yy = torch.cdist(y, y)
    # the k-th neighbour, the point itself being the 0-th
    rad_r = d_rr.kthvalue(k + 1, dim=1).values
    rad_y = d_yy.kthvalue(k + 1, dim=1).values
    d_ry = torch.cdist(r, y)  # (n_ref, n_samples)
    inside = d_ry <= rad_r[:, None]
    return {
        "density": float(inside.double().sum() / (k * y.shape[0])),
        "coverage": float(inside.any(dim=1).double().mean()),
        "precision": float(inside.any(dim=0).double().mean()),
        "recall": float((d_ry <= rad_y[None, :]).any(dim=1).double().mean()),
    }


def _sym_sqrt(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: ArrayLike, s1: ArrayLike, mu2: ArrayLike, s2: ArrayLike) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})``: squared W2 between two Gaussians.

    Computed stably through symmetric matrices: ``tr (S1 S2)^{1/2} = tr (A S2 A)^{1/2}``
    with ``A = S1^{1/2}``; both square roots come from eigendecompositions with negative
    round-off eigenvalues clipped to zero, so rank-deficient covariances (fewer samples than
    feature dimensions) do not produce complex numbers or NaN.
    """
    m1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    m2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    c1 = np.atleast_2d(np.asarray(s1, dtype=np.float64))
    c2 = np.atleast_2d(np.asarray(s2, dtype=np.float64))
    if m1.shape != m2.shape or c1.shape != c2.shape or c1.shape != (m1.shape[0],) * 2:
        raise ValueError(
            f"frechet_distance: shapes do not match: mu {m1.shape} / {m2.shape}, "
            f"covariance {c1.shape} / {c2.shape}"
        )
    a = _sym_sqrt(c1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(a @ c2 @ a), 0.0, None)).sum()
    value = float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2.0 * cross)
    return max(value, 0.0)


def gaussian_w2(mu1: ArrayLike, s1: ArrayLike, mu2: ArrayLike, s2: ArrayLike) -> float:
    """Closed-form 2-Wasserstein distance between ``N(mu1, S1)`` and ``N(mu2, S2)``."""
    return float(np.sqrt(frechet_distance(mu1, s1, mu2, s2)))


def mean_cov(x: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d) of flattened samples (unbiased, needs n >= 2)."""
    t = _flat(x).numpy()
    if t.shape[0] < 2:
        raise ValueError("a covariance needs at least 2 samples")
    return t.mean(axis=0), np.atleast_2d(np.cov(t, rowvar=False))


__all__ = [
    "MAX_EXACT_SAMPLES",
    "w2",
    "sliced_w2",
    "mmd",
    "energy_distance",
    "mode_weights",
    "within_mode_std",
    "robust_mode_spread",
    "between_modes",
    "knn_precision_recall",
    "frechet_distance",
    "gaussian_w2",
    "mean_cov",
]
