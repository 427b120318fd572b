"""Typed configuration of the FuseCodec speech codec (``CodecConfig``) and its presets.

``fusecodec_base()`` is the paper's shape (16 kHz, 64 base filters, strides 2-4-5-8 -> hop 320 -> 50 Hz, latent 1024,
2-layer BiLSTM, RVQ 8 x 1024 with EMA 0.99, k-means init, dead-code threshold 2). Every field can be set from a
recipe YAML (``model:`` section) through :func:`seqwin.training.load_config`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from seqwin.attention import AttentionSpec

Variant = Literal["none", "fusion", "distill", "context_align"]


@dataclass
class AttentionBottleneckConfig:
    """Sliding-window transformer blocks (seqwin attention) used as the bottleneck sequence model.

    In the shared attention vocabulary every block is one ``local`` :class:`~seqwin.attention.AttentionSpec`
    (:meth:`spec`), and the config is checked as one. The window stays a plain field rather than a spec section
    because the blocks admit nothing else: their windowed-mean centring and the exactness of chunked encoding need
    one bounded window shared by every head (routing would make a frame's code depend on frames outside it), and
    codec files and recipes already spell it ``attention.window``."""

    num_layers: int = 2
    num_heads: int = 8
    window: tuple[int, int] = (64, 64)
    """(left, right) in frames, inclusive; ``right`` must be 0 for a causal (streaming) codec."""
    ffn_mult: int = 2
    dropout_p: float = 0.0

    def spec(self, causal: bool) -> AttentionSpec:
        """The blocks' attention as a spec (``causal``: the codec's own ``causal`` field)."""
        return AttentionSpec(kind="local", window=self.window, causal=causal)


@dataclass
class QuantizerConfig:
    num_quantizers: int = 8
    codebook_size: int = 1024
    decay: float = 0.99
    """EMA decay of the codebook updates."""
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0
    """Codes whose EMA cluster size falls below this are replaced by random batch vectors."""
    quantizer_dropout: bool = True
    """Train with a random number of levels so ``--num-quantizers`` < ``num_quantizers`` still decodes well."""
    rotation_trick: bool = False
    """False: plain straight-through estimator (SpeechTokenizer); True: the rotation trick gradient."""

    def validate(self) -> None:
        if self.num_quantizers < 1 or self.codebook_size < 2:
            raise ValueError("num_quantizers must be >= 1 and codebook_size >= 2")
        if self.codebook_size > 32768:
            raise ValueError(f"codebook_size must fit int16 code files (<= 32768), got {self.codebook_size}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {self.decay}")


@dataclass
class CodecConfig:
    sample_rate: int = 16000
    channels: int = 64
    """Base filters of the SEANet encoder; doubled after each downsampling."""
    strides: tuple[int, ...] = (2, 4, 5, 8)
    latent_dim: int = 1024
    kernel_size: int = 7
    residual_kernel_size: int = 3
    num_residual_layers: int = 1
    dilation_base: int = 2
    causal: bool = False
    """Causal convolutions and a causal attention bottleneck: a streaming codec whose chunked encoding is exact."""
    bottleneck: Literal["lstm", "attention", "none"] = "lstm"
    lstm_layers: int = 2
    attention: AttentionBottleneckConfig = field(default_factory=AttentionBottleneckConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    variant: Variant = "none"
    teacher_dim: int = 768
    """Dimension of the teacher features (semantic and contextual); RVQ layer 1 is projected to it."""
    fusion_heads: int = 8
    modality_dropout: float = 0.1
    """Fusion variant: probability of dropping each teacher branch during training."""

    @property
    def hop_length(self) -> int:
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def bottleneck_channels(self) -> int:
        return self.channels * 2 ** len(self.strides)

    @property
    def bitrate(self) -> float:
        """Bits per second with all quantizers."""
        return self.frame_rate * self.quantizer.num_quantizers * math.log2(self.quantizer.codebook_size)

    def validate(self) -> None:
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate must be >= 1000 Hz, got {self.sample_rate}")
        if not self.strides or any(s < 1 for s in self.strides):
            raise ValueError(f"strides must be positive, got {list(self.strides)}")
        if self.channels < 1 or self.latent_dim < 1 or self.teacher_dim < 1:
            raise ValueError("channels, latent_dim and teacher_dim must be positive")
        if self.kernel_size % 2 == 0 or self.residual_kernel_size % 2 == 0:
            raise ValueError("kernel_size and residual_kernel_size must be odd")
        if self.causal and self.bottleneck == "lstm":
            raise ValueError("causal: true needs bottleneck 'attention' or 'none' (a BiLSTM sees the future)")
        left, right = self.attention.window
        if self.bottleneck == "attention":
            if left < 0 or right < 0:
                raise ValueError(f"attention.window must be bounded (left, right >= 0), got {[left, right]}")
            try:
                self.attention.spec(self.causal)
            except ValueError as exc:  # e.g. a causal codec whose window looks ahead
                raise ValueError(f"attention.window: {exc}") from None
            if self.bottleneck_channels % self.attention.num_heads:
                raise ValueError(f"attention.num_heads ({self.attention.num_heads}) must divide the bottleneck "
                                 f"width {self.bottleneck_channels}")
        if self.variant == "fusion" and self.latent_dim % self.fusion_heads:
            raise ValueError(f"fusion_heads ({self.fusion_heads}) must divide latent_dim ({self.latent_dim})")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1), got {self.modality_dropout}")
        self.quantizer.validate()


def fusecodec_base(variant: Variant = "fusion") -> CodecConfig:
    """The paper's model: 16 kHz, hop 320 (50 Hz), latent 1024, BiLSTM, 8 x 1024 RVQ (4 kbps)."""
    return CodecConfig(variant=variant)
