"""Codec training data: random hop-aligned crops of the utterances of a manifest, read straight from disk.

Epoch ``e`` serves the utterances in a permutation seeded by ``(seed, e)`` in batches of ``batch_size``; batch
``i``'s crop offsets are seeded by ``(seed, e, i)``, so skipping the first ``skip`` batches after a resume gives the
very batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from seqwin.data.errors import DataError
from seqwin.data.manifest import ManifestEntry, read_labels, read_manifest
from seqwin.data.manifest_audio import check_rows
from seqwin.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Utterance:
    path: Path
    num_samples: int
    text: str | None
    key: str  # cache key: path and length


@dataclass
class SegmentBatch:
    waveforms: Tensor  # (B, S) float32, zero past seq_lens
    seq_lens: Tensor  # (B,)
    utterances: list[Utterance]
    starts: list[int]  # crop offsets in samples (multiples of the hop)


def read_split(manifest_dir: Path, split: str, *, with_text: bool, sample_rate: int | None = None,
               min_samples: int = 1, strict: bool = False) -> list[Utterance]:
    """The utterances of ``split`` of at least ``min_samples`` whose audio header is usable (the rest are skipped
    and counted, see :mod:`seqwin.data.manifest_audio`; ``strict``: the first unusable row is an error)."""
    tsv = Path(manifest_dir) / f"{split}.tsv"
    try:
        root, entries = read_manifest(tsv)
        texts = read_labels(tsv.with_suffix(".wrd"), len(entries)) if with_text else [None] * len(entries)
    except DataError as exc:
        raise UserError(str(exc)) from None
    long_enough: list[tuple[ManifestEntry, str | None]] = []
    short: list[ManifestEntry] = []
    for entry, text in zip(entries, texts, strict=True):
        if entry.num_samples < min_samples:
            short.append(entry)
        else:
            long_enough.append((entry, text))
    if short:
        log.warning("%s: skipped %d utterance(s) shorter than %d samples, e.g. line %d %s", tsv, len(short),
                    min_samples, short[0].line, short[0].rel_path)
    if not long_enough:
        raise UserError(f"{tsv}: no utterances of at least {min_samples} samples")
    try:
        usable, _ = check_rows(tsv, root, [e for e, _ in long_enough], sample_rate=sample_rate, strict=strict)
    except DataError as exc:
        raise UserError(str(exc)) from None
    kept = []
    for entry, text in (long_enough[i] for i in usable):
        path = root / entry.rel_path
        kept.append(Utterance(path, entry.num_samples, text, f"{path}:{entry.num_samples}"))
    return kept


def read_segment(path: Path, start: int, frames: int, sample_rate: int) -> np.ndarray:
    """``frames`` samples from ``start`` (fewer at the end of the file), mono float32."""
    try:
        data, rate = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise UserError(f"{path}: unreadable audio ({exc})") from None
    if rate != sample_rate:
        raise UserError(f"{path}: {rate} Hz, the codec runs at {sample_rate} Hz (resample it first)")
    return data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]


class SegmentDataset:
    def __init__(self, utterances: list[Utterance], *, segment_samples: int, hop: int, batch_size: int,
                 sample_rate: int, seed: int) -> None:
        self.utterances = utterances
        self.segment, self.hop, self.batch_size = segment_samples, hop, batch_size
        self.sample_rate, self.seed = sample_rate, seed

    def batches(self, epoch: int, skip: int = 0, *, rank: int = 0, world_size: int = 1) -> Iterator[SegmentBatch]:
        order = np.random.default_rng((self.seed, epoch)).permutation(len(self.utterances))
        groups = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        groups = groups[: len(groups) - len(groups) % world_size]  # every rank runs the same number of steps
        for index in range(skip, len(groups) // world_size):
            global_index = index * world_size + rank
            yield self.load(groups[global_index], np.random.default_rng((self.seed, epoch, global_index)))

    def load(self, indices: np.ndarray, rng: np.random.Generator) -> SegmentBatch:
        utts = [self.utterances[i] for i in indices]
        starts = []
        waves = torch.zeros(len(utts), self.segment)
        lens = torch.zeros(len(utts), dtype=torch.long)
        for row, utt in enumerate(utts):
            spare = max(0, utt.num_samples - self.segment) // self.hop
            start = int(rng.integers(0, spare + 1)) * self.hop
            wave = read_segment(utt.path, start, self.segment, self.sample_rate)
            waves[row, : len(wave)] = torch.from_numpy(wave)
            lens[row] = len(wave)
            starts.append(start)
        return SegmentBatch(waves, lens, utts, starts)
