"""Attention: sliding-window (and later routing) attention, references, caches and fairseq2 SDPAs."""

from seqwin.attention.kv_cache import (
    SlidingWindowAttentionStateFactory,
    SlidingWindowKVCache,
)
from seqwin.attention.reference import (
    sliding_window_attention_reference,
    sliding_window_mask,
    window_mask,
)
from seqwin.attention.sdpa import SlidingWindowSDPA, windowize
from seqwin.attention.sliding_window import sliding_window_attention

__all__ = [
    "SlidingWindowAttentionStateFactory",
    "SlidingWindowKVCache",
    "SlidingWindowSDPA",
    "sliding_window_attention",
    "sliding_window_attention_reference",
    "sliding_window_mask",
    "window_mask",
    "windowize",
]
