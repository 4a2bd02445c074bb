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
import json
import math
import random
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch import Tensor, nn

from flowpost.data import DataSplit, load_data
from flowpost.data.base import Batch
from flowpost.eval.evaluator import Evaluator
from flowpost.methods.base import Method, get_method_class
from flowpost.methods.components.guards import GuardWarning
from flowpost.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_policy_state,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
    split_prefixed,
)
from flowpost.train.config import RunConfig, run_config_to_dict
from flowpost.train.ema import EMA
from flowpost.train.logger import ProgressBar, RunLogger
from flowpost.train.runfolder import atomic_write_bytes
from flowpost.train.selection import BEST_DIR, Selector, scale_learning_rates, split_holdout
from flowpost.train.updater import NonFiniteLossError, OptimizerUpdater


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


def _rng_tensors() -> dict[str, Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def _restore_rng(tensors: Mapping[str, Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (before building the networks:
    the seed then decides the initial weights too)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Trainer:
    """Trains ``method`` on ``data`` and writes a run folder ``out_dir``.

    ``config`` is the whole run config: the trainer follows its ``train`` and ``eval``
    sections and records it (with the method's own config) in ``config.yaml`` and in every
    checkpoint. ``meta`` holds extra JSON facts recorded in each checkpoint beside the data
    spec (:func:`flowpost.fit` notes a user's own network there); ``files`` (name -> bytes)
    are written into the run folder when a run starts (``fit`` stores a user's tensor data
    there, which the recorded config points to). The caller seeds the
    global generators before building the method (:func:`seed_everything`); the trainer
    continues that stream.

    The run folder holds ``config.yaml``, ``metrics.jsonl``, ``tensorboard/``,
    ``checkpoints/``, ``plots/`` and, at the end, ``summary.json``.

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
        self.accelerator = Accelerator(
            mixed_precision="no" if tc.precision == "fp32" else tc.precision,
            cpu=(tc.device == "cpu"),
            # methods may leave some parameters out of a loss (a discriminator's warm-up)
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
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
        self.selector: Selector | None = None
        fraction = tc.holdout_fraction
        if fraction is None:
            fraction = 0.1 if config.init_from else 0.0
        if fraction > 0:  # demonstrations held out to score checkpoints and keep the best
            kept, held = split_holdout(data.train, fraction, config.data.seed)
            self.data = dataclasses.replace(data, train=kept)
            self.selector = Selector(
                held, kept, tolerance=tc.guard_tolerance, coverage_drop=tc.guard_coverage_drop,
                metric=tc.select_metric,
            )  # fmt: skip
        self.rollbacks = 0
        self._warned_idle = False
        self.method = method
        self.method.to(self.device)
        self._build_optimisers()
        self.train_x = self.data.train.x.to(self.device)
        self.train_cond = (
            None if self.data.train.cond is None else self.data.train.cond.to(self.device)
        )
        self.step = 0
        self._wrapped: list[str] = []
        self._saved_step: int | None = None

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
        seed_everything(config.train.seed)
        data = load_data(config.data)
        method_cls = get_method_class(config.method.name)
        method = method_cls(config.method, data.spec, config.model)
        if config.init_from and load_init:
            method.load_pretrained(load_policy_state(config.init_from))
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
            backward=self.accelerator.backward,
        )

    def _distribute(self) -> None:
        """Under several processes, wrap each trained role for gradient all-reduce (DDP) and
        give each process its own random stream (weights were initialised identically)."""
        acc = self.accelerator
        if acc.num_processes <= 1 or self._wrapped:
            return
        for name in self.optimizers:
            module = getattr(self.method, name, None)
            if isinstance(module, nn.Module):
                setattr(self.method, name, acc.prepare_model(module))
                self._wrapped.append(name)
        torch.manual_seed(self.config.train.seed + 7919 * acc.process_index + self.step)

    # -- checkpoints --------------------------------------------------------------------
    def _checkpoint_payload(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors: dict[str, Tensor] = {}
        for key, value in self.method.state_dict().items():
            for role in self._wrapped:  # store DDP-wrapped roles under their plain names
                key = key.replace(f"{role}.module.", f"{role}.", 1)
            tensors[f"model.{key}"] = value
        for role, ema in self.emas.items():
            for key, value in ema.module.state_dict().items():
                tensors[f"ema.{role}.{key}"] = value
        optim_meta = {}
        for name, opt in self.optimizers.items():
            flat, meta = optimizer_to_flat(name, opt)
            tensors.update(flat)
            optim_meta[name] = meta
        tensors.update(_rng_tensors())
        state = {
            "optimizers": optim_meta,
            "updater": {"steps_taken": self.updater.steps_taken},
            "method": self.method.extra_state(),
            "python_rng": list(random.getstate()[1]),
            "config": run_config_to_dict(self.config),
            "run": self.run_info(),
        }
        return tensors, state

    def run_info(self) -> dict[str, Any]:
        """What a loaded run needs besides the config: the data spec and dataset name (so
        sampling never loads the data) and the ``meta`` given at construction."""
        spec = self.data.spec
        data = {"shape": list(spec.shape), "num_classes": spec.num_classes, "name": self.data.name}
        return {"data": data, **self.meta}

    def save(self) -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        tensors, state = self._checkpoint_payload()
        self._saved_step = self.step
        return save_checkpoint(
            self.out / "checkpoints",
            self.step,
            tensors,
            state,
            keep=self.config.train.keep_checkpoints,
        )

    def restore(self, path: Path) -> None:
        tensors, state = load_checkpoint(path)
        try:
            self.method.load_state_dict(split_prefixed(tensors, "model"))
            for role, ema in self.emas.items():
                ema.module.load_state_dict(split_prefixed(tensors, f"ema.{role}"))
            for name, opt in self.optimizers.items():
                optimizer_from_flat(name, opt, tensors, state["optimizers"][name])
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"{path}: does not fit this run's config ({err}); resume with the same recipe"
            ) from None
        self.updater.steps_taken = dict(state["updater"]["steps_taken"])
        self.method.load_extra_state(state.get("method", {}))
        _restore_rng(tensors)
        py = state.get("python_rng")
        if py is not None:
            random.setstate((3, tuple(py), None))
        self.step = int(state["step"])

    # -- training -----------------------------------------------------------------------
    def _next_batch(self) -> Batch:
        n = self.train_x.shape[0]
        index = torch.randint(0, n, (self.config.train.batch_size,)).to(self.device)
        cond = None if self.train_cond is None else self.train_cond[index]
        return Batch(self.train_x[index], cond)

    def run_steps(
        self, n: int, *, logger: RunLogger | None = None, bar: ProgressBar | None = None
    ) -> None:
        """Take ``n`` training iterations with logging, periodic evaluation and checkpoints."""
        tc = self.config.train
        window: dict[str, list[float]] = {}
        started = time.perf_counter()
        end = self.step + n
        self.method.train()
        if self.selector is not None and self.step == 0 and self.selector.start is None:
            self.validate(logger)  # the start is a candidate: the kept model is never worse
        every = tc.validate_every or max(1, tc.steps // 10)
        while self.step < end:
            batch = self._next_batch()
            self.updater.global_step = self.step
            with self.accelerator.autocast(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", GuardWarning)
                logs = self.method.train_step(batch, self.step, self.updater)
            self._report_warnings(caught, logger)
            self.step += 1
            if logger is not None:
                for key, value in logs.items():
                    window.setdefault(key, []).append(value)
            if logger is not None and (self.step % tc.log_every == 0 or self.step == tc.steps):
                record: dict[str, Any] = {"step": self.step, "phase": self.method.phase(self.step)}
                record.update({k: sum(v) / len(v) for k, v in window.items()})
                for name, opt in self.optimizers.items():
                    record[f"lr/{name}"] = opt.param_groups[0]["lr"]
                record["time_s"] = round(time.perf_counter() - started, 3)
                logger.write(record)
                if bar is not None:
                    bar.update(self.step, record["phase"], {k: record[k] for k in window})
                window = {}
            if (
                logger is not None
                and tc.eval_every
                and self.step % tc.eval_every == 0
                and self.step < tc.steps
            ):
                metrics = self.evaluate(plot_name=f"samples_step{self.step:07d}.png")
                self.method.train()
                logger.write({"step": self.step, **{f"eval/{k}": v for k, v in metrics.items()}})
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                self.save()
            if self.selector is not None and (self.step % every == 0 or self.step == tc.steps):
                self.validate(logger)
                self.method.train()

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``train.steps`` (continuing from the newest checkpoint if ``resume``)."""
        tc = self.config.train
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            found = latest_checkpoint(self.out / "checkpoints")
            if found is None:
                raise CheckpointError(f"--resume: no checkpoint under {self.out / 'checkpoints'}")
            self.restore(found)
            best = latest_checkpoint(self.out / BEST_DIR)
            if best is not None and self.selector is not None:
                self.selector.load_state(load_checkpoint(best)[1].get("selection", {}))
        self._distribute()
        if self.accelerator.is_main_process:
            if not resume:
                for name, blob in self.files.items():
                    atomic_write_bytes(self.out / name, blob)
            # what the config cannot say (a user's own network) is noted as comments
            notes = "".join(f"# {key}: {json.dumps(value)}\n" for key, value in self.meta.items())
            (self.out / "config.yaml").write_text(
                notes + yaml.safe_dump(run_config_to_dict(self.config), sort_keys=False)
            )
        main = self.accelerator.is_main_process
        logger = RunLogger(self.out, resume_step=self.step if resume else 0) if main else None
        bar = ProgressBar(tc.steps, self.step, self.progress_enabled and main)
        try:
            self.run_steps(tc.steps - self.step, logger=logger, bar=bar)
        except NonFiniteLossError as err:
            if logger is not None:
                logger.write({"step": self.step, "error": str(err)})
                logger.close()
            raise
        finally:
            bar.close()
        if self._saved_step != self.step:
            self.save()
        self.accelerator.wait_for_everyone()
        if logger is None:
            return {"step": self.step}
        summary = self.final_evaluation()
        summary.update(self._selection_summary())
        final = {f"final/{k}": v for k, v in summary.items() if isinstance(v, (int, float))}
        logger.write({"step": self.step, **final})
        logger.close()
        (self.out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
        return summary

    # -- held-out demonstrations: best checkpoint and collapse guard -----------------------
    def validate(self, logger: RunLogger | None = None) -> str:
        """Score the EMA model on the held-out demonstrations; keep it in ``best/`` if it is
        the best so far; on a collapse roll back to the best and lower the learning rates."""
        sel = self.selector
        assert sel is not None
        ec = self.config.eval
        ev = Evaluator(
            self.method, roles=self.ema_roles(), spec=self.data.spec,
            reference=self.data.train, device=self.device,
        )  # fmt: skip
        check = sel.measure(ev.sample(sel.n_samples, ec.nfe, solver=ec.solver, seed=ec.seed + 1))
        check.step = self.step
        verdict, reason = sel.judge(check)
        if logger is not None:
            logger.write({"step": self.step, "validation/score": check.score,
                          "validation/coverage": check.coverage})  # fmt: skip
        if verdict == "best" and self.accelerator.is_main_process:
            tensors, state = self._checkpoint_payload()
            state["selection"] = sel.state()
            save_checkpoint(self.out / BEST_DIR, self.step, tensors, state, keep=1)
        if verdict == "collapse":
            tc = self.config.train
            act = tc.guard and self.rollbacks < tc.max_rollbacks and self.step < tc.steps
            what = "the best model is kept" if self.step >= tc.steps else "no rollbacks left"
            if act:
                assert sel.best is not None
                self.accelerator.wait_for_everyone()
                self.load_weights(self.out / BEST_DIR, optimizers=True)
                scale_learning_rates(self.optimizers, tc.rollback_lr_factor)
                self.rollbacks += 1
                what = (
                    f"rolled back to the best model (step {sel.best.step}) and scaled the "
                    f"learning rates by {tc.rollback_lr_factor}"
                )
            message = f"warning: step {self.step}: collapse on held-out demos ({reason}); {what}"
            if self.accelerator.is_main_process:
                if act or not self._warned_idle:  # once when the guard can no longer act
                    print(message, file=sys.stderr, flush=True)
                self._warned_idle = self._warned_idle or not act
                if logger is not None:
                    logger.write({"step": self.step, "warning": message})
        return verdict

    def _report_warnings(self, caught: list[warnings.WarningMessage], logger: Any) -> None:
        """A method's guard warnings become one ``warning:`` line each (and a metrics.jsonl
        record); other warnings are passed on unchanged."""
        for w in caught:
            if not issubclass(w.category, GuardWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                continue
            message = f"warning: step {self.step}: {w.message}"
            if self.accelerator.is_main_process:
                print(message, file=sys.stderr, flush=True)
                if logger is not None:
                    logger.write({"step": self.step, "warning": message})

    def load_weights(self, root: Path, *, optimizers: bool = False) -> None:
        """Load the method's and EMA weights (and optimiser states) of the checkpoint in
        ``root``; the step, schedule position and random streams stay as they are."""
        found = latest_checkpoint(root)
        if found is None:
            raise CheckpointError(f"{root}: no checkpoint to load")
        tensors, state = load_checkpoint(found)
        self.method.load_state_dict(split_prefixed(tensors, "model"))
        for role, ema in self.emas.items():
            ema.module.load_state_dict(split_prefixed(tensors, f"ema.{role}"))
        if optimizers:
            for name, opt in self.optimizers.items():
                optimizer_from_flat(name, opt, tensors, state["optimizers"][name])
        self.method.load_extra_state(state.get("method", {}))

    def _selection_summary(self) -> dict[str, Any]:
        """Name both checkpoints; when the best is not the last, report the last model's
        metrics as ``last/...`` and leave the best loaded (what sample/eval use)."""
        sel = self.selector
        last = latest_checkpoint(self.out / "checkpoints")
        out: dict[str, Any] = {"checkpoints": {"last": None if last is None else
                                               str(last.relative_to(self.out))}}  # fmt: skip
        if sel is None or sel.best is None:
            return out
        best = latest_checkpoint(self.out / BEST_DIR)
        out["checkpoints"]["best"] = None if best is None else str(best.relative_to(self.out))
        out.update(
            best_step=sel.best.step, rollbacks=self.rollbacks, heldout_demos=len(sel.heldout),
            validation=sel.state(), model="best",
        )  # fmt: skip
        return out

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
        )

    def evaluate(self, nfe: int | None = None, plot_name: str | None = None) -> dict[str, float]:
        """Metrics of the EMA roles against held-out data (``eval`` section settings);
        training's random stream is left exactly as it was."""
        ec = self.config.eval
        plot = self.out / "plots" / plot_name if ec.plots and plot_name else None
        return self.evaluator().evaluate(
            nfe or ec.nfe,
            solver=ec.solver,
            n_samples=ec.n_samples,
            seed=ec.seed,
            episodes=ec.episodes,
            plot=plot,
            title=f"{self.config.method.name} step {self.step}",
        )

    def final_evaluation(self) -> dict[str, Any]:
        ec = self.config.eval
        summary: dict[str, Any] = {"step": self.step, "nfe": ec.nfe, "solver": ec.solver}
        sel = self.selector
        if sel is not None and sel.best is not None and sel.best.step != self.step:
            # the metrics are the best model's (what sample and eval use); the last's beside
            summary.update({f"last/{k}": v for k, v in self.evaluate().items()})
            self.load_weights(self.out / BEST_DIR)
        summary.update(self.evaluate(plot_name="samples_final.png"))
        for nfe in ec.extra_nfe:
            for key, value in self.evaluate(nfe=nfe).items():
                summary[f"nfe{nfe}/{key}"] = value
        return summary


def run_training(
    config: RunConfig | Mapping[str, Any],
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Build and run a :class:`Trainer` from a config (or a recipe dict); return the summary."""
    from flowpost.train.config import build_run_config

    cfg = config if isinstance(config, RunConfig) else build_run_config(config)
    trainer = Trainer.from_config(cfg, out_dir, progress=progress, load_init=not resume)
    return trainer.fit(resume=resume)
