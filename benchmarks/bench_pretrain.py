"""Pretraining quality from the shipped recipes, and SFT toward a shifted target.

Runs every pretraining recipe as it is (``recipes/<task>/pretrain.yaml``), evaluates the EMA
model at 100 Euler steps against held-out data, then runs the SFT recipe between 2-D toys
(8 Gaussians -> the same rotated by 22.5 degrees, 256 demonstrations) and reports W2 before
and after at several NFEs. Prints tables and writes ``benchmarks/results/pretrain.json``.

    python benchmarks/bench_pretrain.py [--tasks 8gaussians moons ...] [--skip-digits]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from flowpost.config import load_yaml
from flowpost.train import run_training

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "pretrain.json"
TOYS = ["8gaussians", "moons", "checkerboard", "spirals", "rings", "mixture1d"]


def run_recipe(task: str, name: str, runs: Path, overrides: dict | None = None) -> dict:
    recipe = load_yaml(ROOT / "recipes" / task / f"{name}.yaml")
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            recipe.setdefault(section, {}).update(values)
        else:
            recipe[section] = values
    start = time.perf_counter()
    summary = run_training(recipe, runs / f"{task}-{name}", progress=False)
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="*", default=TOYS)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, dict] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for task in args.tasks:
        results[f"pretrain/{task}"] = run_recipe(task, "pretrain", args.runs)
        r = results[f"pretrain/{task}"]
        print(task, {k: r.get(k) for k in ("sliced_w2", "w2", "wall_s")}, flush=True)
    if "8gaussians" in args.tasks:
        pre = str(args.runs / "8gaussians-pretrain")
        before = run_recipe(
            "8gaussians_rotated",
            "sft",
            args.runs,
            {"init_from": pre, "train": {"steps": 0, "ema_decay": 0.0}},
        )
        after = run_recipe("8gaussians_rotated", "sft", args.runs, {"init_from": pre})
        results["sft/8gaussians_rotated/before"] = before
        results["sft/8gaussians_rotated/after"] = after
    if not args.skip_digits:
        results["pretrain/digits"] = run_recipe("digits", "pretrain", args.runs)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True))
    print(
        f"\n{'run':34s} {'sliced_w2':>10s} {'w2':>8s} {'mmd':>8s} {'frechet':>8s} "
        f"{'conf>0.9':>8s} {'wall s':>7s}"
    )
    for key, r in results.items():
        print(
            f"{key:34s} {r.get('sliced_w2', float('nan')):10.4f} {r.get('w2', float('nan')):8.4f}"
            f" {r.get('mmd', float('nan')):8.4f} {r.get('frechet', float('nan')):8.3f}"
            f" {r.get('confident_fraction', float('nan')):8.3f} {r.get('wall_s', 0):7.1f}"
        )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
