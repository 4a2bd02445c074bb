"""The trainer: runs any :class:`~flowpost.methods.base.Method` without knowing its maths.

It owns devices (through Hugging Face Accelerate), optimisers and schedules, gradient
clipping, EMAs, checkpoints and exact resume, logging, progress, evaluation and the NaN guard.
It takes objects: a built method, the data and the run config (whose ``train`` and ``eval``
sections it follows and which it records in the run folder); :meth:`Trainer.from_config`
builds them from a recipe's config. :func:`flowpost.fit` is the user-facing layer over both.

Example:
    >>> import tempfile
    >>> from flowpost.train.config import build_run_config
    >>> cfg = build_run_config({
    ...     "data": {"name": "moons", "n_heldout": 200},
    ...     "model": {"hidden": 32, "depth": 2},
    ...     "train": {"steps": 5, "batch_size": 32, "checkpoint_every": 0},
    ...     "eval": {"nfe": 4, "n_samples": 200, "plots": False},
    ... })
    >>> summary = Trainer.from_config(cfg, tempfile.mkdtemp(), progress=False).fit()
    >>> summary["step"]
    5
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, DistributedType
from accelerate.state import AcceleratorState
from torch import nn

from flowpost.data import DataSplit
from flowpost.data.base import Batch
from flowpost.eval.evaluator import Evaluator
from flowpost.methods.base import Method
from flowpost.train import guard, loop, tracking
from flowpost.train.build import build_method_and_data
from flowpost.train.checkpoint import (
    NonFiniteCheckpointError,
    first_non_finite,
    load_checkpoint,
    save_checkpoint,
)
from flowpost.train.config import RunConfig
from flowpost.train.ema import EMA
from flowpost.train.logger import ProgressBar, RunLogger
from flowpost.train.selection import (
    BEST_DIR,
    RolloutSelector,
    Selector,
    holdout_fraction,
    split_holdout,
)
from flowpost.train.signals import StopRequest
from flowpost.train.state import restore_payload, state_payload
from flowpost.train.updater import OptimizerUpdater


def lr_lambda(warmup: int, total: int, schedule: str, floor: float):  # type: ignore[no-untyped-def]
    """Multiplier of the base lr at training iteration ``k``: linear warm-up, then constant
    or cosine decay to ``floor`` at the last iteration."""

    def factor(k: int) -> float:
        if warmup > 0 and k < warmup:
            return (k + 1) / warmup
        if schedule == "cosine" and total > warmup:
            progress = min(1.0, (k - warmup) / max(1, total - warmup))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


class Trainer:
    """Trains ``method`` on ``data`` and writes a run folder ``out_dir``.

    ``config`` is the whole run config: the trainer follows its ``train`` and ``eval``
    sections and records it (with the method's own config) in ``config.yaml`` and in every
    checkpoint. ``meta`` holds extra JSON facts recorded in each checkpoint beside the data
    spec (:func:`flowpost.fit` notes a user's own network there); ``files`` (name -> bytes)
    are written into the run folder when a run starts (``fit`` stores a user's tensor data
    there, which the recorded config points to). The caller seeds the global generators
    before building the method (:func:`~flowpost.train.build.seed_everything`); the trainer
    continues that stream.

    The run folder holds ``config.yaml``, ``metrics.jsonl``, ``tensorboard/`` (and
    ``wandb/``: ``train.log_with``), ``checkpoints/``, ``plots/``, ``samples/`` (grids of
    image-shaped samples) and, at the end, ``summary.json``.

    Example:
        >>> import tempfile
        >>> from flowpost.data import DataConfig, load_data
        >>> from flowpost.methods.flow_matching import FlowMatching, FlowMatchingConfig
        >>> from flowpost.nets.config import NetConfig
        >>> from flowpost.train.config import build_run_config
        >>> cfg = build_run_config({"train": {"steps": 3, "batch_size": 16},
        ...                         "eval": {"nfe": 2, "n_samples": 50, "plots": False}})
        >>> data = load_data(DataConfig(name="moons", n_train=64, n_heldout=50))
        >>> method = FlowMatching(FlowMatchingConfig(), data.spec, NetConfig(hidden=16))
        >>> trainer = Trainer(method, data, cfg, tempfile.mkdtemp(), progress=False)
        >>> trainer.fit()["step"], "w2" in trainer.evaluate(nfe=2)
        (3, True)
    """

    def __init__(
        self,
        method: Method,
        data: DataSplit,
        config: RunConfig,
        out_dir: str | Path,
        *,
        progress: bool = True,
        meta: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        self.config = dataclasses.replace(config, method=method.config)
        self.out = Path(out_dir)
        self.progress_enabled = progress
        self.meta = dict(meta or {})
        self.files = dict(files or {})
        tc = config.train
        tracking.check_trackers(tc.log_with)  # before anything is written
        self.logger: RunLogger | None = None  # the main process's, while fit() runs
        self.eval_samples: torch.Tensor | None = None
        # auto: the GPUs if there are any, else the CPU; under torchrun / accelerate launch
        # that is DDP over NCCL or gloo (a CPU run must say cpu=True to Accelerate for that)
        cpu = tc.device == "cpu" or (tc.device == "auto" and not torch.cuda.is_available())
        # Accelerate keeps one state per process and refuses a second trainer with another
        # precision (fp32, then bf16: `fit` twice, or tests); the process group is kept
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(
            mixed_precision="no" if tc.precision == "fp32" else tc.precision,
            cpu=cpu,
            # methods may leave some parameters out of a loss (a discriminator's warm-up);
            # buffers are never broadcast (evaluation runs on the main process alone)
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)
            ],
        )
        if tc.device == "cuda" and self.accelerator.device.type != "cuda":
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
        self.device = self.accelerator.device
        if data.spec != method.spec:
            raise ValueError(
                f"the data (shape {data.spec.shape}, classes {data.spec.num_classes}) does not "
                f"match the method's (shape {method.spec.shape}, classes "
                f"{method.spec.num_classes}); build the method from the data's spec"
            )
        self.data = data
        self.selector: Selector | RolloutSelector | None = None
        # streamed data (latents on disk) is read a batch at a time, never moved whole
        self.streamed = bool(getattr(data.train, "streamed", False))
        fraction = holdout_fraction(
            tc.holdout_fraction,
            post_training=bool(config.init_from),
            targets_data=method.targets_data,
            streamed=self.streamed,
        )
        if fraction > 0 and self.streamed:
            raise ValueError(
                "train.holdout_fraction: checkpoint selection needs in-memory data; set it to 0 "
                "for data read from disk (data.name: latents)"
            )
        if tc.select_rollouts > 0:  # the policy's own success scores checkpoints instead
            if data.robot is None:
                raise ValueError(
                    "train.select_rollouts: roll-outs need a robot task (data.name reacher or "
                    "pusher); for other data select on held-out demos (train.holdout_fraction)"
                )
            if tc.holdout_fraction:
                raise ValueError(
                    "train.select_rollouts and train.holdout_fraction both choose the kept "
                    "checkpoint: set one of them (holdout_fraction: 0)"
                )
            fraction = 0.0
            ec = config.eval
            self.selector = RolloutSelector(
                tc.select_rollouts, seed=ec.seed + 1, p=tc.select_rollouts_p, nfe=ec.nfe,
                solver=ec.solver, noise_scale=ec.noise_scale,
            )  # fmt: skip
        if fraction > 0:  # demonstrations held out to score checkpoints and keep the best
            kept, held = split_holdout(data.train, fraction, config.data.seed)
            self.data = dataclasses.replace(data, train=kept)
            self.selector = Selector(
                held, kept, tolerance=tc.guard_tolerance, coverage_drop=tc.guard_coverage_drop,
                coverage_gain=tc.select_coverage_gain, metric=tc.select_metric,
                start_margin=tc.select_start_margin, start_test=tc.start_test,
                start_alpha=tc.start_test_alpha,
            )  # fmt: skip
        self.rollbacks = 0
        self._warned_idle = False
        self.method = method
        self.method.to(self.device)
        self._build_optimisers()
        self.train_x = None if self.streamed else self.data.train.x.to(self.device)
        self.train_cond = (
            None
            if self.streamed or self.data.train.cond is None
            else self.data.train.cond.to(self.device)
        )
        self.step = 0
        self._wrapped: list[str] = []
        self._saved_step: int | None = None
        self._stop: StopRequest | None = None
        self.resumes: list[dict[str, Any]] = []  # settings changed at each resume

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        out_dir: str | Path,
        *,
        progress: bool = True,
        load_init: bool = True,
    ) -> Trainer:
        """Seed, load the data, build the method (with the ``init_from`` weights) from a run
        config. ``load_init=False`` skips loading ``init_from`` (a checkpoint of this run is
        about to be restored, which holds every weight), so a moved pretrained folder is not
        needed."""
        method, data = build_method_and_data(config, load_init=load_init)
        return cls(method, data, config, out_dir, progress=progress)

    # -- construction -------------------------------------------------------------------
    def _build_optimisers(self) -> None:
        tc = self.config.train
        specs = self.method.optimizers()
        if not specs:
            raise ValueError(f"method {self.config.method.name!r} declared no optimiser")
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        scheduled: set[str] = set()
        clips: dict[str, float | None] = {}
        for name, spec in specs.items():
            params = [p for p in spec.params if p.requires_grad]
            if not params:
                raise ValueError(f"optimiser {name!r} has no trainable parameters")
            betas = spec.betas or (tc.betas[0], tc.betas[1])
            opt = torch.optim.AdamW(
                params,
                lr=(spec.lr if spec.lr is not None else tc.lr) * spec.lr_scale,
                betas=betas,
                weight_decay=spec.weight_decay
                if spec.weight_decay is not None
                else tc.weight_decay,
                eps=1e-8 if spec.eps is None else spec.eps,
            )
            self.optimizers[name] = opt
            if spec.schedule:
                scheduled.add(name)
            clips[name] = spec.grad_clip if spec.grad_clip is not None else tc.grad_clip
        self.live = {role: self.method.role(role) for role in self.method.ema_roles()}
        self.emas = {role: EMA(module, tc.ema_decay) for role, module in self.live.items()}
        self.updater = OptimizerUpdater(
            self.optimizers,
            lr_factor=lr_lambda(tc.warmup_steps, tc.steps, tc.schedule, tc.min_lr_ratio),
            scheduled=scheduled,
            grad_clip=clips,
            emas=self.emas,
            live=self.live,
            backward=self._backward(),
        )

    def _backward(self) -> Callable[[torch.Tensor], None] | None:
        """Accelerate's backward where it does something (loss scaling under fp16, gradient
        accumulation, DeepSpeed / Megatron); else ``None``, a plain ``loss.backward()``
        (Accelerate's would divide the loss by 1 at each step)."""
        acc = self.accelerator
        plain = (
            acc.scaler is None
            and acc.gradient_accumulation_steps == 1
            and acc.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
        )
        return None if plain else acc.backward

    # -- checkpoints --------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        """What a loaded run needs besides the config: the data spec and dataset name (so
        sampling never loads the data) and the ``meta`` given at construction."""
        spec = self.data.spec
        data = {
            "shape": list(spec.shape),
            "num_classes": spec.num_classes,
            "cond_dim": spec.cond_dim,
            "name": self.data.name,
        }
        return {"data": data, **self.meta}

    def save(self) -> Path | None:
        """Write a checkpoint (main process). Non-finite weights are never written: every
        process checks its (identical) copy and raises :class:`NonFiniteCheckpointError`."""
        tensors, state = state_payload(self)
        bad = first_non_finite(tensors)
        if bad is not None:
            raise NonFiniteCheckpointError(self.step, bad)
        self._saved_step = self.step
        if not self.accelerator.is_main_process:
            return None
        return save_checkpoint(
            self.out / "checkpoints",
            self.step,
            tensors,
            state,
            keep=self.config.train.keep_checkpoints,
        )

    def restore(self, path: Path) -> None:
        """Load checkpoint ``path`` into the method, EMAs, optimisers and random streams."""
        tensors, state = load_checkpoint(path)
        restore_payload(self, path, tensors, state)

    # -- training -----------------------------------------------------------------------
    def _next_batch(self) -> tuple[Batch, tuple[int, int, int]]:
        """This process's slice of the global batch and its shard (:func:`loop.next_batch`)."""
        return loop.next_batch(self)

    def run_steps(
        self, n: int, *, logger: RunLogger | None = None, bar: ProgressBar | None = None
    ) -> None:
        """Take ``n`` training iterations with logging, periodic evaluation and checkpoints
        (:func:`flowpost.train.loop.run_steps`)."""
        loop.run_steps(self, n, logger, bar)

    def fit(self, resume: bool = False, *, overwrite: bool = False) -> dict[str, Any]:
        """Train to ``train.steps`` (continuing from the newest checkpoint if ``resume``).

        The run folder is locked while training; a folder that already holds a run is
        refused unless ``resume``, or ``overwrite`` (which moves the old run aside). SIGTERM
        and SIGINT end the current step, write a checkpoint and raise
        :class:`~flowpost.train.signals.TrainingInterrupted`."""
        from flowpost.train import lifecycle

        lock = lifecycle.open_folder(self, resume=resume, overwrite=overwrite)
        try:
            return lifecycle.fit(self, resume=resume)
        finally:
            if lock is not None:
                lock.release()

    def say(self, message: str) -> None:
        """Print a line on the main process (stderr)."""
        if self.accelerator.is_main_process:
            print(message, file=sys.stderr, flush=True)

    # -- evaluation ---------------------------------------------------------------------
    def ema_roles(self) -> dict[str, nn.Module]:
        return {role: ema.module for role, ema in self.emas.items()}

    def evaluator(self) -> Evaluator:
        """Samples and metrics of the EMA roles against the held-out data."""
        return Evaluator(
            self.method,
            roles=self.ema_roles(),
            spec=self.data.spec,
            reference=self.data.heldout,
            dataset=self.data.name,
            device=self.device,
            robot=self.data.robot,
            noise_scale=self.config.eval.noise_scale,
        )

    def evaluate(
        self, nfe: int | None = None, plot_name: str | None = None, *, check_finite: bool = True
    ) -> dict[str, float]:
        """Metrics of the EMA roles against held-out data (``eval`` section settings);
        training's random stream is left exactly as it was. Non-finite samples raise
        (``check_finite``) or, during training, give non-finite metrics. The scored samples
        stay in ``eval_samples`` (for the sample grid)."""
        ec = self.config.eval
        plot = self.out / "plots" / plot_name if ec.plots and plot_name else None
        evaluator = self.evaluator()
        metrics = evaluator.evaluate(
            nfe if nfe is not None else ec.nfe,
            solver=ec.solver,
            n_samples=ec.n_samples,
            seed=ec.seed,
            episodes=ec.episodes,
            plot=plot,
            title=f"{self.config.method.name} step {self.step}",
            check_finite=check_finite,
        )
        self.eval_samples = evaluator.samples
        return metrics

    def final_evaluation(self) -> dict[str, Any]:
        ec = self.config.eval
        summary: dict[str, Any] = {"step": self.step, "nfe": ec.nfe, "solver": ec.solver}
        sel = self.selector
        if sel is not None and sel.best is not None and sel.best.step != self.step:
            # the metrics are the best model's (what sample and eval use); the last's beside
            summary.update({f"last/{k}": v for k, v in self.evaluate(check_finite=False).items()})
            guard.load_weights(self, self.out / BEST_DIR)
        summary.update(self.evaluate(plot_name="samples_final.png", check_finite=False))
        tracking.log_grid(self, self.eval_samples, "final")
        for nfe in ec.extra_nfe:
            for key, value in self.evaluate(nfe=nfe, check_finite=False).items():
                summary[f"nfe{nfe}/{key}"] = value
        return summary


def run_training(
    config: RunConfig | Mapping[str, Any],
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Build and run a :class:`Trainer` from a config (or a recipe dict); return the summary."""
    from flowpost.train.config import build_run_config

    cfg = config if isinstance(config, RunConfig) else build_run_config(config)
    trainer = Trainer.from_config(cfg, out_dir, progress=progress, load_init=not resume)
    return trainer.fit(resume=resume, overwrite=overwrite)
