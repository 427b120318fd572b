"""Attention: sliding-window and routing attention, their references, decoding caches and fairseq2 SDPAs."""

from seqwin.attention.block_routing import block_routing_attention, block_routing_attention_reference
from seqwin.attention.kv_cache import SlidingWindowAttentionStateFactory, SlidingWindowKVCache
from seqwin.attention.reference import sliding_window_attention_reference, sliding_window_mask, window_mask
from seqwin.attention.routing import routing_attention, routing_attention_reference, routing_mask
from seqwin.attention.routing_decode import RoutingKVCache
from seqwin.attention.routing_kmeans import KMeansRouter
from seqwin.attention.routing_sdpa import (
    AttentionSpec,
    LayerAttentionConfig,
    RoutingSDPA,
    collect_aux_losses,
    expand_attention_specs,
)
from seqwin.attention.sdpa import SlidingWindowSDPA, windowize
from seqwin.attention.sliding_window import sliding_window_attention

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
