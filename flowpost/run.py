"""A trained run as an object: sample from it, evaluate it, fine-tune from it.

:func:`flowpost.fit` returns a :class:`Run`; :func:`load` (``flowpost.load``) rebuilds one
from a run folder's ``config.yaml`` and newest checkpoint. Sampling needs neither a trainer
nor the training data (the data spec is recorded in the checkpoint); only :meth:`Run.evaluate`
loads the held-out data, on first use.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from flowpost.data import DataSplit
    from flowpost.data.base import ArrayData
    from flowpost.eval.evaluator import Evaluator
    from flowpost.methods.base import Method
    from flowpost.train.config import RunConfig


class Run:
    """A trained method with its run folder: ``path``, ``config`` (a
    :class:`~flowpost.train.config.RunConfig`), ``summary`` (the final metrics), ``method``
    and ``model`` (the evaluated, EMA, velocity network). A post-training run holds the best
    checkpoint on its held-out demonstrations (see ``summary["checkpoints"]``).

    Example:
        >>> import tempfile, torch, flowpost
        >>> target = torch.randn(256, 2) * 0.5 + 1.0
        >>> run = flowpost.fit("flow_matching", data=target, out=tempfile.mkdtemp(),
        ...                    model={"hidden": 32, "depth": 2}, train={"steps": 20},
        ...                    eval={"nfe": 4, "plots": False})
        >>> run.sample(8, nfe=4).shape
        torch.Size([8, 2])
        >>> again = flowpost.load(run.path)
        >>> torch.equal(again.sample(8, nfe=4, seed=1), run.sample(8, nfe=4, seed=1))
        True
    """

    def __init__(
        self,
        path: str | Path,
        config: RunConfig,
        method: Method,
        *,
        roles: dict[str, nn.Module],
        info: dict[str, Any],
        summary: dict[str, Any] | None = None,
        data: DataSplit | None = None,
    ) -> None:
        from flowpost.data.base import DataSpec

        self.path = Path(path)
        self.config = config
        self.method = method
        self.roles = roles
        self.info = info
        self.summary: dict[str, Any] = summary or {}
        self._data = data
        self._reference: ArrayData | None = data.heldout if data is not None else None
        self._robot: Any = data.robot if data is not None else None  # robot task roll-outs
        shape = info["data"]["shape"]
        self.spec = DataSpec(
            tuple(shape), info["data"].get("num_classes"), info["data"].get("cond_dim")
        )
        self.dataset: str | None = info["data"].get("name")
        self.checkpoint: Path | None = None  # the checkpoint whose weights the run holds
        self.best = False  # whether it is the best on held-out demonstrations, not the last

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, method={self.config.method.name!r})"

    @property
    def model(self) -> nn.Module:
        """The evaluated velocity network: the EMA copy of the ``policy`` role (or the role
        itself without an EMA)."""
        return self.method.role("policy", self.roles)

    @property
    def user_model(self) -> str | None:
        """The class (``module.QualName``) of the user's own network the run was trained
        with, or None when the network came from the config's ``model`` section."""
        model = self.info.get("model")
        return model.get("user") if isinstance(model, dict) else None

    def reference(self) -> ArrayData:
        """The held-out data (loaded from the run's ``data`` section on first use)."""
        if self._reference is None:
            from flowpost.data import load_data

            split = load_data(self.config.data)
            self._reference, self._robot = split.heldout, split.robot
        return self._reference

    def evaluator(
        self, *, with_reference: bool = False, noise_scale: float | None = None
    ) -> Evaluator:
        """An :class:`~flowpost.eval.evaluator.Evaluator` over the EMA roles, starting from
        noise scaled by ``noise_scale`` (default: the run's ``eval.noise_scale``)."""
        from flowpost.eval.evaluator import Evaluator

        scale = self.config.eval.noise_scale if noise_scale is None else noise_scale
        return Evaluator(
            self.method,
            roles=self.roles,
            spec=self.spec,
            reference=self.reference() if with_reference else self._reference,
            dataset=self.dataset,
            robot=self._robot,
            noise_scale=scale,
        )

    def sample(
        self,
        n: int,
        nfe: int | None = None,
        *,
        solver: str | None = None,
        cond: Tensor | int | None = None,
        seed: int = 0,
        noise_scale: float | None = None,
    ) -> Tensor:
        """``n`` samples (CPU, float32) with ``nfe`` network evaluations (default: the run's
        ``eval.nfe``) of ``solver`` (default ``eval.solver``); ``cond``: one label per sample
        or one label for all (class-conditional runs); ``seed``: the noise; ``noise_scale``:
        its scale (default: the run's ``eval.noise_scale``)."""
        ec = self.config.eval
        nfe = ec.nfe if nfe is None else nfe  # 0 is refused by the evaluator, not replaced
        ev = self.evaluator(noise_scale=noise_scale)
        return ev.sample(n, nfe, solver=solver or ec.solver, cond=cond, seed=seed)

    def evaluate(
        self,
        nfe: int | None = None,
        *,
        solver: str | None = None,
        n_samples: int | None = None,
        seed: int | None = None,
        plot: str | Path | None = None,
        noise_scale: float | None = None,
    ) -> dict[str, float]:
        """Metrics against the held-out data (defaults from the run's ``eval`` section,
        ``noise_scale`` included)."""
        ec = self.config.eval
        nfe = ec.nfe if nfe is None else nfe  # 0 is refused by the evaluator, not replaced
        return self.evaluator(with_reference=True, noise_scale=noise_scale).evaluate(
            nfe,
            solver=solver or ec.solver,
            n_samples=n_samples or ec.n_samples,
            seed=ec.seed if seed is None else seed,
            plot=plot,
            title=f"{self.path.name} nfe={nfe}",
            episodes=ec.episodes,
        )


def load(
    path: str | Path,
    *,
    model: nn.Module | None = None,
    last: bool = False,
    device: str | torch.device = "cpu",
) -> Run:
    """The :class:`Run` in run folder ``path``, EMA roles included: its best checkpoint (the
    one scored best on held-out demonstrations, kept by post-training runs) or, with
    ``last`` or without one, its newest.

    A run trained with the user's own network needs that network's class again: pass a fresh
    instance as ``model`` (its weights are replaced by the run's).
    """
    from flowpost.config import load_yaml
    from flowpost.data import load_data
    from flowpost.data.base import DataSpec
    from flowpost.methods.base import build_method
    from flowpost.train.checkpoint import (
        CheckpointError,
        load_checkpoint,
        split_prefixed,
    )
    from flowpost.train.config import build_run_config
    from flowpost.train.selection import BEST_DIR, chosen_checkpoint

    root = Path(path)
    found = chosen_checkpoint(root, last=last)
    config = build_run_config(load_yaml(root / "config.yaml"))
    tensors, state = load_checkpoint(found)
    info = dict(state.get("run") or {})
    if "data" not in info or "cond_dim" not in info["data"]:
        # a run folder written before checkpoints recorded the data spec (or its cond_dim)
        split = load_data(config.data)
        shape, classes = split.spec.shape, split.spec.num_classes
        info["data"] = {"shape": list(shape), "num_classes": classes, "name": split.name}
        if split.spec.cond_dim is not None:
            info["data"]["cond_dim"] = split.spec.cond_dim
    user = (info.get("model") or {}).get("user")
    if user is not None and model is None:
        cls = user.rsplit(".", 1)[-1]
        raise ValueError(
            f"{root} was trained with your own network ({user}); pass a fresh one: "
            f"flowpost.load({str(root)!r}, model={cls}(...))"
        )
    spec = DataSpec(
        tuple(info["data"]["shape"]), info["data"].get("num_classes"), info["data"].get("cond_dim")
    )
    if config.diffusers is not None:  # a diffusers transformer with LoRA ([diffusers] extra)
        from flowpost.adapters.diffusers.build import build_method as build_adapted
        from flowpost.methods.base import get_method_class

        cls = get_method_class(config.method.name)
        method = build_adapted(cls, config.method, spec, config.diffusers, config.init_from)
    else:
        method = build_method(config.method.name, config.method, spec, config.model, model=model)
    try:
        method.load_state_dict(split_prefixed(tensors, "model"))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        what = "the network you passed" if model is not None else "the config's network"
        raise CheckpointError(f"{found}: does not fit {what} ({first})") from None
    # what the method decided while training and the weights alone do not say (AF started
    # from a flow samples in the residual form G = z + g, which its config's "auto" reads as
    # the direct form at one step): without it a loaded run samples a different map
    method.load_extra_state(state.get("method", {}))
    roles: dict[str, nn.Module] = {}
    for role in method.ema_roles():
        part = split_prefixed(tensors, f"ema.{role}")
        if part:
            live = method.role(role)
            make = getattr(live, "make_ema", None)  # an adapted model averages its adapters only
            module = make() if callable(make) else copy.deepcopy(live)
            module.load_state_dict(part)
            roles[role] = module.requires_grad_(False).eval()
    method.to(device).eval()
    for module in roles.values():
        module.to(device)
    summary_file = root / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    run = Run(root, config, method, roles=roles, info=info, summary=summary)
    run.checkpoint, run.best = found, found.parent == root / BEST_DIR
    return run


__all__ = ["Run", "load"]
