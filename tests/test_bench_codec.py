"""tools/bench_codec.py runs end to end on the demo codec (a smoke test: the numbers themselves are measured, not
asserted), and its padding arithmetic is right."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import bench_codec  # noqa: E402


def test_padding_fraction():
    assert bench_codec.padding_fraction([4, 4, 4, 4], 2) == 0
    # sorted [1, 2, 3, 6] in pairs: 2 * 2 + 6 * 2 = 16 samples for 12
    assert abs(bench_codec.padding_fraction([6, 1, 3, 2], 2) - 16 / 12 + 1) < 1e-12


def test_bench_runs_on_the_demo_codec(tmp_path):
    run = bench_codec.bench("mini", seconds=0.4, batch=2, repeats=1, tokenize_repeats=1)
    for key in bench_codec.COLUMNS:
        assert run[key] > 0, key
    assert run["tokenize_files"] == 16 and 0 <= run["tokenize_padding"] < 1
    assert run["encode_gflop_per_audio_s"] > 0.1  # convolutions counted (channels-last ones included)
    bench_codec._plot([run], tmp_path / "codec.png")
    assert (tmp_path / "codec.png").stat().st_size > 1000
