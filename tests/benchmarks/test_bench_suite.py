"""The task suite (benchmarks/bench_suite.py): its pairs, its plan, resumability and the
report's claims, without training anything (a fake runner stands in for flowpost)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bench_helpers import load_benchmark

suite = load_benchmark("bench_suite")
tasks = load_benchmark("suite_tasks")
report = load_benchmark("suite_report")


def test_the_pairs_cover_what_the_issue_asks():
    kinds = {t.kind for t in tasks.TASKS.values()}
    assert len(tasks.TASKS) >= 8
    for want in (
        "new shape",
        "re-weighted modes",
        "shift",
        "scale",
        "rotation",
        "user .npy only",
        "1-D mixture",
    ):
        assert want in kinds
    assert sum(k.startswith("digits") for k in kinds) == 2
    # the user pair has no name in flowpost.data: it exists only as arrays the suite writes
    user = tasks.TASKS["user-npy"]
    assert user.source.kind == user.target.kind == "user"
    assert tasks.TASKS["mix1d-reweight"].dim == 1 and tasks.TASKS["digits-thick"].dim == 64


@pytest.mark.parametrize("name", ["moons-spirals", "user-npy", "mix1d-reweight", "digits-balance"])
def test_demonstrations_are_nested_seeded_and_not_the_reference(name):
    t = tasks.TASKS[name]
    small, big = t.demos(64, seed=1), t.demos(256, seed=1)
    assert small.shape == (64, t.dim) and np.array_equal(small, big[:64])
    assert not np.array_equal(t.demos(64, seed=2), small)
    ref = t.target.reference()
    # no demonstration is a point of the fresh set
    assert not (np.abs(ref[None, :50] - big[:, None]).sum(-1) < 1e-7).any()


def test_the_target_differs_from_the_source():
    t = tasks.TASKS["moons-shift"]
    src, tgt = t.source.draw(2000, 0), t.target.draw(2000, 0)
    assert np.allclose(tgt.mean(0) - src.mean(0), 0.5, atol=0.05)


def test_plan_sizes():
    full = suite.plan(
        list(tasks.TASKS),
        list(suite.CONTENDERS),
        list(suite.DEMOS),
        list(suite.STEPS),
        list(suite.SEEDS),
    )
    # per seed: a pretrained cell per pair, SFT once per demos, 5 contenders x 3 steps
    assert len(full) == 3 * 10 * (1 + 3 * (1 + 5 * 3))
    quick = suite.quick_plan()
    assert {c.task for c in quick} == set(suite.QUICK_TASKS) and len(suite.QUICK_TASKS) == 8
    assert {c.contender for c in quick} == {
        "pretrained",
        "sft",
        "fail_pd_local",
        "fail_pd_pathwise",
        "af_scratch",
    }
    assert {c.seed for c in quick} == {0}
    three = suite.quick_plan((0, 1, 2))
    assert len(three) == 3 * len(quick) and len({c.key for c in three}) == len(three)
    # seed-major: every cell of seed 0 comes before any of seed 1
    assert [c.seed for c in three] == sorted(c.seed for c in three)


def test_a_cell_key_parses_back_to_its_cell():
    for cell in suite.quick_plan()[:12]:
        assert suite.parse_key(cell.key) == cell
    with pytest.raises(SystemExit, match="not task/contender"):
        suite.parse_key("moons-spirals/sft/d64")
    with pytest.raises(SystemExit, match="not task/contender"):
        suite.parse_key("moons-spirals/sft/64/k0/s0")  # the d prefix is part of the key
    with pytest.raises(SystemExit, match="unknown task or contender"):
        suite.parse_key("nowhere/sft/d64/k0/s0")


def test_cells_are_resumable_and_never_rerun(tmp_path):
    cells = suite.plan(["moons-spirals"], ["sft", "fail_pd_local"], [64], [1, 2], [0])
    calls = []

    def runner(cell, work):
        calls.append(cell.key)
        if len(calls) == 2:
            raise RuntimeError("flowpost train failed: boom")
        return {"metrics": {str(k): {"w2": 0.5} for k in cell.scored_steps}}

    results = tmp_path / "suite.json"
    assert suite.run_cells(cells, results, tmp_path, {}, runner) == 3
    data = json.loads(results.read_text())
    assert len(data["cells"]) == 2 and len(data["errors"]) == 1
    # a second run does only the failed cell; a third, nothing
    suite.run_cells(cells, results, tmp_path, {}, runner)
    assert calls[3:] == [calls[1]]
    assert suite.run_cells(cells, results, tmp_path, {}, runner) == 0
    data = json.loads(results.read_text())
    assert len(data["cells"]) == 3 and not data["errors"]


def test_a_variant_adds_its_overrides_and_keeps_out_of_the_suite_json(tmp_path, monkeypatch):
    cell = suite.parse_key("moons-shift/af_scratch/d64/k1/s0")
    task = tasks.TASKS[cell.task]
    args = suite.train_args(
        cell, task, tmp_path, tmp_path / "run", ("method.ot_schedule=constant",)
    )
    assert args[-2:] == ["--set", "method.ot_schedule=constant"]  # after the suite's own
    assert "method.ot_schedule=constant" not in suite.train_args(cell, task, tmp_path, tmp_path)
    run = ["bench_suite.py", "run", "--cells", cell.key, "--set", "method.nfe=2"]
    for more in ([], ["--results", str(tmp_path / "v.json")], ["--work", str(tmp_path)]):
        monkeypatch.setattr("sys.argv", run + more)  # the suite's JSON or its run folders
        with pytest.raises(SystemExit, match="its own --results"):
            suite.main()
    # repeated --set options add up
    parser_args = run + ["--set", "a=1", "b=2", "--set", "c=3"]
    seen = {}
    monkeypatch.setattr(suite, "run_cells", lambda c, r, w, meta, runner: seen.update(meta) or 0)
    monkeypatch.setattr(suite, "floors", lambda *a: None)
    monkeypatch.setattr(suite, "demo_references", lambda *a: None)
    monkeypatch.setattr("sys.argv", parser_args + ["--results", str(tmp_path / "v.json"),
                                                    "--work", str(tmp_path)])  # fmt: skip
    suite.main()
    assert seen["set"] == ["method.nfe=2", "a=1", "b=2", "c=3"]


def test_a_cell_claimed_by_a_live_process_is_skipped(tmp_path):
    import os

    held = suite.claim(tmp_path, "a/b/d1/k1/s0")
    assert held is not None and suite.claim(tmp_path, "a/b/d1/k1/s0") is None
    held.write_text("999999999")  # a dead process: the claim is taken over
    assert suite.claim(tmp_path, "a/b/d1/k1/s0") is not None
    assert os.getpid() > 0


def test_report_decides_the_claims_from_the_json():
    m = lambda **kv: {"metrics": {str(k): {"w2": v} for k, v in kv.items()}}  # noqa: E731
    cells = {
        "moons-spirals/pretrained/d0/k0/s0": {"metrics": {"1": {"w2": 1.0}, "2": {"w2": 0.8}}},
        "moons-spirals/sft/d64/k0/s0": {"metrics": {"1": {"w2": 0.9}, "2": {"w2": 0.6}}},
        "moons-spirals/fail_pd_local/d64/k1/s0": m(**{"1": 0.5}),
        "moons-spirals/fail_pd_local/d64/k2/s0": m(**{"2": 0.9}),  # worse than pretrained
        "moons-spirals/af_scratch/d64/k1/s0": m(**{"1": 0.3}),
    }
    data = {"cells": cells}
    assert report.fail_beats_sft(data, "fail_pd_local")[:2] == (0, 1)
    n, bad = report.worse_than_pretrained(data)
    assert n == 3 and len(bad) == 1  # FAIL-PD at 1 and 2 steps, AF from scratch and "k2" in bad[0]
    assert report.af_beats_fm(data)[0][2] is True
    text = report.render(data)
    assert "DOES NOT HOLD" in text and "NOT SHOWN" in text  # AF: one 2-D pair of many
    assert "| 64 | FAIL-PD, local estimator | 2 | 1 | 0.900 |" in text


def test_a_run_that_kept_its_start_ties_the_pretrained_flow_up_to_float_rounding():
    cells = {
        "moons-spirals/pretrained/d0/k0/s0": {"metrics": {"2": {"w2": 0.36501873}}},
        "moons-spirals/fail_pg/d64/k2/s0": {"metrics": {"2": {"w2": 0.36501875}}},  # the start
        "moons-spirals/fail_pd_local/d64/k2/s0": {"metrics": {"2": {"w2": 0.3651}}},  # worse
    }
    n, bad = report.worse_than_pretrained({"cells": cells})
    assert n == 2 and len(bad) == 1 and "fail_pd_local" in bad[0]


def test_af_claim_is_broken_down_by_demonstration_count():
    af = [
        ("a", 256, True, ""),
        ("b", 256, False, ""),
        ("a", 1024, True, ""),
        ("b", 1024, True, ""),
    ]
    text = report.af_by_demos(af, 3)
    assert "at 256 demonstrations 1 of 2 (pair, AF) wins on 2 of 3 pairs, lost on b;" in text
    assert text.endswith("at 1024 demonstrations 2 of 2 (pair, AF) wins on 2 of 3 pairs.")
    assert report.af_by_demos([], 3) == ""


def test_docstring_examples():
    import doctest

    for module in (tasks, report):
        assert doctest.testmod(module).failed == 0


def test_report_names_runs_that_kept_their_start_and_guard_warnings():
    import suite_report

    data = {
        "cells": {
            "t/pretrained/d0/k0/s0": {"checkpoints": {"last": "checkpoints/step_00003000"}},
            "t/sft/d64/k0/s0": {"checkpoints": {"best": "best/step_00000000"}, "warnings": []},
            "t/fail_pd_local/d64/k1/s0": {
                "checkpoints": {"best": "best/step_00000500"},
                "warnings": ["warning: step 9: the discriminator dominates (accuracy 0.91)"],
            },
        }
    }
    start, warned, *replayed = suite_report.guards(data)
    assert all("start" in line for line in replayed)  # the replay bullet, when its JSON exists
    assert "in 1 of 2 post-training runs: t/sft/d64/k0/s0." in start
    assert "in 1 of 2 runs" in warned and "'the discriminator dominates' in 1" in warned
    assert "'collapse on held-out demos' in 0" in warned


def test_report_sets_the_demonstrations_own_score_beside_the_runs():
    cells = {
        "t/pretrained/d0/k0/s0": {"metrics": {"1": {"w2": 0.9}, "2": {"w2": 0.10}}},
        "t/sft/d64/k0/s0": {"metrics": {"1": {"w2": 0.8}, "2": {"w2": 0.12}}},
        "t/fail_pd_local/d64/k1/s0": {"metrics": {"1": {"w2": 0.2}}},
        "t/fail_pd_local/d64/k2/s0": {"metrics": {"2": {"w2": 0.15}}},
    }
    data = {"cells": cells, "demos": {"t/d64/s0": {"w2": 0.14}}}
    # the pretrained flow at 2 steps already scores below its demonstrations (0.10 <= 0.14)
    assert report.at_demo_level(data) == ["t, 64 demos, 2 steps: pretrained 0.100 vs 0.140"]
    _, bad = report.worse_than_pretrained(data)
    assert bad == [
        "t/fail_pd_local/d64/k2/s0: W2 0.150 vs pretrained 0.100 (its demonstrations: 0.140)"
    ]
    losses = report.fail_beats_sft(data, "fail_pd_local")[2]
    assert losses[0].endswith("(the demonstrations themselves: 0.140)")
    table = report.task_table(data, "t", report.grid(data)["t"])
    assert "| 64 | the demonstrations themselves, resampled | - | 1 | 0.140 |" in table


def test_a_worse_run_gets_its_w2_with_its_split_weights_where_rescored():
    cells = {
        "t/pretrained/d0/k0/s0": {"metrics": {"2": {"w2": 0.5}}},
        "t/fail_pg/d64/k2/s0": {"metrics": {"2": {"w2": 0.6}}},
        "t/fail_pd_local/d64/k2/s0": {"metrics": {"2": {"w2": 0.7}}},
    }
    data = {"cells": cells, "demos": {"t/d64/s0": {"w2": 0.45}}}
    _, bad = report.worse_than_pretrained(
        data, mode_runs={"t/fail_pg/d64/k2/s0": {"w2_split": 0.49}}
    )
    assert bad == [
        "t/fail_pg/d64/k2/s0: W2 0.600 vs pretrained 0.500 (its demonstrations: 0.450; "
        "its samples with its split's mode weights: 0.490)",
        "t/fail_pd_local/d64/k2/s0: W2 0.700 vs pretrained 0.500 (its demonstrations: 0.450)",
    ]


def test_fail_at_four_steps_is_its_own_claim_line():
    w = lambda v: {"metrics": {"4": {"w2": v}}}  # noqa: E731
    cells = {
        "t/pretrained/d0/k0/s0": w(0.5),
        "t/sft/d256/k0/s0": w(0.4),
        "t/fail_pd_pathwise/d256/k4/s0": w(0.3),  # beats SFT
        "t/fail_pg/d256/k4/s0": w(0.6),  # loses to SFT and ends worse than its start
        "t/fail_pd_local/d256/k2/s0": {"metrics": {"2": {"w2": 9.0}}},  # not a 4-step run
    }
    data = {"cells": cells}
    assert report.worse_than_pretrained(data, steps=(4,))[0] == 2
    line = report.fail_at_four(data)[0]
    assert "FAIL-PD, pathwise estimator beats SFT in 1 of 1 (task, demos) cells" in line
    assert "FAIL-PG beats SFT in 0 of 1 (task, demos) cells (lost: t, 256 demos: " in line
    assert "4 steps 0.600 vs 0.400" in line
    assert line.endswith(
        "Worse than the pretrained flow at 4 steps: 1 of 2 runs: "
        "t/fail_pg/d256/k4/s0: W2 0.600 vs pretrained 0.500."
    )
    assert report.fail_at_four({"cells": {}}) == []
    last = {
        "t/fail_pg/d256/k4/s0": {"kept_w2": 0.5, "last_w2": 0.3},
        "t/fail_pd_pathwise/d256/k4/s0": {"kept_w2": 0.5, "last_w2": 0.7},
        "t/fail_pd_pathwise/d256/k2/s0": {"kept_w2": 0.5, "last_w2": 0.1},  # not 4 steps
    }
    assert report.held_back(data, 4, last) == (
        " The start test kept the start in 2 of these runs; their last models "
        "(`start_test_last.json`) score W2 0.500 on average against the kept starts' 0.500, "
        "lower in 1 (t/fail_pg/d256/k4/s0)."
    )
    assert report.held_back(data, 4, {}) == ""


def test_af_steps_claim_pairs_the_seeds():
    w = lambda k, v: {"metrics": {str(k): {"w2": v}}}  # noqa: E731
    cells = {
        "t/af_scratch/d256/k1/s0": w(1, 0.30),
        "t/af_scratch/d256/k1/s1": w(1, 0.20),
        "t/af_scratch/d256/k2/s0": w(2, 0.28),  # better on both seeds
        "t/af_scratch/d256/k2/s1": w(2, 0.19),
        "t/af_scratch/d256/k4/s0": w(4, 0.40),  # worse on both seeds, steadily
        "t/af_scratch/d256/k4/s1": w(4, 0.31),
        "t/af_init/d256/k2/s0": w(2, 0.1),  # no 1-step run to pair with
    }
    line = report.af_steps_claim({"cells": cells})[0]
    assert "DOES NOT HOLD: lower or equal mean W2 in 1 of 2" in line
    assert "(a rough screen on so few seeds, not a test) in 1 (t, AF from scratch, 256 " in line
    assert "t, AF from scratch, 256 demos, 2 steps: -0.015 ± 0.005 (2 seeds)" in line
    assert "t, AF from scratch, 256 demos, 4 steps: +0.105 ± 0.005 (2 seeds)" in line
    assert report.af_steps_claim({"cells": {}}) == []


def test_mode_weights_against_the_training_split_and_what_they_cost():
    weights = lambda *w: {f"mode_weight_{i}": x for i, x in enumerate(w)}  # noqa: E731
    cells = {
        # sharper: the split's light mode loses half its weight
        "t/fail_pd_pathwise/d64/k2/s0": {"metrics": {"2": weights(0.6, 0.3, 0.1)}},
        # the split's weights exactly (half the samples unassigned: renormalised)
        "t/af_scratch/d64/k1/s0": {"metrics": {"1": weights(0.25, 0.15, 0.1)}},
        # mostly off every mode: no weights to compare
        "t/fail_pg/d64/k2/s0": {"metrics": {"2": weights(0.1, 0.1, 0.1)}},
        "t/sft/d64/k0/s0": {"metrics": {"2": weights(0.6, 0.3, 0.1)}},  # not adversarial
        "t/fail_pd_local/d64/k2/s0": {"metrics": {"2": weights(0.6, 0.3, 0.1)}},  # no split
    }
    split = [0.5, 0.3, 0.2]
    mw = {
        "splits": {
            "t/fail_pd_pathwise/d64/s0": split,
            "t/af_scratch/d64/s0": split,
            "t/fail_pg/d64/s0": split,
        },
        "runs": {
            "t/fail_pd_local/d64/k2/s0": {
                "w2": 0.5,
                "w2_own": 0.4,
                "w2_split": 0.3,
                "w2_target": 0.2,
            },
            "t/fail_pd_local/d64/k2/s1": {
                "w2": 0.7,
                "w2_own": 0.6,
                "w2_split": 0.5,
                "w2_target": 0.2,
            },
        },
    }
    assert report.mode_weights(weights(0.25, 0.15, 0.1)) == pytest.approx(split)
    assert report.mode_weights(weights(0.1, 0.1, 0.1)) is None
    lines = report.mode_weight_sharpening({"cells": cells}, mw)
    rows = [r for r in lines if r.startswith("| FAIL") or r.startswith("| AF")]
    dh = report.entropy([0.6, 0.3, 0.1]) - report.entropy(split)
    assert dh < 0
    assert rows[0] == (
        f"| FAIL-PD, pathwise estimator | 64 | 2 | 1 | 0 | {dh:+.3f} | {dh:+.3f} | 1 of 1 | 0.50 |"
    )
    assert "| FAIL-PG | 64 | 2 | 0 | 1 | - | - | - | - |" in rows  # off every mode
    assert "| AF from scratch | 64 | 1 | 1 | 0 | +0.000 | +0.000 | 0 of 1 | 1.00 |" in rows
    # the cost table: the two local runs' means
    assert "| FAIL-PD, local estimator | 64 | 2 | 2 | 0.600 | 0.500 | 0.400 | 0.200 |" in rows
    assert report.mode_weight_sharpening({"cells": cells}, {}) == []


def test_demo_references_resample_the_demonstrations(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "score", lambda task, x: {"rows": x.tolist()})
    cells = suite.plan(["moons-spirals"], ["sft"], [64], [1], [0])
    results = tmp_path / "suite.json"
    suite.demo_references(cells, results)
    got = json.loads(results.read_text())["demos"]
    assert list(got) == ["moons-spirals/d64/s0"]
    rows = got["moons-spirals/d64/s0"]["rows"]
    assert len(rows) == suite.SAMPLES
    demos = {tuple(r) for r in tasks.TASKS["moons-spirals"].demos(64, 0).tolist()}
    assert {tuple(r) for r in rows} <= demos  # every point is a demonstration ...
    assert len({tuple(r) for r in rows}) > 50  # ... and most of the 64 are drawn
    calls = []
    monkeypatch.setattr(suite, "score", lambda task, x: calls.append(1) or {})
    suite.demo_references(cells, results)
    assert not calls  # stored once, never recomputed


def test_the_energy_replay_paragraph_reads_its_numbers_from_the_json(tmp_path, monkeypatch):
    rule = {"kept_start_instead": 3, "of_which_were_worse_than_pretrained": 2,
            "of_which_were_wins_lost": 1, "mean_w2_lost_on_those_wins": 0.25,
            "mean_w2_saved_on_the_fixed": 0.03, "worse_runs_left": 0,
            "moved_to_another_check_unscored": 2}  # fmt: skip
    rules = {"runs": 4, "worse_than_pretrained": 2, "replay_matches": 4}
    rules |= {f"{p}start_favoured_{m}": rule for p in ("", "energy_") for m in (0, 1, 2)}
    runs = [
        {"run": "a/fail_pd_pathwise/d64/k2/s0", "heldout_demos": 5, "w2": 0.3,
         "pretrained_w2": 0.9, "energy_start": 0.01, "energy_floor": 0.1, "energy_noise": 0.05},
        {"run": "b/fail_pd_pathwise/d64/k2/s0", "heldout_demos": 5, "w2": 0.3,
         "pretrained_w2": 0.4, "energy_start": 0.0, "energy_floor": 0.1, "energy_noise": 0.05},
    ]  # fmt: skip
    path = tmp_path / "selection_replay_energy.json"
    path.write_text(json.dumps({"rules": rules, "runs": runs}))
    monkeypatch.setattr(report, "REPLAY_BOTH", path)
    (text,) = report.replayed_on_both_statistics()
    assert "4 of those runs" in text and "2 of the 4 end worse" in text
    assert "lost 0.03 W2 each" in text and "worth 0.25 each" in text
    assert "is no better than W2" in text and "moves 2, 2, 2 runs" in text  # equal rules
    # the example is the start below the floor with the largest fresh-data win
    assert "a/fail_pd_pathwise/d64/k2/s0, 5 held-out points" in text and "0.90 against" in text
    monkeypatch.setattr(report, "REPLAY_BOTH", tmp_path / "missing.json")
    assert report.replayed_on_both_statistics() == []
