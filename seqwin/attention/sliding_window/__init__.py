"""Sliding-window attention: the dispatcher and its backends (fused CPU band, PyTorch blocked, Triton), the
decoding ring-buffer cache."""

from seqwin.attention.sliding_window.attention import BACKENDS, sliding_window_attention
from seqwin.attention.sliding_window.kv_cache import SlidingWindowKVCache

__all__ = ["BACKENDS", "SlidingWindowKVCache", "sliding_window_attention"]
