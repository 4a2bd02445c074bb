"""One call to score samples against held-out data, and one to plot them.

:func:`evaluate_samples` picks the metrics by data type:

* vectors (n, d): ``w2`` (exact, on at most 2000 samples per side), ``sliced_w2``, ``mmd``
  (squared, biased, median-heuristic bandwidths) and ``energy`` (on at most 2000 per side);
* the mixtures ``mixture1d`` / ``8gaussians`` (also transformed, ``"8gaussians@rotate"``;
  under a plain name the modes and target weights are fitted to the reference, see
  :func:`_fit_modes`) add ``mode_coverage`` (fraction of modes holding at least a quarter
  of their target weight), ``mode_tv`` (total variation between the sample and target
  mode weights, the unassigned mass counted as error), ``unassigned`` (fraction between modes),
  ``between_modes`` (fraction farther than 3 target standard deviations from every mode),
  ``mode_spread`` (median over the covered modes of the robust within-mode std,
  :func:`~flowpost.eval.metrics.robust_mode_spread`), ``mode_spread_ratio`` (median over
  the covered modes of that spread divided by the reference's, 1 when the spread is kept,
  well below 1 for collapsed modes even when bridges join them), ``mode_spread_min`` and
  ``mode_weight_<k>``;
* every data type adds ``density``, ``coverage``, ``precision`` and ``recall``
  (:func:`~flowpost.eval.metrics.knn_precision_recall`, k = 5, on at most 2000 samples per
  side; for images in the shipped classifier's features when there is one, else in pixels):
  a fidelity/diversity pair that needs no modes;
* images (n, C, H, W): ``sliced_w2`` on pixels, and for ``digits`` / ``mnist5k`` (and their
  variants) ``frechet`` in the shipped classifier's features, ``confidence`` (fraction
  classified with probability > 0.9), ``class_tv`` (total variation between the predicted
  class histograms of samples and reference), ``classes_covered`` and ``class_<k>``.

Example:
    >>> import torch
    >>> from flowpost.data.toys import sample_toy
    >>> g = torch.Generator().manual_seed(0)
    >>> ref, x = sample_toy("mixture1d", 1000, g), sample_toy("mixture1d", 1000, g)
    >>> m = evaluate_samples(x, ref, dataset="mixture1d")
    >>> m["mode_coverage"], m["mode_tv"] < 0.05
    (1.0, True)
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowpost.data.base import DataSpec
from flowpost.data.toys import MIXTURES, ModeInfo, mode_info
from flowpost.eval.features import (
    SHIPPED,
    base_dataset,
    classifier_confidence,
    classifier_features,
    frechet_in_features,
    load_feature_classifier,
)
from flowpost.eval.metrics import (
    between_modes,
    energy_distance,
    knn_precision_recall,
    mmd,
    mode_weights,
    robust_mode_spread,
    sliced_w2,
    w2,
)
from flowpost.eval.plots import plot_hist_1d, plot_image_grid, plot_scatter_2d

MAX_W2_SAMPLES = 2000
MAX_KERNEL_SAMPLES = 2000
KNN_K = 5
# the core of a mode: within this many target standard deviations of its center
CORE_STDS = 3.0
# a reference with more mass than this between a candidate's modes is not that candidate
_REFERENCE_UNASSIGNED_LIMIT = 0.05
_DEFAULT_GEOMETRIC = ("rotate", "shift", "scale")


def _as_tensor(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.from_numpy(np.asarray(x))
    t = t.detach().to("cpu", torch.float32)
    if t.ndim < 2 or t.shape[0] == 0:
        raise ValueError(f"{name}: expected (n, ...) with n >= 1, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t.reshape(t.shape[0], -1)).all(1)).nonzero()[0, 0])
        raise ValueError(f"{name}: sample {bad} contains NaN or Inf")
    return t


def _subsample(x: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    if x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:n]]


def _fit_modes(ref: Tensor, dataset: str) -> tuple[ModeInfo, Tensor] | None:
    """The mode structure that fits the reference, and the target mode weights.

    With ``name@transform`` the named transform's modes and weights are used as they are.
    With a plain name the reference decides: the plain modes, else the first default
    geometric transform whose modes hold the reference (a recipe's ``rotate:22.5`` evaluated
    under the plain name still gets its mode metrics), with the target weights measured on
    the reference (so an ``unbalanced`` target is judged against its own weights).
    """
    base, _, transform = dataset.partition("@")
    candidates = [transform] if transform else ["none", *_DEFAULT_GEOMETRIC]
    for cand in candidates:
        try:
            info = mode_info(base, cand)
        except ValueError:  # e.g. 'rotate' on the 1-D mixture
            continue
        ref_weights, ref_unassigned = mode_weights(ref, info.centers, info.radius)
        if ref_unassigned <= _REFERENCE_UNASSIGNED_LIMIT:
            target = info.weights.double() if transform else ref_weights / ref_weights.sum()
            return info, target
    return None


def _mode_metrics(x: Tensor, ref: Tensor, dataset: str) -> dict[str, float]:
    fitted = _fit_modes(ref, dataset)
    if fitted is None:
        return {}
    info, target = fitted
    weights, unassigned = mode_weights(x, info.centers, info.radius)
    covered = weights >= 0.25 * target
    spread = robust_mode_spread(x, info.centers, info.radius)
    ref_spread = robust_mode_spread(ref, info.centers, info.radius)
    ok = covered & ~torch.isnan(spread) & (ref_spread > 0)
    ratio = spread[ok] / ref_spread[ok]
    out = {
        "mode_coverage": float(covered.double().mean()),
        "mode_tv": 0.5 * (float((weights - target).abs().sum()) + unassigned),
        "unassigned": unassigned,
        "between_modes": between_modes(x, info.centers, CORE_STDS * info.std),
        "mode_spread": float(spread[ok].median()) if bool(ok.any()) else 0.0,
        "mode_spread_ratio": float(_median(ratio)) if bool(ok.any()) else 0.0,
        "mode_spread_min": float(ratio.min()) if bool(ok.any()) else 0.0,
    }
    out.update({f"mode_weight_{k}": float(w) for k, w in enumerate(weights)})
    return out


def _median(v: Tensor) -> Tensor:
    s = v.sort().values
    return 0.5 * (s[(s.numel() - 1) // 2] + s[s.numel() // 2])


def _knn_metrics(x: Tensor, ref: Tensor) -> dict[str, float]:
    if min(x.shape[0], ref.shape[0]) <= KNN_K:
        return {}
    return knn_precision_recall(x[:MAX_KERNEL_SAMPLES], ref[:MAX_KERNEL_SAMPLES], k=KNN_K)


def _image_metrics(x: Tensor, ref: Tensor, dataset: str) -> dict[str, float]:
    key = base_dataset(dataset)
    if key not in SHIPPED:
        return {}
    net = load_feature_classifier(key)
    if tuple(x.shape[1:]) != net.spec.shape:
        return {}
    out = {"frechet": frechet_in_features(x, ref, key)} if min(len(x), len(ref)) >= 2 else {}
    out.update(_knn_metrics(classifier_features(x, key), classifier_features(ref, key)))
    conf = classifier_confidence(x, key)
    ref_hist = classifier_confidence(ref, key).histogram
    k = conf.histogram.shape[0]
    out["confidence"] = conf.fraction
    out["class_tv"] = 0.5 * float((conf.histogram - ref_hist).abs().sum())
    out["classes_covered"] = float((conf.histogram >= 0.25 / k).double().mean())
    out.update({f"class_{c}": float(h) for c, h in enumerate(conf.histogram)})
    return out


def evaluate_samples(
    samples: Tensor | np.ndarray,
    reference: Tensor | np.ndarray,
    *,
    dataset: str | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Metrics of ``samples`` against ``reference`` (held-out data), chosen by data type.

    ``dataset`` (a dataset name, optionally with ``@transform``, as in
    :class:`flowpost.data.DataSplit.name`) switches on the mode and classifier metrics;
    ``generator`` drives the subsampling for the exact W2 and kernel metrics. Without one a
    generator seeded with 0 is used: the same sets always get the same scores, and scoring
    never draws from (and so never shifts) torch's global stream that training depends on.
    """
    x, ref = _as_tensor(samples, "samples"), _as_tensor(reference, "reference")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if x.shape[1:] != ref.shape[1:]:
        raise ValueError(
            f"samples have shape {tuple(x.shape[1:])} but the reference has "
            f"{tuple(ref.shape[1:])}; compare samples of the same data"
        )
    out: dict[str, float] = {}
    if x.ndim == 4:
        out["sliced_w2"] = sliced_w2(x, ref)
        image = _image_metrics(x, ref, dataset) if dataset is not None else {}
        if "density" not in image:  # no shipped feature classifier: k-NN in pixels
            xs = _subsample(x, MAX_KERNEL_SAMPLES, generator).flatten(1)
            out.update(_knn_metrics(xs, _subsample(ref, MAX_KERNEL_SAMPLES, generator).flatten(1)))
        out.update(image)
        return out
    xs = _subsample(x, MAX_W2_SAMPLES, generator)
    rs = _subsample(ref, MAX_W2_SAMPLES, generator)
    out["w2"] = w2(xs, rs)
    out["sliced_w2"] = sliced_w2(x, ref)
    xk, rk = xs[:MAX_KERNEL_SAMPLES], rs[:MAX_KERNEL_SAMPLES]
    out["mmd"] = mmd(xk, rk)
    out["energy"] = energy_distance(xk, rk)
    out.update(_knn_metrics(xk.reshape(xk.shape[0], -1), rk.reshape(rk.shape[0], -1)))
    if dataset is not None and base_dataset(dataset) in MIXTURES:
        if x.reshape(x.shape[0], -1).shape[1] == mode_info(base_dataset(dataset)).centers.shape[1]:
            out.update(_mode_metrics(x, ref, dataset))
    return {k: (float(v) if math.isfinite(v) else float("nan")) for k, v in out.items()}


def plot_samples(
    samples: Tensor | np.ndarray,
    path: str | Path,
    *,
    reference: Tensor | np.ndarray | None = None,
    spec: DataSpec | None = None,
    title: str = "",
) -> None:
    """Save the fitting plot of ``samples``: an image grid, a 1-D histogram or a 2-D scatter
    (beside the reference when given); vectors of higher dimension show their first two
    coordinates. A ``path`` without suffix gets ``.png``."""
    p = Path(path)
    if not p.suffix:
        p = p.with_suffix(".png")
    x = samples if isinstance(samples, Tensor) else torch.from_numpy(np.asarray(samples))
    x = x.detach().cpu().float()
    shape = spec.shape if spec is not None else tuple(x.shape[1:])
    x = x.reshape(x.shape[0], *shape)
    ref = None
    if reference is not None:
        ref = (
            reference if isinstance(reference, Tensor) else torch.from_numpy(np.asarray(reference))
        )
        ref = ref.detach().cpu().float().reshape(ref.shape[0], *shape)
    if len(shape) == 3:
        if ref is None:
            plot_image_grid(x, p, title=title)
        else:
            from flowpost.eval.plots import plot_before_after

            plot_before_after(x, ref, p, titles=(title or "samples", "reference"))
        return
    flat = x.reshape(x.shape[0], -1)
    rflat = None if ref is None else ref.reshape(ref.shape[0], -1)
    if flat.shape[1] == 1:
        plot_hist_1d(flat, p, reference=rflat, title=title)
    else:
        note = "" if flat.shape[1] == 2 else f" (first 2 of {flat.shape[1]} dims)"
        plot_scatter_2d(
            flat[:, :2],
            p,
            reference=None if rflat is None else rflat[:, :2],
            title=(title or "samples") + note,
        )


__all__ = ["evaluate_samples", "plot_samples"]
