"""The wav2vec2 recipes' YAML schemas (``recipes/wav2vec2/{ssl,asr}/*.yaml``): ``seqwin train ssl`` and ``seqwin
train asr`` configs, their shared model and data sections, and the checks that need more than one section."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from seqwin.data.errors import DataError
from seqwin.data.pipeline import AudioManifestDataset, AudioReaderConfig
from seqwin.errors import UserError
from seqwin.training import TrainerConfig
from seqwin.training.config import ConfigError, from_dict, to_dict

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


@dataclass
class SslLossConfig:
    kind: Literal["contrastive", "units"] = "contrastive"
    """``contrastive``: wav2vec 2.0's task (quantized targets, distractors, diversity loss). ``units``: HuBERT's
    first iteration -- predict the k-means unit of each masked frame's MFCCs (log-mel frontend only;
    :mod:`seqwin.models.wav2vec2.units`)."""
    num_units: int = 100
    """``units``: k-means clusters, fitted on the training split before the first step."""
    diversity_weight: float = 0.1
    features_penalty_weight: float | None = None
    """``None``: 10 for the conv frontend (as in the paper), 0 for log-mel (its features are not learned)."""

    def validate(self) -> None:
        if self.diversity_weight < 0 or (self.features_penalty_weight or 0) < 0:
            raise ValueError("loss weights must be >= 0")
        if not 2 <= self.num_units <= 4096:  # the k-means distance matrix is (frames x units)
            raise ValueError(f"num_units must be in [2, 4096] (HuBERT uses 100 and 500), got {self.num_units}")


@dataclass
class SslRecipeConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    loss: SslLossConfig = field(default_factory=SslLossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


@dataclass
class InitConfig:
    ssl_checkpoint: Path | None = None
    """SSL model to start from: a ``seqwin train ssl`` output (dir or ``model.pt``), a fairseq2 or fairseq1
    wav2vec2 checkpoint, a Hugging Face wav2vec2 folder. Its encoder shapes replace the preset's, and so does its
    attention (e.g. the windows ``seqwin windowize`` gave it) unless ``model.config`` sets ``attention``;
    ``None``: train from scratch."""


@dataclass
class FinetuneConfig:
    freeze_encoder_steps: int = 0
    freeze_feature_extractor: bool = False

    def validate(self) -> None:
        if self.freeze_encoder_steps < 0:
            raise ValueError(f"freeze_encoder_steps must be >= 0, got {self.freeze_encoder_steps}")


@dataclass
class AsrRecipeConfig:
    model: ModelSection = field(default_factory=lambda: ModelSection(arch="tiny"))
    init: InitConfig = field(default_factory=InitConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        if self.finetune.freeze_encoder_steps >= self.trainer.max_steps:
            raise ValueError("finetune.freeze_encoder_steps must be < trainer.max_steps")
        if self.finetune.freeze_encoder_steps and self.trainer.data_parallel == "fsdp":
            # FSDP swaps in sharded parameters: the recipe's handles on the encoder's ones would go stale.
            raise ValueError("finetune.freeze_encoder_steps needs trainer.data_parallel ddp")
