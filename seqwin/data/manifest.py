"""fairseq-style manifests: ``<split>.tsv`` (+ parallel ``.wrd`` / ``.ltr``) and the ``dict.ltr.txt`` letters.

Format (fairseq ``wav2vec_manifest.py`` / ``libri_labels.py``, also read by fairseq2's wav2vec2 recipes)::

    <split>.tsv   first line: root directory; then one ``relpath<TAB>num_samples`` line per utterance
    <split>.wrd   one transcript per line, same order     (HELLO WORLD)
    <split>.ltr   letters separated by spaces, "|" ends every word   (H E L L O | W O R L D |)
    dict.ltr.txt  ``symbol count`` lines, most frequent first
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from seqwin.data.errors import DataError, where

WORD_BOUNDARY = "|"


@dataclass(frozen=True)
class ManifestEntry:
    rel_path: str
    num_samples: int
    line: int  # 1-based line in the .tsv, for error messages


def words_to_letters(words: str) -> str:
    """``"HELLO WORLD" -> "H E L L O | W O R L D |"`` (fairseq's letter targets)."""
    return " ".join(" ".join(word) + f" {WORD_BOUNDARY}" for word in words.split())


def read_manifest(tsv: Path) -> tuple[Path, list[ManifestEntry]]:
    """Parse a ``.tsv`` manifest; malformed lines raise :class:`DataError` naming ``file:line``."""
    lines = _read_lines(tsv)
    if not lines:
        raise DataError(f"{tsv}: empty manifest (the first line must be the audio root directory)")
    root = Path(lines[0].strip())
    entries = []
    for number, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) != 2:
            raise DataError(f"{where(tsv, number)}: expected 'relpath<TAB>num_samples', got {text!r}")
        try:
            num_samples = int(fields[1])
        except ValueError:
            raise DataError(f"{where(tsv, number)}: num_samples is not an integer: {fields[1]!r}") from None
        if num_samples <= 0:
            raise DataError(f"{where(tsv, number)}: num_samples must be positive, got {num_samples}")
        entries.append(ManifestEntry(fields[0], num_samples, number))
    return root, entries


def read_labels(path: Path, expected: int) -> list[str]:
    """Read a ``.wrd``/``.ltr`` file that must have one line per manifest entry."""
    lines = _read_lines(path)
    if len(lines) != expected:
        raise DataError(f"{path}: has {len(lines)} lines but the manifest has {expected} entries")
    return lines


def _read_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, raw in enumerate(lines, start=1):
        try:
            out.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{where(path, number)}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from None
    return out


def write_manifest(
    out_dir: Path, split: str, root: Path, rows: Sequence[tuple[str, int, str]]
) -> dict[str, Path]:
    """Write ``<split>.tsv/.wrd/.ltr`` for ``rows`` of ``(relpath, num_samples, words)``.

    Files are written under temporary names and renamed, so an interrupted run never leaves a ``.tsv`` whose
    labels belong to another run.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    contents = {
        "tsv": [str(root)] + [f"{rel}\t{n}" for rel, n, _ in rows],
        "wrd": [words for _, _, words in rows],
        "ltr": [words_to_letters(words) for _, _, words in rows],
    }
    paths = {}
    for ext, lines in contents.items():
        paths[ext] = out_dir / f"{split}.{ext}"
        _atomic_write(paths[ext], "".join(line + "\n" for line in lines))
    return paths


def letter_counts(transcripts: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for words in transcripts:
        counts.update(words_to_letters(words).split())
    return counts


def write_dictionary(path: Path, counts: Counter[str]) -> None:
    """``dict.ltr.txt``: ``symbol count`` lines, most frequent first, ties by symbol (deterministic)."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    _atomic_write(path, "".join(f"{sym} {n}\n" for sym, n in ordered))


@dataclass(frozen=True)
class CharDictionary:
    """Letter vocabulary in fairseq's layout: ``<s>``=0 (the CTC blank), ``<pad>``=1, ``</s>``=2, ``<unk>``=3,
    then the symbols of ``dict.ltr.txt`` in file order. Matching fairseq keeps fairseq1 checkpoints usable."""

    symbols: tuple[str, ...]

    SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
    blank_idx = 0
    pad_idx = 1
    unk_idx = 3

    @classmethod
    def load(cls, path: Path) -> CharDictionary:
        symbols = list(cls.SPECIALS)
        for number, text in enumerate(_read_lines(path), start=1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise DataError(f"{where(path, number)}: expected 'symbol count', got {text!r}")
            if fields[0] in symbols:
                raise DataError(f"{where(path, number)}: duplicate symbol {fields[0]!r}")
            symbols.append(fields[0])
        return cls(tuple(symbols))

    def __len__(self) -> int:
        return len(self.symbols)

    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    def encode(self, letters: str, index: dict[str, int] | None = None) -> list[int]:
        """Map a ``.ltr`` line to ids; unknown symbols become ``<unk>``."""
        index = index or self.index()
        return [index.get(tok, self.unk_idx) for tok in letters.split()]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
