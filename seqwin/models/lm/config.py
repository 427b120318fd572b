"""``LMConfig``: a decoder-only language model whose layers each choose their attention.

Every layer is a pre-norm Transformer block (RMSNorm, rotary positions inside attention, GLU feed-forward). The
attention of each layer comes from :class:`seqwin.attention.LayerAttentionConfig` (the vocabulary the wav2vec2
encoder shares): a default spec, a spec for the top ``num_top_layers`` layers and per-layer overrides, each ``full``,
``local`` (sliding window), ``pooled`` (means of earlier blocks of tokens), ``routing`` (online k-means clusters) or
``mixed`` (local + pooled + routing heads: the Routing Transformer and local+global layouts) — and optionally one
window per head in a local layer. An LM is causal, so every spec is made
causal here (a local window, and each per-head window, must then have ``right == 0``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from seqwin.attention import AttentionSpec, LayerAttention, LayerAttentionConfig

SEQWIN_LM_FAMILY = "seqwin_lm"


def _default_attention() -> LayerAttentionConfig:
    return LayerAttentionConfig(default=AttentionSpec(kind="full", causal=True))


@dataclass(kw_only=True)
class LMConfig:
    vocab_size: int = 0
    """Set from the tokenizer by the recipes; must be > 0 when the model is built."""
    model_dim: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    """Grouped-query attention: key/value heads (``None``: one per query head)."""
    ffn_inner_dim: int = 1024
    ffn: Literal["glu", "relu"] = "glu"
    dropout_p: float = 0.0
    max_seq_len: int = 65536
    """Longest position the rotary table covers: training context, or prompt + generated tokens."""
    rope_theta: float = 10_000.0
    tied_embeddings: bool = True
    pad_idx: int | None = None
    attention: LayerAttentionConfig = field(default_factory=_default_attention)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    def validate(self) -> None:
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size must be >= 0, got {self.vocab_size}")
        for name in ("model_dim", "num_layers", "num_heads", "ffn_inner_dim", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model_dim % self.num_heads:
            raise ValueError(f"model_dim ({self.model_dim}) must be a multiple of num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head dim, got {self.head_dim}")
        kv = self.num_kv_heads or self.num_heads
        if kv < 1 or self.num_heads % kv:
            raise ValueError(f"num_kv_heads ({kv}) must divide num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout_p < 1.0:
            raise ValueError(f"dropout_p must be in [0, 1), got {self.dropout_p}")
        group = self.num_heads // kv
        for layer in self.layers():
            spec, where = layer.spec, f"attention.{layer.source}"
            for name in ("local_heads", "pooled_heads"):  # each head group must own whole key/value heads
                if spec.kind == "mixed" and getattr(spec, name) % group:
                    raise ValueError(f"{where}: {name} ({getattr(spec, name)}) must be a multiple of the query heads "
                                     f"per key/value head ({group})")
            # bounded look-back: decoding keeps a ring buffer of the window
            if spec.kind in ("local", "mixed") and layer.max_look_back() < 0:
                raise ValueError(f"{where}: a local window needs a bounded left side, got {layer.windows()}")

    def layers(self) -> list[LayerAttention]:
        """One causal :class:`LayerAttention` per layer."""
        try:
            return self.attention.expand(self.num_layers, self.num_heads, causal=True)
        except ValueError as exc:
            raise ValueError(f"attention.{exc}") from None

    def layer_specs(self) -> list[AttentionSpec]:
        """One causal spec per layer."""
        return [layer.spec for layer in self.layers()]
