"""Adversarial Flow Models (AF) at toy scale: the claims of METHODS.md section 2, measured.

Experiments (each prints a table and writes ``benchmarks/results/af_<exp>.json``; plots go to
``docs/figures/af_<exp>.png``):

* ``toy1d``: the authors' 1-D four-mode mixture at 1 NFE: mode weights and within-mode stds.
* ``ot``: two seeds with ``lambda_ot > 0`` learn the same map (close to the exact monotone
  1-D OT map ``F_data^{-1}(Phi(z))``); two seeds with ``lambda_ot = 0`` need not.
* ``nfe``: 2-D toy, W2 vs NFE: AF at 1/2/4 NFE vs a flow-matching model of the same size
  with 1, 2, 4, 8, 32 Euler steps.
* ``throughput``: samples/s of 1-NFE AF generation vs one raw forward pass of the network.

Everything runs on CPU with one thread, through the method interface (``train_step`` with an
``OptimizerUpdater`` and an EMA of the generator), with networks much smaller than the
authors' (width-1024 MLPs are too slow here).

    python benchmarks/bench_adversarial.py toy1d --steps 3000
    python benchmarks/bench_adversarial.py ot --steps 3000
    python benchmarks/bench_adversarial.py nfe --steps 3000
    python benchmarks/bench_adversarial.py throughput
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flowpost.data.base import Batch, DataSpec
from flowpost.data.toys import sample_toy
from flowpost.flows.paths import expand_like
from flowpost.methods.adversarial import AdversarialFlow, AFConfig
from flowpost.nets.config import DiscriminatorConfig, NetConfig
from flowpost.nets.factory import build_velocity_net
from flowpost.train.ema import EMA
from flowpost.train.updater import OptimizerUpdater

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
CENTERS = torch.tensor([-1.5, -0.5, 0.5, 1.5])


def data_sampler(name: str) -> Callable[[int], Tensor]:
    return lambda n: sample_toy(name, n)


def train_af(
    cfg: AFConfig,
    net: NetConfig,
    spec: DataSpec,
    sample: Callable[[int], Tensor],
    *,
    steps: int,
    batch: int,
    seed: int,
    ema_decay: float = 0.99,
    log_every: int = 500,
) -> tuple[AdversarialFlow, torch.nn.Module, list[dict]]:
    """Train AF with the library's method + updater + EMA; returns (method, EMA G, logs)."""
    torch.manual_seed(seed)
    method = AdversarialFlow(cfg, spec, net)
    opts: dict[str, torch.optim.Optimizer] = {
        name: torch.optim.Adam(s.params, lr=s.lr or cfg.lr, betas=s.betas or (0.9, 0.999))
        for name, s in method.optimizers().items()
    }
    ema = EMA(method.generator, ema_decay)
    up = OptimizerUpdater(opts, emas={"generator": ema}, live={"generator": method.generator})
    logs: list[dict] = []
    window: dict[str, list[float]] = {}
    start = time.perf_counter()
    for step in range(steps):
        out = method.train_step(Batch(sample(batch)), step, up)
        for k, v in out.items():
            window.setdefault(k, []).append(v)
        if (step + 1) % log_every == 0:
            rec = {"step": step + 1, "time_s": round(time.perf_counter() - start, 1)}
            rec.update({k: round(sum(v) / len(v), 4) for k, v in window.items()})
            logs.append(rec)
            print(rec, flush=True)
            window = {}
    return method, ema.module, logs


def train_fm(
    net: NetConfig,
    spec: DataSpec,
    sample: Callable[[int], Tensor],
    *,
    steps: int,
    batch: int,
    seed: int,
    lr: float = 1e-3,
    ema_decay: float = 0.99,
) -> torch.nn.Module:
    """A plain flow-matching baseline of the same network (independent coupling)."""
    torch.manual_seed(seed)
    model = build_velocity_net(net, spec)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ema = EMA(model, ema_decay)
    for _ in range(steps):
        x1 = sample(batch)
        x0 = torch.randn_like(x1)
        t = torch.rand(batch)
        te = expand_like(t, x1)
        xt = (1 - te) * x0 + te * x1
        loss = (model(xt, t) - (x1 - x0)).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
    return ema.module


@torch.no_grad()
def euler(model: torch.nn.Module, z: Tensor, nfe: int) -> Tensor:
    x = z
    for i in range(nfe):
        t = torch.full((z.shape[0],), i / nfe)
        x = x + model(x, t) / nfe
    return x


@torch.no_grad()
def af_sample(method: AdversarialFlow, gen: torch.nn.Module, z: Tensor, nfe: int) -> Tensor:
    return method.generate(z, nfe=nfe, roles={"generator": gen})


def mode_stats(x: Tensor, window: float = 0.25) -> dict[str, Any]:
    """Mode weights (nearest centre), within-mode std of the samples within ``window`` of a
    centre (5 data stds), the same std over all samples assigned to the mode, and the
    fraction of samples farther than ``window`` from every centre."""
    x = x.flatten()
    dist = (x[:, None] - CENTERS[None]).abs()
    idx = dist.argmin(1)
    near = dist.min(1).values < window
    weights = [float((idx == k).float().mean()) for k in range(4)]

    def std(mask: Tensor) -> float:
        return float(x[mask].std()) if int(mask.sum()) > 1 else float("nan")

    return {
        "weights": weights,
        "stds": [std((idx == k) & near) for k in range(4)],
        "stds_all_assigned": [std(idx == k) for k in range(4)],
        "off_mode_fraction": float((~near).float().mean()),
    }


def w2(a: Tensor, b: Tensor) -> float:
    """Exact W2 between two equal-size empirical measures (POT's EMD)."""
    import ot

    m = ot.dist(a.double().numpy(), b.double().numpy())
    return float(math.sqrt(ot.emd2([], [], m, numItermax=10**7)))


def ot_map_1d(z: Tensor, n_ref: int = 200_000) -> Tensor:
    """The exact monotone map F_data^{-1}(Phi(z)) of the 1-D mixture (quantiles of a large
    reference sample)."""
    ref = sample_toy("mixture1d", n_ref, generator=torch.Generator().manual_seed(123)).flatten()
    ref = ref.sort().values
    u = 0.5 * (1 + torch.erf(z.flatten() / math.sqrt(2)))
    return ref[(u * (n_ref - 1)).round().long()].reshape(z.shape)


def toy1d_setup(args: argparse.Namespace, lambda_ot: float) -> tuple[AFConfig, NetConfig]:
    net = NetConfig(arch="mlp", hidden=args.width, depth=args.depth, input_encoding=args.encoding)
    disc = DiscriminatorConfig(
        arch="mlp", hidden=args.width, depth=args.depth, input_encoding=args.encoding
    )
    cfg = AFConfig(
        nfe=1,
        ot_weight=lambda_ot,
        gp_weight=args.gp,
        cp_weight=0.01,
        lr=args.lr,
        discriminator=disc,
        grad_norm=not args.no_grad_norm,
        real_noise=args.real_noise,
        disc_steps=args.d_updates,
    )
    return cfg, net


def save(name: str, payload: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"af_{name}.json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {RESULTS / f'af_{name}.json'}")


# ------------------------------------------------------------------------------ experiments


def exp_toy1d(args: argparse.Namespace) -> None:
    cfg, net = toy1d_setup(args, args.lambda_ot)
    method, gen, logs = train_af(
        cfg,
        net,
        DataSpec((1,)),
        data_sampler("mixture1d"),
        steps=args.steps,
        batch=args.batch,
        seed=args.seed,
    )
    z = torch.randn(20000, 1, generator=torch.Generator().manual_seed(7))
    x = af_sample(method, gen, z, 1)
    stats = mode_stats(x)
    ok_w = max(abs(w - 0.25) for w in stats["weights"]) <= 0.03
    ok_s = max(abs(s - 0.05) / 0.05 for s in stats["stds"]) <= 0.25
    print("mode  weight  std(|x-c|<0.25)  std(all assigned)")
    for k in range(4):
        print(
            f"{float(CENTERS[k]):+.1f}  {stats['weights'][k]:.3f}   {stats['stds'][k]:.4f}"
            f"           {stats['stds_all_assigned'][k]:.4f}"
        )
    print(
        f"off-mode fraction (farther than 0.25 from every mode): {stats['off_mode_fraction']:.4f}"
    )
    print(f"weights within 0.03 of 0.25: {ok_w}; stds within 25% of 0.05: {ok_s}")
    live = mode_stats(af_sample(method, method.generator, z, 1))
    print(
        "live (non-EMA) generator: weights "
        + ", ".join(f"{w:.3f}" for w in live["weights"])
        + "; stds "
        + ", ".join(f"{s:.4f}" for s in live["stds"])
    )
    save(
        "toy1d",
        {
            "config": vars(args),
            "stats": stats,
            "weights_ok": ok_w,
            "stds_ok": ok_s,
            "live_generator_stats": live,
            "logs": logs,
        },
    )
    _plot_toy1d(x, ot_map_1d(z), z, method, gen)


def _plot_toy1d(
    x: Tensor, ot_target: Tensor, z: Tensor, method: AdversarialFlow, gen: torch.nn.Module
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ref = sample_toy("mixture1d", 20000, generator=torch.Generator().manual_seed(1))
    ax[0].hist(ref.flatten().numpy(), bins=200, range=(-2, 2), alpha=0.5, label="data")
    ax[0].hist(x.flatten().numpy(), bins=200, range=(-2, 2), alpha=0.5, label="AF, 1 NFE")
    ax[0].legend()
    ax[0].set_title("1-D mixture: samples")
    zz = torch.linspace(-3, 3, 400)[:, None]
    ax[1].plot(zz.numpy(), af_sample(method, gen, zz, 1).numpy(), label="AF G(z)")
    ax[1].plot(zz.numpy(), ot_map_1d(zz).numpy(), "--", label="OT map")
    ax[1].set_xlabel("z")
    ax[1].legend()
    ax[1].set_title("learned map vs monotone OT map")
    fig.tight_layout()
    fig.savefig(FIGURES / "af_toy1d.png", dpi=120)
    plt.close(fig)


def exp_ot(args: argparse.Namespace) -> None:
    z = torch.randn(20000, 1, generator=torch.Generator().manual_seed(7))
    target = ot_map_1d(z)
    zz = torch.linspace(-3, 3, 400)[:, None]
    results: dict[str, Any] = {"config": vars(args)}
    curves: dict[str, list[Tensor]] = {}
    for lam in (args.lambda_ot, 0.0):
        maps, runs = [], []
        for seed in (args.seed, args.seed + 1):
            cfg, net = toy1d_setup(args, lam)
            method, gen, logs = train_af(
                cfg,
                net,
                DataSpec((1,)),
                data_sampler("mixture1d"),
                steps=args.steps,
                batch=args.batch,
                seed=seed,
            )
            x = af_sample(method, gen, z, 1)
            maps.append(x)
            curves.setdefault(f"lambda_ot={lam}", []).append(af_sample(method, gen, zz, 1))
            runs.append(
                {
                    "seed": seed,
                    "dist_to_ot_map": float((x - target).abs().mean()),
                    "stats": mode_stats(x),
                    "final_log": logs[-1] if logs else {},
                }
            )
        agree = float((maps[0] - maps[1]).abs().mean())
        results[f"lambda_ot={lam}"] = {"seed_disagreement": agree, "runs": runs}
        print(
            f"lambda_ot={lam}: mean |G1(z) - G2(z)| = {agree:.4f}; distance to OT map: "
            + ", ".join(f"{r['dist_to_ot_map']:.4f}" for r in runs)
        )
    save("ot", results)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, (key, cs) in zip(axes, curves.items()):
        for i, c in enumerate(cs):
            ax.plot(zz.numpy(), c.numpy(), label=f"seed {args.seed + i}")
        ax.plot(zz.numpy(), ot_map_1d(zz).numpy(), "k--", lw=1, label="OT map")
        ax.set_title(key)
        ax.set_xlabel("z")
        ax.legend()
    axes[0].set_ylabel("G(z)")
    fig.tight_layout()
    fig.savefig(FIGURES / "af_ot.png", dpi=120)
    plt.close(fig)


def exp_nfe(args: argparse.Namespace) -> None:
    name = args.dataset
    spec = DataSpec((2,))
    net = NetConfig(arch="mlp", hidden=args.width, depth=args.depth)
    disc = DiscriminatorConfig(arch="mlp", hidden=args.width, depth=args.depth)
    sample = data_sampler(name)
    ref = sample_toy(name, args.n_eval, generator=torch.Generator().manual_seed(99))
    z = torch.randn(args.n_eval, 2, generator=torch.Generator().manual_seed(5))
    table: dict[str, dict[int, float]] = {"flow_matching": {}, "af": {}}
    fm = train_fm(net, spec, sample, steps=args.steps, batch=args.batch, seed=args.seed)
    for nfe in (1, 2, 4, 8, 32):
        table["flow_matching"][nfe] = w2(euler(fm, z, nfe), ref)
    for k in (1, 2, 4):
        cfg = AFConfig(
            nfe=k,
            ot_weight=args.lambda_ot,
            gp_weight=args.gp,
            lr=args.lr,
            discriminator=disc,
            grad_norm=not args.no_grad_norm,
            disc_steps=args.d_updates,
        )
        method, gen, _ = train_af(
            cfg, net, spec, sample, steps=args.steps, batch=args.batch, seed=args.seed
        )
        table["af"][k] = w2(af_sample(method, gen, z, k), ref)
    table["data_vs_data"] = {
        0: w2(sample_toy(name, args.n_eval, torch.Generator().manual_seed(3)), ref)
    }
    print(f"W2 to held-out {name} ({args.n_eval} samples)")
    print("NFE   flow matching (Euler)   AF (trained for k = NFE)")
    for nfe in (1, 2, 4, 8, 32):
        af = table["af"].get(nfe)
        print(
            f"{nfe:>3}   {table['flow_matching'][nfe]:.4f}                  "
            f"{'-' if af is None else f'{af:.4f}'}"
        )
    print(f"data vs data: {table['data_vs_data'][0]:.4f}")
    save(f"nfe_{name}", {"config": vars(args), "w2": table})
    plot_nfe(name)


def plot_nfe(name: str) -> None:
    """W2 vs NFE from ``af_nfe_<name>.json`` (``--plot-only`` redraws without training)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = json.loads((RESULTS / f"af_nfe_{name}.json").read_text())["w2"]
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for key, label, style in (
        ("flow_matching", "flow matching, Euler", "o-"),
        ("af", "AF, trained for k = NFE", "s-"),
    ):
        pts = sorted((int(k), v) for k, v in table[key].items())
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    floor = next(iter(table["data_vs_data"].values()))
    ax.axhline(floor, color="gray", ls=":", label="data vs data (sampling noise)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("W2 to held-out data")
    ax.set_title(f"{name}: W2 vs NFE (same network size)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(FIGURES / f"af_nfe_{name}.png", dpi=120)
    plt.close(fig)


def exp_digits(args: argparse.Namespace) -> None:
    """Unconditional sklearn digits (8x8): flow matching vs AF with the same MLP, scored by
    the Frechet distance in the shipped digits classifier's features."""
    from flowpost.data import DataConfig, load_data
    from flowpost.eval import evaluate_samples

    split = load_data(DataConfig(name="digits"))
    x_train, ref = split.train.x, split.heldout.x
    spec = DataSpec(tuple(x_train.shape[1:]))  # unconditional

    def sample(n: int) -> Tensor:
        return x_train[torch.randint(0, x_train.shape[0], (n,))]

    net = NetConfig(arch="mlp", hidden=args.width, depth=args.depth)
    disc = DiscriminatorConfig(arch="mlp", hidden=args.width, depth=args.depth)
    z = torch.randn(ref.shape[0], *spec.shape, generator=torch.Generator().manual_seed(5))
    rows: dict[str, dict[int, dict[str, float]]] = {"flow_matching": {}, "af": {}}

    def score(x: Tensor) -> dict[str, float]:
        m = evaluate_samples(x.clamp(-1, 1), ref, dataset="digits")
        return {k: float(m[k]) for k in ("frechet", "sliced_w2", "confidence") if k in m}

    grids: dict[str, Tensor] = {}
    fm = train_fm(net, spec, sample, steps=args.steps, batch=args.batch, seed=args.seed)
    for nfe in (1, 2, 4, 8, 32):
        x = euler(fm, z, nfe)
        rows["flow_matching"][nfe] = score(x)
        if nfe in (1, 32):
            grids[f"flow matching, {nfe} Euler step{'s' if nfe > 1 else ''}"] = x[:64]
    for k in (1, 2):
        cfg = AFConfig(
            nfe=k,
            ot_weight=args.lambda_ot,
            gp_weight=args.gp,
            lr=args.lr,
            discriminator=disc,
            disc_steps=args.d_updates,
        )
        method, gen, _ = train_af(
            cfg, net, spec, sample, steps=args.steps, batch=args.batch, seed=args.seed
        )
        x = af_sample(method, gen, z, k)
        rows["af"][k] = score(x)
        grids[f"AF, {k} NFE"] = x[:64]
    rows["data_vs_data"] = {0: score(x_train[: ref.shape[0]])}
    print("digits, Frechet distance in classifier features (lower is better)")
    print("NFE   flow matching   AF")
    for nfe in (1, 2, 4, 8, 32):
        af = rows["af"].get(nfe)
        print(
            f"{nfe:>3}   {rows['flow_matching'][nfe]['frechet']:>10.3f}   "
            f"{'-' if af is None else format(af['frechet'], '.3f')}"
        )
    print(f"train vs held-out: {rows['data_vs_data'][0]['frechet']:.3f}")
    save("nfe_digits", {"config": vars(args), "metrics": rows})
    grids["held-out data"] = ref[:64]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(grids), figsize=(2.6 * len(grids), 2.9))
    for ax, (title, x) in zip(axes, grids.items()):
        img = x.clamp(-1, 1).reshape(8, 8, 8, 8).permute(0, 2, 1, 3).reshape(64, 64)
        ax.imshow(img.numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(FIGURES / "af_digits.png", dpi=120)
    plt.close(fig)


def exp_throughput(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    spec = DataSpec((2,))
    net = NetConfig(arch="mlp", hidden=args.width, depth=args.depth)
    method = AdversarialFlow(AFConfig(nfe=1), spec, net).eval()
    gen = method.generator
    z = torch.randn(args.batch, 2)
    t0, t1 = torch.zeros(args.batch), torch.ones(args.batch)
    rows = []

    def bench(fn: Callable[[], Any]) -> float:
        for _ in range(5):
            fn()
        start = time.perf_counter()
        for _ in range(args.reps):
            fn()
        return args.reps * args.batch / (time.perf_counter() - start)

    with torch.inference_mode():
        for _ in range(args.rounds):  # interleaved rounds, medians
            raw = bench(lambda: gen(z, t0, None, t1))
            af = bench(lambda: method.generate(z, nfe=1))
            rows.append((raw, af))
    raw_m = sorted(r[0] for r in rows)[len(rows) // 2]
    af_m = sorted(r[1] for r in rows)[len(rows) // 2]
    ratio = raw_m / af_m
    print(
        f"raw forward: {raw_m:,.0f} samples/s; AF generate(nfe=1): {af_m:,.0f} samples/s; "
        f"time ratio {ratio:.3f}"
    )
    save(
        "throughput",
        {
            "config": vars(args),
            "raw_samples_per_s": raw_m,
            "af_samples_per_s": af_m,
            "time_ratio": ratio,
            "rounds": rows,
        },
    )


def main() -> None:
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("exp", choices=["toy1d", "ot", "nfe", "digits", "throughput"])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--encoding", type=int, default=16, help="sinusoidal input features (1-D)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--gp", type=float, default=0.01)
    p.add_argument("--lambda-ot", type=float, default=0.05)
    p.add_argument("--no-grad-norm", action="store_true")
    p.add_argument("--d-updates", type=int, default=1, help="D updates per G update")
    p.add_argument("--real-noise", default="fresh", choices=["fresh", "shared"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="8gaussians")
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--plot-only", action="store_true", help="nfe: redraw from the JSON")
    args = p.parse_args()
    if args.plot_only and args.exp == "nfe":
        plot_nfe(args.dataset)
        return
    experiments = {
        "toy1d": exp_toy1d,
        "ot": exp_ot,
        "nfe": exp_nfe,
        "digits": exp_digits,
        "throughput": exp_throughput,
    }
    experiments[args.exp](args)


if __name__ == "__main__":
    main()
