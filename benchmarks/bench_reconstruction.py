"""FT-FM / ResFT-FM experiments (docs/methods/reconstruction.md reports what this writes).

Sub-commands (each writes JSON under benchmarks/results/, updated after every cell, so an
interrupted run resumes where it stopped; trained run folders are reused):

* ``robot``: for each seed, the task's recipes as committed (``recipes/<task>/pretrain.yaml``,
  then ``ft_fm.yaml`` and ``resft_fm.yaml`` from it, with ``train.seed`` set), then roll-outs
  of every run at NFE 1, 2, 4, 10 (Euler) on the same evaluation episodes, beside the scripted
  expert (the ceiling): success rate, mean final distance, return.
* ``diagnose``: encoder accuracy (codes' second moment, round trip) and success at 2 NFE
  with the sampler's noise scaled by 0 and 1, for the ``robot`` runs.
* ``contraction``: end-point displacement when a perturbation is injected halfway
  (t = 0.5) through sampling, pretrained against ResFT-FM, from the ``robot`` runs.
* ``spread``: for named run folders (``--runs LABEL=RUN``), how the sampler's actions spread
  per condition and how far their per-condition mean is from the demonstrated chunk, on
  held-out conditions, at 2 and 32 Euler steps: whether a policy lost precision by
  spreading or by aiming worse.
* ``noise``: for named run folders (``--runs LABEL=RUN``), roll-out success at the run's
  ``eval.nfe`` with the sampler's starting noise scaled by 0 (``eval.noise_scale: 0``, a
  deterministic policy) and by 1 (as sampled), on the run's own evaluation episodes.
* ``misses``: for named run folders (``--runs LABEL=RUN``, labels ``VARIANT/pN/dD/sS`` with
  the pretrained policy's ``pretrain/pN/dD/sS`` among them), each deterministic policy's
  (noise scale 0) final distance per evaluation episode, so that the report can say how
  its failures miss (just past the threshold or far) and which episodes fine-tuning won or
  lost against the pretrained policy; the discretisation gap of its ``z = 0`` map at 2 and 4
  Euler steps to the pretrained policy's accurate map (16 RK4 steps); and FT-FM's objective,
  the reconstruction error of training and held-out chunks encoded by the pretrained field.
* ``confirm``: for named run folders (``--runs LABEL=RUN``, as for ``misses``), each
  deterministic policy at NFE 1, 2, 4, 10 on fresh evaluation episodes (``--blocks`` x
  ``--block-episodes``, disjoint from the recipes' evaluation episodes), every episode's
  success recorded, so that each fine-tuned policy is compared with its own pretrained
  policy episode by episode (a sign test on the episodes only one of the two solves).
* ``selffit``: for named pretrained run folders (``--runs LABEL=RUN``), FT-FM and ResFT-FM
  (their recipes, from that run) trained on nothing but the self-reconstruction term at
  ``z = 0`` (``method.self_weight``: the deployed 2-step sampler's output against the frozen
  pretrained field's accurate one) on random training batches: can each fit the pretrained
  policy's few-step error, and does the fit carry to held-out observations?
* ``learnable``: for named pretrained run folders (``--runs LABEL=RUN``), is the few-step
  error of the ``z = 0`` map (accurate minus 2 Euler steps) a function of the observation an
  MLP as large as the policy can regress, on training and on held-out observations?
* ``digits``: pretrain on sklearn digits, FT-FM at 2 NFE; reconstruction error (encode
  held-out digits by 32 RK4 steps, decode at K Euler steps) and sample Frechet distance at
  NFE 1, 2, 4, before and after.
* ``plots``: figures from the JSON files into docs/figures/.
* ``table`` / ``render``: the markdown tables of the JSON files, printed / written into
  docs/methods/reconstruction.md between ``<!-- bench:NAME -->`` markers.

    python benchmarks/bench_reconstruction.py robot --task reacher --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reconstruction_report import render, table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/flowpost-bench/reconstruction"))
NFES = (1, 2, 4, 10)
RUNS = ("pretrain", "ft_fm", "resft_fm")


# --------------------------------------------------------------------------- helpers


class Cells:
    """A JSON file of named result cells, written after every new cell."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str, compute: Any) -> Any:
        if key not in self.data:
            started = time.perf_counter()
            value = compute()
            shown = str(value)
            shown = shown if len(shown) <= 400 else shown[:400] + " ..."
            print(f"  {key}: {shown}  ({time.perf_counter() - started:.0f} s)", flush=True)
            self.put(key, value)
        return self.data[key]

    def put(self, key: str, value: Any) -> None:
        """Store one cell; cells written meanwhile by another process (other seeds) are kept."""
        if self.path.is_file():
            self.data = {**json.loads(self.path.read_text()), **self.data}
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        tmp.replace(self.path)


def train_recipe(recipe: Path, out: Path, overrides: list[str]) -> float:
    """Train one recipe (reused when its run folder has a summary); returns wall seconds.
    ``wall.json`` in the run folder also keeps the CPU seconds of this process (``cpu_s``),
    which, unlike the wall time, does not grow with other users' load on the machine."""
    from flowpost.config import apply_overrides, load_yaml
    from flowpost.train import run_training
    from flowpost.train.config import build_run_config

    done = out / "wall.json"
    if done.is_file():
        return float(json.loads(done.read_text())["wall_s"])
    started, cpu = time.perf_counter(), time.process_time()
    cfg = build_run_config(apply_overrides(load_yaml(recipe), overrides))
    run_training(cfg, out, overwrite=True) if _takes_overwrite() else run_training(cfg, out)
    wall = round(time.perf_counter() - started, 1)
    done.write_text(json.dumps({"wall_s": wall, "cpu_s": round(time.process_time() - cpu, 1)}))
    return wall


def _takes_overwrite() -> bool:
    import inspect

    from flowpost.train import run_training

    return "overwrite" in inspect.signature(run_training).parameters


LAST = "@last"  # a run folder named with this suffix: its last model, not its kept best


def run_folder(run: Path) -> Path:
    """The folder of a run named ``FOLDER`` or ``FOLDER@last``."""
    return Path(str(run).removesuffix(LAST))


def load_run(run: Path) -> Any:
    """The run in a run folder (``flowpost.load``, as ``flowpost eval`` does), its held-out
    data and robot task loaded; ``FOLDER@last``: its last model (``flowpost eval --last``)."""
    from flowpost.run import load

    loaded = load(run_folder(run), last=str(run).endswith(LAST))
    loaded.reference()
    return loaded


def mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


# --------------------------------------------------------------------------- robot


def robot(task: str, seeds: list[int], episodes: int, runs: tuple[str, ...] = RUNS) -> None:
    from flowpost.envs.rollout import expert_rollouts
    from flowpost.envs.tasks import get_task

    cells = Cells(RESULTS / f"reconstruction_{task}.json")
    eval_seed = 1234
    if cells.get("episodes", lambda: episodes) != episodes:
        raise SystemExit(f"{cells.path} was measured with {cells.data['episodes']} episodes")
    cells.get(
        "expert",
        lambda: expert_rollouts(get_task(task), episodes=episodes, seed=eval_seed),
    )
    if task == "pusher":  # why the task runs 300 steps: the expert at Pusher-v5's own 100
        cells.get(
            "expert_steps100",
            lambda: expert_rollouts(
                dataclasses.replace(get_task(task), steps=100), episodes=episodes, seed=eval_seed
            ),
        )
    for seed in seeds:
        base = WORK / task / f"seed{seed}"
        for name in runs:
            recipe = ROOT / "recipes" / task / f"{name}.yaml"
            sets = [f"train.seed={seed}"]
            if name != "pretrain":
                sets.append(f"init_from={base / 'pretrain'}")
            cells.get(
                f"seed{seed}/{name}/train_wall_s",
                lambda r=recipe, o=base / name, s=sets: train_recipe(r, o, s),
            )
            cells.get(
                f"seed{seed}/{name}/train_cpu_s",
                lambda o=base / name: json.loads((o / "wall.json").read_text()).get("cpu_s"),
            )
            trainer = None
            for nfe in NFES:
                key = f"seed{seed}/{name}/nfe{nfe}"
                if key in cells.data:
                    continue
                trainer = trainer or load_run(base / name)
                ev = trainer.evaluator(with_reference=True)
                cells.get(key, lambda ev=ev, k=nfe: ev.rollouts(k, episodes=episodes, seed=1234))
    summary: dict[str, Any] = {}
    for name in RUNS:
        for nfe in NFES:
            rows = [cells.data.get(f"seed{s}/{name}/nfe{nfe}") for s in seeds]
            rows = [r for r in rows if r is not None]
            if rows:
                summary[f"{name}/nfe{nfe}"] = {
                    k: mean_std([r[k] for r in rows]) for k in ("success_rate", "final_distance")
                }
    cells.put("summary", summary)
    _print_robot(cells.data, seeds)


def _print_robot(data: dict[str, Any], seeds: list[int]) -> None:
    e = data["expert"]
    print(f"expert: success {e['success_rate']:.2f}, final distance {e['final_distance']:.4f}")
    for key, row in sorted(data.get("summary", {}).items()):
        s, d = row["success_rate"], row["final_distance"]
        print(
            f"{key:18s} success {s['mean']:.3f} +- {s['std']:.3f}   "
            f"final distance {d['mean']:.4f} +- {d['std']:.4f}  (n={s['n']})"
        )


def variant(
    task: str, seeds: list[int], run: str, label: str, sets: list[str], episodes: int
) -> None:
    """One recipe with extra ``--set`` overrides (e.g. ``method.encode_nfe=128``), trained from
    each seed's pretrained run of ``robot`` and rolled out on the same episodes and noise, into
    ``reconstruction_<task>_variants.json`` as ``seed<s>/<run>_<label>/nfe<k>``; compare it
    with the ``robot`` cells of the same seed (paired)."""
    cells = Cells(RESULTS / f"reconstruction_{task}_variants.json")
    cells.get(f"{run}_{label}/overrides", lambda: sets)
    for seed in seeds:
        base = WORK / task / f"seed{seed}"
        out = base / f"{run}_{label}"
        overrides = [f"train.seed={seed}", f"init_from={base / 'pretrain'}", *sets]
        key = f"seed{seed}/{run}_{label}"
        cells.get(
            f"{key}/train_wall_s",
            lambda o=out, sets=overrides: train_recipe(
                ROOT / "recipes" / task / f"{run}.yaml", o, sets
            ),
        )
        cells.get(
            f"{key}/train_cpu_s",
            lambda o=out: json.loads((o / "wall.json").read_text()).get("cpu_s"),
        )
        ev = None
        for nfe in NFES:
            if f"{key}/nfe{nfe}" in cells.data:
                continue
            ev = ev or load_run(out).evaluator(with_reference=True)
            cells.get(
                f"{key}/nfe{nfe}", lambda k=nfe, e=ev: e.rollouts(k, episodes=episodes, seed=1234)
            )


# --------------------------------------------------------------------------- contraction


def displacement(
    field: Any, x0: torch.Tensor, cond: torch.Tensor, delta: torch.Tensor, nfe: int
) -> torch.Tensor:
    """Per-sample ``|x1(perturbed) - x1| / |delta|`` with ``delta`` added at t = 0.5 of an
    Euler solve with ``nfe`` steps (``nfe`` even)."""
    from flowpost.flows.solvers import odeint
    from flowpost.flows.timesteps import time_grid

    grid = time_grid(nfe)
    half = nfe // 2
    mid = odeint(field, x0, grid[: half + 1], cond=cond)
    end = odeint(field, mid, grid[half:], cond=cond)
    end_p = odeint(field, mid + delta, grid[half:], cond=cond)
    return (end_p - end).flatten(1).norm(dim=1) / delta.flatten(1).norm(dim=1)


def contraction(task: str, seeds: list[int], scale: float, runs: list[str] | None) -> None:
    """``runs``: explicit ``LABEL=PRETRAINED_RUN,RESFT_RUN`` pairs instead of the seeds' (a
    run ``FOLDER@last``: its last model)."""
    cells = Cells(RESULTS / f"reconstruction_contraction_{task}.json")
    root = WORK / task
    pairs = {f"seed{s}": (root / f"seed{s}/pretrain", root / f"seed{s}/resft_fm") for s in seeds}
    if runs:
        pairs = {}
        for spec in runs:
            label, folders = spec.split("=", 1)
            pre, res = folders.split(",")
            pairs[label] = (Path(pre), Path(res))
    for label, (pre, res) in pairs.items():
        for name, run in (("pretrain", pre), ("resft_fm", res)):
            for nfe in (2, 4, 10, 32):
                key = f"{label}/{name}/nfe{nfe}"
                if key in cells.data or not run_folder(run).is_dir():
                    continue

                def compute(run: Path = run, nfe: int = nfe) -> dict[str, float]:
                    loaded = load_run(run)
                    held = loaded.reference()
                    g = torch.Generator().manual_seed(7)
                    n = min(512, len(held))
                    cond = held.cond[:n]
                    x0 = torch.randn((n, *held.spec.shape), generator=g)
                    delta = scale * torch.randn(x0.shape, generator=g)
                    field = loaded.model.eval()
                    ratio = displacement(field, x0, cond, delta, nfe)
                    return {"mean": float(ratio.mean()), "median": float(ratio.median())}

                cells.get(key, compute)
    for key, value in sorted(cells.data.items()):
        print(f"{key:32s} end-point displacement / perturbation: {value['mean']:.3f}")


# --------------------------------------------------------------------------- diagnostics


def diagnose(task: str, seeds: list[int], episodes: int) -> None:
    """Why a fine-tuned policy wins or loses at 2 NFE: (a) the encoder's accuracy (second
    moment of the codes of held-out chunks, which is 1 per dimension for a calibrated flow,
    and the round-trip error after decoding with 512 RK4 evaluations) at the encoder budgets
    8 and 32; (b) success at 2 NFE with the sampler's noise scaled by 0 (a deterministic
    policy: the central trajectory's discretisation bias alone) and by 1 (as deployed)."""
    from flowpost.flows.solvers import encode, sample

    cells = Cells(RESULTS / f"reconstruction_diagnostics_{task}.json")
    for seed in seeds:
        base = WORK / task / f"seed{seed}"
        for name in RUNS:
            run = base / name
            if not (run / "wall.json").is_file():
                continue
            loaded = None
            if name == "pretrain":
                for enc in (8, 32, 128):

                    def codes(enc: int = enc, base: Path = base) -> dict[str, float]:
                        trained = load_run(base / "pretrain")
                        held, field = trained.reference(), trained.model.eval()
                        x1, cond = held.x[:1000], held.cond[:1000]
                        with torch.no_grad():
                            z = encode(field, x1, enc, "rk4", cond=cond)
                            back = sample(field, z, 512, "rk4", cond=cond)
                        return {
                            "code_second_moment": float(z.pow(2).mean()),
                            "round_trip_mse": float((back - x1).pow(2).mean()),
                        }

                    cells.get(f"seed{seed}/encoder_rk4_nfe{enc}", codes)
            for scale in (0.0, 1.0):
                key = f"seed{seed}/{name}/nfe2_noise{scale:g}"
                if key in cells.data:
                    continue
                loaded = loaded or load_run(run)
                # the library's eval.noise_scale (Evaluator), as `flowpost eval --noise-scale`
                ev = loaded.evaluator(with_reference=True, noise_scale=scale)
                cells.get(key, lambda ev=ev: ev.rollouts(2, episodes=episodes, seed=1234))


# --------------------------------------------------------------------------- spread


def spread(task: str, runs: list[str], conditions: int = 300, draws: int = 64) -> None:
    """Per run: the RMS over held-out conditions of the actions' std across ``draws`` noise
    draws (``spread``) and of the per-condition mean's distance to the demonstrated chunk
    (``mean_error``), in the policy's normalised action units, at 2 and 32 Euler steps."""
    cells = Cells(RESULTS / f"reconstruction_spread_{task}.json")
    for label, run in (r.split("=", 1) for r in runs):
        loaded: list[Any] = []  # the run, loaded once and only if a cell needs it

        for nfe in (2, 32):

            def compute(
                folder: str = run, nfe: int = nfe, loaded: list[Any] = loaded
            ) -> dict[str, Any]:
                loaded[:] = loaded or [load_run(Path(folder)).evaluator(with_reference=True)]
                ev = loaded[0]
                held = ev.reference
                assert held is not None and held.cond is not None
                x1, cond = held.x[:conditions], held.cond[:conditions]
                g = torch.Generator().manual_seed(0)
                z = torch.randn(len(x1) * draws, *x1.shape[1:], generator=g)
                ev.method.eval()
                with torch.no_grad():
                    x = ev.method.generate(
                        z, cond.repeat_interleave(draws, 0), nfe=nfe, roles=ev.roles
                    ).reshape(len(x1), draws, -1)
                return {
                    "spread": float(x.std(1).pow(2).mean().sqrt()),
                    "mean_error": float((x.mean(1) - x1.flatten(1)).pow(2).mean().sqrt()),
                    "run": folder,
                }

            cells.get(f"{label}/nfe{nfe}", compute)


def noise_scale(task: str, runs: list[str], scales: tuple[float, ...] = (0.0, 1.0)) -> None:
    """Per named run (``LABEL=RUN``): roll-out success, final distance and return at the
    run's ``eval.nfe`` with the sampler's starting noise scaled by each of ``scales``
    (``eval.noise_scale``; 0: the deterministic map of z = 0), on the run's own evaluation
    episodes and noise seed (so scale 1 repeats its end-of-training evaluation)."""
    cells = Cells(RESULTS / f"reconstruction_noise_scale_{task}.json")
    for label, run in (r.split("=", 1) for r in runs):
        loaded: list[Any] = []  # the run, loaded once and only if a cell needs it
        for scale in scales:

            def compute(
                folder: str = run, scale: float = scale, loaded: list[Any] = loaded
            ) -> dict[str, Any]:
                loaded[:] = loaded or [load_run(Path(folder))]
                ec = loaded[0].config.eval
                ev = loaded[0].evaluator(with_reference=True, noise_scale=scale)
                out: dict[str, Any] = ev.rollouts(ec.nfe, episodes=ec.episodes, seed=ec.seed)
                return {**out, "nfe": ec.nfe, "episodes": ec.episodes, "run": folder}

            cells.get(f"{label}/noise{scale:g}", compute)


ACCURATE_NFE = 64  # evaluations (16 RK4 steps) of the pretrained policy's reference z = 0 map
GAP_CONDITIONS = 2000  # held-out conditions the z = 0 gap is averaged over


def recorded_rollouts(
    ev: Any, nfe: int, episodes: int, seed: int
) -> tuple[dict[str, Any], list[float], float]:
    """``ev.rollouts`` (an evaluator with a robot task) that also returns every episode's
    final distance, in episode order, and the task's success threshold."""
    assert ev.robot is not None
    distances: list[float] = []
    out: dict[str, Any] = ev.rollouts(nfe, episodes=episodes, seed=seed, distances=distances)
    return out, distances, float(ev.robot.task.threshold)


def misses(task: str, runs: list[str]) -> None:
    """Per named run: deterministic roll-outs (noise scale 0) at the run's ``eval.nfe`` on
    its own evaluation episodes, with every episode's final distance; and the mean squared
    distance (normalised action units, per dimension) between the run's ``z = 0`` map at 2
    and 4 Euler steps and its pretrained policy's at 16 RK4 steps, on held-out conditions;
    and the mean squared reconstruction error at ``eval.nfe`` of up to 2000 training and
    held-out chunks encoded by the pretrained field (8 RK4 steps, the recipes' encoder)."""
    from sweep_reacher import pretrained_label

    from flowpost.flows.solvers import encode, sample

    named = dict(r.split("=", 1) for r in runs)
    cells = Cells(RESULTS / f"reconstruction_misses_{task}.json")
    # pretrained label -> its accurate z = 0 map on held-out conditions, and the codes its
    # encoder (the recipes' encode_nfe 32: 8 RK4 steps) gives training and held-out chunks
    accurate: dict[str, dict[str, Any]] = {}

    @functools.cache
    def loaded(folder: str) -> Any:  # a pretrained run serves its own cell and its reference
        return load_run(Path(folder))

    def reference(label: str) -> dict[str, Any]:
        pre = pretrained_label(label)
        if pre not in named:
            raise SystemExit(f"misses: {label} needs its pretrained run {pre}=RUN in --runs")
        if pre not in accurate:
            from flowpost.data import load_data

            run = loaded(named[pre])
            field = run.model.eval()
            split = load_data(run.config.data)
            ref: dict[str, Any] = {}
            for name, part in (("train", split.train), ("heldout", split.heldout)):
                assert part.cond is not None
                x1, cond = part.x[:GAP_CONDITIONS], part.cond[:GAP_CONDITIONS]
                with torch.no_grad():
                    ref[name] = (x1, cond, encode(field, x1, 32, "rk4", cond=cond))
            x1, cond, _ = ref["heldout"]
            with torch.no_grad():
                ref["z0"] = sample(field, torch.zeros_like(x1), ACCURATE_NFE, "rk4", cond=cond)
            accurate[pre] = ref
        return accurate[pre]

    for label, folder in named.items():

        def compute(label: str = label, folder: str = folder) -> dict[str, Any]:
            run = loaded(folder)
            ec = run.config.eval
            ev = run.evaluator(with_reference=True, noise_scale=0.0)
            out, distances, threshold = recorded_rollouts(ev, ec.nfe, ec.episodes, ec.seed)
            ref = reference(label)
            gaps, rec = {}, {}
            target, cond = ref["z0"], ref["heldout"][1]
            with torch.no_grad():
                for nfe in (2, 4):
                    x = ev.method.generate(torch.zeros_like(target), cond, nfe=nfe, roles=ev.roles)
                    gaps[str(nfe)] = float((x - target).pow(2).mean())
                for part in ("train", "heldout"):  # the FT-FM objective's error, its codes
                    x1, c, z = ref[part]
                    x = ev.method.generate(z, c, nfe=ec.nfe, roles=ev.roles)
                    rec[part] = float((x - x1).pow(2).mean())
            return {
                **out,
                "threshold": threshold,
                "final_distances": [round(d, 6) for d in distances],
                "z0_gap": gaps,
                "reconstruction_mse": rec,
                "nfe": ec.nfe,
                "episodes": ec.episodes,
                "run": folder,
            }

        cells.get(label, compute)


# --------------------------------------------------------------------------- confirm

# Fresh evaluation episodes for ``confirm``: the recipes (and every table above it in the
# docs) evaluate on the episodes of eval seed 1234; these seeds' episodes are disjoint from
# them (``flowpost.envs.rollout.eval_seed``: 10,000 episode seeds per evaluation seed).
CONFIRM_SEEDS = (2026, 2027, 2028, 2029, 2030, 2031, 2032, 2033)


def confirm(
    task: str,
    runs: list[str],
    blocks: int,
    block_episodes: int,
    nfes: tuple[int, ...] = NFES,
    eval_seed: int | None = None,
) -> None:
    """Per named run (``--runs LABEL=RUN``, labels ``VARIANT/pN/dD/sS`` with the pretrained
    policy's ``pretrain/pN/dD/sS`` among them; ``RUN@last``: the run's last model instead of
    the checkpoint it kept) and NFE 1, 2, 4, 10: the deterministic policy
    (noise scale 0, as the recipes deploy) rolled out on ``blocks x block_episodes`` fresh
    evaluation episodes, recording each episode's success, so that the report can pair
    every fine-tuned policy with its pretrained one episode by episode (a sign test on the
    episodes only one of them solves). The scripted expert on the same episodes too.
    ``nfes``: only these NFEs (the report pairs whatever cells there are). ``eval_seed``:
    instead, one block of ``block_episodes`` of that evaluation seed's episodes (1234: the
    recipes' own, whose first ``eval.episodes`` the recipes and ``flowpost eval`` report),
    into ``reconstruction_confirm_<task>_seed<S>.json``."""
    from flowpost.envs.rollout import expert_rollouts
    from flowpost.envs.tasks import get_task

    if not 1 <= blocks <= len(CONFIRM_SEEDS):
        raise SystemExit(f"confirm: --blocks must be 1..{len(CONFIRM_SEEDS)}")
    seeds, name = CONFIRM_SEEDS[:blocks], f"reconstruction_confirm_{task}.json"
    if eval_seed is not None:
        seeds, name = (eval_seed,), f"reconstruction_confirm_{task}_seed{eval_seed}.json"
    cells = Cells(RESULTS / name)
    setting = {"eval_seeds": list(seeds), "block_episodes": block_episodes}
    if cells.get("setting", lambda: setting) != setting:
        raise SystemExit(f"{cells.path} was measured with {cells.data['setting']}")
    cells.get(
        "expert",
        lambda: pooled(
            [expert_rollouts(get_task(task), episodes=block_episodes, seed=s) for s in seeds]
        ),
    )
    for label, folder in (r.split("=", 1) for r in runs):
        run = None
        for nfe in nfes:
            key = f"{label}/nfe{nfe}"
            if key in cells.data:
                continue
            run = run or load_run(Path(folder))

            def compute(run: Any = run, nfe: int = nfe, folder: str = folder) -> dict[str, Any]:
                ev = run.evaluator(with_reference=True, noise_scale=0.0)
                outs, solved = [], []
                for s in seeds:
                    out, dist, threshold = recorded_rollouts(ev, nfe, block_episodes, s)
                    outs.append(out)
                    solved += ["1" if d < threshold else "0" for d in dist]
                return {**pooled(outs), "solved": "".join(solved), "run": folder}

            cells.get(key, compute)


SELFFIT_STEPS = 600
SELFFIT_EVERY = 100
# method (recipe[/variant]) -> overrides; force: the residual's offset head outputs K m
SELFFIT_METHODS = {
    "ft_fm": (),
    "resft_fm": (),
    "resft_fm/force": ("method.residual_offset=force",),
}


def selffit(task: str, runs: list[str], steps: int = SELFFIT_STEPS) -> None:
    """Per pretrained run (``--runs LABEL=RUN``) and method (``ft_fm``, ``resft_fm``): the
    method built from its recipe on that run, trained by Adam (the recipe's learning rate,
    batch size 256) on the self-reconstruction term at ``z = 0`` alone, at the deployed nfe
    only. Every ``SELFFIT_EVERY`` steps: the mean squared ``z = 0`` error (normalised action
    units, per dimension) on the step's training batch and on the first 2000 held-out
    chunks' conditions, of the raw (not EMA) weights."""
    from flowpost.config import load_yaml
    from flowpost.data.base import Batch
    from flowpost.flows.solvers import sample
    from flowpost.train.trainer import lr_lambda

    cells = Cells(RESULTS / f"reconstruction_selffit_{task}.json")
    cells.get("setting", lambda: {"steps": steps, "every": SELFFIT_EVERY, "batch": 256})
    for label, folder in (r.split("=", 1) for r in runs):
        for name, extra in SELFFIT_METHODS.items():

            def compute(
                folder: str = folder, name: str = name, extra: tuple = extra
            ) -> dict[str, Any]:
                recipe = load_yaml(ROOT / "recipes" / task / f"{name.split('/')[0]}.yaml")
                sets = ["method.self_weight=1", "method.self_code_scale=0", *extra]
                method, data = recipe_method(task, name.split("/")[0], folder, sets)
                c = method.config
                held = data.heldout.cond[:GAP_CONDITIONS]
                with torch.no_grad():  # the held-out targets are fixed: compute them once
                    held_target = sample(
                        method.reference,
                        torch.zeros(held.shape[0], *data.spec.shape),
                        c.encode_nfe,
                        c.encode_solver,
                        cond=held,
                    )

                def held_mse() -> float:
                    with torch.no_grad():
                        z = torch.zeros_like(held_target)
                        out = sample(method.policy, z, c.nfe, c.solver, cond=held)
                        return float((out - held_target).pow(2).mean())

                lr, t = c.lr or float(recipe["train"]["lr"]), recipe["train"]
                opt = torch.optim.Adam(method.trained_parameters(), lr=lr)
                # the recipe's warm-up and schedule, as the trainer runs them
                schedule = torch.optim.lr_scheduler.LambdaLR(
                    opt, lr_lambda(t["warmup_steps"], steps, t["schedule"], 0.1)
                )
                gen = torch.Generator().manual_seed(0)
                train, trace = data.train, []
                sigma2 = float(method.log_sigma.exp()) ** 2
                for step in range(steps + 1):
                    i = torch.randint(0, train.x.shape[0], (256,), generator=gen)
                    nll = method.self_reconstruction_nll(Batch(train.x[i], train.cond[i]))
                    if step % SELFFIT_EVERY == 0:  # NLL = mse / (2 sigma^2) + log sigma
                        mse = (float(nll.detach()) - math.log(sigma2) / 2) * 2 * sigma2
                        trace.append({"step": step, "train_mse": mse, "heldout_mse": held_mse()})
                    opt.zero_grad()
                    nll.backward()
                    opt.step()
                    schedule.step()
                return {"lr": lr, "run": folder, "trace": trace}

            cells.get(f"{label}/{name}", compute)


def recipe_method(task: str, recipe: str, pretrained: str, sets: list[str]) -> tuple[Any, Any]:
    """(method, data) of ``recipes/TASK/RECIPE.yaml`` from a pretrained run, without its
    ``also_nfe`` (the deployed step count alone), seeded 0."""
    from flowpost.config import apply_overrides, load_yaml
    from flowpost.train.build import build_method_and_data, seed_everything
    from flowpost.train.config import build_run_config

    cfg = load_yaml(ROOT / "recipes" / task / f"{recipe}.yaml")
    cfg["method"].pop("also_nfe", None)
    seed_everything(0)
    return build_method_and_data(
        build_run_config(apply_overrides(cfg, [f"init_from={pretrained}", *sets]))
    )


LEARNABLE_STEPS = 3000
LEARNABLE_EVERY = 500


def learnable(task: str, runs: list[str], steps: int = LEARNABLE_STEPS) -> None:
    """Per pretrained run (``--runs LABEL=RUN``): is its few-step error at ``z = 0`` a
    function of the observation that a network can learn? The correction
    ``d(c) = accurate(c) - two_step(c)`` (32-evaluation RK4 against 2 Euler steps of the
    pretrained field, from ``z = 0``) on every training condition and the first 2000
    held-out ones; an MLP of the condition (3 x 256, SiLU, as wide and deep as the policy)
    regresses it by Adam (lr 1e-3, batch 256); every ``LEARNABLE_EVERY`` steps its mean
    squared residual on both sets, against predicting 0 (the uncorrected error) and the
    training mean."""
    from flowpost.flows.solvers import sample

    cells = Cells(RESULTS / f"reconstruction_learnable_{task}.json")
    cells.get("setting", lambda: {"steps": steps, "every": LEARNABLE_EVERY, "batch": 256})
    for label, folder in (r.split("=", 1) for r in runs):

        def compute(folder: str = folder) -> dict[str, Any]:
            method, data = recipe_method(task, "ft_fm", folder, [])
            ref = method.reference

            def correction(c: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    z = torch.zeros(c.shape[0], *data.spec.shape)
                    accurate = sample(ref, z, 32, "rk4", cond=c)
                    return accurate - sample(ref, z, 2, "euler", cond=c)

            train, held = data.train.cond, data.heldout.cond[:GAP_CONDITIONS]
            d_train, d_held = correction(train), correction(held)
            mean = d_train.mean(0)
            torch.manual_seed(0)
            width, out = 256, d_train.shape[1]
            net = torch.nn.Sequential(
                torch.nn.Linear(train.shape[1], width), torch.nn.SiLU(),
                torch.nn.Linear(width, width), torch.nn.SiLU(),
                torch.nn.Linear(width, width), torch.nn.SiLU(),
                torch.nn.Linear(width, out),
            )  # fmt: skip
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            gen = torch.Generator().manual_seed(0)

            def mse(pred: torch.Tensor, target: torch.Tensor) -> float:
                return float((pred - target).pow(2).mean())

            trace = []
            for step in range(steps + 1):
                if step % LEARNABLE_EVERY == 0:
                    with torch.no_grad():
                        trace.append({"step": step, "train_mse": mse(net(train), d_train),
                                      "heldout_mse": mse(net(held), d_held)})  # fmt: skip
                i = torch.randint(0, train.shape[0], (256,), generator=gen)
                loss = (net(train[i]) - d_train[i]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            return {
                "run": folder,
                "train_conditions": int(train.shape[0]),
                "heldout_conditions": int(held.shape[0]),
                "zero": {"train_mse": mse(0 * d_train, d_train),
                         "heldout_mse": mse(0 * d_held, d_held)},
                "train_mean": {"train_mse": mse(mean.expand_as(d_train), d_train),
                               "heldout_mse": mse(mean.expand_as(d_held), d_held)},
                "trace": trace,
            }  # fmt: skip

        cells.get(label, compute)


def pooled(outs: list[dict[str, float]]) -> dict[str, float]:
    """Roll-out metrics of equal-sized blocks of episodes, pooled (their means)."""
    keys = ("success_rate", "final_distance", "return")
    return {k: statistics.fmean(float(o[k]) for o in outs) for k in keys}


# --------------------------------------------------------------------------- digits


def digits(seeds: list[int], pretrain_steps: int | None) -> None:
    from flowpost.flows.solvers import encode, sample

    cells = Cells(RESULTS / "reconstruction_digits.json")
    base = WORK / "digits"
    sets = [] if pretrain_steps is None else [f"train.steps={pretrain_steps}"]
    cells.get("pretrain/overrides", lambda: sets)
    cells.get(
        "pretrain/train_wall_s",
        lambda: train_recipe(ROOT / "recipes/digits/pretrain.yaml", base / "pretrain", sets),
    )
    for seed in seeds:
        out = base / f"ft_fm_seed{seed}"
        cells.get(
            f"seed{seed}/ft_fm/train_wall_s",
            lambda o=out, s=seed: train_recipe(
                ROOT / "recipes/digits/ft_fm.yaml",
                o,
                [f"train.seed={s}", f"init_from={base / 'pretrain'}"],
            ),
        )
    runs = {"pretrain": base / "pretrain"} | {
        f"seed{s}/ft_fm": base / f"ft_fm_seed{s}" for s in seeds
    }
    for name, run in runs.items():
        for nfe in (1, 2, 4):
            key = f"{name}/nfe{nfe}"
            if key in cells.data:
                continue

            def compute(run: Path = run, nfe: int = nfe) -> dict[str, float]:
                trainer = load_run(run)
                held = trainer.reference()
                field = trainer.model.eval()
                x1, cond = held.x, held.cond
                z = encode(field, x1, 32, "rk4", cond=cond)
                x_hat = sample(field, z, nfe, "euler", cond=cond)
                rec = float((x_hat - x1).pow(2).flatten(1).mean(1).mean())
                m = trainer.evaluate(nfe, n_samples=1000, seed=1234)
                return {"reconstruction_mse": rec, "frechet": m["frechet"]}

            cells.get(key, compute)
    for key, value in sorted(cells.data.items()):
        print(key, value)


# --------------------------------------------------------------------------- plots


def plots(task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = RESULTS / f"reconstruction_contraction_{task}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        fig, ax = plt.subplots(figsize=(5, 3.5))
        nfes = (2, 4, 10, 32)
        for name, label in (("pretrain", "pretrained"), ("resft_fm", "ResFT-FM")):
            rows = [
                [v["mean"] for k, v in data.items() if k.endswith(f"{name}/nfe{n}")] for n in nfes
            ]
            means = [statistics.fmean(r) if r else float("nan") for r in rows]
            ax.plot(nfes, means, "o-", label=label)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.minorticks_off()
        ax.set_xlabel("Euler steps (perturbation injected at t = 0.5)")
        ax.set_ylabel("end-point displacement / perturbation")
        ax.set_title(f"{task}: contraction of the sampling flow")
        ax.legend()
        FIGURES.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(FIGURES / f"reconstruction_contraction_{task}.png", dpi=120)
        print("wrote", FIGURES / f"reconstruction_contraction_{task}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "command",
        choices=[
            "robot",
            "diagnose",
            "contraction",
            "digits",
            "plots",
            "table",
            "render",
            "variant",
            "spread",
            "noise",
            "misses",
            "confirm",
            "selffit",
            "learnable",
        ],
    )
    parser.add_argument("--task", default="reacher")
    parser.add_argument("--only", nargs="*", choices=RUNS, help="robot: train/evaluate only these")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--run", default="ft_fm", choices=RUNS[1:], help="variant: the recipe")
    parser.add_argument("--label", default="variant", help="variant: name of the variant")
    parser.add_argument("--set", nargs="*", default=[], dest="sets", help="variant: overrides")
    parser.add_argument("--scale", type=float, default=0.3, help="perturbation std")
    parser.add_argument(
        "--runs",
        nargs="*",
        default=None,
        help="contraction: LABEL=PRETRAINED_RUN,RESFT_RUN; spread, noise, misses, confirm: "
        "LABEL=RUN",
    )
    parser.add_argument("--blocks", type=int, default=4, help="confirm: blocks of episodes")
    parser.add_argument(
        "--block-episodes", type=int, default=1000, help="confirm: episodes per block"
    )
    parser.add_argument(
        "--eval-seed", type=int, default=None, help="confirm: one block of this eval seed"
    )
    parser.add_argument(
        "--nfes", type=int, nargs="+", default=list(NFES), help="confirm: only these NFEs"
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=None, help="digits: shorter pretraining"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "robot":
        robot(args.task, args.seeds, args.episodes, tuple(args.only or RUNS))
    elif args.command == "diagnose":
        diagnose(args.task, args.seeds, args.episodes)
    elif args.command == "variant":
        variant(args.task, args.seeds, args.run, args.label, args.sets, args.episodes)
    elif args.command == "contraction":
        contraction(args.task, args.seeds, args.scale, args.runs)
    elif args.command == "digits":
        digits(args.seeds, args.pretrain_steps)
    elif args.command == "spread":
        spread(args.task, args.runs or [])
    elif args.command == "noise":
        noise_scale(args.task, args.runs or [])
    elif args.command == "misses":
        misses(args.task, args.runs or [])
    elif args.command == "confirm":
        confirm(
            args.task,
            args.runs or [],
            args.blocks,
            args.block_episodes,
            tuple(args.nfes),
            args.eval_seed,
        )
    elif args.command == "selffit":
        selffit(args.task, args.runs or [])
    elif args.command == "learnable":
        learnable(args.task, args.runs or [])
    elif args.command == "table":
        table(args.task)
    elif args.command == "render":
        render(args.task)
    else:
        plots(args.task)


if __name__ == "__main__":
    main()
