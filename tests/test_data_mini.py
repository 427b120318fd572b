"""The real mini corpus (needs apt-get download once per session; skipped when that is impossible)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import soundfile as sf

from seqwin.data.librispeech import prepare_librispeech
from seqwin.data.mini import prepare_mini, split_of
from seqwin.data.pipeline import AudioManifestDataset, AudioReaderConfig


@pytest.mark.slow
def test_mini_corpus_end_to_end(mini_corpus: Path, tmp_path: Path) -> None:
    root = mini_corpus / "LibriSpeech"
    flacs = sorted(root.rglob("*.flac"))
    assert len(flacs) == 551  # 568 prompts - 10 silence - 7 tones/beeps
    transcripts = {}
    for trans in root.rglob("*.trans.txt"):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt, text = line.split(" ", 1)
            transcripts[utt] = text
            assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ' "), line
    assert sorted(transcripts) == sorted(p.stem for p in flacs)
    total = 0
    for path in flacs:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert path.parent.name == path.stem.split("-")[1] and path.parent.parent.name == "1"
        total += info.frames
    assert 0.39 < total / 16000 / 3600 < 0.42  # ~24.3 min

    split_sizes = {s: len(list((root / s).rglob("*.flac"))) for s in ("train", "dev", "test")}
    assert split_sizes["train"] > 0.75 * 551 and min(split_sizes.values()) > 30
    prompts = {
        row.split("\t")[2]: row.split("\t")
        for row in (mini_corpus / "prompts.tsv").read_text().splitlines()[1:]
    }
    h323 = prompts["spy-h323"]
    assert transcripts[h323[0]] == "H THREE TWO THREE" and h323[1] == split_of("spy-h323")
    assert transcripts[prompts["digits/1"][0]] == "ONE"

    sums = (mini_corpus / "SHA256SUMS").read_text().splitlines()
    assert len(sums) == 551 + len(list(root.rglob("*.trans.txt")))
    for line in sums[::50]:
        digest, rel = line.split("  ", 1)
        assert hashlib.sha256((mini_corpus / rel).read_bytes()).hexdigest() == digest
    assert "CC-BY-SA-3.0" in (mini_corpus / "ATTRIBUTION.txt").read_text()

    # Second run: nothing rebuilt.
    before = flacs[0].stat().st_mtime_ns
    summary, built = prepare_mini(mini_corpus)
    assert not built and sum(s.utterances for s in summary.splits.values()) == 551
    assert flacs[0].stat().st_mtime_ns == before

    summaries, issues = prepare_librispeech(mini_corpus, tmp_path / "m")
    assert {s.name: s.num_utterances for s in summaries} == split_sizes and issues.num_skipped == 0
    ds = AudioManifestDataset(
        tmp_path / "m" / "dev.tsv",
        AudioReaderConfig(target="ltr", max_audio_len=1_200_000, max_num_frames=1_200_000),
    )
    batch = next(iter(ds.build_pipeline()))
    assert batch.targets is not None and batch.waveforms.abs().max() > 0.05
