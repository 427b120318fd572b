"""tools/tune_sw_kernels.py: a candidate that fails or disagrees never wins, the winners are the fastest, and a
tiny sweep runs end to end in Triton's CPU interpreter (plumbing only: the timings there mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import tune_sw_kernels  # noqa: E402


class _FakeProblem:
    def __init__(self, *, agree=True, fail=False):
        self.agree, self.fail = agree, fail

    def forward(self):
        if self.fail:
            raise RuntimeError("out of resource: shared memory\nmore")
        return 1.0

    def backward(self, out):
        return (out,)

    def matches(self, out, grads):
        return self.agree


def test_a_candidate_that_disagrees_or_fails_is_skipped_with_the_reason():
    timer = lambda fn: 1.0  # noqa: E731
    assert tune_sw_kernels.time_candidate(_FakeProblem(), "dq", (64, 32, 4, 2), timer) == {"ms": 1.0}
    differs = tune_sw_kernels.time_candidate(_FakeProblem(agree=False), "fwd", (64, 64, 4, 3), timer)["skipped"]
    assert differs == "results differ from the default configuration"
    failed = tune_sw_kernels.time_candidate(_FakeProblem(fail=True), "fwd", (64, 64, 4, 3), timer)["skipped"]
    assert failed == "RuntimeError: out of resource: shared memory"
    from seqwin.kernels import _sw_launch

    assert _sw_launch.OVERRIDES == {}  # restored after every candidate


def test_candidate_lists_are_valid_tiles():
    for size in ("full", "quick", "tiny"):
        for kind in tune_sw_kernels.KINDS:
            cands = tune_sw_kernels.candidates(kind, size)
            assert cands and len(set(cands)) == len(cands)
            for bm, bn, warps, stages in cands:
                assert bm >= 16 and bn >= 16 and bm & (bm - 1) == 0 and bn & (bn - 1) == 0
                assert warps in (1, 4, 8) and 1 <= stages <= 4


def test_tiny_sweep_in_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "tune_sw_kernels.py"), "--interpret", "--out",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "tune.json").read_text())["results"][0]
    for kind in tune_sw_kernels.KINDS:
        rows = result["candidates"][kind]
        assert all("ms" in r for r in rows), rows  # every candidate matched the default configuration
        assert result["best"][kind] == min(rows, key=lambda r: r["ms"])["config"]
    assert len(result["default_ms"]) == 2 and len(result["tuned_ms"]) == 2
    assert "| 48 (1) | 16 | 20 |" in (tmp_path / "tune.md").read_text()
