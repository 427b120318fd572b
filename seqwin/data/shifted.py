"""``seqwin prepare shifted``: pitch- and tempo-shifted copies of a test split, as proxy test sets for other voices.

Each condition is its own split (``test_pitch-3``, ``test_pitch+3``, ``test_tempo0.9``, ``test_tempo1.1`` by
default) with the source's utterance ids and transcripts, so ``seqwin eval asr --data OUT/manifests/<split>.tsv``
runs on it unchanged and its hypotheses pair up with the unshifted split's. Pitch shifts keep the duration;
tempo ``f`` plays ``f`` times as fast (duration / ``f``) at the same pitch. Both are librosa's phase vocoder
(``librosa.effects.pitch_shift`` / ``time_stretch``), which has no randomness: the output is the same on
every run.

Output::

    OUT/LibriSpeech/<condition split>/<speaker>/<chapter>/<utt id>.flac   16 kHz mono 16-bit FLAC
    OUT/manifests/<condition split>.{tsv,wrd,ltr}, dict.ltr.txt            (as `prepare librispeech`)
    OUT/SHA256SUMS
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seqwin.data import builds
from seqwin.data.audio import read_audio, write_flac
from seqwin.data.errors import DataError
from seqwin.data.librispeech import prepare_librispeech, resolve_root

MARKER = ".seqwin-shifted.json"
SAMPLE_RATE = 16000


@dataclass
class ShiftConfig:
    split: str = "test"
    pitch: list[float] = field(default_factory=lambda: [-3.0, 3.0])
    """Pitch shifts in semitones."""
    tempo: list[float] = field(default_factory=lambda: [0.9, 1.1])
    """Tempo factors (1.1: 10% faster, shorter audio)."""

    def conditions(self) -> list[tuple[str, str, float]]:
        """``(split name, kind, amount)`` of every condition."""
        for t in self.tempo:
            if not 0.25 <= t <= 4.0:
                raise DataError(f"--tempo {t:g}: must be in [0.25, 4]")
        out = [(f"{self.split}_pitch{p:+g}", "pitch", p) for p in self.pitch]
        out += [(f"{self.split}_tempo{t:g}", "tempo", t) for t in self.tempo]
        if not out:
            raise DataError("give at least one --pitch or --tempo value")
        if len({name for name, _, _ in out}) != len(out):
            raise DataError(f"repeated --pitch/--tempo values: {' '.join(name for name, _, _ in out)}")
        return out


def utterances(split_dir: Path) -> list[tuple[Path, str]]:
    """``(audio, transcript)`` of every transcript line of a LibriSpeech-layout split, in id order. The source is
    a prepared corpus, so a line without its audio is an error, not a skip."""
    items = []
    for trans in sorted(split_dir.glob("*/*/*.trans.txt")):
        for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            utt_id, _, words = line.partition(" ")
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.is_file():
                raise DataError(f"{trans}:{number}: no audio {audio.name} for {utt_id}")
            items.append((audio, words))
    if not items:
        raise DataError(f"{split_dir}: no transcripts (*/*/*.trans.txt)")
    return items


def shift(samples: np.ndarray, kind: str, amount: float) -> np.ndarray:
    """float32 mono audio at 16 kHz, pitch-shifted by ``amount`` semitones or played ``amount`` times as fast."""
    import librosa  # slow to import; only this command needs it

    if kind == "pitch":
        return librosa.effects.pitch_shift(samples, sr=SAMPLE_RATE, n_steps=amount)
    return librosa.effects.time_stretch(samples, rate=amount)


def to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).round().astype(np.int16)


@dataclass
class ShiftSummary:
    splits: dict[str, list[int]] = field(default_factory=dict)  # split -> [utterances, samples]
    source_samples: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"source: {self.source_samples / SAMPLE_RATE / 3600:.3f} h"]
        out += [f"{name}: {n} utterances, {s / SAMPLE_RATE / 3600:.3f} h" for name, (n, s) in self.splits.items()]
        return out


def prepare_shifted(source: Path, out: Path, cfg: ShiftConfig, *, force: bool = False) -> tuple[ShiftSummary, bool]:
    """Write one shifted copy of ``source``'s split ``cfg.split`` per condition; ``(summary, built)``."""
    conditions = cfg.conditions()
    root = resolve_root(source).resolve()
    if not (root / cfg.split).is_dir():
        raise DataError(f"{root / cfg.split}: no such split (run 'seqwin prepare mini' first?)")
    options = {**asdict(cfg), "source": str(root)}
    done = builds.reuse(out, MARKER, options, force, "seqwin prepare shifted")
    if done is not None:
        return ShiftSummary(**done), False
    start = time.monotonic()
    items = utterances(root / cfg.split)
    builds.start(out, MARKER)
    staging = out / "LibriSpeech.partial"
    shutil.rmtree(staging, ignore_errors=True)
    summary = ShiftSummary()
    transcripts: dict[Path, list[str]] = {}
    for path, words in items:
        samples = read_audio(path, sample_rate=SAMPLE_RATE)
        summary.source_samples += samples.size
        rel = path.relative_to(root / cfg.split)
        for name, kind, amount in conditions:
            shifted = to_int16(shift(samples, kind, amount))
            target = staging / name / rel.with_suffix(".flac")
            write_flac(target, shifted, SAMPLE_RATE)
            trans = target.parent / f"{'-'.join(path.stem.split('-')[:2])}.trans.txt"
            transcripts.setdefault(trans, []).append(f"{path.stem} {words}")
            stats = summary.splits.setdefault(name, [0, 0])
            stats[0] += 1
            stats[1] += int(shifted.size)
    for trans, lines in transcripts.items():
        trans.write_text("".join(line + "\n" for line in sorted(lines)), encoding="utf-8")
    final = out / "LibriSpeech"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    builds.write_checksums(out, final)
    shutil.rmtree(out / "manifests", ignore_errors=True)
    prepare_librispeech(final, out / "manifests", verify_audio=False, strict=True, num_workers=1)
    summary.seconds = time.monotonic() - start
    builds.finish(out, MARKER, options, asdict(summary))
    return summary, True
