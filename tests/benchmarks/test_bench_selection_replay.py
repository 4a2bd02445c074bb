"""The selection replay (benchmarks/bench_selection_replay.py): the start-favouring rule
and the summary of what each rule would have kept, on hand-made checks and rows."""

from __future__ import annotations

import json

import torch
from bench_helpers import load_benchmark

from flowpost.data.base import ArrayData
from flowpost.train.selection import Selector, split_holdout

replay = load_benchmark("bench_selection_replay")
Check = replay.Check


def checks(*scores: float) -> list:
    return [Check(100 * i, s, 0.9) for i, s in enumerate(scores)]


def test_the_start_is_kept_until_a_check_beats_it_by_the_margin():
    seq = checks(1.0, 0.95, 0.85, 0.9)
    assert replay.start_favoured(seq, noise=0.1, margin=0.0) == 300  # displaced, later ties win
    assert replay.start_favoured(seq, noise=0.1, margin=1.0) == 300  # 0.85 <= 0.9 displaces
    assert replay.start_favoured(seq, noise=0.1, margin=2.0) == 0  # nothing beats 0.8
    assert replay.start_favoured(checks(1.0, 1.1, 1.2), noise=0.01, margin=0.0) == 0


def test_logged_checks_read_either_statistic(tmp_path):
    rows = [
        {"step": 0, "validation/score": 0.5, "validation/coverage": 0.9,
         "validation/w2": 0.5, "validation/energy": 0.04},
        {"step": 5, "loss": 1.0},
        {"step": 10, "validation/score": 0.4, "validation/coverage": 0.8,
         "validation/w2": 0.4, "validation/energy": 0.07},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    records = replay.check_records(tmp_path)
    assert [r["step"] for r in records] == [0, 10]  # the loss record is not a check
    assert [c.score for c in replay.logged_checks(records)] == [0.5, 0.4]
    assert [c.score for c in replay.logged_checks(records, "energy")] == [0.04, 0.07]


def test_summary_counts_fixed_runs_and_lost_wins_per_statistic():
    def row(w2, pre, best, w2_rule, energy_rule):
        out = {"w2": w2, "pretrained_w2": pre, "best_step": best, "replayed_step": best}
        for m in replay.MARGINS:
            out[f"start_favoured_{m:g}"] = w2_rule
            out[f"energy_start_favoured_{m:g}"] = energy_rule
        return out

    runs = [
        row(0.3, 0.2, 500, 0, 0),  # worse than pretrained: both rules keep the start (fixed)
        row(0.2, 0.9, 500, 0, 500),  # a win: W2 gives it away, energy keeps it
        row(0.2, 0.9, 500, 500, 300),  # a win: energy moves to another (unscored) check
    ]
    out = replay.summarise(runs)
    assert out["worse_than_pretrained"] == 1 and out["replay_matches"] == 3
    w2_rule, energy_rule = out["start_favoured_1"], out["energy_start_favoured_1"]
    assert (w2_rule["kept_start_instead"], w2_rule["of_which_were_wins_lost"]) == (2, 1)
    assert w2_rule["mean_w2_lost_on_those_wins"] == 0.7 and w2_rule["worse_runs_left"] == 0
    assert w2_rule["mean_w2_saved_on_the_fixed"] == 0.1  # the fixed run was 0.3 vs 0.2
    assert (energy_rule["kept_start_instead"], energy_rule["of_which_were_wins_lost"]) == (1, 0)
    assert energy_rule["moved_to_another_check_unscored"] == 1
    table = replay.table({"rules": out})
    assert "energy distance: start unless beaten by 1 x noise | 1 | 1 | 0 |" in table
    # rows without the energy statistic (runs from before it was logged): W2 rules only
    old_rows = [{k: v for k, v in r.items() if not k.startswith("energy")} for r in runs]
    assert "energy_start_favoured_1" not in replay.summarise(old_rows)


def test_the_replayed_rule_is_the_librarys_start_margin_without_coverage_gains():
    kept, held = split_holdout(ArrayData(torch.randn(300, 2)), 0.1, seed=0)
    gen = torch.Generator().manual_seed(0)
    for margin in (0.5, 1.0, 2.0):
        sel = Selector(held, kept, metric="energy", start_margin=margin)
        for _ in range(20):
            scores = (0.1 + sel.noise * torch.randn(8, generator=gen)).tolist()
            seq = checks(*scores)
            fresh = Selector(held, kept, metric="energy", start_margin=margin)
            for check in seq:
                fresh.judge(check)
            assert fresh.best.step == replay.start_favoured(seq, fresh.noise, margin)
