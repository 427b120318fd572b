"""Routing attention's PyTorch implementation: tokens permuted into chunks, attention between chunk pairs.

(The Triton kernel for GPUs is :mod:`seqwin.kernels.routing`; this module runs on any device.)

Both routing modes become attention between fixed-size chunks of a permuted token order:

- non-causal (FlatFormer-style groups): per (batch, head) row, tokens sorted stably by (cluster, position) and
  cut into equal groups of ``group`` slots; each query chunk attends to the key chunk of the same index.
- causal (within-cluster windows): per row, each cluster's run of tokens (sorted by position) is padded to
  whole chunks of ``chunk`` slots. Chunk ``j`` attends to itself under a band mask and to the ``delta`` chunks
  before it *of the same cluster* (``delta = 1 .. m``). Because every cluster starts on a chunk boundary, the
  mask of a (chunk, chunk - delta) pair is the same static band for every pair with that ``delta``: one fused
  call per ``delta`` over all such pairs, no data-dependent masks.

Partial results over disjoint key chunks are merged through their log-sum-exps; the backward of each part only
needs the merged output and log-sum-exp (FlashAttention-2 style). On CPU the parts run in PyTorch's fused
flash kernel (``aten._scaled_dot_product_flash_attention_for_cpu``); elsewhere a plain fp32 math version does
the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from seqwin.attention.lse import additive, merge

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

# Use the fused CPU kernel for CPU tensors (tests switch it off to check the portable math path).
FUSED_CPU = True


@dataclass
class ChunkGroup:
    """Query chunks ``q_idx`` attend key chunks ``k_idx`` (``None``: chunk ``j`` attends chunk ``j``)."""

    q_idx: Tensor | None
    k_idx: Tensor | None
    mask: Tensor | None  # additive, broadcastable to (pairs, 1, chunk, chunk)
    is_causal: bool = False
    empty_rows: Tensor | None = None  # (chunk,) bool: rows the mask leaves without any key


def _attend(q: Tensor, k: Tensor, v: Tensor, g: ChunkGroup, scale: float) -> tuple[Tensor, Tensor]:
    """(n, Q, D) chunks -> (out (n, Q, D) in q's dtype, lse (n, Q) fp32; -inf where a row sees nothing)."""
    if FUSED_CPU and q.device.type == "cpu":
        mask = None if g.mask is None else g.mask.expand(q.shape[0], 1, -1, -1)
        o, lse = _flash(q[:, None], k[:, None], v[:, None], 0.0, g.is_causal, attn_mask=mask, scale=scale)
        o, lse = o[:, 0], lse[:, 0]
    else:
        s = _scores(q, k, g, scale)
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - lse.nan_to_num(neginf=0.0)[..., None])
        o = (p @ v.float()).to(q.dtype)
    if g.empty_rows is not None:
        # The fused kernel reports lse 0 for rows with no visible key; they must weigh nothing in merges.
        lse = lse.masked_fill(g.empty_rows, float("-inf"))
    return o, lse


def _attend_bwd(go, q, k, v, out, lse, g: ChunkGroup, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    if FUSED_CPU and q.device.type == "cpu":
        mask = None if g.mask is None else g.mask.expand(q.shape[0], 1, -1, -1)
        dq, dk, dv = _flash_bwd(
            go[:, None],
            q[:, None],
            k[:, None],
            v[:, None],
            out[:, None],
            lse[:, None],
            0.0,
            g.is_causal,
            attn_mask=mask,
            scale=scale,
        )
        return dq[:, 0], dk[:, 0], dv[:, 0]
    s = _scores(q, k, g, scale)
    p = torch.exp(s - lse[..., None])
    gof = go.float()
    dp = gof @ v.float().transpose(1, 2)
    ds = p * (dp - (gof * out.float()).sum(-1, keepdim=True))
    return ds @ k.float() * scale, ds.transpose(1, 2) @ q.float() * scale, p.transpose(1, 2) @ gof


def _scores(q: Tensor, k: Tensor, g: ChunkGroup, scale: float) -> Tensor:
    s = (q.float() @ k.float().transpose(1, 2)) * scale
    if g.mask is not None:
        s = s + g.mask[:, 0] if g.mask.dim() == 4 else s + g.mask
    if g.is_causal:
        n_q, n_k = s.shape[-2:]
        s = s.masked_fill(torch.ones(n_q, n_k, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return s


class _ChunkAttention(torch.autograd.Function):
    """Attention of query chunks over the union of their groups' key chunks. ``groups[0]`` must pair every
    chunk with a key chunk (``q_idx is None``): it seeds the output, the other groups are merged into it."""

    @staticmethod
    def forward(ctx, qc: Tensor, kc: Tensor, vc: Tensor, groups: list[ChunkGroup], scale: float) -> Tensor:
        first = groups[0]
        assert first.q_idx is None and first.k_idx is None, "the first group pairs every chunk with itself"
        out, lse = _attend(qc, kc, vc, first, scale)
        if len(groups) > 1:
            out = out.float()
            for g in groups[1:]:
                o, l = _attend(
                    qc.index_select(0, g.q_idx),
                    kc.index_select(0, g.k_idx),
                    vc.index_select(0, g.k_idx),
                    g,
                    scale,
                )
                merged, merged_lse = merge(
                    out.index_select(0, g.q_idx), lse.index_select(0, g.q_idx), o.float(), l
                )
                out.index_copy_(0, g.q_idx, merged)
                lse.index_copy_(0, g.q_idx, merged_lse)
            out = out.to(qc.dtype)
        # Rows with no key at all (only filler slots can be such rows) recompute zero probabilities with +inf.
        lse = lse.masked_fill(torch.isneginf(lse), float("inf"))
        ctx.save_for_backward(qc, kc, vc, out, lse)
        ctx.groups, ctx.scale = groups, scale
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        qc, kc, vc, out, lse = ctx.saved_tensors
        go = grad_out.to(qc.dtype).contiguous()
        first, *rest = ctx.groups
        dq, dk, dv = _attend_bwd(go, qc, kc, vc, out, lse, first, ctx.scale)
        assert first.k_idx is None, "the first group pairs every chunk with itself"
        if rest:  # accumulate in fp32: a key chunk gets gradient from up to 1 + len(rest) query chunks
            dq, dk, dv = dq.float(), dk.float(), dv.float()
        for g in rest:
            qi, ki = g.q_idx, g.k_idx
            gq, gk, gv = _attend_bwd(
                go.index_select(0, qi),
                qc.index_select(0, qi),
                kc.index_select(0, ki),
                vc.index_select(0, ki),
                out.index_select(0, qi),
                lse.index_select(0, qi),
                g,
                ctx.scale,
            )
            # Indices are unique within a group: gather-add-copy beats index_add_ (a scatter) by far on CPU.
            dq.index_copy_(0, qi, dq.index_select(0, qi).add_(gq))
            dk.index_copy_(0, ki, dk.index_select(0, ki).add_(gk))
            dv.index_copy_(0, ki, dv.index_select(0, ki).add_(gv))
        return dq.to(qc.dtype), dk.to(kc.dtype), dv.to(vc.dtype), None, None


def chunk_attention(qc: Tensor, kc: Tensor, vc: Tensor, groups: list[ChunkGroup], scale: float) -> Tensor:
    return _ChunkAttention.apply(qc, kc, vc, groups, scale)


# ------------------------------------------------------------------------------------------------------------
# Layouts: where each token goes in the chunked buffers.
#
# Tokens are addressed as rows of ``x.reshape(-1, D)`` for x of shape (b, n, h, D): row ``(bb*n + p)*h + hh``.
# Buffers are filled by one gather. Filler slots (no token) read row 0: their content only has to be finite,
# since no real query ever sees a filler key (masked, or after every real query of its chunk under causality)
# and filler queries' outputs are dropped. Their gradients are exactly zero for the same reasons.


@dataclass
class Layout:
    src: Tensor  # (num_slots,) token row feeding each slot
    slot_of: Tensor  # (b*n*h,) slot of each token row; 0 for tokens without a slot
    filler: Tensor | None  # (num_slots,) bool: slots without a token; None if there are none
    unslotted: Tensor | None  # (b*n*h,) bool: tokens without a slot (padding); None if there are none
    num_slots: int
    chunk: int


class _Permute(torch.autograd.Function):
    """``x.index_select(0, index)`` where ``index`` reads each row of ``x`` at most once, apart from rows
    whose gradient is known to be zero. The backward is then a gather too (``inverse[r]`` = the output row
    that read row ``r``; rows in ``zero`` get no gradient): PyTorch's own backward, an index_add, is far
    slower on CPU."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor, zero: Tensor | None) -> Tensor:
        ctx.save_for_backward(inverse, zero)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        inverse, zero = ctx.saved_tensors
        grad = grad.contiguous().index_select(0, inverse)
        if zero is not None:
            grad = grad.masked_fill_(zero[:, None], 0.0)
        return grad, None, None, None


def gather_slots(x: Tensor, layout: Layout) -> Tensor:
    """Token rows (b*n*h, D) -> chunked buffer (num_slots // chunk, chunk, D)."""
    return _Permute.apply(x, layout.src, layout.slot_of, layout.unslotted).view(-1, layout.chunk, x.shape[-1])


def scatter_tokens(out: Tensor, layout: Layout) -> Tensor:
    """Chunked buffer -> token rows (b*n*h, D); tokens without a slot read slot 0 (mask them afterwards)."""
    return _Permute.apply(out.reshape(-1, out.shape[-1]), layout.slot_of, layout.src, layout.filler)


def sorted_order(ids: Tensor) -> Tensor:
    """Stable sort of each row by cluster id: ties keep position order, padding (largest id) goes last."""
    return torch.sort(ids, dim=1, stable=True).indices


def _token_rows(order: Tensor, h: int) -> Tensor:
    """Positions ``order`` (b*h, k) of layout rows ``r = bb*h + hh`` -> token rows ``(bb*n + p)*h + hh``."""
    rows, _ = order.shape
    n = order.shape[1]
    r = torch.arange(rows, device=order.device)[:, None]
    return ((r // h) * n + order) * h + r % h


def _slot_of(slots: Tensor, order: Tensor, h: int) -> Tensor:
    """Slots of the tokens at positions ``order`` (b*h, n) -> (b*n*h,) slot per token row."""
    out = torch.empty(slots.numel(), dtype=torch.long, device=slots.device)
    return out.index_copy_(0, _token_rows(order, h).reshape(-1), slots.reshape(-1))


def group_layout(ids: Tensor, h: int, group: int, num_groups: int) -> Layout:
    """Non-causal: per layout row (batch, head), tokens in (cluster, position) order fill slots
    ``row*num_groups*group + rank``; the slots past ``n`` in each row are fillers."""
    rows, n = ids.shape
    order = sorted_order(ids)
    per_row = num_groups * group
    src = torch.zeros(rows, per_row, dtype=torch.long, device=ids.device)
    src[:, :n] = _token_rows(order, h)
    slots = torch.arange(rows, device=ids.device)[:, None] * per_row + torch.arange(n, device=ids.device)
    filler = None
    if per_row > n:
        filler = (torch.arange(per_row, device=ids.device) >= n).repeat(rows)
    return Layout(src.reshape(-1), _slot_of(slots, order, h), filler, None, rows * per_row, group)


def group_key_mask(valid_count: Tensor, group: int, num_groups: int) -> Tensor | None:
    """Additive (rows*num_groups, 1, 1, group) mask hiding padding and filler slots of each key group;
    ``None`` when there are none. Groups without any valid slot see all their slots, so no row is left empty
    (those rows are padding queries, whose outputs are dropped)."""
    rows = valid_count.shape[0]
    rank = torch.arange(num_groups * group, device=valid_count.device).view(num_groups, group)
    visible = rank[None] < valid_count[:, None, None]  # (rows, groups, group)
    if bool(visible.all()):
        return None
    visible |= ~visible.any(-1, keepdim=True)
    return additive(visible).view(rows * num_groups, 1, 1, group)


@dataclass
class ClusterLayout(Layout):
    cluster_first_chunk: Tensor | None = (
        None  # (num_chunks,): first chunk of the cluster each chunk belongs to
    )
    max_chunks: int = 0  # longest cluster run, in chunks


def cluster_layout(ids: Tensor, h: int, num_clusters: int, chunk: int) -> ClusterLayout:
    """Causal: each cluster's tokens (in position order) fill whole chunks of their own; padding (id ==
    num_clusters) gets no slot."""
    rows, n = ids.shape
    dev = ids.device
    c = num_clusters
    counts = torch.zeros(rows, c + 1, dtype=torch.long, device=dev).scatter_add_(1, ids, torch.ones_like(ids))
    nchunks = (counts[:, :c] + chunk - 1) // chunk  # (rows, c)
    flat_chunks = nchunks.reshape(-1)
    chunk_base = (torch.cumsum(flat_chunks, 0) - flat_chunks).view(rows, c)
    num_chunks = int(flat_chunks.sum())
    num_slots = num_chunks * chunk

    order = sorted_order(ids)
    sid = ids.gather(1, order)
    first = torch.cumsum(counts, 1) - counts  # first sorted rank of each cluster
    rank = torch.arange(n, device=dev)[None, :] - first.gather(1, sid)
    real = sid < c
    slot = chunk_base.gather(1, sid.clamp(max=c - 1)) * chunk + rank
    slot = torch.where(real, slot, torch.full_like(slot, num_slots))  # padding -> a dummy slot past the end
    src = torch.zeros(num_slots + 1, dtype=torch.long, device=dev)
    src[slot.reshape(-1)] = _token_rows(order, h).reshape(-1)
    is_filler = torch.ones(num_slots + 1, dtype=torch.bool, device=dev)
    is_filler[slot.reshape(-1)] = False
    slot_of = _slot_of(torch.where(real, slot, 0), order, h)
    unslotted = None
    if not bool(real.all()):
        unslotted = torch.ones(rows * n, dtype=torch.bool, device=dev)
        unslotted.index_copy_(0, _token_rows(order, h).reshape(-1), ~real.reshape(-1))
    filler = is_filler[:num_slots]
    first_chunk = torch.repeat_interleave(chunk_base.reshape(-1), flat_chunks, output_size=num_chunks)
    max_chunks = int(flat_chunks.max()) if flat_chunks.numel() else 0
    return ClusterLayout(
        src[:num_slots],
        slot_of,
        filler if bool(filler.any()) else None,
        unslotted,
        num_slots,
        chunk,
        first_chunk,
        max_chunks,
    )


def causal_groups(layout: ClusterLayout, window: int | None, device: torch.device) -> list[ChunkGroup]:
    """Chunk pairs for within-cluster causal attention where a query sees the last ``window`` keys of its
    cluster, itself included (``None``: all earlier keys of its cluster).

    Slot ``t`` of chunk ``j`` sees slot ``u`` of chunk ``j - delta`` iff ``0 <= delta*Q + t - u <= window -
    1``; the condition depends only on ``delta``, so each ``delta`` is one call with one static mask.
    """
    q = layout.chunk
    w = window if window is not None else layout.max_chunks * q + q
    t = torch.arange(q, device=device)
    groups = []
    num_chunks = layout.num_slots // q
    chunk_ids = torch.arange(num_chunks, device=device)
    max_delta = min(layout.max_chunks - 1, (w - 1 + q - 1) // q)
    for delta in range(max_delta + 1):
        dist = delta * q + t[:, None] - t[None, :]
        visible = (dist >= 0) & (dist <= w - 1)
        if delta == 0:
            q_idx = k_idx = None
        else:
            sel = (chunk_ids - delta >= layout.cluster_first_chunk).nonzero().flatten()
            if sel.numel() == 0:
                continue
            q_idx, k_idx = sel, sel - delta
        if bool(visible.all()):
            mask, causal = None, False
        elif delta == 0 and w >= q:
            mask, causal = None, True  # the fused kernel's own causal path skips the masked half
        else:
            mask, causal = additive(visible)[None, None], False
        empty = ~visible.any(-1)
        groups.append(ChunkGroup(q_idx, k_idx, mask, causal, empty if bool(empty.any()) else None))
    return groups
