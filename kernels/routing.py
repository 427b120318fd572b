"""Routing attention (Routing Transformer) on the Triton sliding-window kernels.

Routing attention is block-diagonal attention in a permuted order. Per (batch, query head) row, tokens are
sorted stably by cluster id (padding carries the largest id, so it sorts last) and packed into one buffer of
``(rows * seq, 1 head, dim)``; each *segment* of that buffer is one independent varlen sequence of the packed-grid
varlen kernel (``triton_sliding_window_attention_varlen(..., packed_grid=True)``):

* non-causal: segment ``(row, g)`` holds the tokens of sorted ranks ``[g * group, (g + 1) * group)``; window
  ``(-1, -1)`` (dense inside the segment). Query and key sides are sorted and cut separately with one number of
  groups, so query group ``g`` attends key group ``g``, exactly ``routing_mask``'s ``rank // group_size`` rule.
* causal: segment ``(row, cluster)`` holds the cluster's tokens in position order (the sort is stable). Query
  ``i`` sees the last ``window`` keys of its cluster at positions ``<= i``: positions rise along the run, so that
  is the index window ``(window - 1, 0)`` inside the segment, and with ``q_len < k_len`` (decoding) the
  cluster's queries are the last ones of its key run, i.e. the kernels' bottom-right alignment. No position
  arrays are needed.

Valid tokens of all rows come first in the buffer, padding after them; two trailing segments take the padding
(padded queries against no keys, padded keys for no queries), so the kernels write exact zeros there and every
output and gradient row is defined. Everything is built on the device without a host sync.

Gradients flow back through the gathers: every gather here is a permutation of (head-expanded) rows, so its
backward is a gather by the inverse permutation (plus a sum over the query heads that share a key/value head
under grouped-query attention) instead of a scatter-add: deterministic and cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .sliding_window import triton_sliding_window_attention_varlen

__all__ = ["triton_routing_attention"]


class _Gather(torch.autograd.Function):
    """``x.index_select(0, index)`` where every row ``r`` of ``x`` is read exactly ``groups`` times, by output
    rows ``inverse[r * groups : (r + 1) * groups]``; the backward is then a gather and a small sum."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor, groups: int) -> Tensor:
        ctx.save_for_backward(inverse)
        ctx.groups = groups
        return x.index_select(0, index)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        out = grad.index_select(0, inverse)
        if ctx.groups > 1:
            out = out.view(-1, ctx.groups, out.shape[-1]).sum(1)
        return out, None, None, None


@dataclass
class _Packing:
    """Where the tokens of one side (queries or keys) go in the packed buffer."""

    src: Tensor  # (rows * n,) packed row -> token row (b * n + p) * h + head, heads counted as query heads
    dst: Tensor  # (rows * n,) token row -> packed row (the inverse permutation)
    starts: Tensor  # (rows * segments_per_row,) first packed row of each segment
    total: Tensor  # () number of valid (routed) tokens: they fill packed rows [0, total)


def _pack(ids: Tensor, num_clusters: int, group: int | None, num_groups: int) -> _Packing:
    """Packing of the tokens routed ``ids`` ``(b, h, n)``: by cluster if ``group`` is None, else in groups."""
    b, h, n = ids.shape
    rows = ids.reshape(b * h, n)
    order = torch.sort(rows, dim=1, stable=True).indices  # (cluster, position) order, padding last
    counts = torch.zeros(b * h, num_clusters + 1, dtype=torch.long, device=ids.device)
    counts = counts.scatter_add_(1, rows, torch.ones_like(rows))[:, :num_clusters]
    lens = counts.sum(1)  # valid tokens per row
    row_start = lens.cumsum(0) - lens
    total = lens.sum()
    pads = n - lens
    pad_start = total + pads.cumsum(0) - pads  # padding of all rows goes after every valid token
    rank = torch.arange(n, device=ids.device)
    pos = torch.where(rank < lens[:, None], row_start[:, None] + rank, pad_start[:, None] + rank - lens[:, None])
    r = torch.arange(b * h, device=ids.device)[:, None]
    tok = (((r // h) * n + order) * h + r % h).reshape(-1)
    pos = pos.reshape(-1)
    src = torch.empty_like(pos).index_copy_(0, pos, tok)
    dst = torch.empty_like(pos).index_copy_(0, tok, pos)
    if group is None:
        first = counts.cumsum(1) - counts  # first sorted rank of each cluster
    else:
        first = torch.minimum(torch.arange(num_groups, device=ids.device) * group, lens[:, None])
    return _Packing(src, dst, (row_start[:, None] + first).reshape(-1), total)


def _check(q: Tensor, k: Tensor, v: Tensor, q_ids: Tensor, k_ids: Tensor, causal: bool) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0]:
        raise ValueError(f"expected (batch, seq, heads, dim) tensors, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    b, nq, h, _ = q.shape
    nk, hk = k.shape[1], k.shape[2]
    if hk == 0 or h % hk != 0:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hk})")
    if q_ids.shape != (b, h, nq) or k_ids.shape != (b, h, nk):
        raise ValueError(f"q_ids/k_ids must be (batch, query heads, seq) = {(b, h, nq)} / {(b, h, nk)}, got "
                         f"{tuple(q_ids.shape)} / {tuple(k_ids.shape)}")
    if causal and nq > nk:
        raise ValueError(f"causal routing needs q_len <= k_len, got {nq} > {nk}")


def triton_routing_attention(
    q: Tensor, k: Tensor, v: Tensor, q_ids: Tensor, k_ids: Tensor, *, causal: bool, num_clusters: int,
    window: int | None = None, group_size: int | None = None, scale: float | None = None,
) -> Tensor:
    """Routing attention with the semantics of ``seqwin.attention.routing.routing_mask``; differentiable in q, k
    and v.

    Layout ``(batch, seq, heads, head_dim)``; k/v may have fewer heads (grouped-query) and v another head dim.
    ``q_ids``/``k_ids`` ``(batch, query heads, seq)``: cluster ids from the router, ``num_clusters`` for padding
    (``aux["q_ids"]``/``aux["k_ids"]`` of ``routing_attention``). Non-causal: query group ``g`` (sorted ranks
    ``[g * group_size, (g + 1) * group_size)``) attends key group ``g``; ``group_size`` defaults to
    ``ceil(k_len / num_clusters)``. Causal: ``q_ids`` must be ``k_ids[..., k_len - q_len:]`` (a token's query is
    routed with its key, as ``routing_attention`` does; not re-checked, that would need a host sync), and query
    ``i`` sees the last ``window`` keys (``None``: all) of its cluster at positions ``<= i + k_len - q_len``.
    Padded queries and queries that see no key output zeros.
    """
    _check(q, k, v, q_ids, k_ids, causal)
    b, nq, h, d = q.shape
    nk, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    c = int(num_clusters)
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    if b * h == 0 or nq == 0 or nk == 0:
        return q.new_zeros(b, nq, h, dv)
    q_ids, k_ids = q_ids.long(), k_ids.long()
    if causal:
        group, num_groups = None, c
        win = (-1 if window is None else window - 1, 0)
        bound_q, bound_k = nq, nk  # longest cluster run, without a sync to find it
    else:
        group = int(group_size) if group_size is not None else -(-nk // c)
        if group < 1:
            raise ValueError(f"group_size must be >= 1, got {group}")
        num_groups = -(-max(nq, nk) // group)
        win = (-1, -1)
        bound_q = bound_k = group
    pk = _pack(k_ids, c, group, num_groups)
    # Causal with q_len == k_len: q_ids == k_ids, so one sort serves both sides; shared_qk passes one tensor.
    same = q_ids is k_ids or (causal and nq == nk)
    pq = pk if same else _pack(q_ids, c, group, num_groups)

    rows_q, rows_k = b * h * nq, b * h * nk
    full_q = pq.total.new_full((2,), rows_q)  # fills on the device: no host-to-device copy
    full_k = pk.total.new_full((1,), rows_k)
    # Two trailing segments: [padded queries | no keys], then [no queries | padded keys].
    cu_q = torch.cat((pq.starts, pq.total[None], full_q)).to(torch.int32)
    cu_k = torch.cat((pk.starts, pk.total[None], pk.total[None], full_k)).to(torch.int32)

    g = h // hk
    qp = _Gather.apply(q.reshape(-1, d), pq.src, pq.dst, 1).view(rows_q, 1, d)
    # pk.src numbers key rows by query head; the key/value row of query head j is that of head j // g.
    k_src = pk.src // g if g > 1 else pk.src
    kp = _Gather.apply(k.reshape(-1, d), k_src, pk.dst, g).view(rows_k, 1, d)
    vp = _Gather.apply(v.reshape(-1, dv), k_src, pk.dst, g).view(rows_k, 1, dv)
    out = triton_sliding_window_attention_varlen(
        qp, kp, vp, cu_q, cu_k, win, max_seqlen_q=bound_q, max_seqlen_k=bound_k, scale=scale, packed_grid=True)
    return _Gather.apply(out.view(rows_q, dv), pq.dst, pq.src, 1).view(b, nq, h, dv)
