"""Factories: fairseq2's wav2vec 2.0 factories with seqwin attention per encoder layer and an optional log-mel
frontend. Everything else (feature CNN, conv position encoder, masker, quantizer, losses, CTC head) is fairseq2's
code, so state dicts keep fairseq2's key names and fairseq1/fairseq2 checkpoints load unchanged. The CTC model
is fairseq2's with an optional intermediate-CTC training loss (:mod:`seqwin.models.wav2vec2.asr`).
"""

from __future__ import annotations

from fairseq2.models.feature_extractor import SequenceFeatureExtractor
from fairseq2.models.transformer import (
    MultiheadAttention,
    RelativePositionalEncoding,
    StandardMultiheadAttention,
    TransformerEncoder,
    TransformerEncoderLayer,
)
from fairseq2.models.wav2vec2 import (
    Wav2Vec2EncoderFactory,
    Wav2Vec2Factory,
    Wav2Vec2Frontend,
    Wav2Vec2Masker,
    Wav2Vec2Model,
    Wav2Vec2VectorQuantizer,
)
from fairseq2.models.wav2vec2.asr import Wav2Vec2AsrFactory, Wav2Vec2AsrModel
from fairseq2.nn import RotaryEncoder, init_bert_projection
from fairseq2.runtime.lazy import Lazy
from torch import nn

from seqwin.attention import LayerAttentionConfig
from seqwin.attention.fairseq2 import make_sdpa
from seqwin.models.wav2vec2.asr import InterCtcAsrModel
from seqwin.models.wav2vec2.config import (
    AUGMENT_FIELDS,
    FrontendConfig,
    SeqwinWav2Vec2AsrConfig,
    SeqwinWav2Vec2Config,
    encoder_layers,
)
from seqwin.models.wav2vec2.frontend import LogMelFeatureExtractor
from seqwin.models.wav2vec2.masker import SeqwinMasker
from seqwin.models.wav2vec2.quantizer import EagerGumbelQuantizer


class SeqwinEncoderFactory(Wav2Vec2EncoderFactory):
    """``Wav2Vec2EncoderFactory`` whose layer ``i`` attends as ``attention`` says for layer ``i``."""

    def __init__(self, config, attention: LayerAttentionConfig, frontend: FrontendConfig) -> None:
        super().__init__(config)
        self._layers = encoder_layers(config, attention)
        self._frontend = frontend
        self._next_layer = 0

    def create_feature_extractor(self) -> SequenceFeatureExtractor:
        if self._frontend.kind == "logmel":
            f = self._frontend
            return LogMelFeatureExtractor(f.num_mel_bins, f.stack, **{k: getattr(f, k) for k in AUGMENT_FIELDS})
        return super().create_feature_extractor()

    def create_encoder(self) -> TransformerEncoder:
        self._next_layer = 0
        return super().create_encoder()

    def create_encoder_layer(self, lazy_rel_pos_encoding: Lazy[RelativePositionalEncoding]) -> TransformerEncoderLayer:
        layer = super().create_encoder_layer(lazy_rel_pos_encoding)
        self._next_layer += 1
        return layer

    def create_self_attention(self, lazy_rel_pos_encoding: Lazy[RelativePositionalEncoding]) -> MultiheadAttention:
        config = self._config
        layer = self._layers[self._next_layer]
        if layer.spec.kind == "full":  # exactly fairseq2's (relative-position SDPA for conformers included)
            return super().create_self_attention(lazy_rel_pos_encoding)
        head_dim = config.model_dim // config.num_encoder_attn_heads
        pos_encoder = RotaryEncoder(head_dim, config.max_seq_len) if config.pos_encoder_type == "rotary" else None
        sdpa = make_sdpa(layer, config.num_encoder_attn_heads, head_dim, dropout_p=config.attn_dropout_p)
        return StandardMultiheadAttention(
            config.model_dim, config.num_encoder_attn_heads, sdpa, qkv_proj_init_fn=init_bert_projection,
            pos_encoder=pos_encoder, output_proj_init_fn=init_bert_projection,
        )


def _masker(c, *, equal_counts: bool) -> SeqwinMasker:
    return SeqwinMasker(c.encoder_config.model_dim, c.temporal_mask_span_len, c.max_temporal_mask_prob,
                        c.min_num_temporal_mask_spans, c.spatial_mask_span_len, c.max_spatial_mask_prob,
                        c.min_num_spatial_mask_spans, equal_counts=equal_counts)


class _SslFactory(Wav2Vec2Factory):
    def __init__(self, config: SeqwinWav2Vec2Config) -> None:
        super().__init__(config.model)
        self._encoders = SeqwinEncoderFactory(config.model.encoder_config, config.attention, config.frontend)

    def create_encoder_frontend(self) -> Wav2Vec2Frontend:
        return self._encoders.create_encoder_frontend()

    def create_encoder(self) -> TransformerEncoder:
        return self._encoders.create_encoder()

    def create_masker(self) -> Wav2Vec2Masker:
        return _masker(self._config, equal_counts=True)

    def create_quantizer(self) -> Wav2Vec2VectorQuantizer:
        c = self._config
        return EagerGumbelQuantizer(c.encoder_config.feature_dim, c.quantized_dim, c.num_codebooks,
                                    c.num_codebook_entries, c.codebook_sampling_temperature)


class _AsrFactory(Wav2Vec2AsrFactory):
    def __init__(self, config: SeqwinWav2Vec2AsrConfig) -> None:
        super().__init__(config.model)
        self._encoders = SeqwinEncoderFactory(config.model.encoder_config, config.attention, config.frontend)
        self._inter_ctc = config.inter_ctc

    def create_model(self) -> Wav2Vec2AsrModel:
        c = self._config
        # fairseq2's order of creation, so a seed gives the same initial weights as its factory
        frontend, encoder = self.create_encoder_frontend(), self.create_encoder()
        masker = self.create_masker() if c.use_masking else None
        return InterCtcAsrModel(
            c.encoder_config.model_dim, frontend, encoder, self.create_final_projection(), masker=masker,
            final_dropout_p=c.final_dropout_p, inter_ctc_weight=self._inter_ctc.weight,
            inter_ctc_layer=self._inter_ctc.resolved_layer(c.encoder_config.num_encoder_layers),
        )

    def create_masker(self) -> Wav2Vec2Masker:
        return _masker(self._config, equal_counts=False)

    def create_encoder_frontend(self) -> Wav2Vec2Frontend:
        return self._encoders.create_encoder_frontend()

    def create_encoder(self) -> TransformerEncoder:
        return self._encoders.create_encoder()


def create_seqwin_wav2vec2_model(config: SeqwinWav2Vec2Config) -> Wav2Vec2Model:
    config.validate()
    return _SslFactory(config).create_model()


def create_seqwin_wav2vec2_asr_model(config: SeqwinWav2Vec2AsrConfig) -> Wav2Vec2AsrModel:
    config.validate()
    return _AsrFactory(config).create_model()


def set_encoder_attention(model: nn.Module, config: SeqwinWav2Vec2Config | SeqwinWav2Vec2AsrConfig,
                          attention: LayerAttentionConfig) -> int:
    """Swap the SDPAs of an existing model's encoder layers to match ``attention`` (weights are untouched: the
    projections are the same for every kind). Updates ``config.attention``; returns how many layers changed."""
    enc = config.model.encoder_config
    layers = encoder_layers(enc, attention)
    head_dim = enc.model_dim // enc.num_encoder_attn_heads
    changed = 0
    modules = list(model.encoder.layers)
    if len(modules) != len(layers):
        raise ValueError(f"model has {len(modules)} encoder layers, the attention config {len(layers)}")
    old = encoder_layers(enc, config.attention)
    for module, new_layer, old_layer in zip(modules, layers, old, strict=True):
        if new_layer == old_layer:
            continue
        module.self_attn.sdpa = make_sdpa(new_layer, enc.num_encoder_attn_heads, head_dim,
                                          dropout_p=enc.attn_dropout_p)
        changed += 1
    config.attention = attention
    return changed
