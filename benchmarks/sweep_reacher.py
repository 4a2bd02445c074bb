"""A time-boxed, parallel sweep of FT-FM / ResFT-FM settings on Reacher-v5, through the CLI.

Why: on the committed recipes FT-FM fell below the pretrained policy at the deployed 2 NFE
(docs/methods/reconstruction.md). Each candidate remedy (a weaker reconstruction term, fewer
steps, more demonstrations) needs 3 seeds of ~2 CPU-minutes each; this script runs them as
``flowpost train`` jobs in a pool of processes (one thread each), the pretrained policies
first, then every variant seed-major (so a cut-off sweep still covers every variant at seed
0), and records each run's end-of-training evaluation (``summary.json``: success rate, final
distance, return at the recipe's ``eval.nfe`` = 2 over ``eval.episodes`` episodes).

Results are written after every finished job to ``--results`` (JSON; finished jobs are
never rerun when the run folder holds a ``summary.json``). The variant that a later recipe
adopts must then be validated by ``bench_reconstruction.py robot`` on the committed recipe.

    python benchmarks/sweep_reacher.py --work /tmp/sweep --jobs 12 --budget 480

``--grid length`` asks a second question: how long must the policy be pretrained, and what
do FT-FM and ResFT-FM add to a pretrained policy that is trained longer? It pretrains with
``train.steps`` = 4000 (the recipe until this sweep) and 16000, and fine-tunes each with the
committed FT-FM and ResFT-FM recipes, with FT-FM at a reconstruction weight of ~0
(``method.sigma=10000``: only its flow-matching term, i.e. the same 400 further steps of
plain flow matching: the control that says what the reconstruction term itself does) and
with ``method.code_noise=0.3``; and FT-FM / ResFT-FM trained for and deployed at 1 NFE
(compared with the pretrained policy at 1 NFE).
Results: ``reconstruction_pretrain_length_reacher.json``.

    python benchmarks/sweep_reacher.py --grid length --work /tmp/sweep-length --jobs 2
    python benchmarks/sweep_reacher.py --grid length --task pusher --work /tmp/sweep-pusher

The grid's ``success_rate`` is the sampled policy's (noise scale 1): the recipes deploy
Reacher with ``eval.noise_scale: 0`` since session 7, so cells added after that run with
``--set eval.noise_scale=1`` to stay comparable; ``bench_reconstruction.py noise`` then
measures both scales for named runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reconstruction_sweep_reacher.json"
LENGTH_RESULTS = "reconstruction_pretrain_length_{task}.json"  # in RESULTS' folder


@dataclass(frozen=True)
class Job:
    name: str  # variant name, e.g. "ft_fm/sigma0.3"
    recipe: str
    seed: int
    demos: int
    sets: tuple[str, ...] = ()
    after: str | None = None  # the pretrain job this one starts from
    pretrain_steps: int = 0  # 0: the recipe's; else train.steps of the pretraining
    task: str = "reacher"  # recipes/<task>/

    @property
    def key(self) -> str:
        length = f"/p{self.pretrain_steps}" if self.pretrain_steps else ""
        return f"{self.name}{length}/d{self.demos}/s{self.seed}"


# (variant, recipe, overrides): every FT variant runs on the pretrained policy of its demos
VARIANTS: list[tuple[str, str, tuple[str, ...], int]] = [
    ("ft_fm/base", "ft_fm", (), 200),
    ("resft_fm/base", "resft_fm", (), 200),
    ("ft_fm/sigma0.3", "ft_fm", ("method.sigma=0.3",), 200),
    ("ft_fm/sigma1", "ft_fm", ("method.sigma=1.0",), 200),
    ("ft_fm/learn_sigma", "ft_fm", ("method.learn_sigma=true",), 200),
    ("resft_fm/sigma0.3", "resft_fm", ("method.sigma=0.3",), 200),
    ("ft_fm/base", "ft_fm", (), 1000),
    ("resft_fm/base", "resft_fm", (), 1000),
    ("ft_fm/sigma0.3", "ft_fm", ("method.sigma=0.3",), 1000),
    ("ft_fm/steps200", "ft_fm", ("train.steps=200",), 200),
]


def plan(seeds: list[int]) -> list[Job]:
    jobs = [
        Job("pretrain", "pretrain", s, d, (f"data.demos={d}",))
        for d in sorted({v[3] for v in VARIANTS})
        for s in seeds
    ]
    for s in seeds:
        for name, recipe, sets, d in VARIANTS:
            jobs.append(Job(name, recipe, s, d, (f"data.demos={d}", *sets), f"pretrain/d{d}/s{s}"))
    return jobs


LENGTH_STEPS = (4000, 16000)
# checkpoints chosen by closed-loop roll-outs on 500 validation episodes, checked every 100
SELECT_ROLLOUTS = ("train.select_rollouts=500", "train.validate_every=100")
# session 15's building blocks (LENGTH_VARIANTS): the force from a trained copy read on the
# anchored path; one copy as the anchor and the force; FT-FM's Reacher terms and lr
PATH_FORCE = ("method.residual_anchor=centre", "method.residual_path_net=true")
ONE_COPY = (*PATH_FORCE, "method.residual_anchor_net=trained")
FT_FM_TERMS = ("method.self_weight=10", "method.also_nfe=[1]")
FT_FM_LR = ("train.lr=3e-4",)
NO_GUARD = ("train.guard=false",)
DETERMINISTIC = ("eval.noise_scale=0",)
LENGTH_VARIANTS: list[tuple[str, str, tuple[str, ...]]] = [
    ("ft_fm/base", "ft_fm", ()),
    ("resft_fm/base", "resft_fm", ()),
    ("ft_fm/fm_only", "ft_fm", ("method.sigma=10000",)),
    ("ft_fm/code_noise0.3", "ft_fm", ("method.code_noise=0.3",)),
    # trained for and deployed at 1 NFE (compared with the pretrained policy at 1 NFE)
    ("ft_fm/nfe1", "ft_fm", ("method.nfe=1", "eval.nfe=1")),
    ("resft_fm/nfe1", "resft_fm", ("method.nfe=1", "eval.nfe=1")),
    # session 7, on the 16000-step policies only (--lengths 16000): does a policy whose
    # 2-step sampler spreads less do better? A stronger guaranteed contraction of ResFT-FM's
    # residual, a noisier code for FT-FM (which penalises the decoder's sensitivity to its
    # code), and a weaker reconstruction term.
    ("resft_fm/mu0.5", "resft_fm", ("method.mu=0.5",)),
    ("resft_fm/mu1", "resft_fm", ("method.mu=1.0",)),
    ("resft_fm/mu2", "resft_fm", ("method.mu=2.0",)),
    ("resft_fm/mu4", "resft_fm", ("method.mu=4.0",)),
    ("ft_fm/code_noise0.6", "ft_fm", ("method.code_noise=0.6",)),
    ("ft_fm/code_noise1", "ft_fm", ("method.code_noise=1.0",)),
    ("resft_fm/code_noise1", "resft_fm", ("method.code_noise=1.0",)),
    ("ft_fm/sigma0.3", "ft_fm", ("method.sigma=0.3",)),
    # session 8, 16000-step policies only: can ResFT-FM get above the pretrained policy at
    # all? A weaker guarantee, no or a weaker flow-matching term (which pulls the residual's
    # centre onto the mean path), a lower learning rate, 4x longer; FT-FM's weaker FM term.
    ("resft_fm/mu0.03", "resft_fm", ("method.mu=0.03",)),
    ("resft_fm/fm_weight0", "resft_fm", ("method.fm_weight=0",)),
    ("resft_fm/fm_weight0.1", "resft_fm", ("method.fm_weight=0.1",)),
    ("resft_fm/lr3e-4", "resft_fm", ("train.lr=3e-4",)),
    ("resft_fm/steps1600", "resft_fm", ("train.steps=1600",)),
    # the residual's codes from its own (contracting) field: the round trip then has no
    # contraction mismatch, only the 2-step sampler's discretisation error
    ("resft_fm/encoder_current", "resft_fm", ("method.encoder=current",)),
    ("ft_fm/fm_weight0.1", "ft_fm", ("method.fm_weight=0.1",)),
    # session 9: a wider contracting family. A skew-symmetric S(t, c) in the gain (a rotation
    # about the centre) and the gradient of a convex potential (nonlinear in the state) leave
    # the symmetric Jacobian part <= -mu; does the residual then fit, and does it carry?
    ("resft_fm/skew", "resft_fm", ("method.residual_skew=true",)),
    ("resft_fm/potential64", "resft_fm", ("method.residual_potential=64",)),
    (
        "resft_fm/skew_potential64",
        "resft_fm",
        ("method.residual_skew=true", "method.residual_potential=64"),
    ),
    # session 10: a centre that starts on the straight path to the pretrained field's own
    # one-step end point a(c) = v_pre(0, 0, c), so that the residual's net of (t, c) need not
    # regress the whole policy from 200 demonstrations; as a feature too; with the rotation;
    # with a(c) from a trained copy of the pretrained field (its features, fine-tuned)
    ("resft_fm/anchor_centre", "resft_fm", ("method.residual_anchor=centre",)),
    ("resft_fm/anchor_both", "resft_fm", ("method.residual_anchor=both",)),
    (
        "resft_fm/anchor_centre_skew",
        "resft_fm",
        ("method.residual_anchor=centre", "method.residual_skew=true"),
    ),
    (
        "resft_fm/anchor_centre_trained",
        "resft_fm",
        ("method.residual_anchor=centre", "method.residual_anchor_net=trained"),
    ),
    # session 12: ResFT-FM's 2-NFE policy collapses at 1 NFE (0.27 against the pretrained
    # 0.81): an Euler step h maps x - m by I - hK, past the centre where hK > 1. Capping the
    # gain K at 1 (residual_max_gain) keeps even the 1-step sampler from overshooting;
    # trained at 2 NFE, and at 1 NFE
    ("resft_fm/gain1", "resft_fm", ("method.residual_max_gain=1",)),
    (
        "resft_fm/nfe1_gain1",
        "resft_fm",
        ("method.nfe=1", "eval.nfe=1", "method.residual_max_gain=1"),
    ),
    # the 1-step collapse is not the gain's overshoot (gain1 keeps it): the residual fitted at
    # t = 0 and 0.5 is applied at t = 0 alone. Fit the reconstruction through 1 step as well
    # as the deployed 2 (method.also_nfe: the NLL averaged over both step counts)
    ("resft_fm/also1", "resft_fm", ("method.also_nfe=[1]",)),
    ("ft_fm/also1", "ft_fm", ("method.also_nfe=[1]",)),
    # session 13: the deterministic policy is deployed at z = 0, a code the reconstruction
    # term reaches only by interpolation (expert chunks encode elsewhere). Also reconstruct
    # the frozen pretrained field's own accurate z = 0 output (method.self_weight). The hope
    # was that the residual's centre would then regress the 2-step sampler's error, a
    # function of the observation, rather than the expert's noisy chunks; selffit shows the
    # residual cannot fit that error at all (reconstruction.md, session 13)
    ("resft_fm/self1", "resft_fm", ("method.self_weight=1",)),
    ("ft_fm/self1", "ft_fm", ("method.self_weight=1",)),
    # at weight 1 the reconstruction term dominates and ResFT-FM's z = 0 error hardly moves
    ("resft_fm/self10", "resft_fm", ("method.self_weight=10",)),
    ("ft_fm/self10", "ft_fm", ("method.self_weight=10",)),
    # session 14: no residual setting beat the noise, so keep the start unless the policy's
    # own success says otherwise. The anchored centre (m = t a(c)) makes the start exactly
    # the pretrained policy's deterministic 1- and 2-step map (r = 0 on that path), and
    # train.select_rollouts keeps it until a check beats it clearly (a paired test) on
    # 500 validation episodes; with the 1-step reconstruction too (1-NFE collapse); FT-FM
    # under the same selection (does the bar cost it its gain?)
    (
        "resft_fm/anchor_select",
        "resft_fm",
        ("method.residual_anchor=centre", *SELECT_ROLLOUTS),
    ),
    (
        "resft_fm/anchor_select_also1",
        "resft_fm",
        ("method.residual_anchor=centre", "method.also_nfe=[1]", *SELECT_ROLLOUTS),
    ),
    ("ft_fm/select", "ft_fm", SELECT_ROLLOUTS),
    # with the start guarded by the selection, can a residual with more reach beat it? The
    # anchored centre's end point from a trained copy of the pretrained field (a full
    # network of the observation, still x-independent), or a force offset (moves the
    # velocity directly); each with FT-FM's self term and 1-step reconstruction
    (
        "resft_fm/anchor_trained_self10_select",
        "resft_fm",
        (
            "method.residual_anchor=centre",
            "method.residual_anchor_net=trained",
            "method.self_weight=10",
            "method.also_nfe=[1]",
            *SELECT_ROLLOUTS,
        ),
    ),
    (
        "resft_fm/anchor_force_self10_select",
        "resft_fm",
        (
            "method.residual_anchor=centre",
            "method.residual_offset=force",
            "method.self_weight=10",
            "method.also_nfe=[1]",
            *SELECT_ROLLOUTS,
        ),
    ),
    # session 15: the residual's x-independent force from a trained copy of the pretrained
    # field on the anchored path (method.residual_path_net): the pretrained network's
    # features, which a (t, c) net from scratch lacks; with the recipe's loss, and with FT-FM's
    # Reacher recipe terms (self term, 1-step reconstruction). On Pusher deployed
    # deterministically (FT-FM's Pusher recipe does; the pretrained policy's deterministic
    # 2-step map is far from its accurate one there). A full copy at the residual's lr of 1e-3
    # collapsed on Pusher (seed 0: validation 0.276 -> 0.002 by step 300), so the later ones
    # use FT-FM's 3e-4; "noguard" asks whether the validation dips recover without the
    # guard's rollbacks (the selection still keeps the best check); "copy" uses one trained
    # copy as both the anchor and the force, so that the deterministic 1- and 2-step maps
    # are the copy's own (the Reacher and Pusher recipes since, with FT-FM's terms)
    *[
        (f"resft_fm/anchor_{name}", "resft_fm", (*sets, *SELECT_ROLLOUTS))
        for name, sets in (
            ("path_select", PATH_FORCE),
            ("path_self10_select", (*PATH_FORCE, *FT_FM_TERMS)),
            ("path_lr3e-4_select_det", (*PATH_FORCE, *FT_FM_LR, *DETERMINISTIC)),
            ("path_lr3e-4_noguard_select_det", (*PATH_FORCE, *FT_FM_LR, *NO_GUARD, *DETERMINISTIC)),
            ("copy_lr3e-4_select_det", (*ONE_COPY, *FT_FM_LR, *DETERMINISTIC)),
            ("copy_lr3e-4_noguard_select_det", (*ONE_COPY, *FT_FM_LR, *NO_GUARD, *DETERMINISTIC)),
            ("copy_self10_lr3e-4_select_det", (*ONE_COPY, *FT_FM_TERMS, *FT_FM_LR, *DETERMINISTIC)),
            ("copy_self10_lr3e-4_select", (*ONE_COPY, *FT_FM_TERMS, *FT_FM_LR)),
            ("path_select_det", (*PATH_FORCE, *DETERMINISTIC)),
        )
    ],
]


def plan_length(
    seeds: list[int],
    lengths: tuple[int, ...] = LENGTH_STEPS,
    demos: int = 200,
    task: str = "reacher",
) -> list[Job]:
    """Pretrainings of each length, then every variant on each, seed-major."""
    d = f"data.demos={demos}"
    jobs = [
        Job("pretrain", "pretrain", s, demos, (d, f"train.steps={n}"), None, n, task)
        for s in seeds
        for n in lengths
    ]
    for s, n in ((s, n) for s in seeds for n in lengths):
        after = f"pretrain/p{n}/d{demos}/s{s}"
        for name, recipe, sets in LENGTH_VARIANTS:
            jobs.append(Job(name, recipe, s, demos, (d, *sets), after, n, task))
    return jobs


def run_job(job: Job, work: Path, common: tuple[str, ...] = ()) -> dict[str, Any]:
    out = work / job.key.replace("/", "-")
    summary = out / "summary.json"
    sets = [f"train.seed={job.seed}", *job.sets, *common]
    if job.after:
        sets.append(f"init_from={work / job.after.replace('/', '-')}")
    cmd = [sys.executable, "-m", "flowpost", "train", f"recipes/{job.task}/{job.recipe}.yaml"]
    cmd += ["--out", str(out), "--no-progress", "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    started = time.time()
    record: dict[str, Any] = {"command": " ".join(cmd[2:])}
    if not summary.is_file():
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            record["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            return record
    s = json.loads(summary.read_text())
    for k in ("success_rate", "final_distance", "return", "nfe", "step", "best_step"):
        record[k] = s.get(k)
    if s.get("best_step") is not None:  # a selected checkpoint: the last model's, each check's
        record["last_success_rate"] = s.get("last/success_rate", s.get("success_rate"))
        record["validation"] = validation_trace(out / "metrics.jsonl")
    record["wall_s"] = round(time.time() - started, 1)
    return record


def validation_trace(metrics: Path) -> dict[str, float]:
    """Step -> validation success rate (roll-out selection) of a run's ``metrics.jsonl``."""
    trace: dict[str, float] = {}
    for line in metrics.read_text().splitlines():
        rec = json.loads(line)
        if "validation/success_rate" in rec:
            trace[str(rec["step"])] = rec["validation/success_rate"]
    return trace


PROFILE_NFE = (1, 4)


def nfe_profile(job: Job, work: Path, record: dict[str, Any]) -> None:
    """Add the pretrained policy's success at other step counts (``flowpost eval --nfe K
    --json``, the recipe's evaluation episodes): the few-step gap fine-tuning targets."""
    out = work / job.key.replace("/", "-")
    profile = record.setdefault("nfe_profile", {})
    for k in PROFILE_NFE:
        if str(k) in profile:
            continue
        cmd = [sys.executable, "-m", "flowpost", "eval", str(out), "--nfe", str(k), "--json"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:  # left out of the record (and the table); say why
            print(f"{job.key}: eval --nfe {k} failed: {proc.stderr.strip()[-300:]}", flush=True)
            continue
        m = json.loads(proc.stdout)
        profile[str(k)] = {key: m.get(key) for key in ("success_rate", "return")}


def pretrain_length(key: str) -> int:
    """The pretraining length a length-grid key names (``.../p16000/...``), else 0."""
    found = re.search(r"/p(\d+)(/|$)", key)
    return int(found.group(1)) if found else 0


def length_order(key: str) -> tuple[int, bool, str]:
    """Sort key of result labels: by pretraining length, the pretrained policy first."""
    return (pretrain_length(key), not key.startswith("pretrain"), key)


def pretrained_label(label: str) -> str:
    """``VARIANT/pN/dD[/sS]`` -> ``pretrain/pN/dD[/sS]``: the policy a run was fine-tuned
    from (same pretraining length, demonstrations and seed)."""
    return "pretrain/p" + label.rsplit("/p", 1)[1]


def baseline(pretrained: dict[str, Any], nfe: Any) -> float | None:
    """The pretrained policy's success at a run's deployed NFE (the recipe's 2, or its
    ``nfe_profile``), None where it was not measured."""
    if nfe in (None, 2):
        value = pretrained.get("success_rate")
    else:
        value = pretrained.get("nfe_profile", {}).get(str(nfe), {}).get("success_rate")
    return None if value is None else float(value)


def table(data: dict[str, Any]) -> str:
    """Markdown: per variant and seed, success at 2 NFE and return, and the paired gain over
    the pretrained policy of the same demonstrations and seed (same evaluation episodes)."""
    cells: dict[str, dict[str, Any]] = data["cells"]
    lines = [
        "| variant | demos | seeds | success (per seed) | mean gain over pretrained | "
        "return (mean) |",
        "|---|---|---|---|---|---|",
    ]

    # pretraining first, then its fine-tunings (length grid: grouped by pretraining length)
    variants = dict.fromkeys(k.rsplit("/", 1)[0] for k in sorted(cells, key=length_order))
    for variant in variants:
        name, demos = variant.rsplit("/", 1)
        length = ""
        if re.fullmatch(r".+/p\d+", name):  # --grid length: name/p<steps>
            name, length = name.rsplit("/", 1)
        runs = {k.rsplit("/", 1)[1]: v for k, v in cells.items() if k.startswith(variant + "/")}
        ok = {s: v for s, v in runs.items() if v.get("success_rate") is not None}
        prefix = f"pretrain/{length}/" if length else "pretrain/"
        pre = {s: cells.get(f"{prefix}{demos}/{s}", {}) for s in ok}
        base = {s: baseline(pre[s], v.get("nfe")) for s, v in ok.items()}
        gains = [
            float(v["success_rate"]) - b
            for s, v in ok.items()
            if name != "pretrain" and (b := base[s]) is not None
        ]
        per = ", ".join(f"{s}: {v['success_rate']:.3f}" for s, v in sorted(ok.items()))
        gain = f"{sum(gains) / len(gains):+.3f} ({len(gains)} seeds)" if gains else "-"
        ret = sum(float(v["return"]) for v in ok.values()) / max(len(ok), 1)
        profile = [v.get("nfe_profile", {}) for v in ok.values()] if name == "pretrain" else []
        if profile and all(profile):
            extra = ", ".join(
                f"{k} NFE {statistics.fmean(p[k]['success_rate'] for p in profile):.3f}"
                for k in sorted(profile[0], key=int)
            )
            per += f" (mean at {extra})"
        label = name
        if length:
            label = f"pretrain, {length[1:]} steps" if name == "pretrain" else f"{name}, on it"
            label = f"**{label}**" if name == "pretrain" else label
        nfes = {v.get("nfe") for v in ok.values()} - {None, 2}
        label += f" (at {nfes.pop()} NFE)" if len(nfes) == 1 else ""
        lines.append(f"| {label} | {demos[1:]} | {len(ok)} | {per} | {gain} | {ret:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/flowpost-sweep-reacher")
    p.add_argument("--results", help=f"default {RESULTS.name} ({LENGTH_RESULTS} for length)")
    p.add_argument("--task", choices=["reacher", "pusher"], default="reacher", help="length grid")
    p.add_argument("--grid", choices=["remedies", "length"], default="remedies")
    p.add_argument("--lengths", type=int, nargs="+", default=list(LENGTH_STEPS))
    p.add_argument("--jobs", type=int, default=2, help="processes at once")
    p.add_argument("--budget", type=float, default=3600, help="seconds; no job starts after")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", dest="common", action="append", default=[], help="for every job")
    p.add_argument("--only", nargs="*", help="only these variant names (and the pretraining)")
    p.add_argument("--table", action="store_true", help="print the results as Markdown")
    args = p.parse_args()
    default = RESULTS
    if args.grid == "length":
        default = RESULTS.with_name(LENGTH_RESULTS.format(task=args.task))
    work, results = Path(args.work), Path(args.results or default)
    if args.table:
        print(table(json.loads(results.read_text())))
        return
    work.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = json.loads(results.read_text()) if results.is_file() else {}
    cells: dict[str, Any] = data.setdefault("cells", {})
    data["meta"] = {"cpu_count": os.cpu_count(), "jobs": args.jobs, "host": os.uname().nodename}
    lengths = tuple(args.lengths)
    jobs = plan(args.seeds)
    if args.grid == "length":
        jobs = plan_length(args.seeds, lengths, task=args.task)
    todo = [j for j in jobs if j.key not in cells]
    if args.only:
        todo = [j for j in todo if j.name == "pretrain" or j.name in args.only]
    done = {k for k, v in cells.items() if "error" not in v}
    deadline = time.time() + args.budget
    running: dict[Future[dict[str, Any]], Job] = {}
    with ThreadPoolExecutor(args.jobs) as pool:
        while todo or running:
            ready = [j for j in todo if j.after is None or j.after in done]
            while ready and len(running) < args.jobs and time.time() < deadline:
                job = ready.pop(0)
                todo.remove(job)
                running[pool.submit(run_job, job, work, tuple(args.common))] = job
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                record = fut.result()
                cells[job.key] = record
                if "error" not in record:
                    done.add(job.key)
                results.write_text(json.dumps(data, indent=1, sort_keys=True))
                print(job.key, {k: record.get(k) for k in ("success_rate", "error")}, flush=True)
    if args.grid == "length":  # the pretrained policies' few-step gap
        for job in jobs:
            if job.name == "pretrain" and job.key in done:
                nfe_profile(job, work, cells[job.key])
                results.write_text(json.dumps(data, indent=1, sort_keys=True))
    print(f"{len(cells)} cells in {results}")


if __name__ == "__main__":
    main()
