"""``seqwin prepare librispeech``: manifests, dictionary, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import make_librispeech, write_utterance

from seqwin.cli.main import main
from seqwin.data.errors import DataError
from seqwin.data.librispeech import prepare_librispeech
from seqwin.data.manifest import CharDictionary, read_manifest, words_to_letters


def _issues(out: Path) -> list[list[str]]:
    rows = [line.split("\t") for line in (out / "issues.tsv").read_text().splitlines()[1:]]
    return rows


def test_manifests_match_fairseq_format(tiny_librispeech: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    summaries, issues = prepare_librispeech(tiny_librispeech, out)
    assert [s.name for s in summaries] == ["dev", "train"]
    assert issues.issues == []
    root, entries = read_manifest(out / "train.tsv")
    assert root == tiny_librispeech.resolve()
    # LibriSpeech order (speaker, chapter, utterance) and lengths straight from the audio headers.
    assert [e.rel_path for e in entries][:3] == [
        "train/10/100/10-100-0000.flac",
        "train/10/100/10-100-0002.flac",
        "train/10/100/10-100-0004.flac",
    ]
    assert [e.num_samples for e in entries][:3] == [800, 2400, 4000]
    for e in entries:
        assert sf.info(str(root / e.rel_path)).frames == e.num_samples
    wrd = (out / "train.wrd").read_text().splitlines()
    ltr = (out / "train.ltr").read_text().splitlines()
    assert len(wrd) == len(ltr) == len(entries) == 6
    assert wrd[0] == "HELLO WORLD A"
    assert ltr[0] == "H E L L O | W O R L D | A |"
    counts = dict(line.split() for line in (out / "dict.ltr.txt").read_text().splitlines())
    assert counts["|"] == "36" and counts["L"] == "36" and counts["A"] == "6" and counts["B"] == "6"
    d = CharDictionary.load(out / "dict.ltr.txt")
    # fairseq specials first, then most frequent first with ties by symbol ("L" < "|").
    assert d.symbols[:6] == ("<s>", "<pad>", "</s>", "<unk>", "L", "|")
    assert d.encode("H E ?") == [d.index()["H"], d.index()["E"], d.unk_idx]


def test_words_to_letters() -> None:
    assert words_to_letters("IT'S  OK") == "I T ' S | O K |"
    assert words_to_letters("") == ""


def test_split_selection_and_nested_root(tmp_path: Path) -> None:
    make_librispeech(tmp_path / "corpus" / "LibriSpeech", splits=("train-clean-100", "dev-clean"))
    out = tmp_path / "m"
    summaries, _ = prepare_librispeech(tmp_path / "corpus", out, splits=["dev-clean"])
    assert [s.name for s in summaries] == ["dev-clean"]
    assert (out / "dev-clean.tsv").is_file() and not (out / "train-clean-100.tsv").exists()
    with pytest.raises(DataError, match="unknown split.*test-other.*found: dev-clean, train-clean-100"):
        prepare_librispeech(tmp_path / "corpus", out, splits=["test-other"])
    # A split directory given directly is prepared on its own.
    summaries, _ = prepare_librispeech(
        tmp_path / "corpus" / "LibriSpeech" / "train-clean-100", tmp_path / "m2"
    )
    assert [s.name for s in summaries] == ["train-clean-100"]
    assert read_manifest(tmp_path / "m2" / "train-clean-100.tsv")[1][0].rel_path.startswith(
        "train-clean-100/"
    )


def _bad_corpus(root: Path) -> dict[str, Path]:
    """One good utterance plus one of each bad kind, all in split 'train'."""
    w = write_utterance
    good = w(root, "train", "1-1-0000", "GOOD ONE", 1600)
    corrupt = w(root, "train", "1-1-0001", "CORRUPT", 1600)
    corrupt.write_bytes(b"not audio at all" * 64)
    truncated = w(root, "train", "1-1-0002", "TRUNCATED", 16000)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty = w(root, "train", "1-1-0003", "EMPTY FILE", 1600)
    empty.write_bytes(b"")
    zero = root / "train/1/1/1-1-0004.wav"
    sf.write(zero, np.zeros(0, dtype=np.float32), 16000)
    with (root / "train/1/1/1-1.trans.txt").open("a") as f:
        f.write("1-1-0004 ZERO LENGTH\n")
    rate = w(root, "train", "1-1-0005", "EIGHT KILOHERTZ", 800, sample_rate=8000)
    stereo = w(root, "train", "1-1-0006", "STEREO", 1600, channels=2)
    nan = root / "train/1/1/1-1-0007.wav"
    x = np.full(1600, 0.1, dtype=np.float32)
    x[100] = np.nan
    sf.write(nan, x, 16000, subtype="FLOAT")
    with (root / "train/1/1/1-1.trans.txt").open("a") as f:
        f.write("1-1-0007 NOT A NUMBER\n")
    untranscribed = w(root, "train", "1-1-0008", None, 1600)
    badtext = w(root, "train", "1-1-0009", None, 1600)
    with (root / "train/1/1/1-1.trans.txt").open("ab") as f:
        f.write(b"1-1-0009 CAF\xe9 LATIN ONE\n")  # line 9 of the transcript file
        f.write(b"1-1-0099 NO AUDIO FOR THIS LINE\n")
    return {
        "good": good,
        "corrupt": corrupt,
        "truncated": truncated,
        "empty": empty,
        "zero": zero,
        "rate": rate,
        "stereo": stereo,
        "nan": nan,
        "untranscribed": untranscribed,
        "badtext": badtext,
    }


def test_bad_inputs_are_skipped_counted_and_listed(tmp_path: Path) -> None:
    files = _bad_corpus(tmp_path / "LibriSpeech")
    out = tmp_path / "m"
    summaries, issues = prepare_librispeech(tmp_path / "LibriSpeech", out)
    _, entries = read_manifest(out / "train.tsv")
    assert [Path(e.rel_path).name for e in entries] == ["1-1-0000.flac", "1-1-0006.flac"]  # good + stereo
    assert (out / "train.wrd").read_text().splitlines() == ["GOOD ONE", "STEREO"]
    by_file = {Path(row[2]).name: row for row in _issues(out)}
    expected = {
        "corrupt": ("skipped", "unreadable audio"),
        "truncated": ("skipped", "corrupt audio"),
        "empty": ("skipped", "empty file"),
        "zero": ("skipped", "zero-length audio"),
        "rate": ("skipped", "wrong sample rate"),
        "nan": ("skipped", "non-finite samples"),
        "untranscribed": ("skipped", "missing transcript"),
        "stereo": ("kept, downmixed on load", "multi-channel audio"),
    }
    for key, (action, category) in expected.items():
        row = by_file[files[key].name]
        assert (row[0], row[1]) == (action, category), key
    assert "8000 Hz, expected 16000 Hz" in by_file[files["rate"].name][4]
    # Non-UTF-8 transcript: reported with the transcript file and line; its audio then has no transcript.
    trans_rows = [r for r in _issues(out) if r[2].endswith("1-1.trans.txt")]
    assert [
        "skipped",
        "transcript not UTF-8",
        str(tmp_path / "LibriSpeech/train/1/1/1-1.trans.txt"),
        "9",
    ] == [r for r in trans_rows if r[1] == "transcript not UTF-8"][0][:4]
    assert by_file[files["badtext"].name][1] == "missing transcript"
    assert any(r[1] == "transcript without audio" and r[4] == "1-1-0099" for r in trans_rows)
    assert issues.num_skipped == 9
    assert summaries[0].num_utterances == 2


def test_header_only_mode_misses_truncation_but_not_nan(tmp_path: Path) -> None:
    files = _bad_corpus(tmp_path / "LibriSpeech")
    out = tmp_path / "m"
    prepare_librispeech(tmp_path / "LibriSpeech", out, verify_audio=False)
    names = [Path(e.rel_path).name for e in read_manifest(out / "train.tsv")[1]]
    assert files["truncated"].name in names  # documented: only a full decode finds truncation
    assert files["nan"].name not in names  # float files are always scanned


def test_strict_mode_stops_at_first_bad_input(tmp_path: Path) -> None:
    _bad_corpus(tmp_path / "LibriSpeech")
    with pytest.raises(DataError, match=r"trans\.txt:9: transcript not UTF-8"):
        prepare_librispeech(tmp_path / "LibriSpeech", tmp_path / "m", strict=True)


def test_cli_prints_summary_and_issue_counts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _bad_corpus(tmp_path / "LibriSpeech")
    assert main(["prepare", "librispeech", str(tmp_path), str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "train: 2 utterances" in out
    assert "9 input(s) skipped" in out and "skipped 1 x wrong sample rate" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "librispeech", "/definitely/not/here", "OUT"],
        ["prepare", "librispeech", "{tmp}", "{tmp}/m", "--splits", "nope"],
        ["prepare", "librispeech", "{tmp}", "{tmp}/m", "--workers", "0"],
        ["prepare", "librispeech", "{tmp}", "{tmp}/m", "--bogus-option"],
        ["prepare", "librispeech", "{tmp}"],
        ["prepare", "nonsense", "x"],
        ["prepare"],
        ["prepare", "text", "files", "/definitely/not/here.txt", "{tmp}/t"],
    ],
)
def test_cli_user_mistakes_exit_2_with_one_line(
    argv: list[str], tiny_librispeech: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = str(tiny_librispeech.parent)
    try:
        code = main([a.format(tmp=tmp) for a in argv])
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    assert code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err and len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err
