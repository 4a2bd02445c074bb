"""FAIL experiments at toy scale (docs/methods/fail.md reports what this prints).

Sub-commands (each prints a table and writes JSON under benchmarks/results/):

* ``demos``: pretrain a flow on 8gaussians, fine-tune toward the mixture rotated by 22.5 deg
  from 64/256/1024 demonstrations with FAIL-PD (local estimator, trained at 4 Euler steps) and
  with SFT (flow matching from the same start), the same number of policy updates; evaluate
  at 4 and 32 Euler steps against fresh target samples; the "floor" is the same metric
  between two fresh target sets of the same sizes.
* ``estimators``: cosine similarity of the local and pathwise FAIL-PD gradients, and time and
  memory of each, against the number of solver steps.
* ``stability``: FAIL-PD vs FAIL-PG (FPO ratio) over a longer run, W2 every few hundred steps.
* ``hacking``: an unbounded linear reward alone vs reward + FAIL against the expert data.
* ``plots``: figures from the JSON files into docs/figures/.

Runs are cached: a run folder with a summary.json is not trained again.

    python benchmarks/bench_fail.py demos --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"

MODEL = {"arch": "mlp", "hidden": 128, "depth": 3}
DISC = {"hidden": 128, "depth": 2}
TARGET = {"name": "8gaussians", "transform": "rotate:22.5"}
METRICS = ("w2", "sliced_w2", "mmd")


# --------------------------------------------------------------------------- helpers


def _run(config: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train (or reuse) one run; returns its summary."""
    torch.set_num_threads(1)
    summary = out / "summary.json"
    if summary.is_file():
        return dict(json.loads(summary.read_text()))
    from flowpost.train import run_training

    started = time.perf_counter()
    result = run_training(config, out)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    summary.write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def _run_star(args: tuple[dict[str, Any], Path]) -> dict[str, Any]:
    return _run(*args)


def _map(jobs: int, tasks: list[tuple[dict[str, Any], Path]]) -> list[dict[str, Any]]:
    if jobs <= 1:
        return [_run(*t) for t in tasks]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(_run_star, tasks))


def pretrain(work: Path, steps: int) -> Path:
    """The starting flow: 8gaussians, flow matching, independent coupling."""
    out = work / "pretrain_8gaussians"
    config = {
        "data": {"name": "8gaussians", "n_heldout": 2000},
        "model": MODEL,
        "method": {"name": "flow_matching"},
        "train": {
            "steps": steps,
            "batch_size": 256,
            "lr": 2e-3,
            "schedule": "cosine",
            "warmup_steps": 100,
            "ema_decay": 0.995,
            "checkpoint_every": 0,
            "log_every": 500,
        },  # fmt: skip
        "eval": {"nfe": 100, "n_samples": 2000, "extra_nfe": [4, 32]},
    }
    _run(config, out)
    return out


def fail_method(**overrides: Any) -> dict[str, Any]:
    """FAIL-PD settings used for the toys (larger learning rates than the FLUX-scale defaults)."""
    method: dict[str, Any] = {
        "name": "fail", "nfe": 4, "pd_estimator": "local", "disc_lr": 1e-3,
        "disc_betas": [0.5, 0.9], "gp_weight": 1.0, "disc_warmup_steps": 50,
        "discriminator": DISC,
    }  # fmt: skip
    method.update(overrides)
    return method


def _stats(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": sd, "n": len(values)}


def _fmt(s: dict[str, float]) -> str:
    return f"{s['mean']:.3f} +- {s['std']:.3f}"


def _write(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1, sort_keys=True))
    print(f"wrote {path.relative_to(ROOT)}")
    return path


# --------------------------------------------------------------------------- (1) demos


def floor(n: int, seeds: list[int]) -> dict[str, dict[str, float]]:
    """Metrics between two fresh target sets of ``n`` samples each (what sampling noise alone
    costs), over ``seeds``."""
    from flowpost.data.toys import sample_toy
    from flowpost.eval import evaluate_samples

    rows: dict[str, list[float]] = {m: [] for m in METRICS}
    for s in seeds:
        a = sample_toy("8gaussians", n, torch.Generator().manual_seed(10_000 + s),
                       transform=TARGET["transform"])  # fmt: skip
        b = sample_toy("8gaussians", n, torch.Generator().manual_seed(20_000 + s),
                       transform=TARGET["transform"])  # fmt: skip
        got = evaluate_samples(a, b, generator=torch.Generator().manual_seed(s))
        for m in METRICS:
            rows[m].append(got[m])
    return {m: _stats(v) for m, v in rows.items()}


def start_on_target(pre: Path, nfe: int) -> dict[str, float]:
    """The pretrained flow, not fine-tuned, against 2000 fresh target samples."""
    from flowpost.data.base import DataSpec
    from flowpost.data.toys import sample_toy
    from flowpost.eval import evaluate_samples
    from flowpost.flows.solvers import sample
    from flowpost.nets.config import NetConfig
    from flowpost.nets.factory import build_velocity_net
    from flowpost.train.checkpoint import load_policy_state

    policy = build_velocity_net(NetConfig(**MODEL), DataSpec((2,)))  # type: ignore[arg-type]
    policy.load_state_dict(load_policy_state(pre))
    g = torch.Generator().manual_seed(99)
    target = sample_toy("8gaussians", 2000, g, transform=TARGET["transform"])
    out = {}
    for e in (nfe, 32):
        with torch.no_grad():
            x = sample(policy, torch.randn(2000, 2, generator=g), e)
        got = evaluate_samples(x, target, generator=torch.Generator().manual_seed(0))
        out.update({f"nfe{e}/{m}": got[m] for m in METRICS})
    return out


def cmd_demos(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    pre = pretrain(work, args.pretrain_steps)
    tasks: list[tuple[dict[str, Any], Path]] = []
    keys: list[tuple[str, int, int]] = []
    for n in args.demos:
        for seed in args.seeds:
            data = {**TARGET, "n_train": n, "n_heldout": 2000, "seed": seed}
            common = {
                "init_from": str(pre), "data": data, "model": MODEL,
                "eval": {"nfe": args.nfe, "n_samples": 2000, "extra_nfe": [32]},
            }  # fmt: skip
            train = {"batch_size": 256, "lr": 5e-4, "ema_decay": 0.99, "checkpoint_every": 0,
                     "log_every": 100, "seed": seed}  # fmt: skip
            sft = {**common, "method": {"name": "flow_matching"},
                   "train": {**train, "steps": args.steps}}  # fmt: skip
            warm = 50
            fail = {**common, "method": fail_method(disc_warmup_steps=warm, nfe=args.nfe),
                    "train": {**train, "steps": args.steps + warm}}  # fmt: skip
            for method, cfg in (("sft", sft), ("fail_pd", fail)):
                tag = "" if args.nfe == 4 else f"_nfe{args.nfe}"
                tasks.append((cfg, work / f"demos{tag}_{method}_n{n}_s{seed}"))
                keys.append((method, n, seed))
    summaries = _map(args.jobs, tasks)
    from flowpost.eval import evaluate_samples  # noqa: F401  (fail early if eval is missing)

    pre_summary = json.loads((pre / "summary.json").read_text())
    results: dict[str, Any] = {"runs": [], "floor": floor(2000, args.seeds),
                               "pretrained_on_source": pre_summary,
                               "pretrained_on_target": start_on_target(pre, args.nfe)}  # fmt: skip
    print("pretrained flow, no fine-tuning, vs the target: " + ", ".join(
        f"{k} {v:.3f}" for k, v in results["pretrained_on_target"].items()))  # fmt: skip
    for (method, n, seed), s in zip(keys, summaries):
        row = {"method": method, "demos": n, "seed": seed, "wall_s": s.get("wall_s")}
        for m in METRICS:
            row[f"nfe{args.nfe}/{m}"] = s[m]
            row[f"nfe32/{m}"] = s[f"nfe32/{m}"]
        results["runs"].append(row)
    table: dict[str, Any] = {}
    print("\nfloor (two fresh 2000-sample target sets): "
          + ", ".join(f"{m} {_fmt(results['floor'][m])}" for m in METRICS))  # fmt: skip
    print(f"{'method':8s} {'demos':>5s} " + " ".join(f"{k:>22s}" for k in
          [f"nfe{e}/{m}" for e in (args.nfe, 32) for m in METRICS]))  # fmt: skip
    for n in args.demos:
        for method in ("sft", "fail_pd"):
            rows = [r for r in results["runs"] if r["method"] == method and r["demos"] == n]
            cell = {k: _stats([r[k] for r in rows]) for k in rows[0] if k.startswith("nfe")}
            table[f"{method}/n{n}"] = cell
            cols = [f"nfe{e}/{m}" for e in (args.nfe, 32) for m in METRICS]
            print(f"{method:8s} {n:5d} " + " ".join(f"{_fmt(cell[c]):>22s}" for c in cols))
    results["table"] = table
    results["settings"] = {"steps": args.steps, "seeds": args.seeds, "demos": args.demos,
                           "model": MODEL, "fail": fail_method(nfe=args.nfe), "target": TARGET,
                           "pretrain_steps": args.pretrain_steps, "nfe": args.nfe}  # fmt: skip
    _write("fail_demos.json" if args.nfe == 4 else f"fail_demos_nfe{args.nfe}.json", results)


# --------------------------------------------------------------------------- (2) estimators


def _trained_pair(work: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The pretrained policy and a discriminator trained (policy frozen) to separate its
    4-step samples from the rotated target: the state at the start of FAIL's policy phase."""
    from flowpost.data.base import DataSpec
    from flowpost.data.toys import sample_toy
    from flowpost.flows.solvers import sample
    from flowpost.methods.components.adversarial import discriminator_loss
    from flowpost.nets.config import DiscriminatorConfig, NetConfig
    from flowpost.nets.factory import build_discriminator, build_velocity_net
    from flowpost.train.checkpoint import load_policy_state

    spec = DataSpec((2,))
    policy = build_velocity_net(NetConfig(**MODEL), spec)  # type: ignore[arg-type]
    policy.load_state_dict(load_policy_state(work / "pretrain_8gaussians"))
    disc = build_discriminator(DiscriminatorConfig(**DISC), spec)  # type: ignore[arg-type]
    opt = torch.optim.Adam(disc.parameters(), lr=1e-3, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        real = sample_toy("8gaussians", 256, g, transform=TARGET["transform"])
        with torch.no_grad():
            fake = sample(policy, torch.randn(256, 2, generator=g), 4)
        loss = discriminator_loss(disc(real), disc(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy, disc


class _SavedBytes:
    """Counts the bytes autograd keeps for backward (activation memory) during a forward."""

    def __init__(self) -> None:
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self.bytes += t.numel() * t.element_size()
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


def cmd_estimators(args: argparse.Namespace) -> None:
    from flowpost.methods.components.adversarial import adversarial_policy_loss
    from flowpost.methods.components.common import solver_grid
    from flowpost.methods.components.pathwise import local_pd_points, pathwise_sample

    torch.set_num_threads(1)
    work = Path(args.workdir)
    pretrain(work, args.pretrain_steps)
    policy, disc = _trained_pair(work)
    disc.requires_grad_(False)
    params = [p for p in policy.parameters()]

    def grad_of(loss_fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, int]:
        saved = _SavedBytes()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            loss = loss_fn()
        grads = torch.autograd.grad(loss, params)
        elapsed = time.perf_counter() - start
        return torch.cat([g.flatten() for g in grads]), elapsed, saved.bytes

    rows = []
    n = args.batch
    for nfe in args.nfe:
        torch.manual_seed(nfe)
        x0 = torch.randn(n, 2)
        with torch.no_grad():
            from flowpost.flows.solvers import sample

            x1 = sample(policy, x0, nfe)

        def pathwise(ckpt: bool, x0: torch.Tensor = x0, nfe: int = nfe) -> torch.Tensor:
            x_hat = pathwise_sample(policy, x0, nfe, "euler", checkpoint=ckpt)
            return adversarial_policy_loss(disc(x_hat)).mean()

        def local(
            m: int, x0: torch.Tensor = x0, x1: torch.Tensor = x1, nfe: int = nfe
        ) -> torch.Tensor:
            pts = local_pd_points(policy, x0, x1, solver_grid(nfe), mc_timesteps=m)
            return adversarial_policy_loss(disc(pts.x_hat)).mean()

        g_path, t_path, b_path = grad_of(lambda: pathwise(True))
        _, t_full, b_full = grad_of(lambda: pathwise(False))
        g_loc2, t_loc, b_loc = grad_of(lambda: local(2))
        # the local estimator's expectation over its grid times, by averaging many draws
        g_many = torch.stack([grad_of(lambda: local(2))[0] for _ in range(args.draws)]).mean(0)
        cos = torch.nn.functional.cosine_similarity
        row = {
            "nfe": nfe,
            "cos_local2_vs_pathwise": float(cos(g_loc2, g_path, dim=0)),
            "cos_localavg_vs_pathwise": float(cos(g_many, g_path, dim=0)),
            "norm_ratio_localavg_over_pathwise": float(g_many.norm() / g_path.norm()),
            "time_pathwise_ckpt_s": t_path, "time_pathwise_full_s": t_full,
            "time_local_s": t_loc,
            "saved_mb_pathwise_ckpt": b_path / 2**20, "saved_mb_pathwise_full": b_full / 2**20,
            "saved_mb_local": b_loc / 2**20,
        }  # fmt: skip
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()))  # fmt: skip
    _write(
        "fail_estimators.json",
        {
            "rows": rows,
            "batch": n,
            "draws": args.draws,
            "note": "saved_mb: bytes autograd keeps during forward",
        },
    )


# --------------------------------------------------------------------------- (3) stability


def cmd_stability(args: argparse.Namespace) -> None:
    work = Path(args.workdir)
    pre = pretrain(work, args.pretrain_steps)
    tasks = []
    keys = []
    for variant in args.variants:
        for seed in args.seeds:
            extra: dict[str, Any] = {"variant": variant}
            if variant == "pg":
                extra.update({"pg_group_size": 8, "pg_draws": 8, "pg_clip": 0.2,
                              "ref_weight": 0.05, "pg_epochs": args.ppo_epochs,
                              "fm_weight": args.fm_weight})  # fmt: skip
            cfg = {
                "init_from": str(pre),
                "data": {**TARGET, "n_train": 256, "n_heldout": 2000, "seed": seed},
                "model": MODEL,
                "method": fail_method(**extra),
                "train": {"steps": args.steps, "batch_size": 256, "lr": args.lr, "ema_decay": 0.99,
                          "checkpoint_every": 0, "log_every": 50, "seed": seed,
                          "eval_every": args.eval_every},
                "eval": {"nfe": 4, "n_samples": 1000, "plots": False},
            }  # fmt: skip
            tag = _stability_tag(args)
            tasks.append((cfg, work / f"stability{tag}_{variant}_s{seed}"))
            keys.append((variant, seed))
    _map(args.jobs, tasks)
    curves: dict[str, Any] = {}
    for (variant, seed), (_, out) in zip(keys, tasks):
        points = []
        disc = []
        for line in (out / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "eval/w2" in rec:
                points.append((rec["step"], rec["eval/w2"]))
            if "final/w2" in rec:
                points.append((rec["step"], rec["final/w2"]))
            if "discriminator/bce" in rec:
                disc.append((rec["step"], rec["discriminator/bce"]))
        curves[f"{variant}/s{seed}"] = {"w2": points, "disc_bce": disc, "lr": args.lr,
                                        "ppo_epochs": args.ppo_epochs,
                                        "fm_weight": args.fm_weight}  # fmt: skip
        print(variant, seed, " ".join(f"{s}:{w:.3f}" for s, w in points))
    name = f"fail_stability{_stability_tag(args)}.json"
    _write(name, {"curves": curves, "steps": args.steps, "seeds": args.seeds, "lr": args.lr,
                  "ppo_epochs": args.ppo_epochs, "fm_weight": args.fm_weight})  # fmt: skip


def _stability_tag(args: argparse.Namespace) -> str:
    """File-name tag of a stability study's settings ('' for the first study's)."""
    first = (args.lr, args.ppo_epochs) == (5e-4, 1)
    tag = "" if first else f"_lr{args.lr:g}_epochs{args.ppo_epochs}"
    return tag + (f"_fm{args.fm_weight:g}" if args.fm_weight else "")


# --------------------------------------------------------------------------- (4) hacking


def cmd_hacking(args: argparse.Namespace) -> None:
    from flowpost.data.base import DataSpec
    from flowpost.flows.solvers import sample
    from flowpost.methods.reward import linear_reward
    from flowpost.nets.config import NetConfig
    from flowpost.nets.factory import build_velocity_net
    from flowpost.train.checkpoint import load_policy_state

    torch.set_num_threads(1)
    work = Path(args.workdir)
    pre = pretrain(work, args.pretrain_steps)
    direction = [1.0, 0.0]
    tasks = []
    keys = []
    for weight in args.fail_weights:
        for seed in args.seeds:
            method = fail_method(
                name="reward", reward="linear",
                reward_args={"direction": direction, "scale": args.reward_scale},
                pd_estimator="pathwise", fail_weight=weight,
            )  # fmt: skip
            cfg = {
                "init_from": str(pre),
                # the expert data is what the model was pretrained on: stay on it
                "data": {"name": "8gaussians", "n_train": 1024, "n_heldout": 2000, "seed": seed},
                "model": MODEL, "method": method,
                "train": {"steps": args.steps + (50 if weight > 0 else 0), "batch_size": 256,
                          "lr": args.lr, "ema_decay": 0.99, "checkpoint_every": 0, "log_every": 50,
                          "seed": seed},
                "eval": {"nfe": 4, "n_samples": 2000},
            }  # fmt: skip
            tag = f"hacking_scale{args.reward_scale:g}_lr{args.lr:g}_steps{args.steps}"
            tasks.append((cfg, work / f"{tag}_w{weight:g}_s{seed}"))
            keys.append((weight, seed))
    summaries = _map(args.jobs, tasks)
    spec = DataSpec((2,))
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(7))

    def reward_of(run: Path | None) -> float:
        policy = build_velocity_net(NetConfig(**MODEL), spec)  # type: ignore[arg-type]
        policy.load_state_dict(load_policy_state(run if run is not None else pre))
        with torch.no_grad():
            x = sample(policy, noise, 4)
        return float(linear_reward(x, direction=direction).mean())

    pre_w2 = json.loads((pre / "summary.json").read_text())["nfe4/w2"]
    results: dict[str, Any] = {"pretrained": {"reward": reward_of(None), "w2": pre_w2},
                               "runs": [], "table": {}}  # fmt: skip
    for (weight, seed), s, (_, out) in zip(keys, summaries, tasks):
        results["runs"].append({"fail_weight": weight, "seed": seed, "w2": s["w2"],
                                "reward": reward_of(out)})  # fmt: skip
    print(f"pretrained: reward {results['pretrained']['reward']:.3f}, W2 {pre_w2:.3f}")
    print(f"{'fail_weight':>11s} {'reward (4 steps)':>20s} {'W2 to expert':>20s}")
    for weight in args.fail_weights:
        rows = [r for r in results["runs"] if r["fail_weight"] == weight]
        cell = {
            "reward": _stats([r["reward"] for r in rows]),
            "w2": _stats([r["w2"] for r in rows]),
        }
        results["table"][f"w{weight:g}"] = cell
        print(f"{weight:11g} {_fmt(cell['reward']):>20s} {_fmt(cell['w2']):>20s}")
    results["settings"] = {"steps": args.steps, "reward_scale": args.reward_scale, "lr": args.lr,
                           "direction": direction, "seeds": args.seeds}  # fmt: skip
    _write(f"fail_hacking_scale{args.reward_scale:g}_lr{args.lr:g}.json", results)


# --------------------------------------------------------------------------- (5) digits

DIGITS_MODEL = {"arch": "mlp", "hidden": 256, "depth": 3}


def digits_start(pre: Path, nfe: int) -> dict[str, float]:
    """The pretrained digits flow, not fine-tuned, against the thick-stroke held-out set
    (same evaluation noise and labels as the trainer's)."""
    from flowpost.data import DataConfig
    from flowpost.data.registry import load_data
    from flowpost.eval import evaluate_samples
    from flowpost.flows.solvers import sample
    from flowpost.nets.config import NetConfig
    from flowpost.nets.factory import build_velocity_net
    from flowpost.train.checkpoint import load_policy_state

    split = load_data(DataConfig(name="digits", transform="thick", n_train=200, seed=0))
    held = split.heldout
    assert held.cond is not None
    policy = build_velocity_net(NetConfig(**DIGITS_MODEL), split.spec)  # type: ignore[arg-type]
    policy.load_state_dict(load_policy_state(pre))
    n = min(1000, len(held))
    noise = torch.randn((n, *split.spec.shape), generator=torch.Generator().manual_seed(1234))
    cond = held.cond[torch.arange(n) % len(held)]
    out = {}
    for e in (nfe, 32):
        with torch.no_grad():
            x = sample(policy, noise, e, cond=cond)
        got = evaluate_samples(x, held.x[:n], dataset="digits@thick",
                               generator=torch.Generator().manual_seed(0))  # fmt: skip
        out.update({f"nfe{e}/{k}": got[k] for k in ("frechet", "confidence", "class_tv")})
    return out


def cmd_digits(args: argparse.Namespace) -> None:
    """Class-conditional sklearn digits (8x8): pretrain, then fine-tune toward thick strokes
    from 20 demonstrations per class; FAIL-PD, FAIL-PG and SFT, Frechet distance in the
    shipped digits classifier's features at the deployed NFE."""
    work = Path(args.workdir)
    pre = work / "digits_pretrain"
    _run({
        "data": {"name": "digits"}, "model": DIGITS_MODEL,
        "method": {"name": "flow_matching", "label_dropout": 0.1},
        "train": {"steps": args.pretrain_steps, "batch_size": 128, "lr": 1e-3,
                  "schedule": "cosine", "warmup_steps": 100, "ema_decay": 0.995,
                  "checkpoint_every": 0, "log_every": 200},
        "eval": {"nfe": 100, "n_samples": 1000, "extra_nfe": [args.nfe]},
    }, pre)  # fmt: skip
    disc = {"hidden": 256, "depth": 2}
    warm = 50
    methods = {
        "sft": ({"name": "flow_matching", "label_dropout": 0.1}, args.steps),
        "fail_pd": (fail_method(nfe=args.nfe, discriminator=disc, disc_warmup_steps=warm),
                    args.steps + warm),
        "fail_pg": (fail_method(nfe=args.nfe, discriminator=disc, disc_warmup_steps=warm,
                                variant="pg", group_size=4, mc_draws=4, beta=0.05),
                    args.steps + warm),
    }  # fmt: skip
    tasks, keys = [], []
    for seed in args.seeds:
        for name, (method, steps) in methods.items():
            cfg = {
                "init_from": str(pre),
                "data": {"name": "digits", "transform": "thick", "n_train": 200, "seed": seed},
                "model": DIGITS_MODEL, "method": method,
                "train": {"steps": steps, "batch_size": 128, "lr": args.lr, "ema_decay": 0.99,
                          "checkpoint_every": 0, "log_every": 50, "seed": seed},
                "eval": {"nfe": args.nfe, "n_samples": 1000, "extra_nfe": [32]},
            }  # fmt: skip
            tasks.append((cfg, work / f"digits_{name}_nfe{args.nfe}_s{seed}"))
            keys.append((name, seed))
    summaries = _map(args.jobs, tasks)
    pre_summary = json.loads((pre / "summary.json").read_text())
    results: dict[str, Any] = {"runs": [], "table": {}, "pretrained_on_source": pre_summary,
                               "pretrained_on_target": digits_start(pre, args.nfe)}  # fmt: skip
    print("pretrained flow vs the thick target:", results["pretrained_on_target"])
    for (name, seed), sm in zip(keys, summaries):
        results["runs"].append({"method": name, "seed": seed,
                                **{k: sm[k] for k in sm if k.split("/")[-1] in
                                   ("frechet", "confidence", "class_tv")}})  # fmt: skip
    head = [f"frechet @{args.nfe}", "frechet @32", f"confidence @{args.nfe}"]
    print(f"{'method':8s} " + " ".join(f"{h:>20s}" for h in head))
    for name in methods:
        rows = [r for r in results["runs"] if r["method"] == name]
        cell = {k: _stats([r[k] for r in rows]) for k in ("frechet", "nfe32/frechet", "confidence")
                if all(k in r for r in rows)}  # fmt: skip
        results["table"][name] = cell
        print(f"{name:8s} " + " ".join(f"{_fmt(cell[k]):>20s}" for k in cell))
    results["settings"] = {"steps": args.steps, "nfe": args.nfe, "seeds": args.seeds,
                           "lr": args.lr, "model": DIGITS_MODEL, "disc": disc}  # fmt: skip
    _write(f"fail_digits_nfe{args.nfe}.json", results)


# --------------------------------------------------------------------------- plots


def cmd_plots(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    for demos in sorted(RESULTS.glob("fail_demos*.json")):
        res = json.loads(demos.read_text())
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
        ns = res["settings"]["demos"]
        nfe = res["settings"].get("nfe", 4)
        for ax, e in zip(axes, (nfe, 32)):
            for method, color in (("sft", "tab:blue"), ("fail_pd", "tab:red")):
                if len(ns) == 1:
                    ax.set_xlim(ns[0] / 2, ns[0] * 2)
                mean = [res["table"][f"{method}/n{n}"][f"nfe{e}/w2"]["mean"] for n in ns]
                sd = [res["table"][f"{method}/n{n}"][f"nfe{e}/w2"]["std"] for n in ns]
                ax.errorbar(ns, mean, yerr=sd, marker="o", color=color, capsize=3,
                            label="FAIL-PD" if method == "fail_pd" else "SFT")  # fmt: skip
            ax.axhline(res["floor"]["w2"]["mean"], color="gray", ls="--", label="floor")
            ax.set_xscale("log")
            ax.set_xlabel("demonstrations")
            ax.set_title(f"FAIL trained at {nfe} steps; deployed at {e}")
        axes[0].set_ylabel("W2 to fresh target samples")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(FIGURES / f"{demos.stem}.png", dpi=120)
        print(f"wrote docs/figures/{demos.stem}.png")
    est = RESULTS / "fail_estimators.json"
    if est.is_file():
        rows = json.loads(est.read_text())["rows"]
        nfe = [r["nfe"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
        axes[0].plot(nfe, [r["cos_local2_vs_pathwise"] for r in rows], "o-", label="one batch")
        axes[0].plot(nfe, [r["cos_localavg_vs_pathwise"] for r in rows], "s-",
                     label="mean of draws")  # fmt: skip
        axes[0].set_ylabel("cos(local, pathwise)")
        axes[0].legend()
        for key, label in (
            ("pathwise_ckpt", "pathwise (checkpointed)"),
            ("pathwise_full", "pathwise (no checkpoint)"),
            ("local", "local"),
        ):
            axes[1].plot(nfe, [r[f"time_{key}_s"] for r in rows], "o-", label=label)
            axes[2].plot(nfe, [r[f"saved_mb_{key}"] for r in rows], "o-", label=label)
        axes[1].set_ylabel("seconds per gradient")
        axes[2].set_ylabel("MB kept for backward")
        axes[2].legend(fontsize=7)
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("solver steps")
        fig.tight_layout()
        fig.savefig(FIGURES / "fail_estimators.png", dpi=120)
        print("wrote docs/figures/fail_estimators.png")
    for stab in sorted(RESULTS.glob("fail_stability*.json")):
        curves = json.loads(stab.read_text())["curves"]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for key, c in sorted(curves.items()):
            steps, w2 = zip(*c["w2"]) if c["w2"] else ((), ())
            ax.plot(steps, w2, "o-" if key.startswith("pd") else "s--",
                    color="tab:red" if key.startswith("pd") else "tab:green", alpha=0.8,
                    label=key)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("W2 at 4 steps (log scale)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(FIGURES / f"{stab.stem}.png", dpi=120)
        print(f"wrote docs/figures/{stab.stem}.png")
    for hack in sorted(RESULTS.glob("fail_hacking*.json")):
        res = json.loads(hack.read_text())
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for r in res["runs"]:
            ax.scatter(r["w2"], r["reward"], color="tab:red" if r["fail_weight"] > 0 else "k")
            if r["seed"] == 0:
                ax.annotate(
                    f"fail_weight={r['fail_weight']:g}",
                    (r["w2"], r["reward"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(4, 4),
                )
        ax.scatter(res["pretrained"]["w2"], res["pretrained"]["reward"], marker="*", s=120,
                   color="tab:blue", label="pretrained")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=-0.2)
        ax.set_xlabel("W2 to expert data")
        ax.set_ylabel("mean linear reward")
        ax.legend()
        fig.tight_layout()
        fig.savefig(FIGURES / f"{hack.stem}.png", dpi=120)
        print(f"wrote docs/figures/{hack.stem}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "bench_fail"))
    parser.add_argument("--pretrain-steps", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (processes)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demos")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--demos", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--steps", type=int, default=1000, help="policy updates of both methods")
    p.add_argument("--nfe", type=int, default=4, help="Euler steps FAIL trains and both deploy")
    p = sub.add_parser("estimators")
    p.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--draws", type=int, default=16)
    p = sub.add_parser("stability")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--variants", nargs="+", default=["pd", "pg"], choices=["pd", "pg"])
    p.add_argument("--lr", type=float, default=5e-4, help="policy learning rate")
    p.add_argument("--ppo-epochs", type=int, default=1)
    p.add_argument("--fm-weight", type=float, default=0.0, help="PG: flow-matching anchor")
    p = sub.add_parser("hacking")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--fail-weights", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--reward-scale", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-4, help="policy learning rate")
    p = sub.add_parser("digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--nfe", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    sub.add_parser("plots")
    args = parser.parse_args()
    torch.set_num_threads(1)
    {"demos": cmd_demos, "estimators": cmd_estimators, "stability": cmd_stability,
     "hacking": cmd_hacking, "digits": cmd_digits, "plots": cmd_plots}[args.cmd](args)  # fmt: skip


if __name__ == "__main__":
    main()
