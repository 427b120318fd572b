"""tools/bench_short_rows.py's table: ratios against seqwin, skipped cases named (the timings are the tool's)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_short_rows  # noqa: E402


def test_table_gives_each_method_its_ratio_to_seqwin():
    info = {"cpu": "cpu", "torch": "2.9.1", "threads": 1, "tokens": 640, "window": 32, "heads": 4, "dim": 64,
            "dtypes": ["bf16"], "lengths": [64]}
    rows = [{"method": "seqwin", "dtype": "bf16", "n": 64, "batch": 10, "ms": 2.0},
            {"method": "seqwin_band", "dtype": "bf16", "n": 64, "batch": 10, "ms": 5.0},
            {"method": "seqwin_bf16_kernel", "dtype": "bf16", "n": 64, "skipped": "over 300 s"},
            {"method": "dense_sdpa", "dtype": "bf16", "n": 64, "batch": 10, "ms": 3.0}]
    line = bench_short_rows._table(rows, info).splitlines()[-1]
    assert line == "| bf16 | 64 (10) | 2.00 | 5.00 (2.50x) | over 300 s | 3.00 (1.50x) |"
