"""The FT-FM / ResFT-FM report (benchmarks/reconstruction_report.py): the paired sign test
against brute-force enumeration, and the confirm table's pairing on a synthetic results file
(nothing is trained or rolled out)."""

from __future__ import annotations

import itertools
import json

import pytest
from bench_helpers import load_benchmark

report = load_benchmark("reconstruction_report")


@pytest.mark.parametrize(("won", "lost"), [(0, 0), (1, 0), (3, 3), (7, 2), (0, 9), (10, 2)])
def test_sign_test_matches_enumerating_every_split(won, lost):
    n = won + lost
    observed = abs(won - lost)
    # every assignment of the n discordant episodes to either policy, equally likely
    extreme = sum(
        abs(2 * sum(bits) - n) >= observed for bits in itertools.product((0, 1), repeat=n)
    )
    assert report.sign_test_p(won, lost) == pytest.approx(min(1.0, extreme / 2**n))


def test_sign_test_is_symmetric_and_large_counts_stay_finite():
    assert report.sign_test_p(30, 12) == report.sign_test_p(12, 30)
    p = report.sign_test_p(400, 285)  # counts of the size the confirm benchmark produces
    assert 0 < p < 1e-4
    assert report.sign_test_p(500, 500) == 1.0


def test_verdict_needs_significance_and_names_the_direction():
    assert report.paired_verdict(9, 1) == "above"
    assert report.paired_verdict(1, 9) == "below"
    assert report.paired_verdict(6, 4) == "level"


def _cell(solved: str, run: str = "r") -> dict:
    rate = solved.count("1") / len(solved)
    return {"success_rate": rate, "final_distance": 0.01, "return": -10.0, "solved": solved,
            "run": run}  # fmt: skip


def test_confirm_table_pairs_each_run_with_its_own_pretrained_policy(tmp_path, monkeypatch):
    data = {
        "setting": {"eval_seeds": [1, 2], "block_episodes": 5},
        "expert": {"success_rate": 1.0, "final_distance": 0.0, "return": -9.0},
    }
    for nfe in report.NFES:
        data[f"pretrain/p100/d10/s0/nfe{nfe}"] = _cell("1100000000")
        data[f"pretrain/p100/d10/s1/nfe{nfe}"] = _cell("1111111111")
        # seed 0: wins 8 episodes its pretrained policy lost, loses none
        data[f"ft_fm/base/p100/d10/s0/nfe{nfe}"] = _cell("1111111111")
        # seed 1: loses one against its own pretrained policy (not seed 0's)
        data[f"ft_fm/base/p100/d10/s1/nfe{nfe}"] = _cell("0111111111")
    (tmp_path / "reconstruction_confirm_toy.json").write_text(json.dumps(data))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "recipe_evaluation", lambda task: (1234, 8))
    text = report.confirm_table("toy")
    assert "10 fresh evaluation episodes per cell" in text
    success, paired = text.split("Paired with the pretrained policy")
    row = next(
        line for line in paired.splitlines() if line.startswith("| ft_fm/base/p100/d10 | 2 |")
    )
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[2] == "s0: 8 / 0, s1: 0 / 1"
    assert cols[3] == "8 / 1"
    assert cols[4] == "+0.3500"  # (1.0 - 0.2 + 0.9 - 1.0) / 2
    assert float(cols[5]) == pytest.approx(report.sign_test_p(8, 1), rel=1e-2)
    assert cols[6] == "above"  # p = 0.039
    mean_row = next(
        line for line in success.splitlines() if line.startswith("| pretrain/p100/d10 | 1 |")
    )
    assert "s0: 0.2000, s1: 1.0000 | 0.6000" in mean_row


def test_confirm_table_of_one_eval_seed_says_whose_episodes_it_read(tmp_path, monkeypatch):
    data = {
        "setting": {"eval_seeds": [1234], "block_episodes": 4},
        "expert": {"success_rate": 1.0, "final_distance": 0.0, "return": -9.0},
        "pretrain/p100/d10/s0/nfe2": _cell("1100"),
        "ft_fm/base/p100/d10/s0/nfe2": _cell("1000"),
    }
    (tmp_path / "reconstruction_confirm_toy_seed1234.json").write_text(json.dumps(data))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "recipe_evaluation", lambda task: (1234, 8))
    text = report.confirm_table("toy", stem="confirm_toy_seed1234")
    assert text.startswith("4 evaluation episodes per cell, the first 4 of eval seed 1234 (the")
    assert "On the first" not in text  # no more episodes than the recipes' own 8
    # another seed's episodes are not called the recipes' own
    data["setting"]["eval_seeds"] = [99]
    (tmp_path / "reconstruction_confirm_toy_seed99.json").write_text(json.dumps(data))
    other = report.confirm_table("toy", stem="confirm_toy_seed99")
    assert other.startswith("4 evaluation episodes per cell, the first 4 of eval seed 99, every")
    paired = text.split("Paired with the pretrained policy")[1]
    row = next(line for line in paired.splitlines() if line.startswith("| ft_fm/base/p100/d10 |"))
    assert "| s0: 0 / 1 | 0 / 1 | -0.2500 |" in row


def test_confirm_table_of_one_eval_seed_also_reads_the_recipes_first_episodes(
    tmp_path, monkeypatch
):
    episodes = 8  # the recipes' own, as recipe_evaluation is patched below
    data = {
        "setting": {"eval_seeds": [1234], "block_episodes": 2 * episodes},
        "expert": {"success_rate": 1.0, "final_distance": 0.0, "return": -9.0},
        # 3 in 4 of the first block solved, none of the second
        "pretrain/p100/d10/s0/nfe2": _cell("1110" * (episodes // 4) + "0" * episodes),
    }
    (tmp_path / "reconstruction_confirm_toy_seed1234.json").write_text(json.dumps(data))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    monkeypatch.setattr(report, "recipe_evaluation", lambda task: (1234, 8))
    text = report.confirm_table("toy", stem="confirm_toy_seed1234")
    assert f"On the first {episodes} of these episodes" in text
    assert "pretrain/p100/d10 at 2 NFE: s0 0.750." in text


def test_recipe_evaluation_reads_the_robot_recipes():
    assert report.recipe_evaluation("reacher") == (1234, 1000)
    assert report.recipe_evaluation("pusher") == (1234, 200)


def test_selffit_table_reports_start_lowest_highest_and_end(tmp_path, monkeypatch):
    trace = [
        {"step": 0, "train_mse": 0.0008, "heldout_mse": 0.002},
        {"step": 100, "train_mse": 0.018, "heldout_mse": 0.009},  # a transient rise
        {"step": 200, "train_mse": 0.0002, "heldout_mse": 0.0028},
    ]
    data = {
        "setting": {"steps": 200, "every": 100, "batch": 256},
        "pretrain/p16000/d200/s0/resft_fm/force": {"lr": 1e-3, "run": "r", "trace": trace},
    }
    (tmp_path / "reconstruction_selffit_reacher.json").write_text(json.dumps(data))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    rows = [line for line in report.selffit_table("reacher").splitlines() if "| pretrain/" in line]
    assert rows == [
        "| pretrain/p16000/d200/s0 | resft_fm/force | 0.001 | "
        "0.00080 / 0.00020 / 0.01800 / 0.00020 | 0.00200 / 0.00200 / 0.00900 / 0.00280 |"
    ]


def test_contraction_table_averages_each_family_of_runs_apart(tmp_path, monkeypatch):
    """The benchmark's own runs (labels ``seedN``) and a named family (``FAMILY/seedN``) get
    rows of their own, each the mean over that family's seeds; a missing cell is a dash."""
    data = {
        "seed0/pretrain/nfe2": {"mean": 0.10},
        "seed1/pretrain/nfe2": {"mean": 0.20},
        "seed0/resft_fm/nfe2": {"mean": 0.05},
        "recipe/seed0/pretrain/nfe2": {"mean": 0.40},
        "recipe/seed1/pretrain/nfe2": {"mean": 0.60},
        "recipe/seed0/resft_fm/nfe2": {"mean": 0.30},
        "recipe/seed1/resft_fm/nfe2": {"mean": 0.10},
    }
    (tmp_path / "reconstruction_contraction_reacher.json").write_text(json.dumps(data))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    rows = report.contraction_table("reacher").splitlines()
    assert "| the benchmark's runs | 2 | 0.150 (n=2) | 0.050 (n=1) |" in rows
    assert "| recipe | 2 | 0.500 (n=2) | 0.200 (n=2) |" in rows
    assert "| recipe | 4 | - | - |" in rows
    assert rows.index("| the benchmark's runs | 2 | 0.150 (n=2) | 0.050 (n=1) |") < rows.index(
        "| recipe | 2 | 0.500 (n=2) | 0.200 (n=2) |"
    )
