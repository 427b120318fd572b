"""``seqwin prepare shifted`` (pitch/tempo proxy test splits) and ``seqwin prepare merge``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from seqwin.cli.main import main
from seqwin.data.audio import read_audio, write_flac
from seqwin.data.errors import DataError
from seqwin.data.manifest import read_manifest
from seqwin.data.manifest_merge import merge_manifests
from seqwin.data.pipeline import AudioManifestDataset, AudioReaderConfig
from seqwin.data.shifted import ShiftConfig, prepare_shifted

SR = 16000


def tone_corpus(root: Path) -> Path:
    """``root/LibriSpeech/test``: two utterances of a 220 Hz tone (1 s and 1.5 s)."""
    chapter = root / "LibriSpeech" / "test" / "1" / "2"
    for k, seconds in enumerate((1.0, 1.5)):
        t = np.arange(int(seconds * SR)) / SR
        write_flac(chapter / f"1-2-{k:04d}.flac", (0.5 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16), SR)
    (chapter / "1-2.trans.txt").write_text("1-2-0000 PRESS ONE\n1-2-0001 GOODBYE\n", encoding="utf-8")
    return root


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / SR)[spectrum.argmax()])


def test_tempo_changes_durations_and_pitch_changes_frequency(tmp_path: Path) -> None:
    source = tone_corpus(tmp_path / "src")
    out = tmp_path / "out"
    summary, built = prepare_shifted(source, out, ShiftConfig(pitch=[3.0], tempo=[0.9, 1.1]))
    assert built and sorted(summary.splits) == ["test_pitch+3", "test_tempo0.9", "test_tempo1.1"]
    original = lengths(source / "LibriSpeech" / "test")
    for split, factor in (("test_tempo0.9", 0.9), ("test_tempo1.1", 1.1), ("test_pitch+3", 1.0)):
        root, entries = read_manifest(out / "manifests" / f"{split}.tsv")
        assert [Path(e.rel_path).stem for e in entries] == ["1-2-0000", "1-2-0001"]
        for entry, n in zip(entries, original, strict=True):
            assert entry.num_samples == pytest.approx(n / factor, rel=0.01)
        assert (out / "manifests" / f"{split}.wrd").read_text() == "PRESS ONE\nGOODBYE\n"
    root, entries = read_manifest(out / "manifests" / "test_pitch+3.tsv")
    shifted = read_audio(root / entries[1].rel_path)
    assert peak_hz(shifted) == pytest.approx(220 * 2 ** (3 / 12), rel=0.03)
    tempo = read_audio(out / "LibriSpeech" / "test_tempo1.1" / "1" / "2" / "1-2-0001.flac")
    assert peak_hz(tempo) == pytest.approx(220, rel=0.03)
    # What `seqwin eval asr` opens: the manifest with its letters and dictionary.
    config = AudioReaderConfig(target="ltr", max_num_frames=200_000, max_audio_len=200_000)
    assert len(AudioManifestDataset(out / "manifests" / "test_tempo0.9.tsv", config).entries) == 2

    prepare_shifted(source, tmp_path / "again", ShiftConfig(pitch=[3.0], tempo=[0.9, 1.1]))
    assert (out / "SHA256SUMS").read_text() == (tmp_path / "again" / "SHA256SUMS").read_text()
    assert prepare_shifted(source, out, ShiftConfig(pitch=[3.0], tempo=[0.9, 1.1]))[1] is False


def lengths(split_dir: Path) -> list[int]:
    return [read_audio(p).size for p in sorted(split_dir.rglob("*.flac"))]


@pytest.mark.parametrize(("cfg", "message"), [
    (ShiftConfig(pitch=[], tempo=[]), "at least one"),
    (ShiftConfig(pitch=[], tempo=[0.0]), "--tempo 0: must be in"),
    (ShiftConfig(pitch=[2, 2.0]), "repeated"),
    (ShiftConfig(split="dev"), "no such split"),
])
def test_bad_options(tmp_path: Path, cfg: ShiftConfig, message: str) -> None:
    with pytest.raises(DataError, match=message):
        prepare_shifted(tone_corpus(tmp_path / "src"), tmp_path / "out", cfg)


def write_split(directory: Path, name: str, root: Path, rows: list[tuple[str, int]], words: list[str] | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.tsv").write_text(f"{root}\n" + "".join(f"{r}\t{n}\n" for r, n in rows))
    if words is not None:
        (directory / f"{name}.wrd").write_text("".join(w + "\n" for w in words))
    return directory / f"{name}.tsv"


def test_merge_keeps_paths_and_labels(tmp_path: Path) -> None:
    a = write_split(tmp_path / "a", "train", tmp_path / "data" / "mini", [("x/1.flac", 10)], ["HI"])
    b = write_split(tmp_path / "b", "train", tmp_path / "data" / "voices", [("y/2.flac", 20)], ["YO YO"])
    c = write_split(tmp_path / "c", "train", tmp_path / "data" / "multi", [("es/3.flac", 30)], None)
    out = tmp_path / "merged"
    merged = merge_manifests(out, {"train": [a, b], "ssl": [a, c]})
    assert [(m.name, m.utterances, m.samples, m.labeled) for m in merged] == [
        ("train", 2, 30, True), ("ssl", 2, 40, False)]
    root, entries = read_manifest(out / "train.tsv")
    assert root == tmp_path / "data" and [e.rel_path for e in entries] == ["mini/x/1.flac", "voices/y/2.flac"]
    assert (out / "train.ltr").read_text() == "H I |\nY O | Y O |\n"
    assert not (out / "ssl.wrd").exists() and (out / "ssl.tsv").read_text().splitlines()[1:] == [
        "mini/x/1.flac\t10", "multi/es/3.flac\t30"]
    assert (out / "dict.ltr.txt").read_text().splitlines()[0] == "| 3"
    with pytest.raises(DataError, match="listed twice"):
        merge_manifests(out, {"train": [a, a]})


def test_merge_repeats_a_source(tmp_path: Path) -> None:
    a = write_split(tmp_path / "a", "train", tmp_path / "data" / "mini", [("x/1.flac", 10)], ["HI"])
    b = write_split(tmp_path / "b", "train", tmp_path / "data" / "voices", [("y/2.flac", 20), ("y/3.flac", 5)],
                    ["YO", "NO"])
    out = tmp_path / "merged"
    assert main(["prepare", "merge", str(out), "--split", "train", f"{a}:3", str(b)]) == 0
    root, entries = read_manifest(out / "train.tsv")
    assert [e.rel_path for e in entries] == ["mini/x/1.flac"] * 3 + ["voices/y/2.flac", "voices/y/3.flac"]
    assert (out / "train.wrd").read_text().splitlines() == ["HI", "HI", "HI", "YO", "NO"]
    assert (out / "dict.ltr.txt").read_text().splitlines()[:2] == ["| 3", "O 2"]  # letters of each source once
    assert main(["prepare", "merge", str(out), "--split", "train", f"{a}:0"]) == 2
    # a repeat belongs to its split: the same manifest once in another split is listed once there
    assert main(["prepare", "merge", str(out), "--split", "train", f"{a}:3", "--split", "ssl", str(a)]) == 0
    assert len(read_manifest(out / "train.tsv")[1]) == 3 and len(read_manifest(out / "ssl.tsv")[1]) == 1


def test_merge_cli_needs_a_manifest_per_split(tmp_path: Path, capsys) -> None:
    assert main(["prepare", "merge", str(tmp_path / "m"), "--split", "train"]) == 2
    assert "--split train: give at least one .tsv" in capsys.readouterr().err
