"""tools/bench_precision.py's comparison and plot (the runs themselves are `seqwin train`, tested elsewhere)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_precision  # noqa: E402


def _run(losses, throughput):
    return {"unit": "tokens_per_s", "throughput": throughput, "wall_s": 1.0, "steps": [5, 10, 15], "loss": losses}


def test_compare_reports_speed_ratio_and_worst_loss_gap():
    row = bench_precision.compare(_run([4.0, 3.0, 2.0], 100.0), _run([4.0, 3.3, 2.1], 250.0))
    assert row["speed_ratio_bf16_over_fp32"] == pytest.approx(2.5)
    assert row["max_rel_loss_gap"] == pytest.approx(0.1)
    assert (row["final_loss_fp32"], row["final_loss_bf16"]) == (2.0, 2.1)
    assert bench_precision.compare({"error": "boom"}, _run([1.0], 1.0)) == {}


def test_plot_draws_only_complete_workloads(tmp_path):
    results = {"lm": {"fp32": _run([3.0, 2.0, 1.0], 10.0), "bf16": _run([3.0, 2.1, 1.1], 20.0)},
               "asr": {"fp32": {"error": "failed"}, "bf16": _run([1.0, 1.0, 1.0], 1.0)}}
    bench_precision.plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    bench_precision.plot({"asr": results["asr"]}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
