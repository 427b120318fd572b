"""Inputs refused or counted instead of giving silent wrong results: out-of-range --num-quantizers, tokenizer
input that is not text, manifest rows whose audio is unusable (found when the dataset opens, not mid-run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import soundfile as sf
import torch
from test_codec_util import speechlike, tiny_codec_config

from seqwin.cli.main import main
from seqwin.data.errors import DataError
from seqwin.data.textcorpus import check_text_file


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


# ---- seqwin train tokenizer --text ----


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"noise\.flac:1: not text \(NUL byte at byte 4; binary data\?\)"),  # a real FLAC: "fLaC\0..."
        (b"hello\nworld\n\xffrest\n", r"noise\.flac:3: not UTF-8 text \(invalid start byte at byte 12\)"),
        ("hi\n".encode("utf-16"), r"noise\.flac:1: not UTF-8 text \(invalid start byte at byte 0\)"),
        (b"", r"noise\.flac: empty file \(0 bytes\)"),
        (b" \n\n\t\n", r"noise\.flac: no text, only whitespace \(5 bytes\)"),
    ],
    ids=["flac", "bad-byte", "utf16", "empty", "blank"],
)
def test_train_tokenizer_refuses_input_that_is_not_text(tmp_path, capsys, content, message):
    path = tmp_path / "noise.flac"
    if content is None:
        sf.write(path, speechlike(0.2), 16000, subtype="PCM_16")
    else:
        path.write_bytes(content)
    out = tmp_path / "tok"
    assert main(["train", "tokenizer", str(out), "--text", str(path)]) == 2
    line = _error_line(capsys)
    assert re.search(message, line), line
    assert not (out / "tokenizer.model").exists()


def test_text_check_streams_across_blocks(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("aa✓bb\n" * 5, encoding="utf-8")  # ✓ is 3 bytes: some block boundaries split it
    for block_size in (1, 2, 3, 4, 5):
        check_text_file(good, block_size=block_size)
    bad = tmp_path / "bad.txt"
    bad.write_bytes("aa✓bb\n".encode() * 2 + b"x\xe2\x9cz")  # broken 3-byte character at byte 17
    cut = tmp_path / "cut.txt"
    cut.write_bytes("aa✓bb\n".encode() + b"x\xe2\x9c")  # the file ends inside a character
    for block_size in (1, 2, 3, 7, 1 << 20):
        with pytest.raises(DataError, match=r"bad\.txt:3: not UTF-8 text \(invalid continuation byte at byte 17\)"):
            check_text_file(bad, block_size=block_size)
        with pytest.raises(DataError, match=r"cut\.txt:2: not UTF-8 text \(truncated character at byte 9\)"):
            check_text_file(cut, block_size=block_size)
