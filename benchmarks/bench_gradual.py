"""GFT vs SFT under distribution shifts (docs/methods/gradual.md reports what this writes).

Each *cell* is one fine-tuning run ``(task, variant, seed)`` from the same pretrained flow,
with the recipe of that task and method as shipped (``recipes/<task>/{sft,gft}.yaml``, the
same budget: iterations, batch, learning rate, EMA); only ``train.seed`` changes. A cell
records, at every iteration, the loss the optimiser saw, the plain data-fit term (for SFT the
same number; for GFT ``||b - b_data||^2`` without the anchor) and the gradient norm before
clipping; then evaluates the EMA model at NFE 1, 2, 4, 8, 16, 32, 100 (Euler /
Euler-Maruyama) on held-out target data: W2 (or Frechet for digits), path length, per-mode
weights and spreads (toys) or per-class proportions (digits).

Cells are written one by one into the results JSON (resumable: a cell already there is never
rerun; the pretrained flows are kept under ``--work``). Two sizes:

* full (default): the shipped recipes' budgets, ``benchmarks/results/gradual.json``;
* ``--quick``: 300 fine-tuning iterations from a 1000-iteration pretrained flow, the two toys,
  ``benchmarks/results/gradual_quick.json`` (sized for about 20 minutes on one free core;
  not yet timed).

    python benchmarks/bench_gradual.py run --tasks rotated unbalanced --seeds 0 1 2
    python benchmarks/bench_gradual.py run --quick
    python benchmarks/bench_gradual.py backfill   # per-mode statistics of older cells
    python benchmarks/bench_gradual.py floor      # W2 of a perfect sampler (two target sets)
    python benchmarks/report_gradual.py           # tables into docs/methods/gradual.md, figures
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gradual.json"
QUICK_RESULTS = ROOT / "benchmarks" / "results" / "gradual_quick.json"
NFES = (1, 2, 4, 8, 16, 32, 100)
PER_MODE_NFES = (1, 4, 100)  # per-mode weights and spreads are stored at these
# --quick: fine-tuning and pretraining iterations (both methods alike), the toys only
QUICK_STEPS, QUICK_PRETRAIN = 300, 1000

# task -> (pretrain recipe, folder of the sft/gft recipes)
TASKS: dict[str, tuple[str, str]] = {
    "rotated": ("recipes/8gaussians/pretrain.yaml", "recipes/8gaussians_rotated"),
    "unbalanced": ("recipes/8gaussians/pretrain.yaml", "recipes/8gaussians_unbalanced"),
    "digits_thick": ("recipes/digits/pretrain.yaml", "recipes/digits_thick"),
}
TOYS = ("rotated", "unbalanced")
# variant -> (recipe file, overrides): the two methods as shipped, and ablations that say
# where a difference comes from (coupling, noise, objective, schedule).
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "sft": ("sft.yaml", []),
    "gft": ("gft.yaml", []),
    "sft_ot": ("sft.yaml", ["method.coupling=ot"]),
    "gft_independent": ("gft.yaml", ["method.coupling=independent"]),
    "gft_sigma0": ("gft.yaml", ["method.sigma=0.0"]),
    "gft_marginal": ("gft.yaml", ["method.objective=marginal"]),
    "gft_adaptive": ("gft.yaml", ["method.temperature_schedule=adaptive"]),
    "pretrained": ("sft.yaml", []),  # no fine-tuning: the start, scored on the target
    # labelled data: OT across the whole batch (noise no longer independent of the label)
    "gft_global_ot": ("gft.yaml", ["method.coupling_within_class=false"]),
    "gft_sigma0_global_ot": (
        "gft.yaml",
        ["method.sigma=0.0", "method.coupling_within_class=false"],
    ),
}


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(path)


def _config(recipe: str | Path, overrides: list[str]):  # type: ignore[no-untyped-def]
    from flowpost.config import apply_overrides, load_yaml
    from flowpost.train.config import build_run_config

    return build_run_config(apply_overrides(load_yaml(ROOT / recipe), overrides))


def pretrained(recipe: str, work: Path, steps: int | None) -> Path:
    """Train (once) the pretrained flow of ``recipe`` under ``work``."""
    from flowpost.train import run_training

    name = Path(recipe).parent.name + (f"_{steps}" if steps else "")
    out = work / f"pre_{name}"
    if not (out / "summary.json").is_file():
        overrides = ["eval.plots=false"] + ([f"train.steps={steps}"] if steps else [])
        run_training(_config(recipe, overrides), out)
    return out


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    half = values[len(values) // 2 :]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "std_second_half": statistics.pstdev(half),
        "mean_second_half": statistics.fmean(half),
    }


def _finite(values: list[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]


def per_mode(trainer, cfg) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Per-mode weights and robust spreads of the evaluation's own samples (same noise seed
    and size as ``trainer.evaluate``) against the held-out target, at ``PER_MODE_NFES``."""
    from flowpost.data.toys import mode_info
    from flowpost.eval.metrics import mode_weights, robust_mode_spread

    ec = cfg.eval
    info = mode_info(cfg.data.name, cfg.data.transform)
    ev = trainer.evaluator()
    n = min(ec.n_samples, len(trainer.data.heldout))
    ref = trainer.data.heldout.x[:n]
    ref_w, _ = mode_weights(ref, info.centers, info.radius)
    out: dict[str, Any] = {
        "target_weight": info.weights.tolist(),
        "ref_weight": ref_w.tolist(),
        "ref_spread": _finite(robust_mode_spread(ref, info.centers, info.radius).tolist()),
    }
    for nfe in PER_MODE_NFES:
        x = ev.sample(n, nfe, solver=ec.solver, seed=ec.seed, check_finite=False)
        w, unassigned = mode_weights(x, info.centers, info.radius)
        spread = robust_mode_spread(x, info.centers, info.radius)
        out[str(nfe)] = {
            "weight": w.tolist(),
            "spread": _finite(spread.tolist()),
            "unassigned": unassigned,
        }
    return out


def per_class(trainer, cfg) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """The shipped classifier's class histogram of the held-out target set the evaluation
    compares with (the samples' histograms are the eval's ``class_k``)."""
    from flowpost.eval.features import base_dataset, classifier_confidence

    n = min(cfg.eval.n_samples, len(trainer.data.heldout))
    ref = trainer.data.heldout.x[:n]
    hist = classifier_confidence(ref, base_dataset(cfg.data.name)).histogram
    return {"ref_hist": hist.tolist(), "n": n}


def _cell_overrides(variant: str, seed: int, pre: Path, steps: int | None) -> list[str]:
    recipe, extra = VARIANTS[variant]
    overrides = [f"init_from={pre}", f"train.seed={seed}", "eval.plots=false", *extra]
    if steps:  # a shorter budget for both methods alike (anneal scaled the same way)
        overrides += [f"train.steps={steps}"]
        if recipe == "gft.yaml":
            overrides += [f"method.temperature_steps={int(0.8 * steps)}"]
    return overrides


def run_cell(  # type: ignore[no-untyped-def]
    task: str, variant: str, seed: int, pre: Path, work: Path, steps: int | None, extra: list[str]
):
    from flowpost.train import Trainer

    folder = TASKS[task][1]
    overrides = _cell_overrides(variant, seed, pre, steps) + extra
    cfg = _config(f"{folder}/{VARIANTS[variant][0]}", overrides)
    out = work / f"{task}_{variant}_s{seed}"
    trainer = Trainer.from_config(cfg, out, progress=False)
    losses, fits, grads, temps = [], [], [], []
    started = time.perf_counter()
    trainer.method.train()
    for step in range(0 if variant == "pretrained" else cfg.train.steps):
        batch, _ = trainer._next_batch()
        trainer.updater.global_step = step
        logs = trainer.method.train_step(batch, step, trainer.updater)
        trainer.step = step + 1
        loss = logs.get("policy/gft", logs.get("policy/fm"))
        assert loss is not None, logs
        losses.append(loss)
        fits.append(logs.get("fit", loss))
        grads.append(logs.get("policy/grad_norm", float("nan")))  # before clipping
        temps.append(logs.get("temperature", 0.0))
    train_s = time.perf_counter() - started
    # a run folder like `flowpost train` leaves, so `flowpost eval` works on the cell
    import yaml

    from flowpost.train.config import run_config_to_dict

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(run_config_to_dict(cfg), sort_keys=False))
    trainer.save()
    evals = {str(k): trainer.evaluate(nfe=k, check_finite=False) for k in NFES}
    every = max(1, len(losses) // 100)
    cell = {
        "task": task,
        "variant": variant,
        "seed": seed,
        "steps": cfg.train.steps,
        "extra_overrides": extra,
        "eval_samples": min(cfg.eval.n_samples, len(trainer.data.heldout)),
        "train_s": round(train_s, 1),
        "loss": _stats(losses),
        "fit": _stats(fits),
        "grad_norm": _stats(grads),
        "trace": {
            "every": every,
            "loss": [statistics.fmean(losses[i : i + every]) for i in range(0, len(losses), every)],
            "fit": [statistics.fmean(fits[i : i + every]) for i in range(0, len(fits), every)],
            "grad_norm": [
                statistics.fmean(grads[i : i + every]) for i in range(0, len(grads), every)
            ],
            "temperature": temps[::every],
        },
        "eval": evals,
    }
    if task in TOYS:
        cell["per_mode"] = per_mode(trainer, cfg)
    else:
        cell["per_class"] = per_class(trainer, cfg)
    return cell


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    if args.quick:
        args.steps = args.steps or QUICK_STEPS
        args.pretrain_steps = {t: QUICK_PRETRAIN for t in TASKS} | args.pretrain_steps
        args.tasks = args.tasks or list(TOYS)
        args.results = args.results or str(QUICK_RESULTS)
        args.work = args.work + "_quick"
    args.tasks = args.tasks or ["rotated"]
    results_path = Path(args.results or RESULTS)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = _load(results_path)
    for task in args.tasks:
        pre = pretrained(TASKS[task][0], work, args.pretrain_steps.get(task))
        for seed in args.seeds:
            for variant in args.variants:
                key = f"{task}/{variant}/s{seed}"
                if key in results and not args.redo:
                    continue
                t0 = time.perf_counter()
                results[key] = run_cell(task, variant, seed, pre, work, args.steps, args.set)
                results[key]["pretrained"] = str(pre.name)
                results[key]["size"] = "quick" if args.quick else "full"
                _save(results, results_path)
                ev = results[key]["eval"]
                metric = "w2" if "w2" in ev["100"] else "frechet"
                print(
                    f"{key}: {metric}@100 {ev['100'][metric]:.4f} @4 {ev['4'][metric]:.4f} "
                    f"path {ev['100']['path_length']:.4f} ({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )


def cmd_backfill(args: argparse.Namespace) -> None:
    """Add what later versions of a cell record (per-mode statistics, newer eval keys) to
    cells that lack it, from the cell's saved model; the stored numbers are kept, and the
    largest change of a re-evaluated stored metric is recorded beside them."""
    from flowpost.train import Trainer
    from flowpost.train.checkpoint import latest_checkpoint

    torch.set_num_threads(1)
    results_path = Path(args.results or RESULTS)
    results = _load(results_path)
    for key, cell in sorted(results.items()):
        toy = cell["task"] in TOYS
        if "per_mode" in cell or "per_class" in cell:
            continue
        out = Path(args.work) / key.replace("/", "_")
        # the cell's recipe and overrides as `run` built them (older run folders' config.yaml
        # may carry keys renamed since)
        pre = Path(args.work) / cell["pretrained"]
        overrides = _cell_overrides(cell["variant"], cell["seed"], pre, cell["steps"])
        overrides += cell.get("extra_overrides", [])
        cfg = _config(f"{TASKS[cell['task']][1]}/{VARIANTS[cell['variant']][0]}", overrides)
        trainer = Trainer.from_config(cfg, out, progress=False)
        if not toy:  # digits: the reference's class histogram needs no model
            cell["per_class"] = per_class(trainer, cfg)
            _save(results, results_path)
            continue
        ckpt = latest_checkpoint(out / "checkpoints")
        assert ckpt is not None, out
        trainer.restore(ckpt)
        added: set[str] = set()
        change = 0.0
        for k in NFES:
            fresh = trainer.evaluate(nfe=k, check_finite=False)
            stored = cell["eval"][str(k)]
            for name, value in fresh.items():
                if name in stored:
                    change = max(change, abs(value - stored[name]))
                else:
                    stored[name] = value
                    added.add(name)
        cell["per_mode"] = per_mode(trainer, cfg)
        cell["backfilled"] = {"added": sorted(added), "max_abs_change_of_stored": change}
        _save(results, results_path)
        print(
            f"{key}: added {len(added)} eval keys + per_mode; stored metrics moved by "
            f"at most {change:.2e}",
            flush=True,
        )


def cmd_floor(args: argparse.Namespace) -> None:
    """W2 between two independent target sets of the evaluation's size (2000): the value a
    perfect sampler would score, and its spread (mode counts fluctuate between sets)."""
    from flowpost.data.toys import sample_toy
    from flowpost.eval.metrics import w2

    out = {}
    for task, transform in (("rotated", "rotate:22.5"), ("unbalanced", "unbalanced")):
        vals = []
        for s in range(10):
            g = torch.Generator().manual_seed(100 + s)
            a = sample_toy("8gaussians", 2000, g, transform=transform)
            vals.append(w2(a, sample_toy("8gaussians", 2000, g, transform=transform)))
        out[task] = {"w2_mean": statistics.fmean(vals), "w2_std": statistics.stdev(vals)}
        print(f"{task}: W2 floor {out[task]['w2_mean']:.3f} ± {out[task]['w2_std']:.3f}")
    _save(out, RESULTS.with_name("gradual_floor.json"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and evaluate the missing cells")
    r.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS))
    r.add_argument("--variants", nargs="+", default=["sft", "gft"], choices=list(VARIANTS))
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--steps", type=int, default=None, help="override train.steps (both methods)")
    r.add_argument(
        "--pretrain-steps", type=json.loads, default={}, help="e.g. '{\"digits_thick\": 2000}'"
    )
    r.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_STEPS} iterations from a {QUICK_PRETRAIN}-iteration pretrained flow, the "
        "toys, into gradual_quick.json (sized for about 20 minutes on one free core)",
    )
    r.add_argument(
        "--set", nargs="*", default=[], help="overrides for every cell, e.g. eval.n_samples=500"
    )
    r.add_argument("--redo", action="store_true", help="recompute cells already in the JSON")
    r.set_defaults(func=cmd_run)
    b = sub.add_parser("backfill", help="per-mode statistics of cells that lack them")
    b.set_defaults(func=cmd_backfill)
    for sp in (r, b):
        sp.add_argument("--work", default="/tmp/gft/bench", help="run folders, pretrained flows")
        sp.add_argument("--results", default=None, help=f"the JSON of the cells ({RESULTS.name})")
    f = sub.add_parser("floor", help="W2 between two target sample sets (the metric's floor)")
    f.set_defaults(func=cmd_floor)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
