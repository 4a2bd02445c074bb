"""AF trained for k = 1, 2 and 4 steps, through the command line, scored beside each other.

Every cell is one ``flowpost train recipes/vectors/af.yaml --set data.name=<task>
--set train.seed=<s> --set method.nfe=<k> --set eval.nfe=<k> [--set <variant>...]`` run
folder under ``--work`` (no training loop here). The results JSON is rewritten after every
cell and a rerun skips the cells it holds (resumable); an interrupted run folder is trained
again from the start.

A cell keeps the trainer's final evaluation (``summary.json``: W2 of 2000 samples against the
2000 held-out points, density / coverage, and for mixtures ``mode_spread_ratio`` and
``between_modes``); for mixtures the af-diversity check's robust within-mode spread and
near-a-mode fraction of 4000 ``flowpost sample --seed 3`` draws; and, per hop ``i`` of the
sampler, a *teacher-forced* score (:func:`hop_scores`): the hop fed the data interpolant at
``a = i/k`` (what it trains on) against the real interpolant at ``b``, beside the chain's
own state at ``b``. That separates a hop that is trained narrow from a chain that drifts.

    python benchmarks/bench_af_nfe.py --tasks 8gaussians moons --seeds 0 1 2
    python benchmarks/bench_af_nfe.py --tag old --set method.parameterization=residual
    python benchmarks/bench_af_nfe.py --report          # the tables from the JSON only
    python benchmarks/bench_af_nfe.py --adopt RUN... --tag T --set K=V   # score finished runs
    python benchmarks/bench_af_nfe.py --rehop           # per-hop scores of the kept runs again

Writes ``benchmarks/results/af_nfe.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_adversarial import (  # noqa: E402
    AF_RECIPE,
    MIXTURES,
    data_floor,
    flowpost,
    load_results,
    robust_mode_spread,
    save_results,
    train_seconds,
)

RESULT = HERE / "results" / "af_nfe.json"
KEEP = ("w2", "density", "coverage", "mode_spread_ratio", "between_modes", "mode_tv")
COLUMNS = (
    "w2",
    "robust_spread",
    "mode_spread_ratio",
    "near_mode",
    "mode_tv",
    "density",
    "coverage",
)


def hop_scores(run_dir: Path, n: int = 2000) -> list[dict[str, float]]:
    """Per hop ``i`` (``a = s i/k``, ``b = (i+1)/k``, or ``b = 1`` with ``hops: to_data``,
    whose chain re-noises each hop's output to ``s (i+1)/k``; ``s = method.hop_span``, 1
    unless set) of the live generator: W2 between the hop
    fed the data interpolant ``(1 - a) z + a x`` (held-out ``x``) and the real interpolant at
    ``b`` (``tf_w2``), the same for the chain's state after ``i + 1`` hops from noise
    (``chain_w2``), the W2 of two real interpolant sets at ``b`` (``floor_w2``), the RMS over
    samples of the adversarial gradient reaching the teacher-forced output (``adv_grad_rms``:
    the relativistic loss against the real interpolant, per sample, before normalisation);
    for 8gaussians at ``b = 1`` also the robust spread of the teacher-forced hop."""
    import torch

    from flowpost.data import load_data
    from flowpost.eval.metrics import w2
    from flowpost.methods.adversarial import AdversarialFlow
    from flowpost.methods.components.adversarial import relativistic_loss
    from flowpost.run import load

    run = load(run_dir)
    m = run.method
    assert isinstance(m, AdversarialFlow), f"{run_dir} is not an AF run"
    k = int(m.config.nfe)
    ref = load_data(run.config.data).heldout.x[:n]
    n = ref.shape[0]
    g = torch.Generator().manual_seed(5)
    noise = lambda: torch.randn(ref.shape, generator=g)  # noqa: E731
    to_data = m.config.hops == "to_data"  # every hop lands on the data; the chain re-noises
    s = float(m.config.hop_span)  # hops to the data start at s * i / k
    chain, rows = noise(), []
    with torch.no_grad():
        for i in range(k):
            a, b = torch.full((n,), s * i / k), torch.full((n,), 1.0 if to_data else (i + 1) / k)
            real = (1 - b[0]) * noise() + b[0] * ref
            forced = m.jump(m.generator, (1 - a[0]) * noise() + a[0] * ref, a, b)
            out = m.jump(m.generator, chain, a, b)
            nxt = s * (i + 1) / k  # the sampler's next grid time (hop_span s)
            chain = (1 - nxt) * noise() + nxt * out if to_data else out
            with torch.enable_grad():  # the adversarial gradient per sample reaching G
                f = forced.detach().requires_grad_(True)
                t = m.disc_time(a, b)  # the time input D was trained with
                d_real = m.discriminator(real, None, t).detach()
                loss = relativistic_loss(m.discriminator(f, None, t), d_real) * n
                (grad,) = torch.autograd.grad(loss, f)
            row = {
                "adv_grad_rms": float(grad.norm(dim=1).square().mean().sqrt()),
                "a": s * i / k,
                "tf_w2": w2(forced, real),
                "chain_w2": w2(out, real),
                "floor_w2": w2((1 - b[0]) * noise() + b[0] * ref, real) if i < k - 1 else 0.0,
            }
            if i == k - 1 and run.config.data.name == "8gaussians":
                import numpy as np

                path = run_dir / "forced_last_hop.npy"
                more = m.jump(m.generator, (1 - a[0]) * noise() + a[0] * ref, a, b)
                x = torch.cat([forced, more])  # 4000 draws, as the acceptance statistic
                np.save(path, x.numpy())
                row["tf_robust_spread"] = robust_mode_spread(path, "8gaussians")["robust_spread"]
            rows.append(row)
    return rows


def score(out: Path, task: str, k: int) -> dict[str, Any]:
    summary = json.loads((out / "summary.json").read_text())
    metrics: dict[str, Any] = {q: summary[q] for q in KEEP if q in summary}
    if task in MIXTURES:
        path = out / f"samples_nfe{k}.npy"
        args = ("--nfe", str(k), "--n", "4000", "--seed", "3", "--out", str(path))
        flowpost("sample", str(out), *args)
        metrics.update(robust_mode_spread(path, task))
    metrics["hops"] = hop_scores(out)
    return metrics


def run_cells(args: argparse.Namespace) -> None:
    config = {"recipe": AF_RECIPE, "eval": "trainer's final evaluation; 4000 draws --seed 3"}
    work = Path(args.work)
    data = load_results(RESULT, config)
    for task in args.tasks:
        if task not in data["floor_w2"]:
            data["floor_w2"][task] = data_floor(task)
            save_results(RESULT, data)
    for seed in args.seeds:
        for task in args.tasks:
            for k in args.nfe:
                key = f"{task}/k{k}{'-' + args.tag if args.tag else ''}/{seed}"
                data = load_results(RESULT, config)
                if key in data["cells"]:
                    continue
                out = work / key.replace("/", "_")
                sets = [f"data.name={task}", "data.path=null", f"train.seed={seed}"]
                sets += [f"method.nfe={k}", f"eval.nfe={k}", "eval.plots=false"]
                sets += list(args.set or [])
                cmd = ["train", AF_RECIPE, "--out", str(out), "--no-progress"]
                cmd += [x for s in sets for x in ("--set", s)]
                if not (out / "summary.json").is_file():
                    if out.exists():
                        shutil.rmtree(out)
                    flowpost(*cmd)
                cell: dict[str, Any] = {"command": "flowpost " + " ".join(cmd)}
                cell["train_s"] = train_seconds(out)
                cell["metrics"] = score(out, task, k)
                data = load_results(RESULT, config)
                data["cells"][key] = cell
                save_results(RESULT, data)
                m = cell["metrics"]
                extra = f" spread {m['robust_spread']:.3f}" if "robust_spread" in m else ""
                print(f"{key}: W2 {m['w2']:.3f}{extra} ({cell['train_s']} s)", flush=True)


def rehop() -> None:
    """Recompute ``hops`` (:func:`hop_scores`) of every cell whose run folder still exists."""
    for key in sorted(json.loads(RESULT.read_text())["cells"]):
        data = json.loads(RESULT.read_text())
        found = re.search(r"--out (\S+)", data["cells"][key]["command"])
        if not found or not (Path(found[1]) / "summary.json").is_file():
            continue
        hops = hop_scores(Path(found[1]))
        data = json.loads(RESULT.read_text())
        data["cells"][key]["metrics"]["hops"] = hops
        save_results(RESULT, data)
        print(key, [round(h["adv_grad_rms"], 4) for h in hops], flush=True)


def adopt(args: argparse.Namespace) -> None:
    """Score run folders that ``flowpost train recipes/vectors/af.yaml`` made outside this
    script with the same ``--set`` overrides (``--adopt DIR...``, with ``--set`` / ``--tag``
    as they were trained), under the keys a run of this script would give them."""
    import yaml

    config = {"recipe": AF_RECIPE, "eval": "trainer's final evaluation; 4000 draws --seed 3"}
    for run in map(Path, args.adopt):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        task, seed, k = cfg["data"]["name"], cfg["train"]["seed"], cfg["method"]["nfe"]
        key = f"{task}/k{k}{'-' + args.tag if args.tag else ''}/{seed}"
        sets = [f"data.name={task}", "data.path=null", f"train.seed={seed}"]
        sets += [f"method.nfe={k}", f"eval.nfe={k}", "eval.plots=false", *(args.set or [])]
        cmd = ["train", AF_RECIPE, "--out", str(run), "--no-progress"]
        cell: dict[str, Any] = {
            "command": "flowpost " + " ".join(cmd + [f"--set {x}" for x in sets])
        }
        cell["train_s"] = train_seconds(run)
        cell["metrics"] = score(run, task, k)
        data = load_results(RESULT, config)
        if task not in data["floor_w2"]:
            data["floor_w2"][task] = data_floor(task)
        data["cells"][key] = cell
        save_results(RESULT, data)
        print(f"{key}: W2 {cell['metrics']['w2']:.3f}", flush=True)


# ------------------------------------------------------------------------------ report


def values(data: dict[str, Any], task: str, model: str, column: str) -> list[float]:
    out = []
    for key, cell in data["cells"].items():
        t, mdl, _ = key.split("/")
        v = cell["metrics"].get(column)
        if t == task and mdl == model and isinstance(v, (int, float)) and math.isfinite(v):
            out.append(float(v))
    return out


def fmt(v: list[float]) -> str:
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}"


def report(data: dict[str, Any]) -> str:
    lines = []
    tasks = sorted({k.split("/")[0] for k in data["cells"]})
    models = sorted({k.split("/")[1] for k in data["cells"]}, key=lambda m: (m.split("-")[0], m))
    for task in tasks:
        cols = [c for c in COLUMNS if any(values(data, task, m, c) for m in models)]
        lines += [f"**{task}** (W2 floor {data['floor_w2'].get(task, float('nan')):.3f})", ""]
        forced = ("tf_w2", "tf_robust_spread") if task == "8gaussians" else ("tf_w2",)
        head = " | ".join(f"last hop fed the interpolant: {c[3:]}" for c in forced)
        lines += ["| model | seeds | " + " | ".join(cols) + f" | {head} |"]
        lines += ["|" + "---|" * (len(cols) + 2 + len(forced))]
        for model in models:
            w = values(data, task, model, "w2")
            if not w:
                continue
            cells = [c for key, c in data["cells"].items() if key.startswith(f"{task}/{model}/")]
            row = [fmt(values(data, task, model, c)) for c in cols]
            row += [fmt([c["metrics"]["hops"][-1][q] for c in cells]) for q in forced]
            lines.append(f"| {model} | {len(w)} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="*", default=["8gaussians", "moons"])
    p.add_argument("--nfe", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--set", nargs="*", help="extra flowpost train --set overrides of every cell")
    p.add_argument("--tag", default="", help="suffix of the model's key for --set variants")
    p.add_argument("--work", default="/tmp/flowpost-bench-af-nfe", help="run folders")
    p.add_argument("--report", action="store_true", help="print the tables from the JSON only")
    p.add_argument("--rehop", action="store_true", help="recompute the per-hop scores")
    p.add_argument("--adopt", nargs="*", help="score these finished run folders (see adopt)")
    args = p.parse_args()
    if args.rehop:
        rehop()
    elif args.adopt:
        adopt(args)
    elif not args.report:
        run_cells(args)
    print(report(json.loads(RESULT.read_text())))


if __name__ == "__main__":
    main()
