"""Markdown tables of the FT-FM / ResFT-FM results JSON (``bench_reconstruction.py table`` prints
them, ``render`` writes them into docs/methods/reconstruction.md between ``<!-- bench:NAME -->``
and ``<!-- /bench:NAME -->`` markers, so that no number in that page is typed by hand)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NFES = (1, 2, 4, 10)
RUNS = ("pretrain", "ft_fm", "resft_fm")


def mean_std(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


DOC = ROOT / "docs" / "methods" / "reconstruction.md"
LABELS = dict(zip(RUNS, ("pretrained (FM)", "FT-FM", "ResFT-FM"), strict=True))


def robot_tables(task: str) -> str:
    """Markdown tables of one robot task's results JSON: mean +- std over seeds, the
    binomial standard error of one seed's success rate, and the paired per-seed gains."""
    data = json.loads((RESULTS / f"reconstruction_{task}.json").read_text())
    seeds = sorted({k.split("/")[0] for k in data if k.startswith("seed")})
    eps, e = data["episodes"], data["expert"]
    out = [
        f"{eps} evaluation episodes per cell (the same episodes and noise for every policy);"
        " mean +- std over the seeds; `SE` is the binomial standard error of one seed's"
        " success rate, `sqrt(p (1 - p) / episodes)`, at the mean `p`.",
        "",
        "| policy | NFE | success rate | SE | final distance | seeds |",
        "|---|---|---|---|---|---|",
        f"| scripted expert | - | {e['success_rate']:.3f} | - | {e['final_distance']:.5f} | - |",
    ]
    if "expert_steps100" in data:  # pusher: the expert at Pusher-v5's own 100-step horizon
        e100 = data["expert_steps100"]
        out.append(
            f"| scripted expert, 100 steps | - | {e100['success_rate']:.3f} | - | "
            f"{e100['final_distance']:.5f} | - |"
        )
    for name in RUNS:
        for nfe in NFES:
            rows = [data.get(f"{s}/{name}/nfe{nfe}") for s in seeds]
            rows = [r for r in rows if r is not None]
            if not rows:
                continue
            sr = mean_std([r["success_rate"] for r in rows])
            fd = mean_std([r["final_distance"] for r in rows])
            se = (sr["mean"] * (1 - sr["mean"]) / eps) ** 0.5
            out.append(
                f"| {LABELS[name]} | {nfe} | {sr['mean']:.3f} +- {sr['std']:.3f} | {se:.3f} | "
                f"{fd['mean']:.4f} +- {fd['std']:.4f} | {len(rows)} |"
            )
    out += [
        "",
        "Paired per seed (same episodes, same noise): success rate, and the fine-tuned"
        " policy's gain over its own pretrained policy.",
        "",
        "| seed | NFE | pretrained | FT-FM | gain | ResFT-FM | gain |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in seeds:
        for nfe in NFES:
            cells = [data.get(f"{s}/{name}/nfe{nfe}") for name in RUNS]
            if cells[0] is None or all(c is None for c in cells[1:]):
                continue
            p = cells[0]["success_rate"]
            cols = []
            for c in cells[1:]:
                cols += (
                    [f"{c['success_rate']:.3f}", f"{c['success_rate'] - p:+.3f}"]
                    if c
                    else ["-", "-"]
                )
            out.append(f"| {s[4:]} | {nfe} | {p:.3f} | " + " | ".join(cols) + " |")
    walls = [(s, name, data.get(f"{s}/{name}/train_cpu_s")) for s in seeds for name in RUNS]
    cpu = [f"{n} seed {s[4:]} {c:.0f} s" for s, n, c in walls if c is not None]
    if cpu:
        out += ["", "CPU seconds of training (`train_cpu_s`, one thread): " + ", ".join(cpu) + "."]
    return "\n".join(out)


def contraction_table(task: str) -> str:
    """Mean end-point displacement per unit mid-way perturbation, pretrained against ResFT-FM,
    averaged over the seeds of each family of runs (labels ``seedN`` for the benchmark's own
    runs, ``FAMILY/seedN`` for named ones, e.g. a later recipe's)."""
    data = json.loads((RESULTS / f"reconstruction_contraction_{task}.json").read_text())
    groups: dict[tuple[str, str, str], list[float]] = {}
    for key, value in data.items():
        label, name, nfe = key.rsplit("/", 2)
        family = label.rsplit("/", 1)[0] if "/" in label else "the benchmark's runs"
        groups.setdefault((family, name, nfe), []).append(value["mean"])
    out = ["| runs | Euler steps | pretrained | ResFT-FM |", "|---|---|---|---|"]
    for family in sorted({f for f, _, _ in groups}, key=lambda f: (f != "the benchmark's runs", f)):
        for nfe in (2, 4, 10, 32):
            cols = []
            for name in ("pretrain", "resft_fm"):
                vals = groups.get((family, name, f"nfe{nfe}"), [])
                cols.append(f"{statistics.fmean(vals):.3f} (n={len(vals)})" if vals else "-")
            out.append(f"| {family} | {nfe} | {cols[0]} | {cols[1]} |")
    return "\n".join(out)


def diagnostics_table(task: str) -> str:
    """The ``diagnose`` cells: encoder accuracy, and 2-NFE success with scaled noise."""
    data = json.loads((RESULTS / f"reconstruction_diagnostics_{task}.json").read_text())
    out = [
        "| seed | encoder | E z^2 per dim (1 if calibrated) | round-trip MSE |",
        "|---|---|---|---|",
    ]
    for key in sorted(k for k in data if "/encoder_" in k):
        seed, enc = key.split("/")
        v = data[key]
        out.append(
            f"| {seed[4:]} | {enc.replace('encoder_rk4_nfe', '')} RK4 evaluations | "
            f"{v['code_second_moment']:.3f} | {v['round_trip_mse']:.2e} |"
        )
    out += [
        "",
        "| seed | policy | success, 2 NFE, noise x 0 | success, 2 NFE, noise x 1 |",
        "|---|---|---|---|",
    ]
    seeds = sorted({k.split("/")[0] for k in data})
    for seed in seeds:
        for name in RUNS:
            cols = [data.get(f"{seed}/{name}/nfe2_noise{x}") for x in ("0", "1")]
            if all(c is None for c in cols):
                continue
            vals = [f"{c['success_rate']:.3f}" if c else "-" for c in cols]
            out.append(f"| {seed[4:]} | {LABELS[name]} | {vals[0]} | {vals[1]} |")
    return "\n".join(out)


def render(task: str) -> None:
    """Write the tables into ``docs/methods/reconstruction.md`` between the markers
    ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` (NAME: the task, ``contraction_TASK``,
    ``digits``), so that no number in the page is typed by hand."""
    blocks: dict[str, Callable[[str], str]] = {task: robot_tables}
    blocks[f"contraction_{task}"] = lambda t: contraction_table(t)
    if (RESULTS / f"reconstruction_diagnostics_{task}.json").is_file():
        blocks[f"diagnostics_{task}"] = diagnostics_table
    if (RESULTS / "reconstruction_digits.json").is_file():
        blocks["digits"] = lambda t: digits_table()
    if (RESULTS / f"reconstruction_spread_{task}.json").is_file():
        blocks[f"spread_{task}"] = spread_table
    if (RESULTS / f"reconstruction_noise_scale_{task}.json").is_file():
        blocks[f"noise_{task}"] = noise_table
    if (RESULTS / f"reconstruction_misses_{task}.json").is_file():
        blocks[f"misses_{task}"] = misses_table
    if (RESULTS / f"reconstruction_confirm_{task}.json").is_file():
        blocks[f"confirm_{task}"] = confirm_table
    for path in sorted(RESULTS.glob(f"reconstruction_confirm_{task}_seed*.json")):
        stem = path.stem.removeprefix("reconstruction_")
        blocks[stem] = partial(confirm_table, stem=stem)
    if (RESULTS / f"reconstruction_selffit_{task}.json").is_file():
        blocks[f"selffit_{task}"] = selffit_table
    for sweep, name in (
        ("reconstruction_sweep_reacher.json", "sweep_reacher"),
        (f"reconstruction_pretrain_length_{task}.json", f"length_{task}"),
    ):
        if (RESULTS / sweep).is_file():
            blocks[name] = partial(sweep_table, sweep)
    text = DOC.read_text()
    for name, make in blocks.items():
        start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        if start not in text:
            continue
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{make(task)}\n{end}{tail}"
        print(f"rendered {name}")
    DOC.write_text(text)


def selffit_table(task: str) -> str:
    """The ``selffit`` cells: per pretrained run and method, the ``z = 0`` few-step error
    (mean squared, normalised action units) on the training batch and on held-out
    conditions, at the start, the lowest and highest over the checks, and the end."""
    data = json.loads((RESULTS / f"reconstruction_selffit_{task}.json").read_text())
    setting = data["setting"]
    out = [
        f"{setting['steps']} Adam steps on the self term alone (batch {setting['batch']}, the "
        f"recipe's learning rate and schedule; checked every {setting['every']} steps; raw "
        "weights). Train: the step's batch; held-out: 2000 held-out conditions.",
        "",
        "| pretrained run | method | lr | train: start / lowest / highest / end | "
        "held-out: start / lowest / highest / end |",
        "|---|---|---|---|---|",
    ]
    for key in sorted(k for k in data if k != "setting"):
        run, method = key.split("/", 4)[:4], key.split("/", 4)[4]
        trace = data[key]["trace"]

        def cols(field: str, trace: list[dict[str, float]] = trace) -> str:
            values = [c[field] for c in trace]
            return f"{values[0]:.5f} / {min(values):.5f} / {max(values):.5f} / {values[-1]:.5f}"

        out.append(
            f"| {'/'.join(run)} | {method} | {data[key]['lr']:g} | {cols('train_mse')} | "
            f"{cols('heldout_mse')} |"
        )
    return "\n".join(out)


def spread_table(task: str) -> str:
    """The ``spread`` cells: per run label, spread and mean error at 2 and 32 steps."""
    data = json.loads((RESULTS / f"reconstruction_spread_{task}.json").read_text())

    from sweep_reacher import length_order

    labels = sorted({k.rsplit("/", 1)[0] for k in data}, key=length_order)
    out = [
        "| run | spread, 2 steps | mean error, 2 steps | spread, 32 steps | mean error, 32 steps |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        cols = []
        for nfe in (2, 32):
            v = data.get(f"{label}/nfe{nfe}")
            cols += [f"{v['spread']:.3f}", f"{v['mean_error']:.3f}"] if v else ["-", "-"]
        out.append(f"| {label} | " + " | ".join(cols) + " |")
    return "\n".join(out)


def noise_table(task: str) -> str:
    """The ``noise`` cells: per variant (label without its seed), success per seed with the
    sampler's noise scaled by 0 and by 1, and the mean gain over the pretrained policy of
    the same seed and pretraining length at the same scale (paired: same episodes)."""
    data = json.loads((RESULTS / f"reconstruction_noise_scale_{task}.json").read_text())

    from sweep_reacher import length_order, pretrained_label

    runs = sorted({k.rsplit("/", 1)[0] for k in data})  # variant/pN/dD/sS
    variants = sorted({r.rsplit("/", 1)[0] for r in runs}, key=length_order)
    out = [
        "| variant | seeds | success, noise x 0 (per seed) | mean gain, x 0 | "
        "success, noise x 1 (per seed) | mean gain, x 1 |",
        "|---|---|---|---|---|---|",
    ]
    for v in variants:
        seeds = sorted(r.rsplit("/", 1)[1] for r in runs if r.rsplit("/", 1)[0] == v)
        pre = pretrained_label(v)  # same pretraining length and demos
        cols = []
        for scale in ("0", "1"):
            got = {s: data.get(f"{v}/{s}/noise{scale}", {}).get("success_rate") for s in seeds}
            per = ", ".join(f"{s}: {x:.3f}" for s, x in got.items() if x is not None)
            base = {s: data.get(f"{pre}/{s}/noise{scale}", {}).get("success_rate") for s in seeds}
            gains = [x - b for s, x in got.items() if x is not None and (b := base[s]) is not None]
            gain = "-" if v == pre or not gains else f"{statistics.fmean(gains):+.3f}"
            cols += [per or "-", gain]
        label = f"**{v}**" if v == pre else v
        out.append(f"| {label} | {len(seeds)} | " + " | ".join(cols) + " |")
    return "\n".join(out)


def misses_table(task: str) -> str:
    """The ``misses`` cells: per run, deterministic success, how its failures miss (just past
    the threshold, or far), the episodes it won and lost against its pretrained policy
    (paired: the same evaluation episodes), and its z = 0 map's gap to the accurate one."""
    data = json.loads((RESULTS / f"reconstruction_misses_{task}.json").read_text())

    from sweep_reacher import length_order, pretrained_label

    out = [
        "| run | success | failures | of which near (< 2x threshold) | far (>= 5x) | "
        "won / lost vs pretrained | z = 0 gap, 2 steps | z = 0 gap, 4 steps | "
        "reconstruction MSE, train / held-out |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label in sorted(data, key=length_order):
        c = data[label]
        thr, dist = c["threshold"], c["final_distances"]
        fails = [d for d in dist if d >= thr]
        near = sum(d < 2 * thr for d in fails)
        far = sum(d >= 5 * thr for d in fails)
        pre = data.get(pretrained_label(label))
        paired = "-"
        if pre is not None and label != pretrained_label(label):
            ok = [d < thr for d in dist]
            ok_pre = [d < thr for d in pre["final_distances"]]
            won = sum(a and not b for a, b in zip(ok, ok_pre, strict=True))
            lost = sum(b and not a for a, b in zip(ok, ok_pre, strict=True))
            paired = f"{won} / {lost}"
        gap, rec = c["z0_gap"], c["reconstruction_mse"]
        out.append(
            f"| {label} | {c['success_rate']:.3f} | {len(fails)} | {near} | {far} | {paired} | "
            f"{gap['2']:.5f} | {gap['4']:.5f} | {rec['train']:.4f} / {rec['heldout']:.3f} |"
        )
    return "\n".join(out)


def sign_test_p(won: int, lost: int) -> float:
    """Exact two-sided sign test (McNemar's exact test) on paired episodes: the probability,
    if either policy were as likely as the other to solve an episode only one of them
    solves, of a split at least as uneven as ``won`` / ``lost``.

    >>> round(sign_test_p(9, 1), 4)
    0.0215
    >>> sign_test_p(5, 5)
    1.0
    """
    n, k = won + lost, min(won, lost)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


SIGNIFICANCE = 0.05  # the confirm table's level: below it a paired difference is called real


def paired_verdict(won: int, lost: int) -> str:
    """``above`` / ``below`` where the sign test rejects a tie at ``SIGNIFICANCE``,
    else ``level``."""
    if sign_test_p(won, lost) >= SIGNIFICANCE:
        return "level"
    return "above" if won > lost else "below"


def recipe_evaluation(task: str) -> tuple[int, int]:
    """The evaluation seed and episode count a task's recipes roll out on (``eval.seed``,
    ``eval.episodes`` of ``recipes/<task>/pretrain.yaml``, resolved as the trainer does)."""
    from flowpost.config import load_yaml
    from flowpost.train.config import build_run_config

    ev = build_run_config(load_yaml(ROOT / "recipes" / task / "pretrain.yaml")).eval
    return ev.seed, ev.episodes


def _seeds_by_variant(runs: list[str]) -> dict[str, list[str]]:
    """``VARIANT/pN/dD/sS`` run labels grouped: variant label -> its seeds, sorted."""
    grouped: dict[str, list[str]] = {}
    for r in sorted(runs):
        variant, seed = r.rsplit("/", 1)
        grouped.setdefault(variant, []).append(seed)
    return grouped


def _first_episodes(data: dict[str, Any], variants: dict[str, list[str]], episodes: int) -> str:
    """Success over the first ``episodes`` of one eval seed's recorded episodes: what the
    recipes' runs, ``flowpost eval`` and the acceptance check report."""
    parts = []
    for v, seeds in variants.items():
        for nfe in NFES:
            cells = {s: data.get(f"{v}/{s}/nfe{nfe}") for s in seeds}
            per = [
                f"{s} {c['solved'][:episodes].count('1') / episodes:.3f}"
                for s, c in cells.items()
                if c is not None
            ]
            if per:
                parts.append(f"{v} at {nfe} NFE: {', '.join(per)}")
    return (
        f"On the first {episodes} of these episodes (the recipes' `eval.episodes`: what their "
        "runs, `flowpost eval` and the acceptance check report): " + "; ".join(parts) + "."
    )


def confirm_table(task: str, stem: str | None = None) -> str:
    """The ``confirm`` cells: per policy and NFE, deterministic success on the fresh episodes
    (per seed and mean); then each fine-tuned policy against its own pretrained policy,
    paired episode by episode: episodes won / lost per seed and pooled over the seeds, the
    pooled exact sign test's p-value, and the verdict at ``SIGNIFICANCE``. ``stem``: another
    file of such cells (``confirm_<task>_seed<S>``: one evaluation seed's episodes)."""
    data = json.loads((RESULTS / f"reconstruction_{stem or 'confirm_' + task}.json").read_text())

    from sweep_reacher import length_order, pretrained_label

    setting, expert = data["setting"], data["expert"]
    n_eps = len(setting["eval_seeds"]) * setting["block_episodes"]
    grouped = _seeds_by_variant(list({k.rsplit("/", 1)[0] for k in data if "/nfe" in k}))
    variants = {v: grouped[v] for v in sorted(grouped, key=length_order)}
    recipe_seed, recipe_episodes = recipe_evaluation(task)
    own = stem is not None and setting["eval_seeds"] == [recipe_seed]
    where = (
        f"fresh evaluation episodes per cell (eval seeds {setting['eval_seeds']}, "
        f"{setting['block_episodes']} episodes each; disjoint from the recipes' own)"
    )
    if stem is not None:
        where = (
            f"evaluation episodes per cell, the first {n_eps} of eval seed "
            f"{setting['eval_seeds'][0]}"
        )
    if own:
        where += (
            f" (the recipes' own; their first {recipe_episodes} are the ones the recipes' runs "
            "and `flowpost eval` report)"
        )
    out = [
        f"{n_eps} {where}, every "
        "policy deterministic (noise scale 0, as the recipes deploy), Euler at every NFE. "
        f"Scripted expert on the same episodes: success {expert['success_rate']:.4f}, final "
        f"distance {expert['final_distance']:.5f}.",
        "",
        "| policy | NFE | success (per seed) | mean | final distance (mean) | return (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for v, seeds in variants.items():
        for nfe in NFES:
            cells = {s: data.get(f"{v}/{s}/nfe{nfe}") for s in seeds}
            got = {s: c for s, c in cells.items() if c is not None}
            if not got:
                continue
            per = ", ".join(f"{s}: {c['success_rate']:.4f}" for s, c in got.items())
            mean = statistics.fmean(c["success_rate"] for c in got.values())
            dist = statistics.fmean(c["final_distance"] for c in got.values())
            ret = statistics.fmean(c["return"] for c in got.values())
            out.append(f"| {v} | {nfe} | {per} | {mean:.4f} | {dist:.5f} | {ret:.2f} |")
    if own and setting["block_episodes"] > recipe_episodes:
        out += ["", _first_episodes(data, variants, recipe_episodes)]
    out += [
        "",
        "Paired with the pretrained policy of the same seed on the same episodes: episodes "
        "won / lost (solved by one policy only), per seed and pooled; `p`: exact two-sided "
        f"sign test on the pooled split; verdict at p < {SIGNIFICANCE}.",
        "",
        "| fine-tuned policy | NFE | won / lost per seed | pooled won / lost | mean gain | p "
        "| verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for v, seeds in variants.items():
        if v == pretrained_label(v):
            continue
        for nfe in NFES:
            per, won_all, lost_all, gains = [], 0, 0, []
            for s in seeds:
                mine = data.get(f"{v}/{s}/nfe{nfe}")
                pre = data.get(f"{pretrained_label(v)}/{s}/nfe{nfe}")
                if mine is None or pre is None:
                    continue
                a, b = mine["solved"], pre["solved"]
                won = sum(x == "1" and y == "0" for x, y in zip(a, b, strict=True))
                lost = sum(x == "0" and y == "1" for x, y in zip(a, b, strict=True))
                per.append(f"{s}: {won} / {lost}")
                won_all, lost_all = won_all + won, lost_all + lost
                gains.append(mine["success_rate"] - pre["success_rate"])
            if not per:
                continue
            p = sign_test_p(won_all, lost_all)
            out.append(
                f"| {v} | {nfe} | {', '.join(per)} | {won_all} / {lost_all} | "
                f"{statistics.fmean(gains):+.4f} | {p:.2g} | {paired_verdict(won_all, lost_all)} |"
            )
    return "\n".join(out)


def sweep_table(name: str, _task: str = "") -> str:
    """A ``sweep_reacher.py`` results file as its Markdown table (``_task``: the page's task,
    unused: the file's name says which task it holds)."""
    from sweep_reacher import table

    return table(json.loads((RESULTS / name).read_text()))


def digits_table() -> str:
    data = json.loads((RESULTS / "reconstruction_digits.json").read_text())
    seeds = sorted({k.split("/")[0] for k in data if k.startswith("seed") and "/nfe" in k})
    out = [
        "| model | NFE | reconstruction MSE | Frechet distance | runs |",
        "|---|---|---|---|---|",
    ]
    for label, names in (("pretrained", ["pretrain"]), ("FT-FM", [f"{s}/ft_fm" for s in seeds])):
        for nfe in (1, 2, 4):
            rows = [data[f"{n}/nfe{nfe}"] for n in names if f"{n}/nfe{nfe}" in data]
            if not rows:
                continue
            rec = mean_std([r["reconstruction_mse"] for r in rows])
            fr = mean_std([r["frechet"] for r in rows])
            out.append(
                f"| {label} | {nfe} | {rec['mean']:.4f} +- {rec['std']:.4f} | "
                f"{fr['mean']:.3f} +- {fr['std']:.3f} | {len(rows)} |"
            )
    return "\n".join(out)


def table(task: str) -> None:
    """Print the markdown tables (``render`` writes them into the docs)."""
    print(robot_tables(task))
    if (RESULTS / f"reconstruction_contraction_{task}.json").is_file():
        print("\n" + contraction_table(task))
