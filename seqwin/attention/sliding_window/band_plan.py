"""Geometry shared by the blocked sliding-window paths: query chunks and the key span each chunk can see.

Queries are cut into chunks of ``chunk`` rows. Chunk ``c`` covers queries ``[c*chunk, (c+1)*chunk)``, which sit at
key positions starting at ``c*chunk + offset`` (bottom-right alignment: ``offset = k_len - q_len``). Every key such
a query can see through its window lies in the *span* of ``span`` keys starting at key position
``c*chunk + offset - left``. Spans of consecutive chunks are ``chunk`` apart, so all of them are strided views of
one zero-padded key tensor: no gather, memory O(N * (left + right)).

A chunk is *interior* in a row when its whole span is real, non-sink keys of that row; its mask is then the same
band for every interior chunk and one broadcast mask serves them all. The few chunks near the sequence ends (or a
row's padding, or the sinks) are *edge* chunks with masks of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from seqwin.attention.lse import additive
from seqwin.attention.reference import Window, window_mask


@dataclass(frozen=True)
class BandPlan:
    batch: int
    q_len: int
    k_len: int
    left: int  # effective window sides: unbounded sides are clamped to the farthest reachable key
    right: int
    num_sinks: int
    dilation: int
    chunk: int
    span: int  # a multiple of chunk, >= chunk + left + right
    num_chunks: int
    pad_front: int  # zero keys added before position 0 so the first span starts inside the padded tensor
    pad_back: int

    @property
    def offset(self) -> int:
        return self.k_len - self.q_len

    @property
    def window(self) -> Window:
        return (self.left, self.right)

    @property
    def padded_k_len(self) -> int:
        return self.pad_front + self.k_len + self.pad_back

    def for_backward(self) -> BandPlan:
        """The plan the backward pass uses: the backward only needs the merged output and log-sum-exp per query,
        so it may cut queries differently. PyTorch's fused backward zero-fills key-gradient buffers as large as
        every span together, so larger chunks (less span overlap) pay off there sooner than in the forward."""
        chunk = max(self.chunk, min(2 * self.chunk, 256))
        return make_plan(self.batch, self.q_len, self.k_len, self.window, num_sinks=self.num_sinks,
                         dilation=self.dilation, chunk=chunk)

    def span_start(self, c: Tensor | int) -> Tensor | int:
        """Key position of the first key in chunk ``c``'s span (may be negative)."""
        return c * self.chunk + self.offset - self.left

    def interior_range(self, k_len: int) -> tuple[int, int]:
        """Chunks ``[c0, c1)`` whose span lies inside ``[num_sinks, k_len)``; empty when c0 >= c1."""
        lo = self.num_sinks  # span_start(c) >= lo
        c0 = max(0, math.ceil((lo - self.offset + self.left) / self.chunk))
        # span_start(c) + span <= k_len
        c1 = min(self.num_chunks, (k_len - self.span - self.offset + self.left) // self.chunk + 1)
        return c0, max(c0, c1)

    def band_mask(self, device: torch.device) -> Tensor:
        """The ``(chunk, span)`` additive mask shared by all interior chunks."""
        q_pos = torch.arange(self.chunk, device=device) + self.left
        k_pos = torch.arange(self.span, device=device)
        return additive(window_mask(q_pos, k_pos, self.window, dilation=self.dilation))

    def edge_mask(self, rows: Tensor, chunks: Tensor, k_lens: Tensor) -> Tensor:
        """Boolean ``(n, chunk, span)`` masks of edge chunks ``(rows[i], chunks[i])``, validity included."""
        device = chunks.device
        q_pos = (chunks * self.chunk + self.offset)[:, None] + torch.arange(self.chunk, device=device)
        k_pos = self.span_start(chunks)[:, None] + torch.arange(self.span, device=device)
        mask = window_mask(q_pos, k_pos, self.window, dilation=self.dilation)
        k_ok = (k_pos >= self.num_sinks) & (k_pos < k_lens[rows][:, None])
        return mask & k_ok[:, None, :]


def default_chunk(left: int, right: int) -> int:
    """Query chunk size: big enough for efficient matmuls, small enough that the span wastes little.

    The span holds ``chunk + left + right`` keys rounded up to a multiple of ``chunk``; the useful ones per query
    are ``left + right + 1``. Measured on 2-core x86 CPUs (tools/bench_attention.py), 64 is best for windows up to
    a few hundred keys; larger windows amortize bigger chunks.
    """
    width = left + right
    if width <= 512:
        return 64
    return 128 if width <= 2048 else 256


def make_plan(
    batch: int, q_len: int, k_len: int, window: Window, *, num_sinks: int = 0, dilation: int = 1,
    chunk: int | None = None,
) -> BandPlan:
    left, right = window
    offset = k_len - q_len
    # Clamp unbounded or oversized sides to the farthest key any query can reach; semantics are unchanged.
    max_left = max(0, offset + q_len - 1)
    max_right = max(0, k_len - 1 - offset)
    left = max_left if left < 0 else min(left, max_left)
    right = max_right if right < 0 else min(right, max_right)
    chunk = chunk or default_chunk(left, right)
    chunk = max(1, min(chunk, q_len))
    span = -(-(chunk + left + right) // chunk) * chunk
    num_chunks = -(-q_len // chunk)
    pad_front = max(0, left - offset)
    last_end = (num_chunks - 1) * chunk + offset - left + span
    pad_back = max(0, last_end - k_len)
    return BandPlan(batch, q_len, k_len, left, right, num_sinks, dilation, chunk, span, num_chunks,
                    pad_front, pad_back)
