"""``seqwin prepare librispeech``: fairseq manifests from any LibriSpeech-layout tree.

Layout: ``ROOT/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` with one
``<speaker>-<chapter>.trans.txt`` per chapter (lines ``<utt-id> TRANSCRIPT``). ``ROOT`` may also be a
directory that contains ``LibriSpeech/`` (e.g. the output of ``seqwin prepare mini``), or a single split.

Bad inputs are skipped, counted, summarized and listed in ``OUT/issues.tsv`` (``strict=True``: the first one
is an error instead): unreadable/corrupt/truncated/empty audio, zero-length audio, NaN/inf samples, a sample
rate other than ``sample_rate`` (refused, see :mod:`seqwin.data.audio`), audio without a transcript line,
transcript lines that are not UTF-8, empty or contain ``|``, duplicate ids. Multi-channel audio is kept (the
loader downmixes it) and noted. Transcript lines without audio are noted.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from seqwin.data.audio import AudioError, AudioInfo, probe_audio
from seqwin.data.errors import DataError, IssueLog
from seqwin.data.manifest import WORD_BOUNDARY, letter_counts, write_dictionary, write_manifest

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".flac", ".wav")
_TRANS_RE = re.compile(r"^(\S+)(?:[ \t]+(.*))?$")


@dataclass
class SplitSummary:
    name: str
    num_utterances: int = 0
    num_samples: int = 0
    sample_rate: int = 16000
    num_words: int = 0
    vocabulary: Counter[str] = field(default_factory=Counter)

    @property
    def hours(self) -> float:
        return self.num_samples / self.sample_rate / 3600


def resolve_root(root: Path) -> Path:
    """Accept ``.../LibriSpeech`` itself or a directory holding it."""
    if not root.is_dir():
        raise DataError(f"{root}: no such directory")
    nested = root / "LibriSpeech"
    return nested if nested.is_dir() and not _has_audio(root) else root


def find_splits(root: Path) -> list[str]:
    """Sub-directories of ``root`` that hold ``<speaker>/<chapter>/`` audio."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _has_audio(p))


def _has_audio(split_dir: Path) -> bool:
    return any(any(split_dir.glob(f"*/*/*{suffix}")) for suffix in AUDIO_SUFFIXES)


def _numeric_key(name: str) -> tuple[int, int | str]:
    # LibriSpeech ids are integers: sort 19 before 103, as its own listings do.
    return (0, int(name)) if name.isdigit() else (1, name)


def _read_transcripts(path: Path, issues: IssueLog) -> dict[str, tuple[str, int]]:
    """``utt_id -> (words, line)`` for one ``.trans.txt``; bad lines go to ``issues``."""
    out: dict[str, tuple[str, int]] = {}
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            issues.skip("transcript not UTF-8", path, f"{exc.reason} at byte {exc.start}", number)
            continue
        if not text.strip():
            continue
        m = _TRANS_RE.match(text.strip())
        assert m is not None  # a non-blank stripped line always has a first token
        utt_id, words = m.group(1), " ".join((m.group(2) or "").split())
        if utt_id in out:
            issues.skip("duplicate transcript", path, f"{utt_id} already on line {out[utt_id][1]}", number)
        elif not words:
            issues.skip("empty transcript", path, utt_id, number)
        elif WORD_BOUNDARY in words:
            issues.skip(
                "bad transcript", path, f"{utt_id}: contains the word boundary {WORD_BOUNDARY!r}", number
            )
        else:
            out[utt_id] = (words, number)
    return out


def _collect_split(split_dir: Path, issues: IssueLog) -> list[tuple[Path, str]]:
    """``(audio path, words)`` for every usable utterance id of a split, in LibriSpeech order."""
    items: list[tuple[Path, str]] = []
    speakers = sorted((p for p in split_dir.iterdir() if p.is_dir()), key=lambda p: _numeric_key(p.name))
    for speaker in speakers:
        for chapter in sorted(
            (p for p in speaker.iterdir() if p.is_dir()), key=lambda p: _numeric_key(p.name)
        ):
            audio = sorted(
                (p for p in chapter.iterdir() if p.suffix in AUDIO_SUFFIXES and p.is_file()),
                key=lambda p: [_numeric_key(part) for part in p.stem.split("-")],
            )
            transcripts: dict[str, tuple[str, int]] = {}
            trans_files = sorted(chapter.glob("*.trans.txt"))
            for trans in trans_files:
                for utt_id, value in _read_transcripts(trans, issues).items():
                    transcripts.setdefault(utt_id, value)
            seen = set()
            for path in audio:
                seen.add(path.stem)
                if path.stem not in transcripts:
                    where_ = (
                        trans_files[0]
                        if trans_files
                        else chapter / f"{speaker.name}-{chapter.name}.trans.txt"
                    )
                    issues.skip("missing transcript", path, f"no line for {path.stem} in {where_.name}")
                    continue
                items.append((path, transcripts[path.stem][0]))
            for utt_id, (_, number) in transcripts.items():
                if utt_id not in seen:
                    issues.note("transcript without audio", trans_files[0], utt_id, "ignored", number)
    return items


def prepare_librispeech(
    root: Path,
    out_dir: Path,
    *,
    splits: list[str] | None = None,
    sample_rate: int = 16000,
    verify_audio: bool = True,
    strict: bool = False,
    num_workers: int | None = None,
) -> tuple[list[SplitSummary], IssueLog]:
    """Write ``OUT/<split>.tsv/.wrd/.ltr`` for each split and ``OUT/dict.ltr.txt`` over the prepared splits.

    ``verify_audio`` decodes every file (finds truncated files; roughly a minute per 100 h of FLAC per core);
    without it only headers are read. The manifest root is the resolved LibriSpeech directory, and relpaths
    start with the split name, as in fairseq's manifests.
    """
    root = resolve_root(root).resolve()
    if _has_audio(root):
        # ROOT is itself a split directory (e.g. .../LibriSpeech/dev-clean): prepare just that split.
        if splits and splits != [root.name]:
            raise DataError(
                f"{root} is a single split ({root.name}); --splits cannot select {', '.join(splits)}"
            )
        root, splits = root.parent, [root.name]
    found = find_splits(root)
    if not found:
        raise DataError(f"{root}: no LibriSpeech splits found (expected <split>/<speaker>/<chapter>/*.flac)")
    wanted = splits or found
    unknown = [s for s in wanted if s not in found]
    if unknown:
        raise DataError(f"unknown split(s) {', '.join(unknown)} under {root}; found: {', '.join(found)}")

    issues = IssueLog(strict=strict)
    summaries: list[SplitSummary] = []
    letters: Counter[str] = Counter()
    workers = num_workers or min(4, os.cpu_count() or 1)
    for split in wanted:
        items = _collect_split(root / split, issues)

        def probe(item: tuple[Path, str]) -> AudioInfo | AudioError:
            try:
                return probe_audio(item[0], sample_rate=sample_rate, verify=verify_audio)
            except AudioError as exc:
                return exc

        # libsndfile decodes without holding the GIL, so threads run in parallel; map() keeps the order.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            probed = list(pool.map(probe, items))

        rows: list[tuple[str, int, str]] = []
        summary = SplitSummary(split, sample_rate=sample_rate)
        for (path, words), result in zip(items, probed, strict=True):
            if isinstance(result, AudioError):
                issues.skip(result.category, path, result.detail)
                continue
            if result.channels > 1:
                issues.note(
                    "multi-channel audio", path, f"{result.channels} channels", "kept, downmixed on load"
                )
            rows.append((path.relative_to(root).as_posix(), result.num_frames, words))
            summary.num_utterances += 1
            summary.num_samples += result.num_frames
            summary.num_words += len(words.split())
            summary.vocabulary.update(words.split())
        if not rows:
            issues.note("empty split", root / split, "no usable utterances; no manifest written", "ignored")
            continue
        write_manifest(out_dir, split, root, rows)
        letters.update(letter_counts(words for _, _, words in rows))
        summaries.append(summary)
        log.info("%s: %d utterances, %.2f h", split, summary.num_utterances, summary.hours)

    if letters:
        # One dictionary over all splits of this run: dev/test letters absent from train would otherwise map
        # to <unk> in evaluation targets.
        write_dictionary(out_dir / "dict.ltr.txt", letters)
    issues.write_tsv(out_dir / "issues.tsv")
    return summaries, issues
