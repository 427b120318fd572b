"""Training data path: manifest (``.tsv`` + optional ``.ltr``/``.wrd``) -> fairseq2 ``DataPipeline`` of padded
:class:`AudioBatch` es.

Batching follows fairseq's ``batch_by_size``: utterances are sorted by length (ties broken by a seeded
shuffle) and cut into batches whose *padded* size ``batch_size * longest`` stays within ``max_num_frames``;
the batch order is then shuffled per epoch. Batches are formed before sharding, so every rank sees the same
batch list and takes every ``world_size``-th batch; the last ``len(batches) % world_size`` batches are left
out of that epoch so that all ranks run the same number of steps (logged). Everything random derives from
``(seed, epoch)``: the same config gives the same batches in the same order on every run.

Lengths outside ``[min_audio_len, max_audio_len]`` (in samples, from the manifest) are either skipped and
counted (``out_of_range="skip"``, logged with the counts when the dataset is opened, see
:attr:`AudioManifestDataset.stats`) or rejected with an error naming the first offending manifest line
(``out_of_range="error"``). Every row's audio header is read when the dataset is opened (``check_files``, see
:mod:`seqwin.data.manifest_audio`): missing files are an error, unusable ones are skipped and counted like the
lengths (``strict``: an error). Audio that fails to decode later (truncated files, NaN/inf samples) raises
:class:`~seqwin.data.audio.AudioError` naming the file and manifest line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from fairseq2.data.data_pipeline import DataPipeline, read_sequence
from fairseq2.nn import BatchLayout
from torch import Tensor
from torch.nn.functional import layer_norm

from seqwin.data.audio import AudioError, read_audio
from seqwin.data.errors import DataError, where
from seqwin.data.manifest import CharDictionary, ManifestEntry, read_labels, read_manifest
from seqwin.data.manifest_audio import check_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioReaderConfig:
    max_num_frames: int = 1_600_000
    """Padded samples per batch (``batch size * longest utterance``); 100 s of 16 kHz audio."""
    max_batch_size: int | None = None
    """Optional cap on utterances per batch."""
    min_audio_len: int = 1
    max_audio_len: int = 480_000
    """Utterance length limits in samples (30 s at 16 kHz); must not exceed ``max_num_frames``."""
    out_of_range: Literal["skip", "error"] = "skip"
    target: Literal["ltr", "wrd"] | None = None
    """``ltr``: letter ids from ``dict.ltr.txt`` (CTC targets); ``wrd``: transcripts as strings only."""
    shuffle: bool = True
    seed: int = 0
    sample_rate: int = 16000
    normalize: bool = False
    """Per-utterance zero mean / unit variance (what wav2vec2 large models expect)."""
    check_files: bool = True
    """Read every row's audio header when the dataset is opened (missing files are an error; empty, unreadable,
    zero-length, wrong-rate or stale-length rows are skipped and counted)."""
    strict: bool = False
    """With ``check_files``: the first unusable row is an error naming the manifest line and the file."""
    num_parallel_calls: int = 2
    num_prefetch: int = 2


@dataclass
class AudioBatch:
    """A padded batch. ``waveforms`` are zero-padded; ``targets`` are padded with ``<pad>``."""

    waveforms: Tensor  # (B, T) float32
    seq_lens: Tensor  # (B,) int64
    ids: list[str]  # manifest relpaths
    targets: Tensor | None = None  # (B, L) int64
    target_lens: Tensor | None = None  # (B,) int64
    texts: list[str] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.waveforms.size(0))

    def layout(self) -> BatchLayout:
        return BatchLayout.of(self.waveforms, seq_lens=self.seq_lens.tolist())

    def target_layout(self) -> BatchLayout | None:
        if self.targets is None or self.target_lens is None:
            return None
        return BatchLayout.of(self.targets, seq_lens=self.target_lens.tolist())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AudioBatch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            waveforms=self.waveforms.to(device, non_blocking=non_blocking),
            seq_lens=self.seq_lens.to(device, non_blocking=non_blocking),
            targets=move(self.targets),
            target_lens=move(self.target_lens),
        )


@dataclass(frozen=True)
class ManifestStats:
    total: int
    kept: int
    too_short: int
    too_long: int
    kept_samples: int
    skipped: list[str] = field(default_factory=list)  # every skipped entry: where it is and why
    unusable: int = 0  # skipped by the audio header check


class AudioManifestDataset:
    """One manifest split, ready to be turned into per-epoch pipelines with :meth:`build_pipeline`."""

    def __init__(
        self, manifest: Path, config: AudioReaderConfig, dictionary: CharDictionary | None = None
    ) -> None:
        if config.max_audio_len > config.max_num_frames:
            raise DataError(
                f"max_audio_len ({config.max_audio_len}) must not exceed "
                f"max_num_frames ({config.max_num_frames})"
            )
        if config.min_audio_len < 1 or config.min_audio_len > config.max_audio_len:
            raise DataError(f"min_audio_len must be in [1, max_audio_len], got {config.min_audio_len}")
        self.manifest = manifest
        self.config = config
        self.root, entries = read_manifest(manifest)
        labels = None
        if config.target is not None:
            labels = read_labels(manifest.with_suffix(f".{config.target}"), len(entries))
        if config.target == "ltr" and dictionary is None:
            dictionary = CharDictionary.load(manifest.parent / "dict.ltr.txt")
        self.dictionary = dictionary
        self._symbol_index = dictionary.index() if dictionary is not None else {}
        self.entries, self.labels, self.stats = self._filter(entries, labels)
        if config.check_files:
            self._check_audio()
        self.lengths = np.array([e.num_samples for e in self.entries], dtype=np.int64)

    def _filter(
        self, entries: list[ManifestEntry], labels: list[str] | None
    ) -> tuple[list[ManifestEntry], list[str] | None, ManifestStats]:
        cfg = self.config
        kept, kept_labels, skipped = [], [] if labels is not None else None, []
        too_short = too_long = 0
        for i, entry in enumerate(entries):
            if cfg.min_audio_len <= entry.num_samples <= cfg.max_audio_len:
                kept.append(entry)
                if kept_labels is not None and labels is not None:
                    kept_labels.append(labels[i])
                continue
            short = entry.num_samples < cfg.min_audio_len
            limit = (
                f"{'min' if short else 'max'}_audio_len={cfg.min_audio_len if short else cfg.max_audio_len}"
            )
            reason = f"{entry.num_samples} samples, {limit}"
            if cfg.out_of_range == "error":
                raise DataError(f"{where(self.manifest, entry.line)}: {entry.rel_path}: {reason}")
            too_short += short
            too_long += not short
            skipped.append(f"{where(self.manifest, entry.line)} {entry.rel_path} ({reason})")
        stats = ManifestStats(
            len(entries), len(kept), too_short, too_long, sum(e.num_samples for e in kept), skipped
        )
        if skipped:
            log.warning(
                "%s: skipped %d of %d utterances (%d shorter than %d, %d longer than %d samples), e.g. %s",
                self.manifest,
                len(skipped),
                stats.total,
                too_short,
                cfg.min_audio_len,
                too_long,
                cfg.max_audio_len,
                skipped[0],
            )
        if not kept:
            raise DataError(
                f"{self.manifest}: no utterances left after length filtering ({stats.total} in file)"
            )
        return kept, kept_labels, stats

    def _check_audio(self) -> None:
        keep, issues = check_rows(
            self.manifest, self.root, self.entries, sample_rate=self.config.sample_rate, strict=self.config.strict
        )
        if len(keep) == len(self.entries):
            return
        self.entries = [self.entries[i] for i in keep]
        if self.labels is not None:
            self.labels = [self.labels[i] for i in keep]
        self.stats = replace(
            self.stats,
            kept=len(self.entries),
            kept_samples=sum(e.num_samples for e in self.entries),
            skipped=self.stats.skipped
            + [f"{i.path} ({i.category}: {i.detail})" for i in issues.issues],
            unusable=issues.num_skipped,
        )

    def __len__(self) -> int:
        return len(self.entries)

    def batches(self, epoch: int = 0) -> list[list[int]]:
        """Index lists of the batches of ``epoch``, in the order they will be served (before sharding)."""
        cfg = self.config
        order = np.arange(len(self.entries))
        rng = np.random.default_rng((cfg.seed, epoch))
        if cfg.shuffle:
            order = rng.permutation(order)
        order = order[np.argsort(self.lengths[order], kind="stable")]
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order.tolist():
            # Ascending order, so the new item is the longest: the padded size is (len + 1) * its length.
            full = cfg.max_batch_size is not None and len(current) >= cfg.max_batch_size
            if current and (full or (len(current) + 1) * int(self.lengths[i]) > cfg.max_num_frames):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        if cfg.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches

    def build_pipeline(self, *, epoch: int = 0, rank: int = 0, world_size: int = 1) -> DataPipeline:
        """A fairseq2 pipeline yielding this rank's :class:`AudioBatch` es for ``epoch``."""
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, {world_size}), got {rank}")
        batches = self.batches(epoch)
        dropped = len(batches) % world_size
        if dropped:
            log.info(
                "%s epoch %d: %d batch(es) left out so all %d ranks get the same count",
                self.manifest.name,
                epoch,
                dropped,
                world_size,
            )
        if len(batches) < world_size:
            raise DataError(f"{self.manifest}: {len(batches)} batch(es) cannot feed {world_size} ranks")
        builder = read_sequence(batches)
        if world_size > 1:
            builder.shard(rank, world_size, allow_uneven=False)
        builder.map(self.load_batch, num_parallel_calls=self.config.num_parallel_calls)
        if self.config.num_prefetch > 0:
            builder.prefetch(self.config.num_prefetch)
        return builder.and_return()

    def load_batch(self, indices: list[int]) -> AudioBatch:
        cfg = self.config
        waves = []
        for i in indices:
            entry = self.entries[i]
            path = self.root / entry.rel_path
            try:
                wave = read_audio(path, sample_rate=cfg.sample_rate)
            except AudioError as exc:
                raise DataError(f"{where(self.manifest, entry.line)}: {exc}") from None
            if len(wave) != entry.num_samples:
                raise DataError(
                    f"{where(self.manifest, entry.line)}: {path} has {len(wave)} samples, the manifest says "
                    f"{entry.num_samples} (stale manifest? run seqwin prepare again)"
                )
            waves.append(torch.from_numpy(wave))
        seq_lens = torch.tensor([len(w) for w in waves], dtype=torch.int64)
        waveforms = torch.zeros(len(waves), int(seq_lens.max()), dtype=torch.float32)
        for row, wave in enumerate(waves):
            if cfg.normalize:
                wave = layer_norm(wave, wave.shape)
            waveforms[row, : len(wave)] = wave
        batch = AudioBatch(waveforms, seq_lens, [self.entries[i].rel_path for i in indices])
        if self.labels is not None:
            batch.texts = [self.labels[i] for i in indices]
            if cfg.target == "ltr" and self.dictionary is not None:
                ids = [self.dictionary.encode(text, self._symbol_index) for text in batch.texts]
                batch.target_lens = torch.tensor([len(t) for t in ids], dtype=torch.int64)
                batch.targets = torch.full(
                    (len(ids), max(1, int(batch.target_lens.max()))),
                    self.dictionary.pad_idx,
                    dtype=torch.int64,
                )
                for row, t in enumerate(ids):
                    batch.targets[row, : len(t)] = torch.tensor(t, dtype=torch.int64)
        return batch
