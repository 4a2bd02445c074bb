"""Tests of flowpost/demo.py: the quick demo runs end to end and writes its report."""

import json

from flowpost.demo import run_demo


def test_quick_demo_writes_report_and_plots(tmp_path) -> None:
    report = run_demo(tmp_path, quick=True)
    text = report.read_text()
    for row in ("| before |", "| sft |", "| fail_pd |"):
        assert row in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"before", "sft", "fail_pd"}
    assert all(0 < r["w2"] < 10 for r in results.values())
    for label in results:
        assert (tmp_path / label / "plots" / "samples_final.png").stat().st_size > 1000
