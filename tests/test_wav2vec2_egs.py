"""egs/librispeech/run.sh end to end on a tiny LibriSpeech-layout corpus made of real mini-corpus speech."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MICRO = {"model": {"encoder_config": {"model_dim": 32, "num_encoder_layers": 2, "num_encoder_attn_heads": 4,
                                      "ffn_inner_dim": 64, "num_pos_conv_groups": 4, "pos_conv_kernel_size": 8}}}


def _librispeech_from_mini(mini: Path, out: Path) -> Path:
    """Copy a few mini utterances per split into LibriSpeech split names (speaker/chapter renamed)."""
    names = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
    for src_split, dst_split in names.items():
        trans = sorted((mini / "LibriSpeech" / src_split).rglob("*.trans.txt"))[0]
        lines = trans.read_text().splitlines()[:6]
        chapter = out / dst_split / "7" / "9"
        chapter.mkdir(parents=True)
        with open(chapter / "7-9.trans.txt", "w") as f:
            for k, line in enumerate(lines):
                utt, text = line.split(" ", 1)
                shutil.copy(trans.parent / f"{utt}.flac", chapter / f"7-9-{k:04d}.flac")
                f.write(f"7-9-{k:04d} {text}\n")
    return out


@pytest.mark.slow
def test_librispeech_run_sh_end_to_end(mini_corpus, tmp_path):
    corpus = _librispeech_from_mini(mini_corpus, tmp_path / "LibriSpeech")
    micro = yaml.safe_dump(MICRO, default_flow_style=True).strip()
    ssl_micro = yaml.safe_dump({"model": {**MICRO["model"], "final_dim": 16, "quantized_dim": 16,
                                          "num_codebook_entries": 8, "num_distractors": 4}},
                               default_flow_style=True).strip()
    steps = ["trainer.max_steps=2", "trainer.warmup_steps=1", "trainer.log_every=1", "data.max_num_frames=400000"]
    cmd = ["bash", str(REPO / "egs/librispeech/run.sh"), "--librispeech", str(corpus), "--exp", str(tmp_path / "exp"),
           "--ssl-config", str(REPO / "recipes/wav2vec2/ssl/mini.yaml"),
           "--asr-config", str(REPO / "recipes/wav2vec2/asr/mini.yaml"),
           "--ssl-splits", "train-clean-100", "--ctc-split", "train-clean-100", "--eval-splits", "dev-clean test-clean",
           "--ssl-set", f"model.config={ssl_micro}", "--asr-set", f"model.config={micro}",
           "--ssl-set", "data.valid_split=dev-clean", "--asr-set", "data.valid_split=dev-clean"]
    for s in steps:
        cmd += ["--ssl-set", s, "--asr-set", s]
    done = subprocess.run(cmd + ["--stop-stage", "3"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    exp = tmp_path / "exp"
    assert (exp / "manifests" / "train960.tsv").read_text().count("\n") == 1 + 6
    assert (exp / "ssl" / "model.pt").exists() and not (exp / "asr").exists()  # --stop-stage honoured
    done = subprocess.run(cmd + ["--stage", "4"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((exp / "eval" / "summary.json").read_text())
    assert set(summary["splits"]) == {"dev-clean", "test-clean"}
    assert all(s["num_utts"] == 6 for s in summary["splits"].values())
    assert (exp / "curves.png").stat().st_size > 1000 and "test-clean" in (exp / "report.txt").read_text()
    bad = subprocess.run(["bash", str(REPO / "egs/librispeech/run.sh"), "--stage", "x"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "integers" in bad.stderr
