"""Ring-buffer KV cache for causal sliding-window decoding: O(left + num_sinks) memory however long we generate.

A causal window ``(left, 0)`` means a new query needs at most the ``left`` keys before it plus itself. The cache
keeps the first ``num_sinks`` keys (attention sinks) apart and a ring of the last ``left`` others. ``update`` takes
the step's new keys (one token, or a chunk of them for chunked prefill) and returns, in position order,
``[sinks, last left keys, new keys]``: exactly what ``sliding_window_attention`` needs with bottom-right alignment,
``window=(left, 0)`` and the same ``num_sinks``. Distances between ring keys and the new queries are preserved, and
sink keys are visible through ``num_sinks`` whatever their stored position, so decoding equals the full forward.
The fairseq2 attention state around it is :class:`seqwin.attention.fairseq2.SlidingWindowAttentionStateFactory`.
"""

from __future__ import annotations

import torch
from torch import Tensor


class SlidingWindowKVCache:
    """Keys/values ``(batch, seq, kv_heads, head_dim)`` of a causal windowed attention layer."""

    def __init__(self, window_left: int, num_sinks: int = 0) -> None:
        if window_left < 0:
            raise ValueError(f"decoding needs a bounded look-back, got window_left={window_left}")
        if num_sinks < 0:
            raise ValueError(f"num_sinks must be >= 0, got {num_sinks}")
        self.window_left = window_left
        self.num_sinks = num_sinks
        self.num_tokens = 0  # tokens seen so far
        self._sink_k: Tensor | None = None
        self._sink_v: Tensor | None = None
        self._ring_k: Tensor | None = None  # (batch, window_left, kv_heads, head_dim), oldest at self._start
        self._ring_v: Tensor | None = None
        self._ring_len = 0
        self._start = 0

    def _ring_pieces(self, ring: Tensor) -> list[Tensor]:
        """The ring's entries oldest first, as one or two slices (views: no copy before the caller's one cat)."""
        start, end = self._start, self._start + self._ring_len
        if end <= self.window_left:
            return [ring[:, start:end]]
        return [ring[:, start:], ring[:, : end - self.window_left]]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append the step's keys/values; return ``[sinks, last window_left keys, new keys]``."""
        n = k.shape[1]
        # Tokens still inside the first num_sinks positions become sinks, not ring entries.
        to_sink = max(0, min(n, self.num_sinks - self.num_tokens))
        if to_sink:
            sk, sv = k[:, :to_sink], v[:, :to_sink]
            self._sink_k = sk if self._sink_k is None else torch.cat([self._sink_k, sk], 1)
            self._sink_v = sv if self._sink_v is None else torch.cat([self._sink_v, sv], 1)
        new_k, new_v = k[:, to_sink:], v[:, to_sink:]

        parts_k, parts_v = [], []
        if self._sink_k is not None:
            parts_k.append(self._sink_k)
            parts_v.append(self._sink_v)
        if self._ring_len:
            parts_k += self._ring_pieces(self._ring_k)
            parts_v += self._ring_pieces(self._ring_v)
        parts_k.append(new_k)
        parts_v.append(new_v)
        all_k, all_v = torch.cat(parts_k, 1), torch.cat(parts_v, 1)

        self._push(new_k, new_v)
        self.num_tokens += n
        return all_k, all_v

    def _push(self, k: Tensor, v: Tensor) -> None:
        w = self.window_left
        if w == 0 or k.shape[1] == 0:
            return
        if self._ring_k is None:
            b, _, h, d = k.shape
            self._ring_k = k.new_empty(b, w, h, d)
            self._ring_v = v.new_empty(b, w, h, v.shape[-1])
        k, v = k[:, -w:], v[:, -w:]
        n = k.shape[1]
        end = (self._start + self._ring_len) % w  # next free slot
        first = min(n, w - end)  # up to the end of the buffer, the rest wraps to its start
        for ring, x in ((self._ring_k, k), (self._ring_v, v)):
            ring[:, end : end + first] = x[:, :first]
            if n > first:
                ring[:, : n - first] = x[:, first:]
        overflow = max(0, self._ring_len + n - w)
        self._start = (self._start + overflow) % w
        self._ring_len = min(w, self._ring_len + n)

    def reorder(self, new_order: Tensor) -> None:
        """Reorder the batch (beam search)."""
        for name in ("_sink_k", "_sink_v", "_ring_k", "_ring_v"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, new_order))

    def size_bytes(self) -> int:
        tensors = [t for t in (self._sink_k, self._sink_v, self._ring_k, self._ring_v) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)
