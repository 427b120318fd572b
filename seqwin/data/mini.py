"""``seqwin prepare mini``: a small real-speech corpus in LibriSpeech layout from Debian's Asterisk prompts.

Source: Debian packages ``asterisk-core-sounds-en-g722`` (568 English telephony prompts, one professional
female speaker, G.722 at 16 kHz) and ``asterisk-core-sounds-en`` (their transcripts). License CC-BY-SA-3.0,
written to ``OUT/ATTRIBUTION.txt``.

Output (``OUT`` = the directory given on the command line)::

    OUT/LibriSpeech/{train,dev,test}/1/<chapter>/1-<chapter>-<utt>.flac   16 kHz mono 16-bit FLAC
    OUT/LibriSpeech/{train,dev,test}/1/<chapter>/1-<chapter>.trans.txt
    OUT/prompts.tsv      utterance id, split, Asterisk prompt name, original transcript
    OUT/issues.tsv       every prompt that was not used, and why
    OUT/SHA256SUMS       sha256 of every FLAC and transcript file (``cd OUT && sha256sum -c SHA256SUMS``)
    OUT/ATTRIBUTION.txt  license and credits

Speaker 1 is the one voice; each prompt folder (top level, ``digits/``, ``letters/`` ...) is a chapter, and
utterance numbers are assigned over the sorted prompt names, so ids are unique across splits and stable.
The split is a hash of the prompt name (~80/10/10), so it does not change between runs or machines.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seqwin.data import debs
from seqwin.data.audio import write_flac
from seqwin.data.errors import DataError, IssueLog
from seqwin.data.prompts import Prompt, parse_prompt_list

log = logging.getLogger(__name__)

PACKAGES = ("asterisk-core-sounds-en-g722", "asterisk-core-sounds-en")
SOUNDS_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
PROMPT_LIST = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
SAMPLE_RATE = 16000
G722_BITRATE = 64000
SPEAKER = 1
SPLITS = ("train", "dev", "test")
# Written first with "complete": false, rewritten last with the summary. Its presence also marks
# OUT/LibriSpeech as ours: a LibriSpeech directory without it (e.g. the real corpus) is never deleted.
MARKER = ".seqwin-mini.json"
_FORMAT_VERSION = 1

ATTRIBUTION = """\
seqwin mini corpus
==================

Audio: the English core sound prompts of the Asterisk PBX, voice of Allison Smith
(http://www.theivrvoice.com), recorded with financial contributions by Digium, Inc. (http://www.digium.com),
as packaged by Debian in asterisk-core-sounds-en-g722 and asterisk-core-sounds-en (version {version}).

License: Creative Commons Attribution-ShareAlike 3.0 Unported (CC-BY-SA-3.0),
https://creativecommons.org/licenses/by-sa/3.0/

Changes made by seqwin: G.722 decoded to 16 kHz 16-bit FLAC; files renamed to LibriSpeech-style ids
(mapping in prompts.tsv); transcripts normalized to uppercase words (numbers and symbols spelled out,
punctuation removed, a few typos corrected). This derived corpus is distributed under the same license.
"""


@dataclass
class SplitStats:
    utterances: int = 0
    samples: int = 0

    @property
    def hours(self) -> float:
        return self.samples / SAMPLE_RATE / 3600


@dataclass
class MiniSummary:
    splits: dict[str, SplitStats] = field(default_factory=dict)
    words: int = 0
    vocabulary: int = 0
    characters: str = ""
    longest_s: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        total = SplitStats(
            sum(s.utterances for s in self.splits.values()), sum(s.samples for s in self.splits.values())
        )
        out = [
            f"{name:>5}: {s.utterances:4d} utterances, {s.hours:.3f} h ({s.hours * 60:.1f} min)"
            for name, s in {**self.splits, "total": total}.items()
        ]
        out.append(
            f"words: {self.words}, vocabulary: {self.vocabulary} words, {len(self.characters)} characters "
            f"{self.characters!r}, longest utterance {self.longest_s:.1f} s"
        )
        out += [f"skipped {n} x {category}" for category, n in sorted(self.skipped.items())]
        return out

    @classmethod
    def from_json(cls, data: dict) -> MiniSummary:
        summary = cls(**{k: v for k, v in data.items() if k != "splits"})
        summary.splits = {k: SplitStats(**v) for k, v in data["splits"].items()}
        return summary


def split_of(name: str) -> str:
    """Deterministic ~80/10/10 assignment from the prompt name (same on every run and machine)."""
    bucket = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % 100
    return "train" if bucket < 80 else "dev" if bucket < 90 else "test"


def _read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_prepared(out: Path) -> bool:
    marker = _read_marker(out)
    return bool(marker and marker.get("complete")) and (out / "LibriSpeech").is_dir()


def prepare_mini(
    out: Path, *, cache_dir: Path | None = None, force: bool = False
) -> tuple[MiniSummary, bool]:
    """Build the corpus in ``out``; returns ``(summary, built)``. ``built`` is False when it already existed
    (then nothing is touched unless ``force``). ``--force`` replaces only what this command writes."""
    marker = _read_marker(out)
    if is_prepared(out) and not force:
        assert marker is not None
        return MiniSummary.from_json(marker["summary"]), False
    if (out / "LibriSpeech").exists() and marker is None:
        raise DataError(
            f"{out / 'LibriSpeech'} exists but was not made by 'seqwin prepare mini'; "
            "choose another output directory"
        )
    start = time.monotonic()
    cache_dir = cache_dir or debs.default_cache_dir()
    files = debs.download(PACKAGES, cache_dir)
    tree = debs.extract(list(files.values()), cache_dir / "extracted")
    sounds, prompt_list = tree / SOUNDS_DIR, tree / PROMPT_LIST
    for needed in (sounds, prompt_list):
        if not needed.exists():
            raise DataError(f"{needed}: missing from the extracted packages ({', '.join(PACKAGES)})")

    issues = IssueLog()
    with gzip.open(prompt_list, "rb") as f:
        prompts = parse_prompt_list(f.read(), prompt_list, issues)

    out.mkdir(parents=True, exist_ok=True)
    (out / "SHA256SUMS").unlink(missing_ok=True)
    # From here on the directory is ours but incomplete, so an interrupted run is rebuilt next time.
    (out / MARKER).write_text(json.dumps({"format": _FORMAT_VERSION, "complete": False}) + "\n", "utf-8")
    staging = out / "LibriSpeech.partial"
    shutil.rmtree(staging, ignore_errors=True)
    summary, rows = _build(sounds, prompts, staging, issues)

    final = out / "LibriSpeech"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    version = files[PACKAGES[0]].name.split("_")[1]
    (out / "ATTRIBUTION.txt").write_text(ATTRIBUTION.format(version=version), encoding="utf-8")
    (out / "prompts.tsv").write_text(
        "utt_id\tsplit\tprompt\ttext\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8"
    )
    issues.write_tsv(out / "issues.tsv")
    _write_checksums(out)
    summary.skipped = {cat: n for (cat, action), n in issues.counts().items() if action == "skipped"}
    summary.seconds = time.monotonic() - start
    marker = {
        "format": _FORMAT_VERSION,
        "complete": True,
        "packages": {k: v.name for k, v in files.items()},
        "summary": asdict(summary),
    }
    (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return summary, True


def _build(
    sounds: Path, prompts: dict[str, Prompt], staging: Path, issues: IssueLog
) -> tuple[MiniSummary, list[list[str]]]:
    from G722 import G722  # PyPI package "g722"; imported here so other commands work without it

    audio = {p.relative_to(sounds).with_suffix("").as_posix(): p for p in sorted(sounds.rglob("*.g722"))}
    for name, prompt in prompts.items():
        if name not in audio and prompt.text:
            issues.note("transcript without audio", PROMPT_LIST, name, "ignored", prompt.line)
    chapters = {folder: i + 1 for i, folder in enumerate(sorted({_folder(n) for n in audio}))}
    next_utt = dict.fromkeys(chapters, 0)
    summary = MiniSummary(splits={s: SplitStats() for s in SPLITS})
    transcripts: dict[Path, list[str]] = {}
    rows: list[list[str]] = []
    vocabulary: set[str] = set()
    for name, path in audio.items():
        prompt = prompts.get(name)
        shown = f"{SOUNDS_DIR}/{name}.g722"  # package-relative: the cache path means nothing to a reader
        if prompt is None:
            issues.skip("no transcript", shown, f"{name} is not in {Path(PROMPT_LIST).name}")
            continue
        if prompt.skip_reason:
            issues.skip(prompt.skip_reason, shown, f"{Path(PROMPT_LIST).name}:{prompt.line}: {prompt.raw}")
            continue
        # A fresh decoder per file: G.722 is adaptive, and a decoder carries its state into the next stream.
        samples = np.asarray(G722(SAMPLE_RATE, G722_BITRATE).decode(path.read_bytes()), dtype=np.int16)
        if samples.size == 0:
            issues.skip("empty audio", shown, "G.722 stream decoded to 0 samples")
            continue
        folder, split = _folder(name), split_of(name)
        chapter = chapters[folder]
        utt_id = f"{SPEAKER}-{chapter}-{next_utt[folder]:04d}"
        next_utt[folder] += 1
        chapter_dir = staging / split / str(SPEAKER) / str(chapter)
        write_flac(chapter_dir / f"{utt_id}.flac", samples, SAMPLE_RATE)
        transcripts.setdefault(chapter_dir / f"{SPEAKER}-{chapter}.trans.txt", []).append(
            f"{utt_id} {prompt.text}"
        )
        rows.append([utt_id, split, name, prompt.raw])
        stats = summary.splits[split]
        stats.utterances += 1
        stats.samples += int(samples.size)
        summary.longest_s = max(summary.longest_s, samples.size / SAMPLE_RATE)
        words = prompt.text.split()
        summary.words += len(words)
        vocabulary.update(words)
    for trans_path, lines in transcripts.items():
        trans_path.write_text("".join(line + "\n" for line in sorted(lines)), encoding="utf-8")
    summary.vocabulary = len(vocabulary)
    summary.characters = "".join(sorted(set("".join(vocabulary))))
    rows.sort()
    return summary, rows


def _folder(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else ""


def _write_checksums(out: Path) -> None:
    lines = []
    for path in sorted((out / "LibriSpeech").rglob("*")):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            lines.append(f"{digest}  {path.relative_to(out).as_posix()}\n")
    (out / "SHA256SUMS").write_text("".join(lines), encoding="utf-8")
