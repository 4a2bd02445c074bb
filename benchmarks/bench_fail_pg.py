"""FAIL-PG against the pretrained flow and SFT on pairs of the task suite (issue 9), through the
command line, as a user runs it.

Each cell is one (task, contender, seed), 256 demonstrations, deployed at ``--nfe`` steps
(default 2, the recipes' default):

================  ================================================================
contender         run
================  ================================================================
pretrained        the source flow (``recipes/vectors/pretrain.yaml``), not post-trained
sft               ``recipes/vectors/sft.yaml``
fail_pg           ``recipes/vectors/fail_pg.yaml`` as shipped
fail_pg_old       the same with the previous defaults (no convex anchor, no expert
                  samples in the groups, 8 MC draws) and the collapse guard off
================  ================================================================

One pretrained flow per source (``bench_suite.pretrain``, seed 0) serves every seed: the
seed drives the demonstrations (``Task.demos(256, seed)``) and training (``train.seed``),
which keeps the CPU cost to one pretraining per source. ``fail_pg`` cells record the model
the run keeps (``best``, what ``flowpost sample`` uses) and the last one (``--last``), the
held-out validation curve, the rollbacks and warnings, and the largest velocity-anchor term
and policy gradient norm logged (a run-away field shows there first). Cells are stored as
they finish and never rerun (resumable).

    python benchmarks/bench_fail_pg.py run --work /tmp/fail-pg --tasks moons-spirals \\
        8g-reweight user-npy --seeds 0 1 2
    python benchmarks/bench_fail_pg.py table

``floor``: a second fresh target set of the same size scored like a run (what a perfect
model gets).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_suite import claim, floors, flowpost, load, pretrain, sets, store  # noqa: E402
from suite_tasks import TASKS, score, write_array  # noqa: E402

RESULTS = HERE / "results" / "fail_pg_suite.json"
RECIPES = {
    "sft": "recipes/vectors/sft.yaml",
    "fail_pg": "recipes/vectors/fail_pg.yaml",
    "fail_pg_old": "recipes/vectors/fail_pg.yaml",
}
OLD = {  # the recipe's previous settings (docs/methods/fail.md, FAIL-PG), guard off
    "method__pg_estimator": "fpo",
    "method__pg_expert": "false",
    "method__ref_weight": 0.05,
    "method__pg_draws": 8,
    "train__guard": "false",
}
CONTENDERS = ("pretrained", "sft", "fail_pg", "fail_pg_old")
DEMOS = 256
SAMPLES = 2000


def _log_stats(run: Path) -> dict[str, Any]:
    """The validation curve and the largest anchor term / gradient norm of a run's log."""
    curve, reg, grad = [], 0.0, 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "validation/score" in rec:
            curve.append([rec["step"], rec["validation/score"], rec.get("validation/coverage")])
        reg = max(reg, float(rec.get("policy/reg", 0.0)))
        grad = max(grad, float(rec.get("policy/grad_norm", 0.0)))
    return {"validation": curve, "max_reg": reg, "max_grad_norm": grad}


def run_cell(task_name: str, contender: str, seed: int, nfe: int, work: Path) -> dict[str, Any]:
    task = TASKS[task_name]
    start = time.time()
    pre = pretrain(task, 0, work)
    record: dict[str, Any] = {"nfe": nfe, "demos": DEMOS, "seed": seed}
    out = pre
    if contender != "pretrained":
        out = work / "runs" / f"{task_name}-{contender}-s{seed}-k{nfe}"
        demos = write_array(
            work / "data" / f"{task_name}-d{DEMOS}-s{seed}.npy", task.demos(DEMOS, seed)
        )
        kv: dict[str, Any] = {
            "init_from": pre,
            "data__name": "file",
            "data__path": demos,
            "train__seed": seed,
            "eval__plots": "false",
            "eval__nfe": nfe,
        }
        if contender != "sft":
            kv["method__nfe"] = nfe
        if contender == "fail_pg_old":
            kv.update(OLD)
        args = ["train", RECIPES[contender], "--out", str(out), "--no-progress", *sets(**kv)]
        record["command"] = "flowpost " + " ".join(map(str, args))
        if not (out / "summary.json").is_file():
            shutil.rmtree(out, ignore_errors=True)
            log = flowpost(*map(str, args))
            record["warnings"] = [ln for ln in log.splitlines() if "warn" in ln.lower()][:10]
        summary = json.loads((out / "summary.json").read_text())
        record.update(
            best_step=summary.get("best_step"),
            rollbacks=summary.get("rollbacks"),
            checkpoints=summary.get("checkpoints"),
        )
        if contender.startswith("fail_pg"):
            record.update(_log_stats(out))
    record["metrics"] = {}
    kinds = ["kept", "last"] if contender.startswith("fail_pg") else ["kept"]
    for kind in kinds:
        path = out / f"pg_samples_k{nfe}_{kind}.npy"
        extra = ["--last"] if kind == "last" else []
        flowpost("sample", str(out), "--nfe", str(nfe), "--n", str(SAMPLES), "--seed", "7",
                 "--out", str(path), *extra)  # fmt: skip
        x = np.load(path)
        if not np.isfinite(x).all():
            record["metrics"][kind] = {"w2": float("inf"), "finite": False}
            continue
        record["metrics"][kind] = score(task, x)
    record["seconds"] = round(time.time() - start, 1)
    return record


def cmd_run(args: argparse.Namespace) -> None:
    results, work = Path(args.results), Path(args.work)
    meta = {"demos": DEMOS, "samples": SAMPLES, "pretrained": "one flow per source, seed 0"}
    floors(args.tasks, results)  # a second fresh target set, scored like a run
    for seed in args.seeds:
        for contender in args.contenders:
            if contender == "fail_pg_old" and seed not in args.old_seeds:
                continue
            for task in args.tasks:
                key = f"{task}/{contender}/k{args.nfe}/s{seed}"
                if key in load(results).get("cells", {}):
                    continue
                held = claim(work, key)
                if held is None:
                    continue
                try:
                    try:
                        record = run_cell(task, contender, seed, args.nfe, work)
                    except RuntimeError as err:
                        record = {"error": str(err)}
                    store(results, key, record, meta)
                    w2 = {k: round(v["w2"], 3) for k, v in record.get("metrics", {}).items()}
                    print(f"{key}: W2 {w2 or record.get('error')}", flush=True)
                finally:
                    held.unlink(missing_ok=True)


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.3f} ± {a.std():.3f}" if len(a) > 1 else f"{a[0]:.3f}"


def cmd_table(args: argparse.Namespace) -> None:
    """Per task, mean ± sd over the seeds of W2 and the diversity metrics the task has."""
    data = load(Path(args.results))
    cells, floor = data.get("cells", {}), data.get("floor", {})
    tasks = sorted({k.split("/")[0] for k in cells})
    cols = ["w2", "mode_spread", "between_modes", "mode_tv", "density", "coverage"]
    print("| task | contender | seeds | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for task in tasks:
        if task in floor:
            vals = [f"{floor[task][c]:.3f}" if c in floor[task] else "-" for c in cols]
            print(f"| {task} | target (floor) | - | " + " | ".join(vals) + " |")
        for contender in CONTENDERS:
            for kind in ("kept", "last"):
                recs = [
                    v for k, v in cells.items()
                    if k.startswith(f"{task}/{contender}/") and kind in v.get("metrics", {})
                ]  # fmt: skip
                if not recs:
                    continue
                vals = [
                    _fmt([r["metrics"][kind][c] for r in recs if c in r["metrics"][kind]])
                    for c in cols
                ]
                name = contender if kind == "kept" else f"{contender} (last)"
                print(f"| {task} | {name} | {len(recs)} | " + " | ".join(vals) + " |")
    # FAIL-PG's kept and last models against the pretrained flow (one per source, seed 0)
    # and SFT of the same seed, cell by cell
    print()
    for kind in ("kept", "last"):
        for other in ("pretrained", "sft"):
            wins, n = 0, 0
            for key, rec in cells.items():
                task, contender, k, seed = key.split("/")
                base = cells.get(f"{task}/{other}/{k}/{'s0' if other == 'pretrained' else seed}")
                if contender == "fail_pg" and base is not None:
                    n += 1
                    wins += rec["metrics"][kind]["w2"] <= base["metrics"]["kept"]["w2"]
            print(f"fail_pg ({kind}) W2 <= {other}: {wins} of {n} (task, seed) cells")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run")
    r.add_argument("--tasks", nargs="+", default=["moons-spirals", "8g-reweight", "user-npy"])
    r.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--old-seeds", nargs="*", type=int, default=[0])
    r.add_argument("--nfe", type=int, default=2)
    r.add_argument("--work", default="/tmp/flowpost-fail-pg")
    t = sub.add_parser("table")
    for q in (r, t):
        q.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()
    {"run": cmd_run, "table": cmd_table}[args.what](args)


if __name__ == "__main__":
    main()
