"""GFT vs SFT under distribution shifts (docs/methods/gradual.md reports what this writes).

Each *cell* is one fine-tuning run ``(task, variant, seed)`` from the same pretrained flow,
with the recipe of that task and method as shipped (``recipes/<task>/{sft,gft}.yaml``, the
same budget: iterations, batch, learning rate, EMA); only ``train.seed`` changes. A cell
records, at every iteration, the loss the optimiser saw, the plain data-fit term (for SFT the
same number; for GFT ``||b - b_data||^2`` without the anchor) and the gradient norm before
clipping; then evaluates the EMA model at NFE 1, 2, 4, 8, 16, 32, 100 (Euler /
Euler-Maruyama) on held-out target data: W2 (or Frechet for digits), path length, per-mode
or per-class weights.

Cells are written one by one into ``benchmarks/results/gradual.json`` (resumable: a cell
already there is skipped; the pretrained flows are kept under ``--work``).

    python benchmarks/bench_gradual.py run --tasks rotated unbalanced --seeds 0 1 2
    python benchmarks/bench_gradual.py report     # tables (markdown) + docs/figures/gradual_*.png
    python benchmarks/bench_gradual.py floor      # W2 of a perfect sampler (two target sets)
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
FIGURES = ROOT / "docs" / "figures"
NFES = (1, 2, 4, 8, 16, 32, 100)

# task -> (pretrain recipe, folder of the sft/gft recipes)
TASKS: dict[str, tuple[str, str]] = {
    "rotated": ("recipes/8gaussians/pretrain.yaml", "recipes/8gaussians_rotated"),
    "unbalanced": ("recipes/8gaussians/pretrain.yaml", "recipes/8gaussians_unbalanced"),
    "digits_thick": ("recipes/digits/pretrain.yaml", "recipes/digits_thick"),
}
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
}


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _save(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(path)


def _config(recipe: str, overrides: list[str]):  # type: ignore[no-untyped-def]
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


def _stats(values: list[float]) -> dict[str, float]:
    half = values[len(values) // 2 :]
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values),
        "std_second_half": statistics.pstdev(half),
        "mean_second_half": statistics.fmean(half),
    }


def run_cell(task: str, variant: str, seed: int, pre: Path, work: Path, steps: int | None):  # type: ignore[no-untyped-def]
    from flowpost.train import Trainer

    folder = TASKS[task][1]
    recipe, extra = VARIANTS[variant]
    overrides = [f"init_from={pre}", f"train.seed={seed}", "eval.plots=false", *extra]
    if steps:  # a shorter budget for both methods alike (anneal scaled the same way)
        overrides += [f"train.steps={steps}"]
        if recipe == "gft.yaml":
            overrides += [f"method.temperature_steps={int(0.8 * steps)}"]
    cfg = _config(f"{folder}/{recipe}", overrides)
    out = work / f"{task}_{variant}_s{seed}"
    trainer = Trainer.from_config(cfg, out, progress=False)
    losses, fits, grads, temps = [], [], [], []
    started = time.perf_counter()
    trainer.method.train()
    for step in range(cfg.train.steps):
        batch = trainer._next_batch()
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
    evals = {str(k): trainer.evaluate(nfe=k) for k in NFES}
    every = max(1, len(losses) // 100)
    return {
        "task": task,
        "variant": variant,
        "seed": seed,
        "steps": cfg.train.steps,
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


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = _load(Path(args.results))
    for task in args.tasks:
        pre = pretrained(TASKS[task][0], work, args.pretrain_steps.get(task))
        for seed in args.seeds:
            for variant in args.variants:
                key = f"{task}/{variant}/s{seed}"
                if key in results and not args.redo:
                    continue
                t0 = time.perf_counter()
                results[key] = run_cell(task, variant, seed, pre, work, args.steps)
                results[key]["pretrained"] = str(pre.name)
                _save(results, Path(args.results))
                ev = results[key]["eval"]
                metric = "w2" if "w2" in ev["100"] else "frechet"
                print(
                    f"{key}: {metric}@100 {ev['100'][metric]:.4f} @4 {ev['4'][metric]:.4f} "
                    f"path {ev['100']['path_length']:.4f} ({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )


# --------------------------------------------------------------------------- report


def _metric(ev: dict[str, Any]) -> str:
    return "w2" if "w2" in ev else "frechet"


def _cells(results: dict[str, Any], task: str, variant: str) -> list[dict[str, Any]]:
    return [v for k, v in sorted(results.items()) if k.startswith(f"{task}/{variant}/")]


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    tasks = sorted({v["task"] for v in results.values()}, key=list(TASKS).index)
    for task in tasks:
        variants = [v for v in VARIANTS if _cells(results, task, v)]
        first = _cells(results, task, variants[0])[0]
        metric = _metric(first["eval"]["100"])
        seeds = {v: len(_cells(results, task, v)) for v in variants}
        lines += [f"### {task}: {metric} against NFE (mean ± std over seeds)", ""]
        lines += ["| variant | seeds | " + " | ".join(f"NFE {k}" for k in NFES) + " |"]
        lines += ["|---|---|" + "---|" * len(NFES)]
        for v in variants:
            cells = _cells(results, task, v)
            row = [_ms([c["eval"][str(k)][metric] for c in cells]) for k in NFES]
            lines += [f"| {v} | {seeds[v]} | " + " | ".join(row) + " |"]
        lines += ["", f"### {task}: path length, diversity, stability", ""]
        cov = "mode_coverage" if "mode_coverage" in first["eval"]["100"] else "classes_covered"
        tv = "mode_tv" if cov == "mode_coverage" else "class_tv"
        lines += [
            f"| variant | path length @100 | path length @4 | {cov} @100 (min) | {tv} @100 | "
            "loss std | fit std (2nd half) | grad-norm std | grad-norm std (2nd half) |"
        ]
        lines += ["|---|---|---|---|---|---|---|---|---|"]
        for v in variants:
            cells = _cells(results, task, v)
            ev = [c["eval"] for c in cells]
            lines += [
                f"| {v} | {_ms([e['100']['path_length'] for e in ev])} | "
                f"{_ms([e['4']['path_length'] for e in ev])} | "
                f"{min(e['100'].get(cov, math.nan) for e in ev):.3f} | "
                f"{_ms([e['100'].get(tv, math.nan) for e in ev])} | "
                f"{_ms([c['loss']['std'] for c in cells])} | "
                f"{_ms([c['fit']['std_second_half'] for c in cells])} | "
                f"{_ms([c['grad_norm']['std'] for c in cells])} | "
                f"{_ms([c['grad_norm']['std_second_half'] for c in cells])} |"
            ]
        lines += [""]
    return "\n".join(lines)


def plots(results: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    written = []
    tasks = sorted({v["task"] for v in results.values()}, key=list(TASKS).index)
    for task in tasks:
        variants = [v for v in VARIANTS if _cells(results, task, v)]
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
        for v in variants:
            cells = _cells(results, task, v)
            metric = _metric(cells[0]["eval"]["100"])
            ys = [[c["eval"][str(k)][metric] for c in cells] for k in NFES]
            mean = [statistics.fmean(y) for y in ys]
            style = "-" if v in ("sft", "gft") else ":"
            axes[0].plot(NFES, mean, style, marker="o", label=v)
            every = cells[0]["trace"]["every"]
            for i, c in enumerate(cells):
                xs = [every * j for j in range(len(c["trace"]["fit"]))]
                kw = {"label": v} if i == 0 else {}
                color = axes[0].lines[-1].get_color()
                axes[1].plot(xs, c["trace"]["fit"], style, color=color, alpha=0.7, **kw)
                axes[2].plot(xs, c["trace"]["grad_norm"], style, color=color, alpha=0.7, **kw)
            axes[0].set_ylabel(metric)
        axes[0].set(xscale="log", xlabel="NFE", title=f"{task}: quality vs NFE")
        axes[1].set(yscale="log", xlabel="iteration", ylabel="data-fit term", title="fit to target")
        axes[2].set(yscale="log", xlabel="iteration", ylabel="grad norm", title="gradient norm")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = FIGURES / f"gradual_{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def cmd_report(args: argparse.Namespace) -> None:
    results = _load(Path(args.results))
    print(report(results))
    for p in plots(results):
        print(f"wrote {p.relative_to(ROOT)}")


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
    r.add_argument("--tasks", nargs="+", default=["rotated"], choices=list(TASKS))
    r.add_argument("--variants", nargs="+", default=["sft", "gft"], choices=list(VARIANTS))
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--steps", type=int, default=None, help="override train.steps (both methods)")
    r.add_argument(
        "--pretrain-steps", type=json.loads, default={}, help="e.g. '{\"digits_thick\": 2000}'"
    )
    r.add_argument("--work", default="/tmp/gft/bench", help="run folders and pretrained flows")
    r.add_argument("--redo", action="store_true", help="recompute cells already in the JSON")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("report", help="markdown tables and figures from the JSON")
    s.set_defaults(func=cmd_report)
    f = sub.add_parser("floor", help="W2 between two target sample sets (the metric's floor)")
    f.set_defaults(func=cmd_floor)
    for sp in (r, s):
        sp.add_argument("--results", default=str(RESULTS), help="the JSON of the cells")
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
