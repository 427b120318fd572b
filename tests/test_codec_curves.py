"""tools/codec_curves.py: the validation rows of codec runs become columns, a JSON and a plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import codec_curves  # noqa: E402


def _run(path: Path, valid: list[dict], t0: float = 1000.0) -> Path:
    path.mkdir(parents=True)
    rows = [{"split": "train", "step": 25, "time": t0, "loss": 1.0}]
    rows += [{"split": "valid", **row} for row in valid]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curves_per_run_with_minutes_and_missing_metrics(tmp_path):
    a = _run(tmp_path / "a", [
        {"step": 500, "time": 1120.0, "stoi": 0.7, "pesq": 1.2, "mel_distance": 0.9},
        {"step": 1000, "time": 1300.0, "stoi": 0.8, "pesq": 1.5, "mel_distance": 0.7,
         "wer_original": 0.3, "wer_recon": 0.6},
    ])
    b = _run(tmp_path / "b", [{"step": 400, "time": 1060.0, "stoi": 0.75, "pesq": 1.3, "mel_distance": 0.8}])
    assert codec_curves.main([str(a), str(b), "--labels", "A", "B", "-o", str(tmp_path / "out")]) == 0
    data = json.loads((tmp_path / "out" / "codec_curves.json").read_text())
    first, second = data["runs"]
    assert first["label"] == "A" and first["step"] == [500, 1000] and first["minutes"] == [2.0, 5.0]
    assert first["stoi"] == [0.7, 0.8] and first["wer_recon"] == [None, 0.6] and first["wer_original"] == 0.3
    assert second["wer_original"] is None and second["stoi"] == [0.75]
    assert (tmp_path / "out" / "codec_curves.png").stat().st_size > 0


def test_a_run_without_validations_is_an_error(tmp_path):
    run = _run(tmp_path / "a", [])
    with pytest.raises(SystemExit, match="no validation rows"):
        codec_curves.main([str(run), "-o", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        codec_curves.main([str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    with pytest.raises(SystemExit):
        codec_curves.main([str(run), "--labels", "x", "y", "-o", str(tmp_path / "out")])
