"""Routing attention: k-means token routing (Routing Transformer), its PyTorch chunked implementation, the
per-cluster decoding cache, and block routing (BiFormer)."""

from seqwin.attention.routing.attention import routing_attention, routing_attention_reference, routing_mask
from seqwin.attention.routing.block_routing import block_routing_attention, block_routing_attention_reference
from seqwin.attention.routing.kmeans import KMeansRouter, RouterOutput
from seqwin.attention.routing.kv_cache import RoutingKVCache, ingest_routing

__all__ = [
    "KMeansRouter",
    "RouterOutput",
    "RoutingKVCache",
    "block_routing_attention",
    "block_routing_attention_reference",
    "ingest_routing",
    "routing_attention",
    "routing_attention_reference",
    "routing_mask",
]
