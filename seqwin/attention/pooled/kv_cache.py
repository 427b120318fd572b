"""Decoding cache of causal pooled heads: finished block means, the running sum of the current block, a window ring.

A causal pooled query at position ``t`` sees the means of the blocks ``b < t // P`` and, with a window
``(left, 0)``, the raw keys ``t - left .. t``. So decoding needs the mean of every finished block (one key and one
value per ``P`` tokens: the cache grows ``P`` times slower than a full KV cache, it is not constant), the fp32 sum
of the block being filled (constant), and a ring of the last ``left`` raw keys (constant,
:class:`~seqwin.attention.sliding_window.SlidingWindowKVCache`). Step outputs equal the full forward of
:func:`~seqwin.attention.pooled.pooled_attention` with ``causal=True``. Rows of a batch advance together (no
padding).
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqwin.attention.reference import masked_attention_reference, window_mask
from seqwin.attention.sliding_window.kv_cache import SlidingWindowKVCache


class PooledKVCache:
    """Keys/values ``(batch, seq, kv_heads, head_dim)`` of causal pooled heads; ``window_left``: the look-back of
    their raw-key window (``None``: pooled blocks only)."""

    def __init__(self, pool_size: int, window_left: int | None = None) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.pool_size = pool_size
        self.window_left = window_left
        self.ring = SlidingWindowKVCache(window_left) if window_left is not None else None
        self.num_tokens = 0
        self.blocks_k: Tensor | None = None  # (batch, finished blocks, kv_heads, head_dim), the keys' dtype
        self.blocks_v: Tensor | None = None
        self._sum_k: Tensor | None = None  # fp32 sums of the current block's keys so far
        self._sum_v: Tensor | None = None

    def ingest(self, k: Tensor, v: Tensor) -> None:
        """Take the step's keys/values (a prompt after its full forward, or new tokens) without attending."""
        if self.ring is not None:
            self.ring.update(k, v)
        self._fold(k, v)
        self.num_tokens += k.shape[1]

    def step(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None) -> Tensor:
        """Output for the queries ``q`` of the ``k.shape[1]`` new tokens (bottom-right aligned); caches them."""
        n, t0, p = k.shape[1], self.num_tokens, self.pool_size
        raw_k = raw_v = None
        if self.ring is not None:
            raw_k, raw_v = self.ring.update(k, v)
        self._fold(k, v)  # blocks finished by the first new tokens are visible to the later ones
        self.num_tokens += n
        t = torch.arange(t0, t0 + n, device=q.device)
        keys, values, masks = [], [], []
        if raw_k is not None:
            k_pos = torch.arange(t0 + n - raw_k.shape[1], t0 + n, device=q.device)
            keys.append(raw_k)
            values.append(raw_v)
            masks.append(window_mask(t, k_pos, (self.window_left, 0)))
        if self.blocks_k is not None:
            keys.append(self.blocks_k)
            values.append(self.blocks_v)
            masks.append(torch.arange(self.blocks_k.shape[1], device=q.device)[None, :] < (t // p)[:, None])
        if not keys:  # nothing finished yet and no window: every query sees nothing
            return q.new_zeros(q.shape[:-1] + (v.shape[-1],))
        return masked_attention_reference(q, torch.cat(keys, 1), torch.cat(values, 1), torch.cat(masks, -1),
                                          scale=scale)

    def _fold(self, k: Tensor, v: Tensor) -> None:
        """Add the new tokens to the current block's sums; move finished blocks to ``blocks_k/v`` as means."""
        p, n = self.pool_size, k.shape[1]
        if n == 0:
            return
        if self._sum_k is None:
            self._sum_k = k.new_zeros(k.shape[0], *k.shape[2:], dtype=torch.float32)
            self._sum_v = v.new_zeros(v.shape[0], *v.shape[2:], dtype=torch.float32)
        filled = self.num_tokens % p
        first = min(p - filled, n)
        self._sum_k = self._sum_k + k[:, :first].float().sum(1)
        self._sum_v = self._sum_v + v[:, :first].float().sum(1)
        finished_k, finished_v = [], []
        if filled + first == p:
            finished_k.append((self._sum_k / p)[:, None])
            finished_v.append((self._sum_v / p)[:, None])
            self._sum_k, self._sum_v = torch.zeros_like(self._sum_k), torch.zeros_like(self._sum_v)
        rest_k, rest_v = k[:, first:].float(), v[:, first:].float()
        whole = rest_k.shape[1] // p * p
        if whole:
            finished_k.append(rest_k[:, :whole].unflatten(1, (-1, p)).mean(2))
            finished_v.append(rest_v[:, :whole].unflatten(1, (-1, p)).mean(2))
        self._sum_k = self._sum_k + rest_k[:, whole:].sum(1)
        self._sum_v = self._sum_v + rest_v[:, whole:].sum(1)
        if finished_k:
            new_k, new_v = torch.cat(finished_k, 1).to(k.dtype), torch.cat(finished_v, 1).to(v.dtype)
            self.blocks_k = new_k if self.blocks_k is None else torch.cat([self.blocks_k, new_k], 1)
            self.blocks_v = new_v if self.blocks_v is None else torch.cat([self.blocks_v, new_v], 1)

    def reorder(self, new_order: Tensor) -> None:
        """Reorder the batch (beam search)."""
        if self.ring is not None:
            self.ring.reorder(new_order)
        for name in ("blocks_k", "blocks_v", "_sum_k", "_sum_v"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, new_order))

    def size_bytes(self) -> int:
        tensors = [t for t in (self.blocks_k, self.blocks_v, self._sum_k, self._sum_v) if t is not None]
        ring = self.ring.size_bytes() if self.ring is not None else 0
        return ring + sum(t.numel() * t.element_size() for t in tensors)
