"""Replay the held-out checkpoint selection of the suite's FAIL runs under other rules.

Why: 11 of the suite's FAIL runs end worse than the pretrained flow they started from
(docs/suite.md), though the start is a selection candidate. Would a rule that keeps the
start unless a later check beats it clearly (by ``margin`` x the held-out set's own noise)
have kept the pretrained flow there, and what would it cost where FAIL wins?

Every FAIL run of the suite (``bench_suite.py``, whose run folders must still be under
``--work``) logs each held-out check (``validation/score`` and ``validation/coverage`` in
``metrics.jsonl``). This script rebuilds the run's :class:`~flowpost.train.selection.Selector`
from its config (the same split, so the same floor and noise), replays the logged checks
through the library's own rule (it must pick the run's recorded ``best_step``: a check of
the replay), then through the start-favouring rule. A run whose new pick is the start
takes the pretrained flow's fresh W2 (a suite cell); one whose pick moves to another
later check is counted as unknown (its model was not kept).

    python benchmarks/bench_selection_replay.py --work /tmp/flowpost-suite

Writes ``benchmarks/results/selection_replay.json`` and prints a table. Runs that log both
held-out statistics (``validation/w2`` and ``validation/energy``, since session 16) are also
replayed on the energy distance (``energy_start_favoured_*``); for suite runs rerun into
another results file:

    python benchmarks/bench_selection_replay.py --work /tmp/selwork \
        --suite benchmarks/results/suite_selection.json \
        --results benchmarks/results/selection_replay_energy.json

Limits: margin 0 here means "the start unless strictly beaten", which the library's
``train.select_start_margin: 0`` (off) is not; margins > 0 are that option without coverage
gains (a test ties the two). The replay cannot see how rollbacks would have differed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from flowpost.config import load_yaml  # noqa: E402
from flowpost.data import load_data  # noqa: E402
from flowpost.train.config import build_run_config  # noqa: E402
from flowpost.train.selection import Check, Selector, split_holdout  # noqa: E402

SUITE = HERE / "results" / "suite.json"
RESULTS = HERE / "results" / "selection_replay.json"
FAIL = ("fail_pd_pathwise", "fail_pd_local", "fail_pg")
MARGINS = (0.0, 1.0, 2.0)


def rebuilt_selector(run: Path, metric: str | None = None) -> Selector:
    """The run's selector: its held-out split and its settings, so its floor and noise
    (``metric``: score by this statistic instead of the run's own)."""
    cfg = build_run_config(load_yaml(run / "config.yaml"))
    tc = cfg.train
    data = load_data(cfg.data)
    kept, held = split_holdout(data.train, tc.holdout_fraction or 0.1, cfg.data.seed)
    return Selector(
        held, kept, tolerance=tc.guard_tolerance, coverage_drop=tc.guard_coverage_drop,
        coverage_gain=tc.select_coverage_gain, metric=metric or tc.select_metric,
    )  # fmt: skip


def check_records(run: Path) -> list[dict[str, Any]]:
    """The run's logged held-out checks (the ``metrics.jsonl`` records with a score)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "validation/score" in r]


def logged_checks(records: list[dict[str, Any]], statistic: str = "score") -> list[Check]:
    """The checks of :func:`check_records`, scored by ``statistic`` (``score``: what the run
    selected by; ``w2`` / ``energy``: the statistic by name, logged since session 16)."""
    return [
        Check(r["step"], r[f"validation/{statistic}"], r["validation/coverage"]) for r in records
    ]


def start_favoured(checks: list[Check], noise: float, margin: float) -> int:
    """The kept step when a later check displaces the start only below ``start - margin *
    noise``; once displaced, the library's later-wins-within-noise rule (within the noise of
    the lowest kept score). The library's ``train.select_start_margin`` without coverage
    gains (a test checks the two agree)."""
    start = best = checks[0]
    lowest = start.score
    for check in checks[1:]:
        bar = start.score - margin * noise if best is start else lowest + noise
        if check.score <= bar:
            best, lowest = check, min(lowest, check.score)
    return best.step


def pretrained_w2(cells: dict[str, Any], task: str, steps: str, seed: str) -> float | None:
    for key, cell in cells.items():
        if key.startswith(f"{task}/pretrained/") and key.endswith(f"/{seed}"):
            metrics = cell["metrics"].get(steps)
            if metrics:
                return float(metrics["w2"])
    return None


def replay(work: Path, results: Path = SUITE) -> dict[str, Any]:
    """Replay every FAIL run of ``results`` (a suite JSON) whose folder is under ``work``;
    the pretrained flows' fresh W2 come from ``results`` where it holds them (the flows those
    runs started from), else from the suite's own JSON."""
    pretrained_cells = json.loads(SUITE.read_text())["cells"]
    cells = json.loads(results.read_text())["cells"]
    runs = []
    for key, cell in sorted(cells.items()):
        task, contender, _, steps, seed = key.split("/")
        run = work / "runs" / key.replace("/", "-")
        if contender not in FAIL or not (run / "summary.json").is_file():
            continue
        summary = json.loads((run / "summary.json").read_text())
        if "best_step" not in summary:
            continue
        records = check_records(run)
        selector, checks = rebuilt_selector(run), logged_checks(records)
        for check in checks:
            selector.judge(check)
        assert selector.best is not None
        row = {
            "run": key,
            "heldout_demos": len(selector.heldout),
            "noise": round(selector.noise, 4),
            "best_step": summary["best_step"],
            "replayed_step": selector.best.step,
            "w2": cell["metrics"][steps[1:]]["w2"],
            "pretrained_w2": pretrained_w2(cells, task, steps[1:], seed)
            or pretrained_w2(pretrained_cells, task, steps[1:], seed),
        }
        for margin in MARGINS:
            row[f"start_favoured_{margin:g}"] = start_favoured(checks, selector.noise, margin)
        if all("validation/energy" in r for r in records):
            energy = rebuilt_selector(run, "energy")
            energy_checks = logged_checks(records, "energy")
            row["energy_noise"] = round(energy.noise, 4)
            row["energy_floor"] = round(energy.floor, 4)  # a perfect model's held-out score
            row["energy_start"] = round(energy_checks[0].score, 4)
            for margin in MARGINS:
                row[f"energy_start_favoured_{margin:g}"] = start_favoured(
                    energy_checks, energy.noise, margin
                )
        runs.append(row)
        print(key, row["replayed_step"], row["best_step"], flush=True)
    return {"runs": runs, "rules": summarise(runs)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    known = [r for r in runs if r["pretrained_w2"] is not None]
    out: dict[str, Any] = {
        "runs": len(runs),
        "replay_matches": sum(r["best_step"] == r["replayed_step"] for r in runs),
        "worse_than_pretrained": sum(r["w2"] > r["pretrained_w2"] for r in known),
    }
    rules = [f"start_favoured_{m:g}" for m in MARGINS]
    rules += [f"energy_{rule}" for rule in rules if all(f"energy_{rule}" in r for r in known)]
    for name in rules:
        to_start = [r for r in known if r[name] == 0 and r["best_step"] != 0]
        lost = [r for r in to_start if r["w2"] < r["pretrained_w2"]]
        out[name] = {
            "kept_start_instead": len(to_start),
            "of_which_were_worse_than_pretrained": len(to_start) - len(lost),
            "of_which_were_wins_lost": len(lost),
            "mean_w2_lost_on_those_wins": round(
                sum(r["pretrained_w2"] - r["w2"] for r in lost) / max(len(lost), 1), 3
            ),
            "mean_w2_saved_on_the_fixed": round(
                sum(r["w2"] - r["pretrained_w2"] for r in to_start if r not in lost)
                / max(len(to_start) - len(lost), 1),
                3,
            ),
            "moved_to_another_check_unscored": sum(
                r[name] not in (0, r["best_step"]) for r in known
            ),
            "worse_runs_left": sum(r["w2"] > r["pretrained_w2"] and r[name] != 0 for r in known),
        }
    return out


def table(result: dict[str, Any]) -> str:
    rules = result["rules"]
    lines = [
        f"{rules['runs']} FAIL runs replayed ({rules['replay_matches']} picks match the run's "
        f"recorded best); {rules['worse_than_pretrained']} end worse than the pretrained flow",
        "",
        "| rule | keeps the start instead | of them worse than pretrained (fixed) | "
        "wins lost | mean W2 lost | moved to another check | worse runs left (at most) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rules.items():
        if "start_favoured" not in name:
            continue
        metric = "energy distance" if name.startswith("energy_") else "W2"
        margin = name.rsplit("_", 1)[1]
        lines.append(
            f"| {metric}: start unless beaten by {margin} x noise | {r['kept_start_instead']} | "
            f"{r['of_which_were_worse_than_pretrained']} | {r['of_which_were_wins_lost']} | "
            f"{r['mean_w2_lost_on_those_wins']} | {r['moved_to_another_check_unscored']} | "
            f"{r['worse_runs_left']} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/flowpost-suite", help="bench_suite.py's --work")
    p.add_argument("--suite", default=str(SUITE), help="the suite JSON whose runs to replay")
    p.add_argument("--results", default=str(RESULTS))
    args = p.parse_args()
    suite = Path(args.suite).resolve()
    result = replay(Path(args.work), suite)
    result["meta"] = {"suite": str(suite.relative_to(HERE.parent.resolve())),
                      "margins": list(MARGINS)}  # fmt: skip
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
