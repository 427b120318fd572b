"""Inputs refused or counted instead of giving silent wrong results: out-of-range --num-quantizers, tokenizer
input that is not text, manifest rows whose audio is unusable (found when the dataset opens, not mid-run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch
from test_codec_util import speechlike, tiny_codec_config

from seqwin.cli.main import main


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---- seqwin tokenize / eval codec --num-quantizers ----


@pytest.fixture(scope="module")
def codec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from seqwin.models.codec import create_codec
    from seqwin.recipes.codec.checkpoint import export_codec

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("codec") / "codec.pt"
    export_codec(create_codec(tiny_codec_config()).eval(), path)  # 4 RVQ levels
    return path


@pytest.mark.parametrize("levels", ["0", "-1", "5"])
def test_num_quantizers_outside_the_codec_levels_is_refused(tmp_path, codec_file, capsys, levels):
    wav = tmp_path / "speech.wav"
    sf.write(wav, speechlike(0.3), 16000, subtype="PCM_16")
    out = tmp_path / "codes"
    rc = main(["tokenize", str(wav), "-o", str(out), "--checkpoint", str(codec_file), "--num-quantizers", levels])
    assert rc == 2
    assert _error_line(capsys).endswith(f"--num-quantizers must be in [1, 4], got {levels}")
    assert not out.exists()
    rc = main(["eval", "codec", "--checkpoint", str(codec_file), "--data", str(wav), "-o", str(tmp_path / "report"),
               "--no-asr", "--num-quantizers", levels])
    assert rc == 2 and "--num-quantizers must be in [1, 4]" in _error_line(capsys)
