"""The library entry point: objects in, a trained :class:`~flowpost.run.Run` out.

``flowpost.fit(method, data=..., model=..., init_from=..., reward=..., out=..., **sections)``
validates the sections into a :class:`~flowpost.train.config.RunConfig`, builds the method
around the user's objects and trains it with the :class:`~flowpost.train.trainer.Trainer`.
The YAML recipes and ``flowpost train`` drive the same config; a recipe is the declarative
form of a ``fit`` call whose objects are all named in it.

A tensor of samples is written into the run folder (``data.safetensors``, with its labels)
and recorded as a ``file`` dataset, so the run folder alone is enough to resume, evaluate and
fine-tune from; ``data.heldout_fraction`` of it (default 0.2) is held out for evaluation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from flowpost.config import ConfigError

if TYPE_CHECKING:
    from flowpost.data.base import ArrayData
    from flowpost.run import Run

FIT_SECTIONS = ("data", "model", "method", "train", "eval")
DATA_FILE = "data.safetensors"

DataLike = Any  # Tensor | np.ndarray | tuple[Tensor, Tensor] | ArrayData | str | Path | None


def fit(
    method: str,
    /,
    data: DataLike = None,
    *,
    model: nn.Module | Mapping[str, Any] | None = None,
    init_from: Run | str | Path | nn.Module | None = None,
    reward: Callable[..., Tensor] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    **sections: Mapping[str, Any],
) -> Run:
    """Train ``method`` (a name from ``flowpost methods``) and return the :class:`Run`.

    ``method`` is positional, so that ``method={...}`` is the method's config section.

    * ``data``: the target samples: a tensor ``(n, ...)`` (or a pair ``(x, labels)``), an
      :class:`~flowpost.data.ArrayData`, or the path of a ``.npy``/``.npz``/``.safetensors``
      file or an image folder; ``None``: ``init_from``'s data. A dict is the ``data`` section
      (``{"name": "moons"}``), with the samples under ``"x"`` (labels ``"cond"``) when fields
      such as ``heldout_fraction`` go with a tensor.
    * ``model``: your own velocity network, any ``nn.Module`` called as
      ``model(x, t, cond=None)`` (``t`` of shape ``(B,)``, output shaped like ``x``); ``None``
      builds the network of the ``model`` section (``init_from``'s when not given). A dict is
      the ``model`` section (``{"hidden": 128, "depth": 3}``).
    * ``init_from``: the pretrained flow to start from: a run folder, a :class:`Run`, or an
      ``nn.Module`` (your network with its current weights; a copy is trained). ``model``
      itself is trained in place.
    * ``reward``: for ``"reward"``, a callable ``R(x)`` or ``R(x, cond)`` -> ``(B,)``.
    * ``out``: the run folder (default ``runs/<method>``); one that already holds a run is
      refused unless ``overwrite`` (the old run is moved aside, and the new name printed).
    * ``progress``: show a progress bar.
    * ``sections``: ``method=``, ``train=``, ``eval=`` dicts of config fields (``flowpost
      options <method>`` lists them) over their defaults.

    A bad key or value raises a one-line :class:`~flowpost.config.ConfigError` naming it.

    Example:
        >>> import tempfile, torch, flowpost
        >>> from torch import nn
        >>> class Velocity(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 2))
        ...     def forward(self, x, t, cond=None):
        ...         return self.net(torch.cat([x, t[:, None]], 1))
        >>> target = torch.randn(512, 2) * 0.3 + 1.0
        >>> run = flowpost.fit("flow_matching", data=target, model=Velocity(),
        ...                    out=tempfile.mkdtemp(), train={"steps": 50},
        ...                    eval={"nfe": 4, "plots": False})
        >>> run.sample(100, nfe=4).shape, "w2" in run.evaluate(nfe=4)
        (torch.Size([100, 2]), True)
        >>> flowpost.fit("flow_matching", data=target, trian={"steps": 5})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        flowpost.config.ConfigError: unknown key 'trian' (fit takes the sections data, ...)
    """
    from flowpost.data import load_data
    from flowpost.data.registry import split_arrays
    from flowpost.methods.base import build_method
    from flowpost.run import Run
    from flowpost.train.build import seed_everything
    from flowpost.train.checkpoint import load_policy_state
    from flowpost.train.config import build_run_config
    from flowpost.train.trainer import Trainer

    sections = dict(sections)
    if isinstance(model, Mapping):  # the model section, not a network
        sections["model"], model = model, None
    elif model is not None and not isinstance(model, nn.Module):
        raise ConfigError(f"model: expected an nn.Module or a dict of model fields, got {model!r}")
    if isinstance(data, Mapping):  # the data section, optionally with the samples as "x"
        fields = dict(data)
        x, cond = fields.pop("x", None), fields.pop("cond", None)
        if cond is not None and x is None:
            raise ConfigError("data: labels ('cond') given without samples ('x')")
        sections["data"] = fields
        data = None if x is None else (x, cond)
    recipe = _sections(method, sections)
    out_dir = Path(out) if out is not None else Path("runs") / method
    init_path, init_module, init_run = _resolve_init(init_from)
    if model is not None and init_module is not None:
        raise ConfigError("give the network once: as model= or as init_from=, not both")
    if init_run is not None:
        recipe.setdefault("model", _section_of(init_run, "model"))
    arrays: ArrayData | None = None
    if data is None:
        if "data" not in recipe and init_run is not None:
            recipe["data"] = _section_of(init_run, "data")
        if "data" not in recipe:
            raise ConfigError("no data: pass data= (a tensor, an ArrayData or a path)")
    else:
        arrays, recipe["data"] = _data_section(data, recipe.get("data") or {}, out_dir)
    if init_path is not None:
        recipe["init_from"] = str(init_path)
    config = build_run_config(recipe)

    network = model
    if init_module is not None:  # a starting point: trained as a copy, the module is kept
        network = copy.deepcopy(init_module).train().requires_grad_(True)
    if network is None and init_run is not None and init_run.user_model is not None:
        if not isinstance(init_run, Run):
            raise ConfigError(
                f"init_from: {init_run.path} was trained with your own network "
                f"({init_run.user_model}); pass a fresh one as model= (the run's weights are "
                "loaded into it)"
            )
        network = copy.deepcopy(init_run.model).train().requires_grad_(True)
    seed_everything(config.train.seed)
    split = load_data(config.data) if arrays is None else split_arrays(arrays, config.data)
    built = build_method(
        config.method.name, config.method, split.spec, config.model, model=network, reward=reward
    )
    if init_path is not None:
        built.load_pretrained(load_policy_state(init_path))
    meta: dict[str, Any] = {}
    if network is not None:
        meta["model"] = {"user": _qualname(type(network))}
    if reward is not None:
        meta["reward"] = _qualname(reward)
    files = {} if arrays is None else {DATA_FILE: _arrays_bytes(arrays)}
    trainer = Trainer(built, split, config, out_dir, progress=progress, meta=meta, files=files)
    summary = trainer.fit(overwrite=overwrite)
    run = Run(
        out_dir,
        trainer.config,
        trainer.method,
        roles=trainer.ema_roles(),
        info=trainer.run_info(),
        summary=summary,
        data=split,
    )
    # the weights the trainer ends with: the best on held-out demonstrations, when it kept one
    kept = summary.get("checkpoints") or {}
    run.best = summary.get("model") == "best" and kept.get("best") is not None
    chosen = kept.get("best") if run.best else kept.get("last")
    run.checkpoint = None if chosen is None else out_dir / chosen
    return run


def _sections(method: str, sections: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe dict of ``fit``'s keyword sections, checked to be known mappings."""
    if not isinstance(method, str):
        raise ConfigError(
            f"method: expected a method name (see `flowpost methods`), got {method!r}"
        )
    recipe: dict[str, Any] = {}
    for key, value in sections.items():
        if key not in FIT_SECTIONS:
            raise ConfigError(
                f"unknown key '{key}' (fit takes the sections {', '.join(FIT_SECTIONS)})"
            )
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a dict of fields, got {value!r}")
        recipe[key] = dict(value)
    given = recipe.get("method", {}).get("name", method)
    if given != method:
        raise ConfigError(f"method.name: {given!r} contradicts fit's method {method!r}")
    recipe["method"] = {**recipe.get("method", {}), "name": method}
    return recipe


class _InitRun:
    """What fit needs of a pretrained run folder: its sections and its network's origin."""

    def __init__(self, path: Path, raw: dict[str, Any], user_model: str | None) -> None:
        self.path, self.raw, self.user_model = path, raw, user_model


def _resolve_init(
    init_from: Any,
) -> tuple[Path | None, nn.Module | None, Any]:
    """(folder to load weights from, module to start from, the run behind the folder)."""
    from flowpost.run import Run

    if init_from is None:
        return None, None, None
    if isinstance(init_from, nn.Module):
        return None, init_from, None
    if isinstance(init_from, Run):
        return init_from.path, None, init_from
    if isinstance(init_from, (str, Path)):
        path = Path(init_from)
        if not (path / "config.yaml").is_file():
            raise FileNotFoundError(f"init_from: {path} is not a run folder (no config.yaml)")
        import json

        from flowpost.config import load_yaml
        from flowpost.train.checkpoint import STATE, latest_checkpoint

        found = latest_checkpoint(path / "checkpoints")
        user = None
        if found is not None:  # (its weights are loaded, and verified, by load_policy_state)
            state = json.loads((found / STATE).read_text())
            user = ((state.get("run") or {}).get("model") or {}).get("user")
        return path, None, _InitRun(path, load_yaml(path / "config.yaml"), user)
    raise ConfigError(
        f"init_from: expected a run folder, a Run or an nn.Module, got {type(init_from).__name__}"
    )


def _section_of(run: Any, key: str) -> dict[str, Any]:
    """Section ``key`` of a pretrained run (a :class:`Run` or a folder's raw config)."""
    from flowpost.config import to_dict

    if isinstance(run, _InitRun):
        return dict(run.raw.get(key) or {})
    section: dict[str, Any] = to_dict(getattr(run.config, key))
    return section


def _data_section(
    data: Any, section: Mapping[str, Any], out_dir: Path
) -> tuple[ArrayData | None, dict[str, Any]]:
    """The samples given in memory (None for a path) and the ``data`` section recording them:
    a path as it is; samples as the file ``<out>/data.safetensors`` the trainer writes."""
    from flowpost.data.base import ArrayData

    if isinstance(data, (str, Path)):
        path = Path(data)
        if not path.exists():
            raise FileNotFoundError(f"data: {path} does not exist")
        kind = "folder" if path.is_dir() else "file"
        return None, _merge_data(section, {"name": kind, "path": str(path.resolve())})
    if isinstance(data, tuple) and len(data) == 2:
        x, cond = data
    elif isinstance(data, ArrayData):
        x, cond = data.x, data.cond
    else:
        x, cond = data, None
    fields = {"name": "file", "path": str((out_dir / DATA_FILE).resolve())}
    return _as_arrays(x, cond), _merge_data(section, fields)


def _merge_data(section: Mapping[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    for key in ("name", "path"):
        if key in section:
            raise ConfigError(f"data.{key}: set by fit's data argument; leave it out")
    return {**section, **fields}


def _as_arrays(x: Any, cond: Any) -> ArrayData:
    from flowpost.data.base import ArrayData

    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ConfigError(
            f"data: expected a tensor, (tensor, labels), an ArrayData or a path, got "
            f"{type(x).__name__}"
        )
    if cond is not None and not isinstance(cond, Tensor):
        cond = torch.as_tensor(np.asarray(cond))
    return ArrayData(x.detach().cpu(), None if cond is None else cond.detach().cpu(), name="data")


def _arrays_bytes(data: ArrayData) -> bytes:
    """``data`` as a ``.safetensors`` file (samples ``x``, labels ``labels``)."""
    from safetensors.torch import save

    tensors = {"x": data.x.contiguous()}
    if data.cond is not None:
        tensors["labels"] = data.cond.contiguous()
    return save(tensors)


def _qualname(obj: Any) -> str:
    """``module.QualName`` of a class or function (recorded in the run's checkpoints)."""
    name = getattr(obj, "__qualname__", type(obj).__qualname__)
    return f"{getattr(obj, '__module__', None) or '?'}.{name}"


__all__ = ["fit"]
