"""Pieces both wav2vec2 recipes share: the model and data sections of a recipe config, datasets, batch streams."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from fairseq2.data.data_pipeline import read_sequence

from seqwin.data.errors import DataError
from seqwin.data.pipeline import AudioBatch, AudioManifestDataset, AudioReaderConfig
from seqwin.errors import UserError
from seqwin.models.wav2vec2.checkpoint import same_model
from seqwin.training.config import ConfigError, from_dict, to_dict

log = logging.getLogger("seqwin.wav2vec2")
C = TypeVar("C")


@dataclass
class ModelSection:
    arch: str = "tiny"
    """A preset (see ``seqwin.models.wav2vec2.config``)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Overrides on the preset, shaped like the model config, e.g. ``{attention: {default: {kind: full}}}``."""

    def build(self, presets: dict[str, C], kls: type[C]) -> C:
        if self.arch not in presets:
            raise ConfigError(f"model.arch: unknown preset {self.arch!r} (choose from {', '.join(presets)})")
        merged = _merge(to_dict(presets[self.arch]), self.config, "model.config")
        return from_dict(kls, merged, "model.config")


def _merge(base: Any, override: Any, key: str) -> Any:
    if isinstance(override, dict):
        if not isinstance(base, dict):
            raise ConfigError(f"{key}: expected a value, got a mapping")
        out = dict(base)
        for k, v in override.items():
            if k not in base and isinstance(k, int):  # a new entry of a per-layer map (attention.overrides, ...)
                out[k] = copy.deepcopy(v)
            elif k not in base:  # name the bad key now; from_dict would list the valid ones one level down
                raise ConfigError(f"unknown config key {key}.{k} (valid keys here: {', '.join(sorted(base))})")
            else:
                out[k] = _merge(base[k], v, f"{key}.{k}") if base[k] is not None else v
        return out
    return copy.deepcopy(override)


@dataclass
class DataConfig:
    manifest_dir: Path = Path("data/mini/manifests")
    train_split: str = "train"
    valid_split: str | None = "dev"
    max_num_frames: int = 400_000
    """Padded samples per batch (batch size x longest utterance; 25 s at 16 kHz). An utterance longer than
    this gets a batch of its own: nothing is cropped."""
    max_batch_size: int | None = None
    min_audio_len: int = 1_600
    max_audio_len: int = 1_600_000
    """Utterances outside [min_audio_len, max_audio_len] samples are skipped and counted."""
    normalize: bool = False
    """Per-utterance zero mean / unit variance waveforms (wav2vec 2.0 Large models were trained with it)."""
    num_parallel_calls: int = 1
    strict: bool = False
    """Rows whose audio header is unusable (empty, unreadable, wrong sample rate, zero or stale length) are skipped
    and counted when a split is opened; ``true``: the first one is an error naming the manifest line."""
    seed: int = 0

    def validate(self) -> None:
        if self.max_num_frames < 1 or not 1 <= self.min_audio_len <= self.max_audio_len:
            raise ValueError("need max_num_frames >= 1 and 1 <= min_audio_len <= max_audio_len")

    def reader(self, target: str | None, *, shuffle: bool = True) -> AudioReaderConfig:
        # The reader's budget must hold the longest utterance; batch_stream re-splits to max_num_frames.
        return AudioReaderConfig(
            max_num_frames=max(self.max_num_frames, self.max_audio_len), max_batch_size=self.max_batch_size,
            min_audio_len=self.min_audio_len, max_audio_len=self.max_audio_len, target=target, shuffle=shuffle,
            seed=self.seed, normalize=self.normalize, num_parallel_calls=self.num_parallel_calls, strict=self.strict,
        )

    def dataset(self, split: str, target: str | None, *, shuffle: bool = True) -> AudioManifestDataset:
        tsv = self.manifest_dir / f"{split}.tsv"
        if not tsv.is_file():
            raise UserError(f"data: manifest {tsv} not found (data.manifest_dir={self.manifest_dir}, split "
                            f"{split!r}; run `seqwin prepare librispeech` first)")
        try:
            return AudioManifestDataset(tsv, self.reader(target, shuffle=shuffle))
        except DataError as exc:
            raise UserError(str(exc)) from None


def split_batches(batches: list[list[int]], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Cut each batch (indices in ascending length) so that ``size x longest <= budget``; an utterance longer
    than ``budget`` stays, alone, in a batch of its own."""
    out: list[list[int]] = []
    for batch in batches:
        current: list[int] = []
        for i in batch:
            if current and (len(current) + 1) * int(lengths[i]) > budget:
                out.append(current)
                current = []
            current.append(i)
        out.append(current)
    return out


def epoch_batches(dataset: AudioManifestDataset, epoch: int, budget: int | None = None) -> list[list[int]]:
    batches = dataset.batches(epoch)
    return batches if budget is None else split_batches(batches, dataset.lengths, budget)


def batch_stream(dataset: AudioManifestDataset, epoch: int, skip: int, rank: int = 0, world_size: int = 1,
                 budget: int | None = None) -> Iterator[AudioBatch]:
    """This rank's batches of ``epoch`` after the first ``skip`` (the trainer's resume position), decoded in a
    background fairseq2 pipeline. Skipped batches are never decoded."""
    batches = epoch_batches(dataset, epoch, budget)
    batches = batches[: len(batches) - len(batches) % world_size][rank::world_size][skip:]
    if not batches:
        return iter(())
    builder = read_sequence(batches).map(dataset.load_batch, num_parallel_calls=dataset.config.num_parallel_calls)
    return iter(builder.prefetch(2).and_return())


def samples_per_frame(model_cfg: Any) -> int:
    """Waveform samples per encoder frame of a seqwin wav2vec2 (SSL or CTC) config."""
    if model_cfg.frontend.kind == "logmel":
        from seqwin.models.wav2vec2.frontend import HOP

        return HOP * model_cfg.frontend.stack
    return math.prod(desc[2] for desc in model_cfg.model.encoder_config.feature_extractor_layer_descs)


def check_routing_fits(model_cfg: Any, data: DataConfig) -> None:
    """Routing heads need fewer clusters than the frames of the longest utterance the recipe may train on."""
    frames = data.max_audio_len // samples_per_frame(model_cfg)
    try:
        model_cfg.attention.check_clusters_fit(
            frames, f"the longest training utterance (data.max_audio_len {data.max_audio_len} samples)",
            key="model.config.attention")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def check_data_parallel(model_cfg: Any, data_parallel: str) -> None:
    """FSDP gathers a layer's weights with a collective in that layer's forward, so every rank must run the same
    layers; LayerDrop draws them per batch (each rank's micro-batches have their own seeds)."""
    if data_parallel == "fsdp" and model_cfg.model.encoder_config.layer_drop_p > 0:
        raise ConfigError(f"model.config.model.encoder_config.layer_drop_p "
                          f"({model_cfg.model.encoder_config.layer_drop_p}) needs trainer.data_parallel ddp: under "
                          "fsdp every rank must run the same layers; set it to 0")


def check_batches(dataset: AudioManifestDataset, data: DataConfig, world_size: int) -> None:
    """Every rank needs a batch: rank ``r`` takes batches ``r, r + world_size, ...`` of an epoch."""
    num = len(epoch_batches(dataset, 0, data.max_num_frames))
    if num < world_size:
        raise ConfigError(f"data.max_num_frames ({data.max_num_frames}) packs the {len(dataset)} training "
                          f"utterances into {num} batch(es), fewer than the {world_size} processes: some would get "
                          "no batch; lower data.max_num_frames (or data.max_batch_size)")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def start_run(out_dir: Path, recipe_yaml: str, model_yaml: str) -> None:
    """Write ``config.yaml`` (the recipe) and ``model.yaml`` (what the model loader needs) into ``out_dir``.

    Resuming (checkpoints present) with a different *model* is refused: the weights would not fit. Trainer or
    data changes are allowed (e.g. a larger ``max_steps`` to continue a finished run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.yaml"
    resuming = any((out_dir / "checkpoints").glob("step_*.pt"))
    if resuming and model_path.exists() and not same_model(model_path.read_text(), model_yaml):
        raise UserError(f"{out_dir} holds checkpoints of another model ({model_path}); use a new output directory")
    for name, text in (("config.yaml", recipe_yaml), ("model.yaml", model_yaml)):
        tmp = out_dir / f".{name}.tmp.{os.getpid()}"  # every rank writes: one temporary file each
        tmp.write_text(text)
        tmp.replace(out_dir / name)


def audio_seconds(batch: AudioBatch, sample_rate: int = 16000) -> float:
    return float(batch.seq_lens.sum()) / sample_rate
