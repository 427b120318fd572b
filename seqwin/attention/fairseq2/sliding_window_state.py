"""fairseq2 incremental-decoding state for causal sliding-window layers, backed by the ring-buffer cache.

Pass :class:`SlidingWindowAttentionStateFactory` as the attention layer's ``state_factory`` so its KV cache stays
O(window) however long the model generates (see :class:`seqwin.attention.SlidingWindowKVCache`).
"""

from __future__ import annotations

from fairseq2.models.transformer.multihead_attention import AttentionState
from torch import Tensor

from seqwin.attention.sliding_window import SlidingWindowKVCache


class SlidingWindowAttentionState(AttentionState):
    """fairseq2 incremental-decoding state backed by :class:`SlidingWindowKVCache`."""

    def __init__(self, k: Tensor, v: Tensor, window_left: int, num_sinks: int) -> None:
        self.cache = SlidingWindowKVCache(window_left, num_sinks)
        self._k, self._v = self.cache.update(k, v)

    def append(self, k: Tensor, v: Tensor) -> None:
        self._k, self._v = self.cache.update(k, v)

    def get(self) -> tuple[Tensor, Tensor]:
        return self._k, self._v

    def reorder(self, new_order: Tensor) -> None:
        self.cache.reorder(new_order)
        self._k = self._k.index_select(0, new_order)
        self._v = self._v.index_select(0, new_order)

    def size_bytes(self) -> int:
        return self.cache.size_bytes()

    def capacity_bytes(self) -> int:
        return self.cache.size_bytes()


class SlidingWindowAttentionStateFactory:
    """fairseq2 ``AttentionStateFactory`` for causal windowed layers (pass as ``state_factory=``)."""

    def __init__(self, window_left: int, num_sinks: int = 0) -> None:
        self.window_left = window_left
        self.num_sinks = num_sinks

    def __call__(self, k: Tensor, v: Tensor, max_seq_len: int, capacity_increment: int | None) -> AttentionState:
        return SlidingWindowAttentionState(k, v, self.window_left, self.num_sinks)

    def __repr__(self) -> str:
        return f"SlidingWindowAttentionStateFactory(window_left={self.window_left}, num_sinks={self.num_sinks})"
