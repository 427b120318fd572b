"""Attention: sliding-window and routing attention, their references, decoding caches and fairseq2 SDPAs."""

from seqwin.attention.fairseq2.routing_sdpa import (
    AttentionSpec,
    LayerAttentionConfig,
    RoutingSDPA,
    collect_aux_losses,
    expand_attention_specs,
)
from seqwin.attention.fairseq2.sliding_window_sdpa import SlidingWindowSDPA, windowize
from seqwin.attention.reference import sliding_window_attention_reference, sliding_window_mask, window_mask
from seqwin.attention.routing.attention import routing_attention, routing_attention_reference, routing_mask
from seqwin.attention.routing.block_routing import block_routing_attention, block_routing_attention_reference
from seqwin.attention.routing.kmeans import KMeansRouter
from seqwin.attention.routing.kv_cache import RoutingKVCache
from seqwin.attention.sliding_window.attention import sliding_window_attention
from seqwin.attention.sliding_window.kv_cache import SlidingWindowAttentionStateFactory, SlidingWindowKVCache

__all__ = [
    "AttentionSpec",
    "KMeansRouter",
    "LayerAttentionConfig",
    "RoutingKVCache",
    "RoutingSDPA",
    "SlidingWindowAttentionStateFactory",
    "SlidingWindowKVCache",
    "SlidingWindowSDPA",
    "block_routing_attention",
    "block_routing_attention_reference",
    "collect_aux_losses",
    "expand_attention_specs",
    "routing_attention",
    "routing_attention_reference",
    "routing_mask",
    "sliding_window_attention",
    "sliding_window_attention_reference",
    "sliding_window_mask",
    "window_mask",
    "windowize",
]
