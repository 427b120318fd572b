"""tools/bench_decode.py: every method runs a decode step on a small case, and the table gives each method its
ratio to the ring cache (the timings are the tool's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_decode  # noqa: E402


@pytest.mark.parametrize("method", bench_decode.METHODS)
def test_worker_runs_each_method(method):
    case = {"method": method, "context": 100, "batch": 2, "heads": 2, "dim": 16, "window": 8, "dtype": "float32",
            "device": "cpu", "steps": 3, "warmup": 2}
    res = bench_decode.run_worker(case)
    assert res["tokens_per_s"] > 0 and res["step_ms"] > 0
    # The ring holds the last 8 keys and values of 2 sequences; a full cache holds all 105 rows.
    rows = 8 if method == "seqwin_ring" else 105
    assert res["cache_mib"] * 2**20 == 2 * 2 * rows * 2 * 16 * 4


def test_table_gives_ratios_to_the_ring():
    info = {"device": "cpu", "torch": "2.9.1", "dtype": "float32", "heads": 2, "dim": 16, "window": 8}
    rows = [{"method": "seqwin_ring", "context": 100, "batch": 1, "tokens_per_s": 400.0, "cache_mib": 1.0},
            {"method": "full_cache", "context": 100, "batch": 1, "tokens_per_s": 100.0, "cache_mib": 9.0},
            {"method": "full_cache_window", "context": 100, "batch": 1, "skipped": "over 300 s"}]
    line = bench_decode._table(info, rows).splitlines()[-1]
    assert line == "| 100 | 1 | 400, 1 MiB | 100 (4.00x), 9 MiB | over 300 s |"


@pytest.mark.parametrize(("args", "message"), [
    (["--contexts", "0"], "must be positive"),
    (["--device", "cuda"], "no CUDA device here"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    if "cuda" in args:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is here")
    proc = subprocess.run([sys.executable, str(Path(bench_decode.__file__)), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
