"""The run config: one dataclass per recipe section, assembled and validated in one place.

A recipe is YAML with the sections ``data``, ``model``, ``method``, ``train``, ``eval``, an
optional ``init_from`` (a pretrained run folder, or a diffusers model folder) and an optional
``diffusers`` section (a diffusers transformer with LoRA as the flow model). ``method.name``
picks the method, whose own config dataclass then validates the rest of the ``method`` section.

It lives in ``train/`` rather than ``config.py`` because assembling a run needs every folder's
config (data, nets, methods); ``config.py`` keeps the generic, dependency-free machinery.

Example:
    >>> cfg = build_run_config({"data": {"name": "moons"}, "train": {"steps": 10}})
    >>> cfg.method.name, cfg.train.steps
    ('flow_matching', 10)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flowpost.adapters.diffusers.config import DiffusersConfig
from flowpost.config import ConfigError, from_dict, option, to_dict
from flowpost.data import DataConfig
from flowpost.methods.base import MethodConfig, get_method_class
from flowpost.nets.config import NetConfig

# the experiment trackers train.log_with may name (flowpost.train.tracking starts them)
TRACKERS = ("tensorboard", "wandb")


@dataclass
class TrainConfig:
    """Optimisation, checkpointing, logging: everything the trainer owns."""

    steps: int = option(2000, "number of training iterations (method train_step calls)", min=0)
    batch_size: int = option(256, "samples of target data per iteration", min=1)
    lr: float = option(1e-3, "default learning rate of every optimiser", min=0.0)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0)
    betas: list[float] = option(default_factory=lambda: [0.9, 0.999], help="AdamW betas")
    warmup_steps: int = option(0, "linear learning-rate warm-up, in optimiser steps", min=0)
    schedule: str = option(
        "constant", "learning-rate schedule after warm-up", choices=["constant", "cosine"]
    )
    min_lr_ratio: float = option(0.1, "cosine schedule floor, as a fraction of lr", min=0, max=1)
    grad_clip: float = option(1.0, "max global gradient norm per optimiser (0: off)", min=0.0)
    ema_decay: float = option(
        0.999,
        "EMA decay of the evaluated roles, warmed up as min(decay, (1+k)/(10+k)) (0: none)",
        min=0.0,
        max=0.999999,
    )
    seed: int = option(0, "one seed for everything: data order, noise, initialisation")
    checkpoint_every: int = option(500, "steps between checkpoints (0: only at the end)", min=0)
    keep_checkpoints: int = option(2, "how many recent checkpoints to keep", min=1)
    eval_every: int = option(0, "steps between evaluations (0: only at the end)", min=0)
    log_every: int = option(50, "steps between metrics.jsonl lines", min=1)
    log_with: list[str] = option(
        default_factory=lambda: ["tensorboard"],
        help="Accelerate trackers that also get every logged number and the sample grids: "
        "tensorboard, wandb (W&B: offline unless WANDB_MODE says otherwise); [] for none",
    )
    precision: str = option(
        "fp32", "numeric precision of the training step (bf16: autocast)", choices=["fp32", "bf16"]
    )
    device: str = option("auto", "where to train", choices=["auto", "cpu", "cuda"])
    holdout_fraction: float | None = option(
        None,
        "fraction of the training samples (demonstrations) held out to score checkpoints and "
        "keep the best (null: 0.1 when the run post-trains toward its data, i.e. init_from is "
        "set and the method is not reward fine-tuning, else 0)",
        min=0.0,
        max=0.5,
    )
    validate_every: int = option(
        0, "steps between held-out checks of the model (0: steps // 10)", min=0
    )
    select_rollouts: int = option(
        0,
        "robot tasks: score each check by this many closed-loop roll-outs on validation "
        "episodes (disjoint from eval's) instead of held-out demonstrations; the start is "
        "kept until a check beats the best on the episodes where they differ with a one-sided "
        "exact sign-test p below select_rollouts_p (0: off)",
        min=0,
    )
    select_rollouts_p: float = option(
        0.025,
        "sign-test p-value below which a check's roll-outs replace the best",
        min=0.0,
        max=1.0,
    )
    select_metric: str = option(
        "w2", "score of the held-out check (lower is better)", choices=["w2", "energy"]
    )
    guard: bool = option(
        True, "on a collapse seen on the held-out demonstrations, roll back to the best model"
    )
    guard_tolerance: float = option(
        1.0, "collapse: held-out score above best + this x (best - floor) + 3 noise", min=0.0
    )
    select_start_margin: float = option(
        0.0,
        "held-out selection: keep the start as the best until a check's score beats it by "
        "this many held-out noise sds (0: the later model wins within the noise); roll-out "
        "selection (select_rollouts) always keeps the start until a check beats it",
        min=0.0,
    )
    start_test: str = option(
        "warn",
        "held-out selection: test once, at the start, whether all the demonstrations can tell "
        "the starting model's samples (at the deployed steps) from their own distribution "
        "(energy permutation test); when they cannot (p > start_test_alpha), warn prints one "
        "line and keep_start also keeps the start as the best model for the whole run",
        choices=["warn", "keep_start", "off"],
    )
    start_test_alpha: float = option(
        0.05, "level of the start test: p above it means the demos cannot tell", min=0.0, max=1.0
    )
    select_coverage_gain: float = option(
        0.0,
        "best checkpoint: also keep a check whose coverage of the demonstrations beats the "
        "best's by this much while its held-out score is short of a collapse (0: off)",
        min=0.0,
        max=1.0,
    )
    guard_coverage_drop: float = option(
        0.3,
        "collapse: coverage of the demonstrations below (1 - this) x the best's",
        min=0.0,
        max=1.0,
    )
    max_rollbacks: int = option(3, "rollbacks to the best model at most, then only warn", min=0)
    rollback_lr_factor: float = option(
        0.5, "learning rates are multiplied by this at each rollback", min=0.0, max=1.0
    )

    def __post_init__(self) -> None:
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas: expected two numbers in [0, 1), got {self.betas}")
        for name in self.log_with:
            if name not in TRACKERS:
                raise ConfigError(
                    f"log_with: unknown tracker {name!r} (known: {', '.join(TRACKERS)})"
                )


@dataclass
class EvalConfig:
    """How the trained model is evaluated against the held-out data."""

    nfe: int = option(100, "network evaluations of the sampler", min=1)
    solver: str = option(
        "euler", "ODE solver", choices=["euler", "midpoint", "heun", "rk4", "dopri5"]
    )
    n_samples: int = option(2000, "samples drawn for the metrics", min=2)
    extra_nfe: list[int] = option(
        default_factory=list, help="also report the metrics at these NFEs (final evaluation)"
    )
    seed: int = option(1234, "seed of the evaluation noise (separate from training's stream)")
    episodes: int = option(100, "robot tasks: roll-out episodes per evaluation", min=1)
    noise_scale: float = option(
        1.0,
        "scale of the noise the deployed sampler starts from (samples, metrics, roll-outs; "
        "held-out selection always scores 1): 1 samples the model, below 1 trades spread for "
        "precision, 0 deploys the deterministic map of z = 0 (a policy of a deterministic "
        "expert)",
        min=0.0,
    )
    plots: bool = option(True, "save sample plots into the run's plots/ folder")
    grid: int = option(
        64,
        "image-shaped data: samples in the PNG grid written to samples/ and logged to the "
        "trackers at each evaluation (latents: their channels, at most 8 rows; 0: none)",
        min=0,
    )
    grid_at_checkpoints: bool = option(
        False, "also write and log a sample grid at every checkpoint (draws eval.grid samples)"
    )


@dataclass
class RunConfig:
    """A whole run: what data, which network, which method, how to train and evaluate."""

    data: DataConfig
    model: NetConfig
    method: MethodConfig
    train: TrainConfig
    eval: EvalConfig
    init_from: str | None = None
    # a diffusers transformer (with LoRA) as the flow model; needs the [diffusers] extra
    diffusers: DiffusersConfig | None = None


SECTIONS = ("data", "model", "method", "train", "eval", "init_from", "diffusers")


def build_run_config(data: Mapping[str, Any]) -> RunConfig:
    """Validate a nested dict (a parsed recipe with overrides) into a :class:`RunConfig`."""
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' (known sections: {', '.join(SECTIONS)})")
    for section in ("data", "model", "method", "train", "eval", "diffusers"):
        value = data.get(section)
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{section}: expected a mapping of fields, got {value!r}")
    method_data = dict(data.get("method") or {})
    name = method_data.get("name", "flow_matching")
    try:
        method_cls = get_method_class(str(name))
    except ValueError as err:
        raise ConfigError(f"method.name: {err}") from None
    # the name picks the class; it is not a field of most method configs
    if "name" not in {f.name for f in dataclasses.fields(method_cls.config_class)}:
        method_data.pop("name", None)
    init_from = data.get("init_from")
    if init_from is not None and not isinstance(init_from, str):
        raise ConfigError(
            f"init_from: expected a run folder or diffusers model folder path, got {init_from!r}"
        )
    diffusers = data.get("diffusers")
    run = RunConfig(
        data=from_dict(DataConfig, data.get("data"), prefix="data"),
        model=from_dict(NetConfig, data.get("model"), prefix="model"),
        method=from_dict(method_cls.config_class, method_data, prefix="method"),
        train=from_dict(TrainConfig, data.get("train"), prefix="train"),
        eval=from_dict(EvalConfig, data.get("eval"), prefix="eval"),
        init_from=init_from,
        diffusers=None
        if diffusers is None
        else from_dict(DiffusersConfig, diffusers, prefix="diffusers"),
    )
    # A method config may check itself against the other sections (GFT: the temperature
    # must reach 0 within train.steps); it raises ConfigError naming the keys.
    check_run = getattr(run.method, "check_run", None)
    if callable(check_run):
        check_run(run)
    return run


def run_config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """A plain dict of the run config (what ``config.yaml`` in a run folder holds)."""
    out: dict[str, Any] = to_dict(cfg)
    out["method"] = {"name": cfg.method.name, **out["method"]}
    return out
