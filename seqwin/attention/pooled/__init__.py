"""Pooled-global attention (local + coarse global context): queries see block means of the keys, optionally plus
a window of raw keys; the fused CPU path, the blocked PyTorch path, the dense reference and the decoding cache."""

from seqwin.attention.pooled.attention import (
    BACKENDS,
    block_visibility,
    pool_blocks,
    pooled_attention,
    pooled_attention_reference,
)
from seqwin.attention.pooled.kv_cache import PooledKVCache

__all__ = [
    "BACKENDS",
    "PooledKVCache",
    "block_visibility",
    "pool_blocks",
    "pooled_attention",
    "pooled_attention_reference",
]
