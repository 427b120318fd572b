"""Inputs refused or counted instead of giving silent wrong results: out-of-range --num-quantizers, tokenizer
input that is not text, manifest rows whose audio is unusable (found when the dataset opens, not mid-run)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_librispeech
from test_codec_util import speechlike, tiny_codec_config

from seqwin.cli.main import main
from seqwin.data.errors import DataError
from seqwin.data.librispeech import prepare_librispeech
from seqwin.data.manifest import read_labels, read_manifest
from seqwin.data.pipeline import AudioManifestDataset, AudioReaderConfig
from seqwin.data.textcorpus import check_text_file
from seqwin.errors import UserError


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ---- seqwin tokenize / eval codec --num-quantizers ----


@pytest.fixture(scope="module")
def codec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from seqwin.models.codec import checkpoint, create_codec

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("codec") / "codec.pt"
    checkpoint.save(path, create_codec(tiny_codec_config()).eval())  # 4 RVQ levels
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


# ---- manifest rows with unusable audio ----


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A 20-row train manifest of which 5 rows have unusable audio; returns it and {relpath: expected category}."""
    make_librispeech(tmp_path / "LibriSpeech", splits=("train",), per_split=20)
    prepare_librispeech(tmp_path / "LibriSpeech", tmp_path / "m")
    tsv = tmp_path / "m" / "train.tsv"
    root, entries = read_manifest(tsv)
    damage = {2: "unreadable audio", 5: "empty file", 9: "wrong sample rate", 13: "stale manifest",
              17: "zero-length audio"}
    for i, category in damage.items():
        path, n = root / entries[i].rel_path, entries[i].num_samples
        if category == "unreadable audio":
            path.write_bytes(b"garbage" * 100)
        elif category == "empty file":
            path.write_bytes(b"")
        elif category == "zero-length audio":  # a 44-byte WAV header announcing no frames
            sf.write(path, np.zeros(0, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
        elif category == "wrong sample rate":
            sf.write(path, np.zeros(n, dtype=np.float32), 8000, subtype="PCM_16")
        else:
            sf.write(path, np.zeros(n + 5, dtype=np.float32), 16000, subtype="PCM_16")
    return tsv, {entries[i].rel_path: c for i, c in damage.items()}


def _reader(**kw: object) -> AudioReaderConfig:
    base = {"max_num_frames": 40_000, "max_audio_len": 16_000, "num_parallel_calls": 1, "num_prefetch": 1}
    return AudioReaderConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_unusable_rows_are_skipped_counted_and_logged_when_the_dataset_opens(damaged, caplog):
    tsv, bad = damaged
    _, entries = read_manifest(tsv)
    words = dict(zip((e.rel_path for e in entries), read_labels(tsv.with_suffix(".wrd"), 20), strict=True))
    with caplog.at_level(logging.WARNING):
        ds = AudioManifestDataset(tsv, _reader(target="wrd", shuffle=False))
    assert (ds.stats.total, ds.stats.kept, ds.stats.unusable, len(ds)) == (20, 15, 5, 15)
    assert not {e.rel_path for e in ds.entries} & set(bad)
    assert ds.labels == [words[e.rel_path] for e in ds.entries]  # labels stay with their rows
    summary = [r.getMessage() for r in caplog.records if "unusable audio" in r.getMessage()]
    assert len(summary) == 1 and "train.tsv: 5 of 20 rows have unusable audio" in summary[0]
    assert all(category in summary[0] for category in bad.values())
    # Every batch of the epoch now loads: nothing is left to fail mid-run.
    assert sum(b.batch_size for b in ds.build_pipeline()) == 15


def test_strict_makes_the_first_unusable_row_an_error(damaged):
    tsv, bad = damaged
    _, entries = read_manifest(tsv)
    first = next(e for e in entries if e.rel_path in bad)
    with pytest.raises(DataError, match=rf"train\.tsv:{first.line}: .*{Path(first.rel_path).name}: unreadable audio"):
        AudioManifestDataset(tsv, _reader(strict=True))


def test_a_manifest_without_usable_audio_is_an_error(tmp_path):
    (tmp_path / "a.flac").write_bytes(b"not audio")
    tsv = tmp_path / "train.tsv"
    tsv.write_text(f"{tmp_path}\na.flac\t1600\n")
    with pytest.raises(DataError, match=r"train\.tsv: none of its 1 rows has usable audio.*unreadable audio"):
        AudioManifestDataset(tsv, _reader())


def test_training_recipes_check_rows_and_honour_data_strict(damaged):
    from seqwin.recipes.codec.data import read_split
    from seqwin.recipes.wav2vec2.config import DataConfig
    from seqwin.recipes.wav2vec2.evaluate import EvalSplit, open_split

    tsv, bad = damaged
    data = DataConfig(manifest_dir=tsv.parent, min_audio_len=1, max_audio_len=16_000, valid_split=None)
    assert len(data.dataset("train", "ltr")) == 15
    with pytest.raises(UserError, match="unreadable audio"):
        DataConfig(manifest_dir=tsv.parent, min_audio_len=1, strict=True).dataset("train", "ltr")
    utts = read_split(tsv.parent, "train", with_text=True, sample_rate=16000)
    assert len(utts) == 15 and not {u.path.name for u in utts} & {Path(p).name for p in bad}
    with pytest.raises(UserError, match="unreadable audio"):
        read_split(tsv.parent, "train", with_text=True, sample_rate=16000, strict=True)
    with pytest.raises(UserError, match="unreadable audio"):  # evaluation scores every utterance or none
        open_split(EvalSplit("train", tsv), 40_000)
