"""What the two wav2vec2 training runs share: :mod:`~seqwin.recipes.wav2vec2.pretrain` (``seqwin train ssl``) and
:mod:`~seqwin.recipes.wav2vec2.finetune` (``seqwin train asr``) write their run files, check the batches against
the ranks and count audio seconds with these."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from seqwin.data.pipeline import AudioBatch, AudioManifestDataset
from seqwin.errors import UserError
from seqwin.models.wav2vec2.checkpoint import same_model
from seqwin.recipes.wav2vec2.config import DataConfig
from seqwin.recipes.wav2vec2.data import epoch_batches
from seqwin.training.config import ConfigError


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
