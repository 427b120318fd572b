"""The codec recipe's YAML schema (``recipes/codec/*.yaml``): model, discriminators, loss weights, data, teachers,
trainer. Loaded with :func:`seqwin.training.load_config`, so unknown keys and bad values fail naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from seqwin.models.codec.config import CodecConfig
from seqwin.models.codec.discriminators import DiscriminatorConfig
from seqwin.models.codec.losses import LossWeights
from seqwin.training import TrainerConfig


@dataclass
class MelLossConfig:
    ffts: tuple[int, ...] = (512, 1024, 2048)
    n_mels: int = 64


@dataclass
class CodecDataConfig:
    manifest_dir: Path = Path("data/mini/manifests")
    """Folder with ``<split>.tsv`` (+ ``.wrd`` for data transcripts), as written by ``seqwin prepare``."""
    train_split: str = "train"
    valid_split: str = "dev"
    segment_seconds: float = 1.0
    """Training crops (hop-aligned, random per step); shorter utterances are zero-padded and masked."""
    batch_size: int = 8
    min_seconds: float = 0.1
    """Shorter utterances are skipped (counted and logged)."""
    valid_utterances: int = 8
    valid_max_seconds: float = 10.0
    valid_asr: bool = False
    """Also score pocketsphinx's WER on the valid utterances and their reconstructions at each validation (needs
    the split's ``.wrd``; about a second per utterance)."""
    strict: bool = False
    """Rows whose audio header is unusable (empty, unreadable, wrong sample rate, zero or stale length) are skipped
    and counted when the data is opened; ``true``: the first one is an error naming the manifest line."""
    seed: int = 0

    def validate(self) -> None:
        if self.segment_seconds <= 0 or self.batch_size < 1:
            raise ValueError("segment_seconds must be > 0 and batch_size >= 1")
        if self.valid_utterances < 0:
            raise ValueError(f"valid_utterances must be >= 0, got {self.valid_utterances}")


@dataclass
class TeacherConfig:
    semantic_checkpoint: Path | None = None
    """A wav2vec2 model: codec teacher file (seqwin.models.codec.teachers), seqwin wav2vec2 model.pt or run dir,
    fairseq2 or fairseq checkpoint; None: no semantic teacher."""
    semantic_normalize_input: bool = False
    transcripts: Literal["data", "asr", "none"] = "data"
    """``data``: the split's ``.wrd``; ``asr``: greedy CTC of ``asr_checkpoint``; ``none``: no contextual teacher."""
    asr_checkpoint: Path | None = None
    asr_dictionary: Path | None = None
    """``dict.ltr.txt`` of the ASR model's letters (default: the model file's own, else the manifest folder's)."""
    text_encoder: Path | None = None
    """A trained seqwin LM run directory (``seqwin train lm OUT``): its layer-averaged hidden states, pooled per
    word, embed the transcripts (contextual); None: the hashed n-gram encoder (lexical, untrained)."""
    text_encoder_seed: int = 0
    """Seeds the hashed n-gram vectors, or the LM encoder's fixed orthonormal map from the LM width to
    ``model.teacher_dim``."""
    cache_dir: Path | None = None
    """Per-utterance teacher features; default ``OUT/teacher_cache``."""

    def validate(self) -> None:
        if self.transcripts == "asr" and self.asr_checkpoint is None:
            raise ValueError("transcripts: asr needs asr_checkpoint")


@dataclass
class CodecRecipeConfig:
    model: CodecConfig = field(default_factory=CodecConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    losses: LossWeights = field(default_factory=LossWeights)
    mel: MelLossConfig = field(default_factory=MelLossConfig)
    adversarial_start_step: int = 0
    """Steps of reconstruction-only training before the discriminators join (0: from the start, as the paper)."""
    discriminator_lr: float | None = None
    """Default: the trainer's lr (same schedule)."""
    data: CodecDataConfig = field(default_factory=CodecDataConfig)
    teachers: TeacherConfig = field(default_factory=TeacherConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def has_semantic(self) -> bool:
        return self.teachers.semantic_checkpoint is not None

    def has_context(self) -> bool:
        return self.teachers.transcripts != "none"

    def validate(self) -> None:
        variant = self.model.variant
        if variant in ("distill", "fusion") and not (self.has_semantic() or self.has_context()):
            raise ValueError(f"model.variant {variant} needs a teacher: teachers.semantic_checkpoint and/or "
                             "teachers.transcripts")
        if variant == "context_align" and not self.has_context():
            raise ValueError("model.variant context_align needs transcripts (teachers.transcripts: data or asr)")
        if self.adversarial_start_step < 0:
            raise ValueError(f"adversarial_start_step must be >= 0, got {self.adversarial_start_step}")
        self._check_dead_code_threshold()

    def _check_dead_code_threshold(self) -> None:
        # A code whose EMA usage (frames per step) stays below the threshold is overwritten by a batch vector. When
        # the threshold is at or above the *average* usage (frames per step / codebook size), most codes count as
        # dead at every step: the codebooks are re-sampled from batches each step instead of following their EMA
        # (mini's first config: batch 8 x 50 frames for 1024 codes = 0.39 per code, threshold 2).
        q = self.model.quantizer
        frames = self.data.batch_size * self.data.segment_seconds * self.model.frame_rate
        per_code = frames / q.codebook_size
        if q.threshold_ema_dead_code > 0 and q.threshold_ema_dead_code >= per_code:
            raise ValueError(
                f"model.quantizer.threshold_ema_dead_code ({q.threshold_ema_dead_code:g}) must be below the average "
                f"use of a code per step ({frames:.0f} frames / {q.codebook_size} codes = {per_code:.3g}), or most "
                "codes count as dead and are re-sampled at every step; lower it (e.g. a quarter of that) or use "
                "bigger batches")
