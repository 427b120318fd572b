"""``seqwin prepare voices``: English speech of other (synthetic) speakers, in LibriSpeech layout, with manifests.

The texts are the mini corpus's prompts (its transcripts, split as the mini corpus splits them) and sentences
of the Shakespeare text splits of ``seqwin prepare text`` (train.txt / valid.txt / test.txt). Each voice of
:mod:`seqwin.data.flite` is a speaker. One voice is held out: it speaks only the test texts, into its own split
``heldout_voice``, and never appears in train or dev, so ``test`` (the same texts by the voices trained on) and
``heldout_voice`` differ only in the voice.

Output (``OUT`` = the directory given on the command line)::

    OUT/LibriSpeech/{train,dev,test,heldout_voice}/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    OUT/manifests/{train,dev,test,heldout_voice}.{tsv,wrd,ltr}, dict.ltr.txt   (as `prepare librispeech`)
    OUT/utterances.tsv   utterance id, split, voice, source of the text, text read, transcript
    OUT/issues.tsv       every text that was not used, and why
    OUT/SHA256SUMS       sha256 of every FLAC and transcript file

Speakers are 101-104 (:data:`seqwin.data.flite.SPEAKERS`). A prompt keeps the chapter and utterance number of
its mini id (``1-3-0004`` becomes ``103-3-0004``); Shakespeare sentences are chapter 100, numbered in selection
order, so the same test sentence has the same number for every voice. Sentences are chosen by a hash order
(per voice for train, shared for dev and test) among those of 5-30 words, and kept when the synthesized audio
lasts ``min_seconds``-``max_seconds``; prompts are all kept, whatever their length, as in the mini corpus.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seqwin.data import builds, flite
from seqwin.data.audio import write_flac
from seqwin.data.errors import DataError, IssueLog
from seqwin.data.librispeech import prepare_librispeech, resolve_root
from seqwin.data.textnorm import normalize_transcript

log = logging.getLogger(__name__)

MARKER = ".seqwin-voices.json"
HELDOUT_SPLIT = "heldout_voice"
TEXT_FILES = {"train": "train.txt", "dev": "valid.txt", "test": "test.txt"}
SENTENCE_CHAPTER = 100
_MIN_WORDS, _MAX_WORDS = 5, 30  # 2-12 s at flite's ~2.5 words per second
# Text flite can read as written: then the words it says are exactly the normalized transcript's.
_PLAIN_RE = re.compile(r"[A-Za-z' ,.;:!?-]+")
# A speaker heading of a play ("CHARLES." / "FIRST LORD.") or a stage direction.
_HEADING_RE = re.compile(r"^[A-Z][A-Z' ]*\.$")
_DIRECTION_RE = re.compile(r"^(\[|Enter\b|Exit\b|Exeunt\b|Re-enter\b|SCENE\b|ACT\b)")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class VoicesConfig:
    voices: list[str] = field(default_factory=lambda: list(flite.SPEAKERS))
    heldout_voice: str = "rms"
    train_sentences: int = 400
    """Shakespeare sentences per training voice (on top of every mini train prompt)."""
    dev_sentences: int = 50
    test_sentences: int = 100
    min_seconds: float = 2.0
    max_seconds: float = 12.0


@dataclass(frozen=True)
class Text:
    source: str  # where the text comes from: "mini:<utt id>" or "<file>:<first line of its paragraph>"
    spoken: str  # what flite reads
    words: str  # the transcript (LibriSpeech alphabet)
    chapter: int
    utt: int | None  # the mini utterance number of a prompt; sentences are numbered when selected


def mini_prompts(mini: Path, split: str) -> list[Text]:
    """The transcripts of one split of a mini corpus (``seqwin prepare mini`` output or its LibriSpeech dir)."""
    split_dir = resolve_root(mini) / split
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: no such split; run 'seqwin prepare mini {mini}' first")
    texts = []
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt_id, _, words = line.partition(" ")
            _, chapter, number = utt_id.split("-")
            texts.append(Text(f"mini:{utt_id}", words.lower(), words, int(chapter), int(number)))
    if not texts:
        raise DataError(f"{split_dir}: no transcripts (*/*/*.trans.txt)")
    return texts


def sentences(text: str) -> list[tuple[int, str]]:
    """``(line, sentence)`` of the spoken lines of a play text: speaker headings and stage directions dropped."""
    out: list[tuple[int, str]] = []
    paragraph: list[tuple[int, str]] = []
    for number, raw in enumerate([*text.splitlines(), ""], start=1):
        line = raw.strip()
        if line:
            paragraph.append((number, line))
            continue
        if paragraph and _HEADING_RE.match(paragraph[0][1]):
            paragraph = paragraph[1:]
        if paragraph and not _DIRECTION_RE.match(paragraph[0][1]):
            joined = " ".join(line for _, line in paragraph)
            out += [(paragraph[0][0], s) for s in _SENTENCE_END_RE.split(joined) if s]
        paragraph = []
    return out


def sentence_texts(path: Path) -> list[Text]:
    """Distinct sentences of 5-30 words from a text file, in file order."""
    if not path.is_file():
        raise DataError(f"{path}: no such file; run 'seqwin prepare text shakespeare {path.parent}' first")
    seen: set[str] = set()
    texts = []
    for number, sentence in sentences(path.read_text(encoding="utf-8")):
        if sentence.isupper():  # titles and headings
            continue
        words = normalize_transcript(sentence)
        if not _MIN_WORDS <= len(words.split()) <= _MAX_WORDS or words in seen:
            continue
        seen.add(words)
        spoken = sentence if _PLAIN_RE.fullmatch(sentence) else words.lower()
        texts.append(Text(f"{path.name}:{number}", spoken, words, SENTENCE_CHAPTER, None))
    return texts


def select(texts: list[Text], count: int, key: str) -> list[Text]:
    """``count`` texts in a hash order seeded by ``key``: the same on every run and machine."""
    def rank(t: Text) -> bytes:
        return hashlib.sha256(f"{key}\t{t.words}".encode()).digest()

    return sorted(texts, key=rank)[:count]


@dataclass
class VoicesSummary:
    splits: dict[str, list[int]] = field(default_factory=dict)  # split -> [utterances, samples]
    voices: dict[str, list[int]] = field(default_factory=dict)  # voice -> [utterances, samples]
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"{name:>13}: {n:5d} utterances, {s / 16000 / 3600:.3f} h" for name, (n, s) in self.splits.items()]
        out += [f"{'voice ' + name:>13}: {n:5d} utterances, {s / 16000 / 3600:.3f} h"
                for name, (n, s) in self.voices.items()]
        out += [f"skipped {n} x {category}" for category, n in sorted(self.skipped.items())]
        return out


def plan(cfg: VoicesConfig, mini: Path | None, text_dir: Path | None) -> list[tuple[str, str, list[Text]]]:
    """``(split, voice, texts)`` for every voice and split, in build order."""
    if cfg.heldout_voice not in cfg.voices:
        raise DataError(f"--heldout-voice {cfg.heldout_voice} is not among --voices {' '.join(cfg.voices)}")
    if len(cfg.voices) < 2:
        raise DataError("--voices: need at least two voices (one is held out)")
    if mini is None and text_dir is None:
        raise DataError("give --mini, --text or both: the texts to read")
    counts = {"train": cfg.train_sentences, "dev": cfg.dev_sentences, "test": cfg.test_sentences}
    prompts = {s: mini_prompts(mini, s) if mini else [] for s in TEXT_FILES}
    candidates = {s: sentence_texts(text_dir / f) if text_dir else [] for s, f in TEXT_FILES.items()}
    jobs = []
    for voice in cfg.voices:
        splits = [(HELDOUT_SPLIT, "test")] if voice == cfg.heldout_voice else [(s, s) for s in TEXT_FILES]
        for split, source in splits:
            # Train sentences differ per voice (more distinct text); dev/test ones are shared, for comparison.
            key = voice if source == "train" else source
            chosen = select(candidates[source], counts[source], key)
            numbered = [Text(t.source, t.spoken, t.words, t.chapter, i) for i, t in enumerate(chosen)]
            jobs.append((split, voice, prompts[source] + numbered))
    return jobs


def prepare_voices(
    out: Path, cfg: VoicesConfig, *, mini: Path | None, text_dir: Path | None, force: bool = False
) -> tuple[VoicesSummary, bool]:
    """Build the corpus and its manifests in ``out``; ``(summary, built)``, ``built`` False when it was complete."""
    options = {**asdict(cfg), "mini": str(mini and mini.resolve()), "text": str(text_dir and text_dir.resolve())}
    done = builds.reuse(out, MARKER, options, force, "seqwin prepare voices")
    if done is not None:
        return VoicesSummary(**done), False
    binary = flite.find_flite()
    flite.check_voices(binary, cfg.voices)
    jobs = plan(cfg, mini, text_dir)
    start = time.monotonic()
    builds.start(out, MARKER)
    staging = out / "LibriSpeech.partial"
    shutil.rmtree(staging, ignore_errors=True)
    issues = IssueLog()
    summary = VoicesSummary()
    rows: list[str] = []
    transcripts: dict[Path, list[str]] = {}
    total = sum(len(texts) for _, _, texts in jobs)
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        wav = Path(scratch) / "flite.wav"
        for split, voice, texts in jobs:
            speaker = flite.SPEAKERS[voice]
            for text in texts:
                samples = flite.synthesize(binary, voice, text.spoken, wav)
                seconds = samples.size / flite.SAMPLE_RATE
                if text.chapter == SENTENCE_CHAPTER and not cfg.min_seconds <= seconds <= cfg.max_seconds:
                    issues.skip(f"outside {cfg.min_seconds:g}-{cfg.max_seconds:g} s", text.source,
                                f"{voice}: {seconds:.1f} s: {text.words}")
                    continue
                utt_id = f"{speaker}-{text.chapter}-{text.utt:04d}"
                chapter_dir = staging / split / str(speaker) / str(text.chapter)
                write_flac(chapter_dir / f"{utt_id}.flac", samples, flite.SAMPLE_RATE)
                transcripts.setdefault(chapter_dir / f"{speaker}-{text.chapter}.trans.txt", []).append(
                    f"{utt_id} {text.words}")
                rows.append("\t".join([utt_id, split, voice, text.source, text.spoken, text.words]))
                for stats in (summary.splits.setdefault(split, [0, 0]), summary.voices.setdefault(voice, [0, 0])):
                    stats[0] += 1
                    stats[1] += int(samples.size)
                if len(rows) % 250 == 0:
                    log.info("%d of %d utterances synthesized", len(rows), total)
    for path, lines in transcripts.items():
        path.write_text("".join(line + "\n" for line in sorted(lines)), encoding="utf-8")
    final = out / "LibriSpeech"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    (out / "utterances.tsv").write_text(
        "utt_id\tsplit\tvoice\tsource\tspoken\ttranscript\n" + "".join(r + "\n" for r in sorted(rows)), "utf-8")
    issues.write_tsv(out / "issues.tsv")
    builds.write_checksums(out, final)
    shutil.rmtree(out / "manifests", ignore_errors=True)  # a --force rebuild may have fewer splits
    prepare_librispeech(final, out / "manifests", verify_audio=False, strict=True, num_workers=1)
    summary.skipped = {cat: n for (cat, action), n in issues.counts().items() if action == "skipped"}
    summary.seconds = time.monotonic() - start
    builds.finish(out, MARKER, options, asdict(summary))
    return summary, True
