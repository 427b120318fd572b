"""Configs of the seqwin wav2vec 2.0 families: fairseq2's own model config + encoder attention + frontend.

``SeqwinWav2Vec2Config`` (SSL) and ``SeqwinWav2Vec2AsrConfig`` (CTC) wrap fairseq2's ``Wav2Vec2Config`` /
``Wav2Vec2AsrConfig`` unchanged, so every fairseq2 field (and fairseq1 checkpoints built from them) keeps its
meaning, and add:

- ``attention``: which SDPA each encoder layer uses, as :class:`seqwin.attention.LayerAttentionConfig` (the
  vocabulary the LM shares) -- ``full`` (fairseq2's dense ``TorchSDPA``, exactly what the paper and fairseq1
  checkpoints use), ``local`` (seqwin sliding window; one window or one per head), ``pooled`` (means of blocks
  of frames), ``routing`` or ``mixed`` (local + pooled + routing heads). The encoder is bidirectional, so no spec
  may be causal. Windows count encoder frames
  (20 ms each with the paper's conv frontend).
- ``frontend``: ``conv`` (the paper's waveform CNN) or ``logmel`` (log-mel filterbanks stacked ``stack`` frames
  at a time: a cheap feature encoder for CPU-sized models; the quantizer then discretizes stacked filterbanks).
- CTC only, ``inter_ctc``: intermediate CTC, a training loss on a middle layer through the same head
  (:mod:`seqwin.models.wav2vec2.asr`).

Presets: SSL ``tiny`` / ``base`` / ``large``; CTC ``tiny`` / ``base_10h`` / ``base_100h`` / ``large_10h`` /
``large_100h``. ``base`` is the paper's Base (12 layers, 768 dim, 12 heads), ``large`` its Large (24, 1024, 16).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from fairseq2.models.transformer import TransformerNormOrder
from fairseq2.models.wav2vec2 import Wav2Vec2Config, Wav2Vec2EncoderConfig
from fairseq2.models.wav2vec2.asr import Wav2Vec2AsrConfig

from seqwin.attention import AttentionSpec, LayerAttention, LayerAttentionConfig

SSL_FAMILY = "seqwin_wav2vec2"
ASR_FAMILY = "seqwin_wav2vec2_asr"


AUGMENT_FIELDS = ("time_stretch", "freq_warp", "noise_p", "noise_snr_db")
"""The ``FrontendConfig`` fields that only act in training: a fine-tuning config's, not the SSL model's."""


@dataclass(kw_only=True)
class FrontendConfig:
    kind: Literal["conv", "logmel"] = "conv"
    """``conv``: the paper's waveform CNN (``model.encoder_config.feature_extractor_layer_descs``)."""
    num_mel_bins: int = 80
    stack: int = 2
    """``logmel``: consecutive 10 ms frames concatenated into one feature (2 -> 20 ms, like the conv frontend)."""
    time_stretch: float = 0.0
    """``logmel``, training only: resample each utterance's frames by a random factor in [1 - x, 1 + x]."""
    freq_warp: float = 0.0
    """``logmel``, training only: stretch each utterance's mel axis by a random factor in [1 - x, 1 + x] (a shift
    of pitch and formants, as vocal tract length perturbation does)."""
    noise_p: float = 0.0
    """``logmel``, training only: the probability that white noise is added to an utterance's waveform."""
    noise_snr_db: float = 10.0
    """``logmel``: the lowest signal-to-noise ratio of that noise; each noisy utterance draws one in [x, x + 20] dB."""

    def validate(self) -> None:
        if self.num_mel_bins < 8 or self.stack < 1:
            raise ValueError(f"need num_mel_bins >= 8 and stack >= 1, got {self.num_mel_bins}, {self.stack}")
        for name in ("time_stretch", "freq_warp"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {getattr(self, name)}")
        if not 0.0 <= self.noise_p <= 1.0:
            raise ValueError(f"noise_p must be in [0, 1], got {self.noise_p}")

    @property
    def feature_dim(self) -> int:
        return self.num_mel_bins * self.stack


def encoder_layers(encoder: Wav2Vec2EncoderConfig, attention: LayerAttentionConfig) -> list[LayerAttention]:
    """The attention of every encoder layer; a ``ValueError`` naming the ``attention.`` field if it does not fit
    the encoder (head counts, per-head windows, causality)."""
    try:
        layers = attention.expand(encoder.num_encoder_layers, encoder.num_encoder_attn_heads)
    except ValueError as exc:
        raise ValueError(f"attention.{exc}") from None
    for layer in layers:
        if layer.spec.causal:
            raise ValueError(f"attention.{layer.source}: the wav2vec2 encoder is bidirectional: attention specs "
                             "must not be causal")
    if encoder.use_conformer or encoder.pos_encoder_type == "relative":
        if any(layer.spec.kind != "full" for layer in layers):
            raise ValueError("model.encoder_config: windowed/routing attention needs the transformer encoder with a "
                             "conv or rotary position encoder (not conformer / relative)")
    return layers


def _check_common(encoder: Wav2Vec2EncoderConfig, attention: LayerAttentionConfig, frontend: FrontendConfig,
                  prefix: str) -> None:
    frontend.validate()
    if encoder.model_dim % encoder.num_encoder_attn_heads:
        raise ValueError(f"{prefix}encoder_config.model_dim ({encoder.model_dim}) must be divisible by "
                         f"num_encoder_attn_heads ({encoder.num_encoder_attn_heads})")
    encoder_layers(encoder, attention)
    if frontend.kind == "logmel":
        if encoder.use_fbank:
            raise ValueError(f"{prefix}encoder_config.use_fbank: use frontend.kind=logmel instead")
        if encoder.feature_dim != frontend.feature_dim:
            raise ValueError(f"{prefix}encoder_config.feature_dim ({encoder.feature_dim}) must equal "
                             f"frontend.num_mel_bins * frontend.stack ({frontend.feature_dim})")
    elif encoder.feature_extractor_layer_descs[-1][0] != encoder.feature_dim:
        raise ValueError(f"{prefix}encoder_config.feature_dim ({encoder.feature_dim}) must equal the last conv "
                         f"layer's channels ({encoder.feature_extractor_layer_descs[-1][0]})")


@dataclass(kw_only=True)
class SeqwinWav2Vec2Config:
    """wav2vec 2.0 SSL model (contrastive + diversity loss, masking, Gumbel quantizer)."""

    model: Wav2Vec2Config = field(default_factory=Wav2Vec2Config)
    attention: LayerAttentionConfig = field(default_factory=LayerAttentionConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)

    def validate(self) -> None:
        _check_common(self.model.encoder_config, self.attention, self.frontend, "model.")
        if self.model.spatial_mask_span_len >= self.model.encoder_config.model_dim:
            raise ValueError("model.spatial_mask_span_len must be < encoder_config.model_dim")


@dataclass(kw_only=True)
class InterCtcConfig:
    """Intermediate CTC: the training loss is ``(1 - weight) * CTC(last layer) + weight * CTC(layer)``."""

    weight: float = 0.0
    """0 turns it off (fairseq2's loss exactly)."""
    layer: int | None = None
    """1-based encoder layer whose output is scored; ``None``: the middle one (``num_encoder_layers // 2``)."""

    def resolved_layer(self, num_layers: int) -> int:
        return num_layers // 2 if self.layer is None else self.layer


@dataclass(kw_only=True)
class SeqwinWav2Vec2AsrConfig:
    """wav2vec 2.0 encoder + linear CTC head over letters (blank = index 0)."""

    model: Wav2Vec2AsrConfig = field(default_factory=Wav2Vec2AsrConfig)
    attention: LayerAttentionConfig = field(default_factory=LayerAttentionConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    inter_ctc: InterCtcConfig = field(default_factory=InterCtcConfig)

    def validate(self) -> None:
        _check_common(self.model.encoder_config, self.attention, self.frontend, "model.")
        if self.model.target_vocab_size < 2:
            raise ValueError("model.target_vocab_size must be >= 2 (blank + at least one symbol)")
        inter, enc = self.inter_ctc, self.model.encoder_config
        if not 0.0 <= inter.weight < 1.0:
            raise ValueError(f"inter_ctc.weight must be in [0, 1), got {inter.weight}")
        if inter.weight > 0.0:
            layer = inter.resolved_layer(enc.num_encoder_layers)
            if not 1 <= layer < enc.num_encoder_layers:
                raise ValueError(f"inter_ctc.layer must be in [1, {enc.num_encoder_layers - 1}] (a layer below the "
                                 f"last), got {layer}")
            if enc.layer_drop_p > 0.0:
                raise ValueError("inter_ctc.weight > 0 needs model.encoder_config.layer_drop_p = 0 (a dropped "
                                 "layer has no output to score)")


# ---- presets -------------------------------------------------------------------------------------------------


def _tiny_encoder(**overrides: Any) -> Wav2Vec2EncoderConfig:
    """CPU-sized encoder: log-mel frontend at 40 ms frames, 256 dim, 4 heads, pre-norm (trains faster than the
    paper's post-norm at the high learning rates short CPU runs need); sliding window of +-32 frames (+-1.3 s)
    in every layer, so each frame of a 73 s prompt attends to 65 frames instead of 1830."""
    fields: dict[str, Any] = dict(
        model_dim=256, feature_dim=320, max_seq_len=8192, num_encoder_layers=6, num_encoder_attn_heads=4,
        ffn_inner_dim=1024, pos_conv_kernel_size=32, num_pos_conv_groups=16, dropout_p=0.1, attn_dropout_p=0.0,
        layer_drop_p=0.0, feature_grad_scale=1.0, norm_order=TransformerNormOrder.PRE, layer_norm_features=False,
    )
    fields.update(overrides)
    return Wav2Vec2EncoderConfig(**fields)


def _tiny_frontend() -> FrontendConfig:
    return FrontendConfig(kind="logmel", num_mel_bins=80, stack=4)


def _tiny_attention() -> LayerAttentionConfig:
    return LayerAttentionConfig(default=AttentionSpec(kind="local", window=(32, 32)))


def ssl_presets() -> dict[str, SeqwinWav2Vec2Config]:
    tiny = SeqwinWav2Vec2Config(
        model=Wav2Vec2Config(
            encoder_config=_tiny_encoder(), final_dim=128, quantized_dim=128, num_codebooks=2,
            num_codebook_entries=64, num_distractors=25, temporal_mask_span_len=4, max_temporal_mask_prob=0.5,
            spatial_mask_span_len=8, codebook_sampling_temperature=(2.0, 0.5, 0.995),
        ),
        attention=_tiny_attention(), frontend=_tiny_frontend(),
    )
    fs2 = {"base": Wav2Vec2Config()}
    large = copy.deepcopy(fs2["base"])  # fairseq2's "large" arch, spelled out (its registry needs a container)
    enc = large.encoder_config
    enc.model_dim, enc.num_encoder_layers, enc.num_encoder_attn_heads, enc.ffn_inner_dim = 1024, 24, 16, 4096
    enc.dropout_p, enc.layer_drop_p = 0.0, 0.2
    large.quantized_dim = large.final_dim = 768
    return {"tiny": tiny, "base": SeqwinWav2Vec2Config(model=fs2["base"]), "large": SeqwinWav2Vec2Config(model=large)}


def asr_presets() -> dict[str, SeqwinWav2Vec2AsrConfig]:
    tiny = SeqwinWav2Vec2AsrConfig(
        model=Wav2Vec2AsrConfig(
            # light regularization: on the mini corpus a short run underfits (train loss ~ dev loss) with the
            # 0.1 dropout / 0.3 masking first tried, which cost ~2-3 CER points at 1000 steps
            encoder_config=_tiny_encoder(dropout_p=0.05, attn_dropout_p=0.0, ffn_inner_dropout_p=0.1),
            target_vocab_size=32, final_dropout_p=0.1, temporal_mask_span_len=4, max_temporal_mask_prob=0.15,
            spatial_mask_span_len=16, max_spatial_mask_prob=0.1,
        ),
        attention=_tiny_attention(), frontend=_tiny_frontend(),
    )
    base_10h = Wav2Vec2AsrConfig()
    base_100h = copy.deepcopy(base_10h)
    base_100h.encoder_config.layer_drop_p = 0.1
    large_10h = copy.deepcopy(base_10h)
    enc = large_10h.encoder_config
    enc.model_dim, enc.num_encoder_layers, enc.num_encoder_attn_heads, enc.ffn_inner_dim = 1024, 24, 16, 4096
    enc.layer_drop_p = 0.1
    large_10h.max_temporal_mask_prob, large_10h.max_spatial_mask_prob = 0.80, 0.30
    large_100h = copy.deepcopy(large_10h)
    large_100h.max_temporal_mask_prob, large_100h.max_spatial_mask_prob = 0.53, 0.55
    return {"tiny": tiny} | {
        name: SeqwinWav2Vec2AsrConfig(model=cfg)
        for name, cfg in [("base_10h", base_10h), ("base_100h", base_100h), ("large_10h", large_10h),
                          ("large_100h", large_100h)]
    }


def asr_config_from_ssl(ssl: SeqwinWav2Vec2Config, base: SeqwinWav2Vec2AsrConfig) -> SeqwinWav2Vec2AsrConfig:
    """A CTC config whose encoder matches an SSL model's shapes (so its weights load), keeping ``base``'s
    fine-tuning regularization (dropouts, masking) and vocabulary."""
    out = copy.deepcopy(base)
    src, dst = ssl.model.encoder_config, out.model.encoder_config
    keep = {k: getattr(dst, k) for k in ("dropout_p", "attn_dropout_p", "ffn_inner_dropout_p", "layer_drop_p",
                                          "feature_grad_scale")}
    out.model.encoder_config = copy.deepcopy(src)
    for k, v in keep.items():
        setattr(out.model.encoder_config, k, v)
    # the features must be the SSL model's; training-time augmentation stays the fine-tuning config's
    augment = {k: getattr(base.frontend, k) for k in AUGMENT_FIELDS}
    out.frontend = dataclasses.replace(ssl.frontend, **augment)
    return out
