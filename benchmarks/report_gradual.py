"""Tables and figures of the GFT benchmark, from its JSON only (no number is typed by hand).

    python benchmarks/report_gradual.py            # rewrite the marked tables in
                                                   # docs/methods/gradual.md + docs/figures/
    python benchmarks/report_gradual.py --print    # print every table instead
    python benchmarks/report_gradual.py --results benchmarks/results/gradual_quick.json --print

The doc holds each table between ``<!-- gradual:NAME -->`` and ``<!-- /gradual:NAME -->``;
this script replaces what lies between them. Mean ± sample standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gradual import NFES, RESULTS, ROOT, TASKS, VARIANTS, _load  # noqa: E402

DOC = ROOT / "docs" / "methods" / "gradual.md"
FIGURES = ROOT / "docs" / "figures"
FLOOR = RESULTS.with_name("gradual_floor.json")
NAMES = {
    "sft": "SFT (shipped)",
    "gft": "GFT (shipped)",
    "sft_ot": "SFT + OT coupling",
    "gft_independent": "GFT + independent coupling",
    "gft_sigma0": "GFT, sigma 0",
    "gft_marginal": "GFT, marginal objective",
    "gft_adaptive": "GFT, adaptive temperature",
    "pretrained": "pretrained (no fine-tuning)",
    "gft_global_ot": "GFT, batch-wide OT across labels",
    "gft_sigma0_global_ot": "GFT, sigma 0, batch-wide OT across labels",
}
Cell = dict[str, Any]


def cells(results: dict[str, Any], task: str, variant: str) -> list[Cell]:
    return [v for k, v in sorted(results.items()) if k.startswith(f"{task}/{variant}/")]


def metric_of(task: str) -> str:
    return "frechet" if task.startswith("digits") else "w2"


def ms(values: Sequence[float], digits: int = 3) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.fmean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def variants_of(results: dict[str, Any], task: str) -> list[str]:
    return [v for v in VARIANTS if cells(results, task, v)]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# --------------------------------------------------------------------------- tables


def table_nfe(results: dict[str, Any], task: str) -> str:
    m = metric_of(task)
    rows = []
    for v in variants_of(results, task):
        cs = cells(results, task, v)
        rows.append(
            [NAMES[v], str(len(cs))] + [ms([c["eval"][str(k)][m] for c in cs]) for k in NFES]
        )
    return _table(["variant", "seeds"] + [f"NFE {k}" for k in NFES], rows)


def table_paths(results: dict[str, Any], task: str) -> str:
    """Path length at 100 and 4 steps, and the fewest steps (of the grid) at which a variant's
    mean quality is within 10% of SFT's at 100 steps."""
    m = metric_of(task)
    sft = cells(results, task, "sft")
    bar = 1.1 * mean([c["eval"]["100"][m] for c in sft]) if sft else math.nan
    rows = []
    for v in variants_of(results, task):
        cs = cells(results, task, v)
        ok = [k for k in NFES if mean([c["eval"][str(k)][m] for c in cs]) <= bar]
        rows.append(
            [
                NAMES[v],
                ms([c["eval"]["100"]["path_length"] for c in cs]),
                ms([c["eval"]["4"]["path_length"] for c in cs]),
                str(ok[0]) if ok else "> 100",
            ]
        )
    head = [
        "variant",
        "path length @100",
        "path length @4",
        f"fewest NFE with {m} <= 1.1 x SFT@100",
    ]
    return _table(head, rows)


def table_modes(results: dict[str, Any], task: str, nfes: Sequence[int] = (4, 100)) -> str:
    """Per mode: target weight, each method's weight and robust spread (relative to the
    held-out target's), mean over seeds, at ``nfes`` (of PER_MODE_NFES) for SFT and GFT."""
    methods = [v for v in ("sft", "gft") if any("per_mode" in c for c in cells(results, task, v))]
    if not methods:
        return "(no per-mode statistics in the JSON)"
    first = next(c for c in cells(results, task, methods[0]) if "per_mode" in c)["per_mode"]
    k = len(first["target_weight"])
    header = ["mode", "target weight", "held-out weight"]
    for nfe in nfes:
        header += [f"{v.upper()} weight @{nfe}" for v in methods]
    for nfe in nfes:
        header += [f"{v.upper()} spread @{nfe}" for v in methods]
    rows = []
    for i in range(k):
        row = [str(i), f"{first['target_weight'][i]:.3f}", f"{first['ref_weight'][i]:.3f}"]
        for nfe in nfes:
            for v in methods:
                pm = [c["per_mode"] for c in cells(results, task, v) if "per_mode" in c]
                row.append(ms([p[str(nfe)]["weight"][i] for p in pm]))
        for nfe in nfes:
            for v in methods:
                pm = [c["per_mode"] for c in cells(results, task, v) if "per_mode" in c]
                ratios = [
                    p[str(nfe)]["spread"][i] / p["ref_spread"][i]
                    for p in pm
                    if p[str(nfe)]["spread"][i] is not None and p["ref_spread"][i]
                ]
                row.append(ms(ratios, 2) if ratios else "dropped")
        rows.append(row)
    return _table(header, rows)


def table_diversity(results: dict[str, Any], task: str) -> str:
    toy = not task.startswith("digits")
    cov, tv = ("mode_coverage", "mode_tv") if toy else ("classes_covered", "class_tv")
    header = ["variant"]
    for nfe in (1, 4, 100):
        header += [f"{cov} @{nfe} (min)", f"{tv} @{nfe}"]
    if toy:
        header += ["spread ratio @4 (min mode)", "spread ratio @100 (min mode)"]
    else:
        header += ["confidence @4", "confidence @100"]
    rows = []
    for v in variants_of(results, task):
        cs = cells(results, task, v)
        row = [NAMES[v]]
        for nfe in (1, 4, 100):
            ev = [c["eval"][str(nfe)] for c in cs]
            row += [f"{min(e.get(cov, math.nan) for e in ev):.3f}", ms([e[tv] for e in ev])]
        if toy:
            for nfe in (4, 100):
                row.append(
                    ms([c["eval"][str(nfe)].get("mode_spread_min", math.nan) for c in cs], 2)
                )
        else:
            row += [ms([c["eval"][str(nfe)]["confidence"] for c in cs], 2) for nfe in (4, 100)]
        rows.append(row)
    return _table(header, rows)


def table_classes(results: dict[str, Any], task: str) -> str:
    """Per class: the classifier's proportion on the held-out target and on the samples."""
    methods = [v for v in ("sft", "gft") if cells(results, task, v)]
    refs = [
        c["per_class"]["ref_hist"]
        for v in methods
        for c in cells(results, task, v)
        if "per_class" in c
    ]
    header = ["class", "held-out target"]
    for nfe in (4, 100):
        header += [f"{v.upper()} @{nfe}" for v in methods]
    rows = []
    for i in range(10):
        row = [str(i), f"{refs[0][i]:.3f}" if refs else "-"]
        for nfe in (4, 100):
            for v in methods:
                row.append(ms([c["eval"][str(nfe)][f"class_{i}"] for c in cells(results, task, v)]))
        rows.append(row)
    return _table(header, rows)


def _cv(c: Cell, key: str, half: bool = False) -> float:
    s = c[key]
    return s["std_second_half"] / s["mean_second_half"] if half else s["std"] / s["mean"]


def table_stability(results: dict[str, Any], task: str) -> str:
    m = metric_of(task)
    header = [
        "variant",
        "loss std",
        "fit std (2nd half)",
        "grad-norm std",
        "grad-norm std (2nd half)",
        "grad-norm CV",
        "grad-norm CV (2nd half)",
        f"seed std of {m} @4",
        f"seed std of {m} @100",
    ]
    rows = []
    for v in variants_of(results, task):
        cs = [c for c in cells(results, task, v) if c["loss"] is not None]
        if not cs:
            continue

        def seed_std(nfe: int, cs: list[Cell] = cs) -> str:
            vals = [c["eval"][str(nfe)][m] for c in cs]
            return f"{statistics.stdev(vals):.4f}" if len(vals) > 1 else "-"

        rows.append(
            [
                NAMES[v],
                ms([c["loss"]["std"] for c in cs]),
                ms([c["fit"]["std_second_half"] for c in cs]),
                ms([c["grad_norm"]["std"] for c in cs]),
                ms([c["grad_norm"]["std_second_half"] for c in cs]),
                ms([_cv(c, "grad_norm") for c in cs], 2),
                ms([_cv(c, "grad_norm", True) for c in cs], 2),
                seed_std(4),
                seed_std(100),
            ]
        )
    return _table(header, rows)


def table_setup(results: dict[str, Any]) -> str:
    rows = []
    for task in TASKS:
        for v in variants_of(results, task):
            cs = cells(results, task, v)
            rows.append(
                [
                    task,
                    NAMES[v],
                    ", ".join(str(c["seed"]) for c in cs),
                    ", ".join(sorted({str(c["steps"]) for c in cs})),
                    ", ".join(sorted({c.get("pretrained", "?") for c in cs})),
                    f"{mean([c['train_s'] for c in cs]) / 60:.1f}",
                ]
            )
    wall = "train wall min/cell (shared CPU)"
    head = ["task", "variant", "seeds", "iterations", "pretrained flow", wall]
    return _table(head, rows)


def table_claims(results: dict[str, Any]) -> str:
    """The issue's bars, task by task, for the shipped GFT against the shipped SFT."""
    rows = []
    for task in TASKS:
        sft, gft = cells(results, task, "sft"), cells(results, task, "gft")
        if not sft or not gft:
            continue
        m = metric_of(task)

        def q(cs: list[Cell], nfe: int, key: str = m) -> float:
            return mean([c["eval"][str(nfe)][key] for c in cs])

        ratio = q(gft, 100) / q(sft, 100)
        path = (q(gft, 100, "path_length"), q(sft, 100, "path_length"))
        at4 = (q(gft, 4), q(sft, 4))
        rows.append(
            [
                task,
                f"{len(gft)}/{len(sft)}",
                f"{q(gft, 100):.3f} vs {q(sft, 100):.3f} ({100 * (ratio - 1):+.1f}%): "
                + ("holds" if ratio <= 1.1 else "does not hold"),
                f"{path[0]:.3f} vs {path[1]:.3f} ({100 * (path[0] / path[1] - 1):+.0f}%): "
                + ("holds" if path[0] < path[1] else "does not hold"),
                f"{at4[0]:.3f} vs {at4[1]:.3f}: " + ("lower" if at4[0] < at4[1] else "not lower"),
            ]
        )
    head = [
        "task",
        "seeds GFT/SFT",
        "quality @100 GFT vs SFT (bar: within 10%)",
        "path length @100 GFT vs SFT",
        "quality @4 GFT vs SFT",
    ]
    return _table(head, rows)


def table_floor() -> str:
    floor = _load(FLOOR)
    rows = [[t, f"{v['w2_mean']:.3f} ± {v['w2_std']:.3f}"] for t, v in floor.items()]
    return _table(["task", "W2 between two 2000-sample target sets (10 pairs)"], rows)


def all_tables(results: dict[str, Any]) -> dict[str, str]:
    out = {"setup": table_setup(results), "claims": table_claims(results), "floor": table_floor()}
    per_task: dict[str, Callable[[dict[str, Any], str], str]] = {
        "nfe": table_nfe,
        "paths": table_paths,
        "diversity": table_diversity,
        "stability": table_stability,
    }
    for task in TASKS:
        if not variants_of(results, task):
            continue
        for name, fn in per_task.items():
            out[f"{task}_{name}"] = fn(results, task)
        out[f"{task}_per_mode" if task != "digits_thick" else f"{task}_per_class"] = (
            table_modes(results, task) if task != "digits_thick" else table_classes(results, task)
        )
    return out


# --------------------------------------------------------------------------- figures


def plots(results: dict[str, Any], suffix: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    written = []
    for task in TASKS:
        variants = variants_of(results, task)
        if not variants:
            continue
        m = metric_of(task)
        fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
        for v in variants:
            cs = cells(results, task, v)
            ys = [[c["eval"][str(k)][m] for c in cs] for k in NFES]
            mu = [statistics.fmean(y) for y in ys]
            sd = [statistics.stdev(y) if len(y) > 1 else 0.0 for y in ys]
            style = "-" if v in ("sft", "gft") else ":"
            line = axes[0].errorbar(NFES, mu, yerr=sd, fmt=style, marker="o", capsize=3, label=v)
            color = line.lines[0].get_color()
            pl = [statistics.fmean([c["eval"][str(k)]["path_length"] for c in cs]) for k in NFES]
            axes[1].plot(NFES, pl, style, marker="o", color=color, label=v)
            every = cs[0]["trace"]["every"]
            for i, c in enumerate(c for c in cs if c["loss"] is not None):
                xs = [every * j for j in range(len(c["trace"]["fit"]))]
                kw = {"label": v} if i == 0 else {}
                axes[2].plot(xs, c["trace"]["fit"], style, color=color, alpha=0.6, **kw)
                axes[3].plot(xs, c["trace"]["grad_norm"], style, color=color, alpha=0.6, **kw)
        axes[0].set(xscale="log", yscale="log", xlabel="NFE", ylabel=m, title=f"{task}: {m} vs NFE")
        axes[1].set(xscale="log", xlabel="NFE", ylabel="mean path length", title="path length")
        axes[2].set(yscale="log", xlabel="iteration", ylabel="data-fit term", title="fit to target")
        axes[3].set(yscale="log", xlabel="iteration", ylabel="grad norm", title="gradient norm")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        path = FIGURES / f"gradual_{task}{suffix}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# --------------------------------------------------------------------------- doc


def render(doc: str, tables: dict[str, str]) -> tuple[str, list[str]]:
    """``doc`` with every marked table replaced; the names of markers without a table."""
    missing = []

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in tables:
            missing.append(name)
            return match.group(0)
        return f"<!-- gradual:{name} -->\n{tables[name]}\n<!-- /gradual:{name} -->"

    pattern = re.compile(r"<!-- gradual:(\w+) -->\n.*?<!-- /gradual:\1 -->", re.S)
    return pattern.sub(sub, doc), missing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--print", action="store_true", help="print the tables; touch no file")
    args = p.parse_args()
    results = _load(Path(args.results))
    tables = all_tables(results)
    if args.print:
        for name, text in tables.items():
            print(f"## {name}\n\n{text}\n")
        return
    doc, missing = render(DOC.read_text(), tables)
    DOC.write_text(doc)
    unused = sorted(set(tables) - set(re.findall(r"<!-- gradual:(\w+) -->", doc)))
    print(
        f"rewrote {DOC.relative_to(ROOT)}; markers without a table: {missing or 'none'}; "
        f"tables without a marker: {unused or 'none'}"
    )
    for path in plots(results):
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
