"""``seqwin prepare voices``: texts, the held-out voice, layout and manifests, determinism, a missing flite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from seqwin.cli.main import main
from seqwin.data.errors import DataError
from seqwin.data.flite import SPEAKERS
from seqwin.data.manifest import read_manifest
from seqwin.data.voices import HELDOUT_SPLIT, VoicesConfig, plan, prepare_voices, select, sentence_texts, sentences

PLAY = """\
ACT I. SCENE I. A garden.

Enter ORLANDO and ADAM.

ORLANDO.
As I remember, Adam, it was upon this fashion bequeathed me by will but
poor a thousand crowns. And, as thou sayest, charged my brother on his blessing
to breed me well!

ADAM.
Yonder comes my master, your brother, walking slowly.
Go apart, Adam, and thou shalt hear how he will shake me up.
"""

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed (bash tools/setup.sh)")


def make_inputs(root: Path) -> tuple[Path, Path]:
    """A mini-like corpus (transcripts only: the voices read them, the audio is not used) and a text folder."""
    mini = root / "mini" / "LibriSpeech"
    for split, lines in {"train": ["1-1-0000 PLEASE HOLD", "1-1-0001 GOODBYE"], "dev": ["1-1-0002 THANK YOU"],
                         "test": ["1-2-0000 PRESS ONE"]}.items():
        chapter = mini / split / "1" / lines[0].split("-")[1]
        chapter.mkdir(parents=True)
        (chapter / f"1-{chapter.name}.trans.txt").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    text = root / "text"
    text.mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (text / name).write_text(PLAY, encoding="utf-8")
    return mini.parent, text


def test_sentences_drop_headings_and_directions() -> None:
    found = [s for _, s in sentences(PLAY)]
    assert found[0].startswith("As I remember, Adam,") and found[0].endswith("thousand crowns.")
    assert found[1].startswith("And, as thou sayest")
    assert "Yonder comes my master, your brother, walking slowly." in found
    assert not any(s.startswith(("ACT", "Enter", "ORLANDO", "ADAM.")) for s in found)


def test_sentence_texts_normalized_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(PLAY + "\nHORATIO.\nAy, 'tis 12 o'clock, my lord, the very hour.\n\nGo.\n")
    texts = sentence_texts(tmp_path / "t.txt")
    words = [t.words for t in texts]
    assert "YONDER COMES MY MASTER YOUR BROTHER WALKING SLOWLY" in words
    assert "GO" not in words  # fewer than 5 words
    twelve = next(t for t in texts if "TWELVE" in t.words)
    assert twelve.spoken == twelve.words.lower()  # digits: flite reads the normalized words, not the raw text
    yonder = next(t for t in texts if t.words.startswith("YONDER"))
    assert yonder.spoken == "Yonder comes my master, your brother, walking slowly."


def test_select_is_a_stable_keyed_order(tmp_path: Path) -> None:
    _, text = make_inputs(tmp_path)
    texts = sentence_texts(text / "train.txt")
    assert select(texts, 3, "awb") == select(list(reversed(texts)), 3, "awb")
    orders = {tuple(t.words for t in select(texts, len(texts), key)) for key in ("awb", "slt", "kal16", "test")}
    assert len(orders) > 1


def test_heldout_voice_only_reads_the_test_texts(tmp_path: Path) -> None:
    mini, text = make_inputs(tmp_path)
    jobs = plan(VoicesConfig(heldout_voice="slt", train_sentences=2, dev_sentences=1, test_sentences=2), mini, text)
    by_split: dict[str, set[str]] = {}
    for split, voice, _ in jobs:
        by_split.setdefault(split, set()).add(voice)
    assert by_split[HELDOUT_SPLIT] == {"slt"}
    assert all("slt" not in voices for split, voices in by_split.items() if split != HELDOUT_SPLIT)
    heldout = next(texts for split, _, texts in jobs if split == HELDOUT_SPLIT)
    seen_test = next(texts for split, voice, texts in jobs if split == "test" and voice == "awb")
    assert [t.words for t in heldout] == [t.words for t in seen_test]
    assert heldout[0].words == "PRESS ONE" and (heldout[0].chapter, heldout[0].utt) == (2, 0)


@pytest.mark.parametrize(("change", "message"), [
    ({"heldout_voice": "awb", "voices": ["kal16", "slt"]}, "--heldout-voice awb is not among --voices"),
    ({"voices": ["slt"], "heldout_voice": "slt"}, "at least two voices"),
])
def test_bad_voice_choices(tmp_path: Path, change: dict, message: str) -> None:
    mini, text = make_inputs(tmp_path)
    with pytest.raises(DataError, match=message):
        plan(VoicesConfig(**change), mini, text)


def test_missing_flite_names_the_package_and_setup(tmp_path: Path, monkeypatch, capsys) -> None:
    mini, text = make_inputs(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["prepare", "voices", str(tmp_path / "out"), "--mini", str(mini), "--text", str(text)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "flite not found on PATH" in err[0] and "'flite'" in err[0] and "tools/setup.sh" in err[0]


def test_flite_without_the_voice_is_refused(tmp_path: Path, monkeypatch) -> None:
    # flite itself speaks with its default voice, without an error, when asked for one it lacks.
    mini, text = make_inputs(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "flite").write_text("#!/bin/sh\necho 'Voices available: kal awb rms slt'\n")
    (bin_dir / "flite").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(DataError, match="lacks voice\\(s\\) kal16"):
        prepare_voices(tmp_path / "out", VoicesConfig(), mini=mini, text_dir=text)


@needs_flite
def test_corpus_layout_manifests_and_determinism(tmp_path: Path) -> None:
    mini, text = make_inputs(tmp_path)
    cfg = VoicesConfig(voices=["kal16", "awb", "slt"], heldout_voice="awb", train_sentences=2, dev_sentences=1,
                       test_sentences=2)
    out = tmp_path / "a"
    summary, built = prepare_voices(out, cfg, mini=mini, text_dir=text)
    assert built
    manifests = out / "manifests"
    for split in ("train", "dev", "test", HELDOUT_SPLIT):
        for ext in ("tsv", "wrd", "ltr"):
            assert (manifests / f"{split}.{ext}").is_file()
    assert (manifests / "dict.ltr.txt").is_file()
    speakers = {}
    for split in ("train", "dev", "test", HELDOUT_SPLIT):
        root, entries = read_manifest(manifests / f"{split}.tsv")
        speakers[split] = {e.rel_path.split("/")[1] for e in entries}
        for e in entries:
            info = sf.info(str(root / e.rel_path))
            assert (info.samplerate, info.channels, info.frames) == (16000, 1, e.num_samples)
    assert speakers[HELDOUT_SPLIT] == {str(SPEAKERS["awb"])}
    assert all(str(SPEAKERS["awb"]) not in speakers[s] for s in ("train", "dev", "test"))
    assert speakers["train"] == {str(SPEAKERS["kal16"]), str(SPEAKERS["slt"])}
    # The prompt 1-2-0000 keeps its chapter and number; the same test texts for seen and held-out voices.
    wrd = (manifests / f"{HELDOUT_SPLIT}.wrd").read_text().splitlines()
    assert "PRESS ONE" in wrd and set(wrd) <= set((manifests / "test.wrd").read_text().splitlines())
    assert (out / "LibriSpeech" / HELDOUT_SPLIT / "102" / "2" / "102-2-0000.flac").is_file()
    assert summary.splits[HELDOUT_SPLIT][0] == len(wrd)

    # Same inputs, another directory: byte-identical audio and transcripts.
    prepare_voices(tmp_path / "b", cfg, mini=mini, text_dir=text)
    assert (out / "SHA256SUMS").read_text() == (tmp_path / "b" / "SHA256SUMS").read_text()
    # A second run does nothing; other options are refused rather than mixed in.
    stamp = (manifests / "train.tsv").stat().st_mtime_ns
    again, built = prepare_voices(out, cfg, mini=mini, text_dir=text)
    assert not built and again == summary and (manifests / "train.tsv").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="prepared with other options \\(train_sentences\\)"):
        prepare_voices(out, VoicesConfig(**{**cfg.__dict__, "train_sentences": 3}), mini=mini, text_dir=text)
