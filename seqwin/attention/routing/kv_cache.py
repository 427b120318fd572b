"""Incremental decoding for causal routing heads: per-cluster ring buffers of the last ``window`` keys.

A new token is routed with the current centroids (exactly as the causal forward routes it: by its key, or by
its query with ``shared_qk``), its key/value are written into its cluster's ring, and its query attends to
that ring: the most recent ``window`` keys of its cluster, itself included. That is the causal routing
definition restricted to one query, so step-by-step decoding equals the full causal forward (with the router
in eval mode; in training mode the forward moves the centroids). Work per step is O(c·d) routing + O(window·d)
attention.

Memory is ``heads * num_clusters * window`` slots per sequence (stored per query head, since grouped-query
heads route the shared keys with their own centroids). The local-window heads of a mixed layer keep their own
sliding-window cache. :func:`ingest_routing` writes a whole prompt into the cache at once (prefill).
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqwin.attention.routing.kmeans import KMeansRouter


class RoutingKVCache:
    """Ring buffers ``(batch, heads, clusters, window, dim)``; ``step`` appends one token and attends."""

    def __init__(
        self, router: KMeansRouter, window: int, *, shared_qk: bool = False, scale: float | None = None
    ):
        if window < 1:
            raise ValueError(f"the decode cache needs a bounded routing window >= 1, got {window}")
        self.router, self.window, self.shared_qk, self.scale = router, window, shared_qk, scale
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.count: Tensor | None = None  # (batch, heads, clusters): tokens ever written to each ring
        self.num_steps = 0

    def _allocate(self, b: int, h: int, d: int, dv: int, like: Tensor) -> None:
        c, w = self.router.num_clusters, self.window
        self.keys = like.new_zeros(b, h, c, w, d)
        self.values = like.new_zeros(b, h, c, w, dv)
        self.count = torch.zeros(b, h, c, dtype=torch.long, device=like.device)

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values) if t is not None)

    @torch.no_grad()
    def step(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """One token: q ``(b, 1, heads, d)``, k/v ``(b, 1, kv_heads, d)`` -> ``(b, 1, heads, dv)``.
        Several tokens are taken one after another."""
        if q.shape[1] != 1:
            return torch.cat(
                [self.step(q[:, i : i + 1], k[:, i : i + 1], v[:, i : i + 1]) for i in range(q.shape[1])],
                dim=1,
            )
        b, _, h, d = q.shape
        hk, dv = k.shape[2], v.shape[-1]
        if h % hk != 0:
            raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hk})")
        k = k.repeat_interleave(h // hk, dim=2) if hk != h else k
        v = v.repeat_interleave(h // hk, dim=2) if hk != h else v
        if self.keys is None:
            self._allocate(b, h, d, dv, k)
        assert self.keys is not None and self.values is not None and self.count is not None
        ids = self.router.assign(q if self.shared_qk else k)[..., 0]  # (b, h)
        bi = torch.arange(b, device=q.device)[:, None].expand(b, h)
        hi = torch.arange(h, device=q.device)[None, :].expand(b, h)
        slot = self.count[bi, hi, ids] % self.window
        self.keys[bi, hi, ids, slot] = k[:, 0]
        self.values[bi, hi, ids, slot] = v[:, 0]
        self.count[bi, hi, ids] += 1
        self.num_steps += 1

        keys, values = self.keys[bi, hi, ids], self.values[bi, hi, ids]  # (b, h, window, d)
        filled = torch.arange(self.window, device=q.device) < self.count[bi, hi, ids][..., None]
        scale = d**-0.5 if self.scale is None else self.scale
        scores = torch.einsum("bhd,bhwd->bhw", q[:, 0].float(), keys.float()) * scale
        probs = torch.softmax(
            scores.masked_fill(~filled, float("-inf")), dim=-1
        )  # the token itself is filled
        out = torch.einsum("bhw,bhwd->bhd", probs, values.float())
        return out[:, None].to(q.dtype)


@torch.no_grad()
def ingest_routing(cache: RoutingKVCache, q: Tensor, k: Tensor, v: Tensor) -> None:
    """Write a prompt's tokens into ``cache`` at once, exactly as ``cache.step`` would one by one: token t of
    cluster c lands in ring slot ``rank % window`` (its rank among c's tokens so far), and only each cluster's
    last ``window`` tokens survive. ``q`` ``(batch, n, heads, dim)``, ``k``/``v`` with heads or kv heads."""
    if cache.keys is None:  # the first step allocates the rings
        cache.step(q[:, :1], k[:, :1], v[:, :1])
        q, k, v = q[:, 1:], k[:, 1:], v[:, 1:]
    n, h = q.shape[1], q.shape[2]
    if n == 0:
        return
    assert cache.keys is not None and cache.values is not None and cache.count is not None
    if k.shape[2] != h:
        k, v = k.repeat_interleave(h // k.shape[2], dim=2), v.repeat_interleave(h // k.shape[2], dim=2)
    ids = cache.router.assign(q if cache.shared_qk else k)  # (b, h, n)
    onehot = torch.nn.functional.one_hot(ids, cache.router.num_clusters)  # (b, h, n, c)
    before = cache.count.gather(-1, ids)  # tokens of the cluster written before this prompt
    rank = before + (onehot.cumsum(2) - onehot).gather(-1, ids[..., None])[..., 0]
    total = cache.count + onehot.sum(2)
    keep = rank >= total.gather(-1, ids) - cache.window  # each cluster's last `window` tokens
    bi, hi, ti = keep.nonzero(as_tuple=True)
    ci, slot = ids[bi, hi, ti], rank[bi, hi, ti] % cache.window
    cache.keys[bi, hi, ci, slot] = k[bi, ti, hi].to(cache.keys.dtype)
    cache.values[bi, hi, ci, slot] = v[bi, ti, hi].to(cache.values.dtype)
    cache.count = total
    cache.num_steps += n
