"""Samples and metrics of a trained method, without a trainer.

An :class:`Evaluator` wraps anything with a method's ``generate(noise, cond, nfe=, solver=,
roles=)`` (a :class:`~flowpost.methods.base.Method`), the roles to sample with (a trainer's EMA
copies, or those loaded from a run folder) and, for metrics only, a held-out reference set.
The trainer evaluates through it during training; ``flowpost sample`` / ``flowpost eval`` and
:class:`flowpost.Run` use it on a loaded run, so drawing samples never needs the training data.

Noise comes from a generator seeded with ``seed`` and any draw a sampler makes from torch's
global generator happens inside a forked, re-seeded stream: the same call gives the same
samples, and evaluating in the middle of training leaves training's random stream untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from flowpost.data.base import ArrayData, DataSpec
from flowpost.eval.evaluate import evaluate_samples, plot_samples
from flowpost.flows.measures import rms_norm
from flowpost.flows.recording import PathLengthRecorder, record_path_length

if TYPE_CHECKING:
    from flowpost.methods.base import Method


class NonFiniteSamplesError(ValueError):
    """Samples hold NaN or Inf (a diverged model): refused rather than written or scored."""


class Evaluator:
    """Draw samples from a method's (EMA) roles and score them against a reference.

    ``noise_scale`` multiplies the noise every sample and roll-out starts from (1: the
    model's distribution; 0: the deterministic map of ``z = 0``). ``spec`` defaults to the
    method's data spec; ``reference`` (held-out data) is needed only
    by :meth:`evaluate` and, for class-conditional data, gives the labels samples are drawn
    with (cycled), so the class mix matches the held-out set. ``dataset`` (as in
    :class:`flowpost.data.DataSplit.name`) switches on the dataset's own metrics.

    Example:
        >>> import torch
        >>> from flowpost.data.base import ArrayData, DataSpec
        >>> from flowpost.methods.flow_matching import FlowMatching, FlowMatchingConfig
        >>> from flowpost.nets.config import NetConfig
        >>> method = FlowMatching(FlowMatchingConfig(), DataSpec((2,)), NetConfig(hidden=16))
        >>> ev = Evaluator(method, reference=ArrayData(torch.randn(100, 2)))
        >>> x = ev.sample(10, nfe=4, seed=3)
        >>> x.shape, torch.equal(x, ev.sample(10, nfe=4, seed=3))
        (torch.Size([10, 2]), True)
        >>> sorted(ev.evaluate(nfe=4, n_samples=50))  # doctest: +NORMALIZE_WHITESPACE
        ['coverage', 'density', 'energy', 'mmd', 'path_length', 'precision', 'recall',
         'sliced_w2', 'w2']
    """

    def __init__(
        self,
        method: Method,
        *,
        roles: Mapping[str, nn.Module] | None = None,
        spec: DataSpec | None = None,
        reference: ArrayData | None = None,
        dataset: str | None = None,
        device: torch.device | str | None = None,
        robot: Any = None,
        noise_scale: float = 1.0,
    ) -> None:
        if not noise_scale >= 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        self.method = method
        self.robot = robot
        self.noise_scale = float(noise_scale)
        self.roles = dict(roles) if roles is not None else None
        self.spec: DataSpec = spec if spec is not None else method.spec
        self.reference = reference
        self.dataset = dataset
        self.samples: Tensor | None = None  # those the last evaluate() scored
        if device is None:
            first = next(iter(method.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)

    def conditions(self, n: int, cond: Tensor | int | None = None) -> Tensor | None:
        """The labels ``n`` samples are drawn with: ``cond`` (an int: all the same label), else
        for class-conditional data the reference's labels cycled (no reference: 0, 1, ...)."""
        k = self.spec.num_classes
        if cond is None and self.spec.cond_dim is not None:  # float condition vectors
            if self.reference is None or self.reference.cond is None:
                raise ValueError("float-conditioned model: pass cond= (n, cond_dim) vectors")
            vectors = self.reference.cond
            return vectors[torch.arange(n) % vectors.shape[0]]
        if cond is not None and self.spec.cond_dim is not None:
            vectors = torch.as_tensor(cond).float().cpu()
            if vectors.shape != (n, self.spec.cond_dim):
                raise ValueError(
                    f"cond must be ({n}, {self.spec.cond_dim}) vectors, got {tuple(vectors.shape)}"
                )
            return vectors
        if cond is None:
            if k is None:
                return None
            held = self.reference.cond if self.reference is not None else None
            labels = held if held is not None else torch.arange(min(n, k))
            return labels[torch.arange(n) % labels.shape[0]]
        if k is None:
            raise ValueError("cond given, but the model was trained without class labels")
        labels = torch.full((n,), cond) if isinstance(cond, int) else torch.as_tensor(cond)
        labels = labels.long().cpu()
        if labels.shape != (n,):
            raise ValueError(f"cond must be one label per sample, shape ({n},); got {labels.shape}")
        if bool((labels < 0).any()) or bool((labels > k).any()):
            raise ValueError(f"cond: labels must lie in [0, {k}] ({k} is the null label)")
        return labels

    @torch.no_grad()
    def sample(
        self,
        n: int,
        nfe: int,
        *,
        solver: str = "euler",
        cond: Tensor | int | None = None,
        seed: int = 0,
        check_finite: bool = True,
    ) -> Tensor:
        """``n`` samples (on the CPU, float32) with ``nfe`` network evaluations; with
        ``check_finite``, samples holding NaN or Inf raise :class:`NonFiniteSamplesError`."""
        if n < 1 or nfe < 1:
            raise ValueError(f"n and nfe must be >= 1, got n={n}, nfe={nfe}")
        labels = self.conditions(n, cond)
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, *self.spec.shape), generator=gen).to(self.device)
        noise = noise * self.noise_scale
        devices = [self.device] if self.device.type == "cuda" else []
        was_training = self.method.training
        with torch.random.fork_rng(devices=devices):
            # the sampler's own draws (SDE increments, re-noising) continue the noise's stream:
            # seeding the global RNG with ``seed`` itself would make its first draw repeat the
            # starting noise exactly (same seed, same shape on the CPU)
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            self.method.eval()
            try:
                out = self.method.generate(
                    noise,
                    None if labels is None else labels.to(self.device),
                    nfe=nfe,
                    solver=solver,
                    roles=self.roles,
                )
            finally:
                self.method.train(was_training)
        out = out.float().cpu()
        if check_finite and not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out.flatten(1))).any(1).sum())
            raise NonFiniteSamplesError(
                f"{bad} of {n} samples are not finite (NaN or Inf): the model diverged; "
                "sample from a run (or checkpoint) that trained without diverging"
            )
        return out

    def evaluate(
        self,
        nfe: int,
        *,
        solver: str = "euler",
        n_samples: int = 2000,
        seed: int = 1234,
        plot: str | Path | None = None,
        title: str = "",
        episodes: int = 100,
        check_finite: bool = True,
    ) -> dict[str, float]:
        """Metrics of ``min(n_samples, len(reference))`` samples against the reference (drawn
        with noise ``seed``; the metrics' own subsampling uses ``seed + 1``); with ``plot`` a
        path, also save the samples beside the reference there."""
        if self.reference is None:
            raise ValueError("no held-out reference to evaluate against (pass reference=)")
        n = min(n_samples, len(self.reference))
        with record_path_length() as rec:
            samples = self.sample(n, nfe, solver=solver, seed=seed, check_finite=check_finite)
        self.samples = samples
        reference = self.reference.x[:n]
        gen = torch.Generator().manual_seed(seed + 1)
        metrics = evaluate_samples(samples, reference, dataset=self.dataset, generator=gen)
        metrics["path_length"] = self._path_length(rec, samples, seed)
        if self.robot is not None:  # robot task: ``episodes`` closed-loop roll-outs
            metrics.update(self.rollouts(nfe, solver=solver, episodes=episodes, seed=seed))
        if plot is not None:
            plot_samples(samples, plot, reference=reference, spec=self.spec, title=title)
        return metrics

    def rollouts(
        self,
        nfe: int,
        *,
        solver: str = "euler",
        episodes: int = 100,
        seed: int = 1234,
        distances: list[float] | None = None,
    ) -> dict[str, float]:
        """Roll-out metrics of the policy on its robot task (``robot`` must be given); with a
        list ``distances``, every episode's final distance is appended to it."""
        if self.robot is None:
            raise ValueError("roll-outs need a robot task (pass robot=)")
        was_training = self.method.training
        self.method.eval()

        def generate(noise: Tensor, cond: Tensor) -> Tensor:
            noise = noise * self.noise_scale
            return self.method.generate(noise, cond, nfe=nfe, solver=solver, roles=self.roles)

        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)
                out: dict[str, float] = self.robot.evaluate(
                    generate, episodes=episodes, seed=seed, device=self.device,
                    distances=distances,
                )  # fmt: skip
        finally:
            self.method.train(was_training)
        return out

    def _path_length(self, rec: PathLengthRecorder, samples: Tensor, seed: int) -> float:
        """Mean ``E int ||v|| dt`` of the sampler that ran: the solvers' recorded steps (the
        drift part of an SDE step); a sampler that called no solver (a one-step generator)
        gets its chord ``||x_1 - x_0||``, which is exactly the path of a one-step map."""
        if rec.steps:
            return rec.mean()
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((samples.shape[0], *self.spec.shape), generator=gen)
        return float(rms_norm(samples - noise.reshape(samples.shape)).mean())


__all__ = ["Evaluator", "NonFiniteSamplesError"]
