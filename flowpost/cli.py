"""The ``flowpost`` command (also ``python -m flowpost``).

Verbs: ``train``, ``sample``, ``eval``, ``export``, ``demo``, ``methods``, ``options``. Every
user error (bad recipe key, missing file, damaged checkpoint, run folder in use, unwritable
folder, non-finite loss) ends in a one-line message and exit code 2 (1 for a run that diverged,
128 + the signal for a run stopped by SIGTERM/SIGINT), never a traceback. Under several
processes (torchrun, accelerate launch) only the main process prints.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    help="flowpost: post-training of flow-matching generative models.",
)


def _is_main() -> bool:
    """False on the non-main processes of a torchrun / accelerate launch job."""
    return os.environ.get("RANK", "0") == "0"


def _fail(message: str | BaseException, code: int = 2) -> None:
    if isinstance(message, OSError) and not isinstance(message, FileNotFoundError):
        from flowpost.train.runfolder import writable_error

        message = writable_error(message, message.filename or "?")
    if _is_main() and not getattr(message, "quiet", False):
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _user_errors():  # type: ignore[no-untyped-def]
    from flowpost.config import ConfigError
    from flowpost.train.checkpoint import CheckpointError
    from flowpost.train.runfolder import RunFolderError

    return (ConfigError, CheckpointError, RunFolderError, OSError, ValueError)


@app.command()
def train(
    recipe: Path = typer.Argument(..., help="YAML recipe (see recipes/)"),
    set_: list[str] = typer.Option([], "--set", help="override a field: --set train.steps=500"),
    out: Path | None = typer.Option(
        None, "--out", help="run folder (default runs/<task>-<recipe>)"
    ),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="move an existing run in --out aside, then start afresh"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
) -> None:
    """Train (pretrain or post-train) from a recipe; writes a run folder."""
    from flowpost.train.signals import StopRequest

    with StopRequest():  # from the start: a SIGTERM while the run is being built is not lost
        _train(recipe, set_, out, resume, overwrite, progress)


def _train(
    recipe: Path, set_: list[str], out: Path | None, resume: bool, overwrite: bool, progress: bool
) -> None:
    from flowpost.config import apply_overrides, load_yaml
    from flowpost.train import run_training
    from flowpost.train.config import build_run_config
    from flowpost.train.signals import TrainingInterrupted
    from flowpost.train.updater import DivergenceError

    out_dir = out or Path("runs") / f"{recipe.parent.name}-{recipe.stem}"
    try:
        cfg = build_run_config(apply_overrides(load_yaml(recipe), set_))
        summary = run_training(cfg, out_dir, resume=resume, overwrite=overwrite, progress=progress)
    except TrainingInterrupted as err:
        sets = "".join(f" --set {s}" for s in set_)
        if _is_main():
            typer.echo(
                f"{err}; resume with: flowpost train {recipe} --out {out_dir} --resume{sets}",
                err=True,
            )
        raise typer.Exit(err.exit_code) from None
    except DivergenceError as err:
        _fail(str(err), code=1)
    except _user_errors() as err:
        _fail(err)
    if _is_main():
        typer.echo(json.dumps(summary, indent=1, sort_keys=True))
        typer.echo(f"run folder: {out_dir}")


def _load(run: Path, last: bool):  # type: ignore[no-untyped-def]
    """The run in folder ``run`` (:func:`flowpost.load`), saying when its best checkpoint
    (scored on held-out demonstrations) is used rather than the last."""
    from flowpost.run import load

    loaded = load(run, last=last)
    if loaded.best and loaded.checkpoint is not None:
        typer.echo(
            f"using the best checkpoint ({loaded.checkpoint.relative_to(run)}, scored on "
            "held-out demonstrations; --last for the last one)",
            err=True,
        )
    return loaded


@app.command()
def sample(
    run: Path = typer.Argument(..., help="a run folder"),
    nfe: int = typer.Option(100, help="network evaluations"),
    n: int = typer.Option(64, "--n", help="how many samples"),
    solver: str = typer.Option("euler", "--solver", help="euler|midpoint|heun|rk4|dopri5"),
    seed: int = typer.Option(0, help="noise seed"),
    out: Path = typer.Option(Path("samples.npy"), "--out", help=".npy array or .png plot/grid"),
    last: bool = typer.Option(False, "--last", help="use the last checkpoint, not the best"),
    noise_scale: float | None = typer.Option(
        None, "--noise-scale", help="scale of the starting noise (default: the run's)"
    ),
) -> None:
    """Draw samples from a run's EMA model (its best checkpoint if it kept one) into a .npy
    file or a PNG; needs neither a trainer nor the training data."""
    import numpy as np

    from flowpost.eval import plot_samples

    if out.suffix not in (".npy", ".png"):
        _fail(f"--out must end in .npy or .png, got {out}")
    try:
        loaded = _load(run, last)
        samples = loaded.sample(n, nfe, solver=solver, seed=seed, noise_scale=noise_scale)
    except _user_errors() as err:
        _fail(err)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, samples.numpy())
    else:
        plot_samples(samples, out, spec=loaded.spec, title=f"{run.name} nfe={nfe}")
    typer.echo(f"wrote {n} samples to {out}")


@app.command("eval")
def eval_(
    run: Path = typer.Argument(..., help="a run folder"),
    nfe: int | None = typer.Option(None, help="network evaluations (default: the run's)"),
    solver: str | None = typer.Option(None, "--solver", help="ODE solver (default: the run's)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    last: bool = typer.Option(False, "--last", help="use the last checkpoint, not the best"),
    noise_scale: float | None = typer.Option(
        None, "--noise-scale", help="scale of the starting noise (default: the run's)"
    ),
) -> None:
    """Metrics of a run's EMA model (its best checkpoint if it kept one) against its held-out
    data."""
    try:
        metrics = _load(run, last).evaluate(nfe=nfe, solver=solver, noise_scale=noise_scale)
    except _user_errors() as err:
        _fail(err)
    if as_json:
        typer.echo(json.dumps(metrics, indent=1, sort_keys=True))
    else:
        for key, value in sorted(metrics.items()):
            typer.echo(f"{key:>24s}  {value:.5g}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="a run folder"),
    out: Path = typer.Option(..., "--out", help="folder to write the exported model into"),
    last: bool = typer.Option(False, "--last", help="export the last checkpoint, not the best"),
) -> None:
    """Export a run's EMA model alone: diffusers LoRA weights for adapter runs, else
    model.safetensors + config.json (no optimiser or RNG state)."""
    from flowpost.export import export_run

    try:
        files = export_run(run, out, last=last)
    except _user_errors() as err:
        _fail(str(err))
    for f in files:
        typer.echo(f"wrote {f}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="where the demo writes its runs"),
    quick: bool = typer.Option(False, "--quick", help="a much shorter run (for smoke tests)"),
) -> None:
    """The main job on embedded data: pretrain a 2-D flow, fine-tune it toward a new target
    from a few demonstrations, evaluate and plot before/after."""
    from flowpost.demo import run_demo

    try:
        report = run_demo(out, quick=quick)
    except _user_errors() as err:
        _fail(err)
    typer.echo(f"report: {report}")


@app.command()
def methods() -> None:
    """List the available methods."""
    from flowpost.methods.base import method_registry

    for name, cls in sorted(method_registry().items()):
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        typer.echo(f"{name:16s} {doc[0] if doc else ''}")


@app.command()
def options(method: str = typer.Argument("flow_matching", help="method name")) -> None:
    """Every recipe field with its default and help text."""
    from flowpost.config import describe
    from flowpost.data import DataConfig
    from flowpost.methods.base import get_method_class
    from flowpost.nets.config import NetConfig
    from flowpost.train.config import EvalConfig, TrainConfig

    try:
        method_cls = get_method_class(method)
    except ValueError as err:
        _fail(str(err))
    sections = [
        ("data", DataConfig),
        ("model", NetConfig),
        ("method", method_cls.config_class),
        ("train", TrainConfig),
        ("eval", EvalConfig),
    ]
    for section, cls in sections:
        typer.echo(f"[{section}]")
        for key, help_text, default in describe(cls):
            typer.echo(f"  {section}.{key} = {default!r}    {help_text}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
