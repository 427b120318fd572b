"""Routing attention (Routing Transformer): tokens attend within online k-means clusters, every token routed.

Routing (``KMeansRouter``): queries and keys are L2-normalized and assigned per head to their nearest
centroid.

Non-causal — balanced groups (FlatFormer style). Per (batch, head), queries are sorted stably by (cluster,
position) and cut into equal groups of ``group_size`` (default ``ceil(n / num_clusters)``); keys likewise.
Query group ``g`` attends key group ``g``. Every group is a dense block, every token belongs to exactly one
group and every valid query's group holds valid keys, so no token is dropped (unlike top-k-per-cluster
routing). With ``shared_qk`` queries and keys share one routing (by ``q``) and one grouping.

Causal — within-cluster windows, strictly causal. Each *token* gets one cluster from its own vector only
(``q`` with ``shared_qk``, else its key ``k``; its query goes with it), so membership never depends on other
tokens. Query ``i`` sees the most recent ``window`` keys of its cluster at positions ``<= i``, itself included
(``window=None``: all of them). In (cluster, position) order that is a sliding window ``(window - 1, 0)``
restricted to the cluster's run. The token always sees itself, so no output is ever zero, and a token's output
depends only on itself and earlier tokens. With ``q_len < k_len`` (decoding) queries are the last ``q_len``
tokens (bottom-right aligned) and the result equals the matching rows of the full forward.

Cost: routing O(n·c·d), attention O(n·group·d) (non-causal) or O(n·min(window, cluster)·d) (causal); with
c ≈ √n clusters that is O(n^1.5·d). Nothing n×n is built except by the reference and by decoding
(``q_len < k_len``, q_len × k_len).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seqwin.attention.reference import masked_attention_reference
from seqwin.attention.routing.kmeans import KMeansRouter, RouterOutput
from seqwin.attention.routing.torch_chunked import (
    ChunkGroup,
    causal_groups,
    chunk_attention,
    cluster_layout,
    gather_slots,
    group_key_mask,
    group_layout,
    scatter_tokens,
    sorted_order,
)
from seqwin.kernels import triton_available

__all__ = ["KMeansRouter", "RouterOutput", "routing_attention", "routing_attention_reference", "routing_mask"]


def _valid(seq_lens: Tensor | Sequence[int] | None, b: int, n: int, device: torch.device) -> Tensor:
    """(b, n) bool validity of positions. Lengths on a GPU are checked on the GPU (an asynchronous assert), so
    that a call never waits for the device; host lengths are checked on the host."""
    if seq_lens is None:
        return torch.ones(b, n, dtype=torch.bool, device=device)
    lens = torch.as_tensor(seq_lens, dtype=torch.long)  # a device tensor stays where it is
    if lens.device.type != "cpu" and lens.shape == (b,):
        torch._assert_async(((lens >= 0) & (lens <= n)).all(), f"seq_lens must hold lengths in [0, {n}]")
    elif lens.shape != (b,) or not all(0 <= x <= n for x in lens.tolist()):
        raise ValueError(f"seq_lens must hold {b} lengths in [0, {n}], got {lens.tolist()}")
    return torch.arange(n, device=device)[None, :] < lens.to(device)[:, None]


def _triton_path(q: Tensor) -> bool:
    """Whether ``routing_attention`` runs the fused Triton kernels (CUDA tensors and Triton installed)."""
    return q.is_cuda and triton_available()


def _check(q: Tensor, k: Tensor, v: Tensor, router: KMeansRouter) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (batch, seq, heads, head_dim)")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[2] % k.shape[2] != 0:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"q, k, v must share one float dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if router.num_heads != q.shape[2] or router.head_dim != q.shape[3]:
        raise ValueError(
            f"router has {router.num_heads} heads of dim {router.head_dim}, q is {tuple(q.shape)}"
        )


def default_group_size(seq_len: int, num_clusters: int) -> int:
    return max(1, math.ceil(seq_len / num_clusters))


def default_chunk(seq_len: int, num_clusters: int) -> int:
    """Causal chunk: about half a mean cluster (a power of two in [16, 64]), so per-cluster padding wastes
    little while blocks stay big enough for efficient matmuls."""
    mean = max(1, seq_len // (2 * num_clusters))
    return min(64, max(16, 1 << (mean - 1).bit_length()))


def routing_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    router: KMeansRouter,
    *,
    causal: bool = False,
    seq_lens: Tensor | Sequence[int] | None = None,
    shared_qk: bool = False,
    window: int | None = None,
    group_size: int | None = None,
    scale: float | None = None,
    chunk: int | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Routing attention; layout ``(batch, seq, heads, head_dim)``; see the module docstring for semantics.

    ``router`` has one centroid set per query head (k/v may have fewer heads: grouped-query). ``window``
    bounds the causal look-back within a cluster; ``group_size`` is the non-causal group length. Returns
    ``(out, aux)`` with ``aux["loss"]`` (commitment loss to add to the training loss),
    ``aux["dropped_fraction"]`` (valid queries that saw no key: always 0; a 0-dim tensor, so that nothing waits
    for the device until it is read), ``aux["q_ids"]``/``aux["k_ids"]`` (cluster ids, padding =
    ``num_clusters``) and the resolved ``group_size``/``window`` — what :func:`routing_attention_reference`
    needs.

    On CUDA (the Triton path) the call never syncs with the host once the router is initialized, and forward
    and backward can be captured in a CUDA graph; pass ``seq_lens`` as a device tensor for that.
    """
    _check(q, k, v, router)
    b, nq, h, d = q.shape
    nk, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    if shared_qk and k.shape != q.shape:
        raise ValueError("shared_qk needs q and k of one shape (the same projection)")
    if nq != nk and not causal:
        raise ValueError("non-causal routing attention needs q_len == k_len")
    if nq > nk:
        raise ValueError(f"q_len ({nq}) must not exceed k_len ({nk})")
    if nq != nk and (shared_qk or seq_lens is not None):
        raise ValueError("q_len < k_len (decoding) routes tokens by their keys and takes no seq_lens")
    scale = d**-0.5 if scale is None else scale
    valid = _valid(seq_lens, b, nk, q.device)
    k_routed = k.repeat_interleave(h // hk, dim=2) if hk != h else k  # centroids are per query head

    c = router.num_clusters
    group = None
    if causal:
        routed: RouterOutput = router(q if shared_qk else k_routed, valid=valid)
        k_ids = routed.ids[0]
        q_ids = k_ids[..., nk - nq :]
    else:
        routed = router(q, valid=valid) if shared_qk else router(q, k_routed, valid=valid)
        q_ids, k_ids = routed.ids[0], routed.ids[-1]
        group = group_size or default_group_size(nk, c)

    if _triton_path(q):  # fused Triton path: permute by cluster, block-diagonal varlen kernels
        from seqwin.kernels.routing import triton_routing_attention  # noqa: PLC0415 - Triton only on GPU

        out = triton_routing_attention(q, k, v, q_ids, k_ids, causal=causal, num_clusters=c, window=window,
                                       group_size=group, scale=scale)
        dropped = torch.zeros((), dtype=torch.long, device=q.device)  # every valid query sees a key
    elif nq != nk:  # decoding: a few queries against the cache, masked dense rows
        mask = routing_mask(q_ids, k_ids, causal=True, num_clusters=c, window=window)
        out = masked_attention_reference(q, k, v, mask, scale=scale)
        dropped = (~mask.any(-1)).sum()
    else:
        width = max(d, dv)  # the fused kernel wants one head dim: zero-pad the narrower side
        qp, kp, vp = (F.pad(x, (0, width - x.shape[-1])) if x.shape[-1] != width else x for x in (q, k, v))
        if hk != h:  # expand key heads first so that every gather below is a permutation (cheap backward)
            kp, vp = kp.repeat_interleave(h // hk, dim=2), vp.repeat_interleave(h // hk, dim=2)
        if causal:
            out, dropped = _causal(qp, kp, vp, q_ids, c, window, scale, chunk)
        else:
            out, dropped = _grouped(qp, kp, vp, q_ids, k_ids, valid, group, scale)
        out = out[..., :dv]
    q_valid = valid[:, nk - nq :].sum() * h
    aux = {
        "loss": routed.loss,
        "dropped_fraction": dropped / q_valid.clamp_min(1),
        "q_ids": q_ids,
        "k_ids": k_ids,
        "group_size": group,
        "window": window,
    }
    return out, aux


def _grouped(q, k, v, q_ids, k_ids, valid, group, scale) -> tuple[Tensor, Tensor]:
    b, n, h, d = q.shape
    rows = b * h
    num_groups = math.ceil(n / group)
    q_lay = group_layout(q_ids.reshape(rows, n), h, group, num_groups)
    k_lay = q_lay if k_ids is q_ids else group_layout(k_ids.reshape(rows, n), h, group, num_groups)
    qc, kc, vc = (gather_slots(x.reshape(-1, d), lay) for x, lay in ((q, q_lay), (k, k_lay), (v, k_lay)))
    valid_count = valid.sum(1).repeat_interleave(h)  # valid tokens per row; they fill the first slots
    mask = group_key_mask(valid_count, group, num_groups)
    oc = chunk_attention(qc, kc, vc, [ChunkGroup(None, None, mask)], scale)
    out = scatter_tokens(oc, q_lay).view(b, n, h, d)
    if not bool(valid.all()):
        out = out.masked_fill(~valid[:, :, None, None], 0.0)
    # A valid query of group g has rank < valid_count, so key slot g*group is valid too: nothing is dropped.
    q_group = (q_lay.slot_of.view(b, n, h) % (num_groups * group)) // group
    dropped = ((q_group * group >= valid.sum(1)[:, None, None]) & valid[:, :, None]).sum()
    return out, dropped


def _causal(q, k, v, tok_ids, num_clusters, window, scale, chunk) -> tuple[Tensor, Tensor]:
    b, n, h, d = q.shape
    chunk = chunk or default_chunk(n, num_clusters)
    lay = cluster_layout(tok_ids.reshape(b * h, n), h, num_clusters, chunk)
    if lay.num_slots == 0:
        return q.new_zeros(b, n, h, d), torch.zeros((), dtype=torch.long)
    qc, kc, vc = (gather_slots(x.reshape(-1, d), lay) for x in (q, k, v))
    oc = chunk_attention(qc, kc, vc, causal_groups(lay, window, q.device), scale)
    out = scatter_tokens(oc, lay)
    if lay.unslotted is not None:
        out = out.masked_fill(lay.unslotted[:, None], 0.0)
    # Every routed token has a slot and sees itself (the diagonal of its own chunk): nothing is dropped.
    routed = tok_ids.transpose(1, 2).reshape(-1) < num_clusters
    unslotted = lay.unslotted if lay.unslotted is not None else torch.zeros_like(routed)
    return out.view(b, n, h, d), (unslotted & routed).sum()


def routing_mask(
    q_ids: Tensor,
    k_ids: Tensor,
    *,
    causal: bool,
    num_clusters: int,
    window: int | None = None,
    group_size: int | None = None,
) -> Tensor:
    """The dense ``(batch, heads, q_len, k_len)`` visibility of routing attention, from cluster ids
    (``aux["q_ids"]``, ``aux["k_ids"]``; padding carries id ``num_clusters``).

    Non-causal: query ``i`` sees key ``j`` iff both are valid and ``rank_q(i) // group_size ==
    rank_k(j) // group_size``, ranks taken in the stable (cluster, position) order. Causal: ``j`` is valid,
    has the cluster of query ``i``'s token ``t = i + k_len - q_len``, ``j <= t``, and at most ``window`` keys
    of that cluster lie in ``[j, t]``.
    """
    nq, nk = q_ids.shape[-1], k_ids.shape[-1]
    q_ok = q_ids < num_clusters
    k_ok = k_ids < num_clusters
    if not causal:
        if group_size is None:
            raise ValueError("non-causal routing_mask needs group_size")

        def groups(ids: Tensor) -> Tensor:
            rows = ids.reshape(-1, ids.shape[-1])
            pos = torch.arange(rows.shape[1], device=rows.device).expand_as(rows)
            rank = torch.empty_like(rows).scatter_(1, sorted_order(rows), pos)
            return (rank // group_size).view_as(ids)

        same = groups(q_ids)[..., :, None] == groups(k_ids)[..., None, :]
        return same & q_ok[..., :, None] & k_ok[..., None, :]
    t = torch.arange(nq, device=q_ids.device) + (nk - nq)
    j = torch.arange(nk, device=q_ids.device)
    seen = (q_ids[..., :, None] == k_ids[..., None, :]) & (j[None, :] <= t[:, None]) & k_ok[..., None, :]
    seen &= q_ok[..., :, None]
    if window is not None:
        # keys of the cluster in [j, t]: a reverse cumulative count along j (seen already implies j <= t)
        count = seen.flip(-1).cumsum(-1).flip(-1)
        seen &= count <= window
    return seen


def routing_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    aux: dict[str, Any],
    *,
    causal: bool,
    num_clusters: int,
    scale: float | None = None,
) -> Tensor:
    """Dense reference: the same routing decisions (``aux`` from :func:`routing_attention`) applied as a mask
    to a plain fp32 masked softmax."""
    mask = routing_mask(
        aux["q_ids"],
        aux["k_ids"],
        causal=causal,
        window=aux["window"],
        group_size=aux["group_size"],
        num_clusters=num_clusters,
    )
    return masked_attention_reference(q, k, v, mask, scale=scale)
