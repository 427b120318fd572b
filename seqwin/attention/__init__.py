"""Attention algorithms on torch alone (plus Triton kernels on GPUs); nothing here imports fairseq2.

- sliding window: :func:`sliding_window_attention` (backends in :mod:`seqwin.attention.sliding_window`) and its
  decoding ring buffer :class:`SlidingWindowKVCache`;
- routing: :func:`routing_attention` with a :class:`KMeansRouter`, :class:`RoutingKVCache` for decoding, and
  :func:`block_routing_attention` (routing between blocks);
- pooled-global: :func:`pooled_attention` (block means of the keys, optionally plus a window) and its decoding
  cache :class:`PooledKVCache`;
- fixed blocks: :func:`block_attention` (Swin-style, optionally shifted);
- the dense references and masks every fast path is tested against;
- :class:`AttentionSpec` / :class:`LayerAttentionConfig`: plain per-layer config of how a model attends.

The fairseq2 glue (SDPAs, incremental-decoding states, WindowKV on a model) is :mod:`seqwin.attention.fairseq2`.
"""

from seqwin.attention.pooled import PooledKVCache, pooled_attention, pooled_attention_reference
from seqwin.attention.reference import sliding_window_attention_reference, sliding_window_mask, window_mask
from seqwin.attention.routing import (
    KMeansRouter,
    RoutingKVCache,
    block_routing_attention,
    block_routing_attention_reference,
    routing_attention,
    routing_attention_reference,
    routing_mask,
)
from seqwin.attention.sliding_window import SlidingWindowKVCache, sliding_window_attention
from seqwin.attention.specs import AttentionSpec, LayerAttention, LayerAttentionConfig, expand_attention_specs
from seqwin.attention.swin import block_attention

__all__ = [
    "AttentionSpec",
    "KMeansRouter",
    "LayerAttention",
    "LayerAttentionConfig",
    "PooledKVCache",
    "RoutingKVCache",
    "SlidingWindowKVCache",
    "block_attention",
    "block_routing_attention",
    "block_routing_attention_reference",
    "expand_attention_specs",
    "pooled_attention",
    "pooled_attention_reference",
    "routing_attention",
    "routing_attention_reference",
    "routing_mask",
    "sliding_window_attention",
    "sliding_window_attention_reference",
    "sliding_window_mask",
    "window_mask",
]
