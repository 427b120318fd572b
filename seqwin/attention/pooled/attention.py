"""Pooled-global attention: each query sees the means of blocks of ``pool_size`` keys, optionally plus a window.

Keys and values are average-pooled over blocks ``[b * P, (b + 1) * P)`` of key positions (``P = pool_size``), each
block over its valid keys only (positions ``< k_seq_len`` of its row); a block with no valid key is never attended.
A bidirectional query sees every block. A causal query at key position ``t`` (bottom-right alignment when queries
are fewer than keys, as everywhere in seqwin) sees the blocks that end before its own block starts, ``b < t // P``:
its own, partial block is never pooled, so no output depends on a later token. With ``window=(left, right)`` the
query also sees the raw keys of that window, in the same softmax (the global heads of HiLo / GC ViT-style
local+global layers, which keep a local view). Padded queries and queries that see nothing output zeros.

Cost: ``N * N / P`` scores for the pooled keys plus the window's. On CPU the pooled keys go through PyTorch's fused
flash kernel and the window through the banded path of :func:`~seqwin.attention.sliding_window_attention`, merged
by their log-sum-exps (:mod:`seqwin.attention.pooled.cpu_fused`); elsewhere a blocked PyTorch path that autograd
differentiates. :func:`pooled_attention_reference` is the dense definition both are tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from seqwin.attention.reference import (
    Window,
    check_window,
    masked_attention_reference,
    sliding_window_mask,
    window_mask,
)
from seqwin.attention.sliding_window.attention import _check, _lens
from seqwin.attention.sliding_window.band_plan import make_plan

BACKENDS = ("auto", "cpu", "blocked", "reference")


def pool_blocks(k: Tensor, v: Tensor, pool_size: int, k_lens: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Block means ``(batch, ceil(k_len / P), kv_heads, D)`` of keys and values in fp32, each over the block's valid
    keys, and ``valid (batch, blocks)``: the block holds at least one valid key (else its means are zero)."""
    b, n, hk, _ = k.shape
    nb = -(-n // pool_size)
    pad = nb * pool_size - n
    keep = torch.arange(nb * pool_size, device=k.device)[None, :] < torch.as_tensor(k_lens, device=k.device)[:, None]

    def means(x: Tensor) -> Tensor:
        x = torch.nn.functional.pad(x.float(), (0, 0, 0, 0, 0, pad))
        x = torch.where(keep[:, :, None, None], x, 0.0)  # where, not a product: padded keys may hold inf/NaN
        return x.view(b, nb, pool_size, hk, x.shape[-1]).sum(2) / counts.clamp_min(1)[:, :, None, None]

    counts = keep.view(b, nb, pool_size).sum(-1)
    return means(k), means(v), counts > 0


def block_visibility(nq: int, nk: int, pool_size: int, valid: Tensor, q_lens: Sequence[int], *,
                     causal: bool) -> Tensor:
    """``(batch, nq, blocks)``: query ``i`` sees pooled block ``b`` (``valid`` from :func:`pool_blocks`)."""
    device = valid.device
    vis = valid[:, None, :]
    if causal:
        t = torch.arange(nq, device=device) + (nk - nq)
        vis = vis & (torch.arange(valid.shape[1], device=device)[None, :] < (t // pool_size)[:, None])[None]
    q_ok = torch.arange(nq, device=device)[None, :] < torch.as_tensor(q_lens, device=device)[:, None]
    return vis & q_ok[:, :, None]


def _check_args(pool_size: int, causal: bool, window: Window | None) -> Window | None:
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    if window is None:
        return None
    window = check_window(window)
    if causal and window[1] != 0:
        raise ValueError(f"causal pooled attention needs a window with right == 0, got {window}")
    return window


def pooled_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, *, pool_size: int, causal: bool = False, window: Window | None = None,
    seq_lens: Tensor | Sequence[int] | None = None, k_seq_lens: Tensor | Sequence[int] | None = None,
    scale: float | None = None,
) -> Tensor:
    """Dense definition of :func:`pooled_attention`: one masked fp32 softmax over the raw keys (window mask) and the
    pooled blocks (:func:`block_visibility`) side by side."""
    window = _check_args(pool_size, causal, window)
    b, nq, _, _ = q.shape
    nk = k.shape[1]
    q_lens = _lens(seq_lens, b, nq, "seq_lens")
    k_lens = _lens(k_seq_lens if k_seq_lens is not None else seq_lens, b, nk, "k_seq_lens")
    kp, vp, valid = pool_blocks(k, v, pool_size, k_lens)
    pooled = block_visibility(nq, nk, pool_size, valid, q_lens, causal=causal)[:, None]
    if window is None:
        raw = torch.zeros(b, 1, nq, nk, dtype=torch.bool, device=q.device)
    else:
        raw = sliding_window_mask(b, nq, nk, window, seq_lens=torch.tensor(q_lens), k_seq_lens=torch.tensor(k_lens),
                                  device=q.device)
    return masked_attention_reference(q, torch.cat([k.float(), kp], 1), torch.cat([v.float(), vp], 1),
                                      torch.cat([raw, pooled], -1), scale=scale)


def pooled_attention(
    q: Tensor, k: Tensor, v: Tensor, *, pool_size: int, causal: bool = False, window: Window | None = None,
    seq_lens: Tensor | Sequence[int] | None = None, k_seq_lens: Tensor | Sequence[int] | None = None,
    scale: float | None = None, backend: str = "auto",
) -> Tensor:
    """Pooled-global attention (see the module docstring); layout ``(batch, seq, heads, head_dim)``, output shaped
    like ``q``. ``window``: also attend to the raw keys of this ``(left, right)`` window (``right`` must be 0 if
    ``causal``). ``seq_lens`` pads queries (and keys unless ``k_seq_lens`` is given); k/v may have fewer heads than
    q (grouped-query). ``backend``: ``auto`` (``cpu`` on CPU tensors, else ``blocked``), ``cpu``, ``blocked``,
    ``reference``."""
    _check(q, k, v)
    window = _check_args(pool_size, causal, window)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "cpu" if q.device.type == "cpu" and v.shape[-1] == q.shape[-1] else "blocked"
    if backend == "cpu" and (q.device.type != "cpu" or v.shape[-1] != q.shape[-1]):
        raise ValueError("backend='cpu' needs CPU tensors and one head dim for q, k and v")
    b, nq, _, d = q.shape
    nk = k.shape[1]
    q_lens = _lens(seq_lens, b, nq, "seq_lens")
    k_lens = _lens(k_seq_lens if k_seq_lens is not None else seq_lens, b, nk, "k_seq_lens")
    if backend == "reference":
        return pooled_attention_reference(q, k, v, pool_size=pool_size, causal=causal, window=window,
                                          seq_lens=q_lens, k_seq_lens=k_lens, scale=scale)
    if nq == 0 or nk == 0:
        return q.new_zeros(q.shape[:-1] + (v.shape[-1],))
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    kp, vp, valid = pool_blocks(k, v, pool_size, k_lens)
    vis = block_visibility(nq, nk, pool_size, valid, q_lens, causal=causal)
    if backend == "cpu":
        from seqwin.attention.pooled.cpu_fused import fused_pooled_attention  # noqa: PLC0415

        plan = None if window is None else make_plan(b, nq, nk, window)
        return fused_pooled_attention(q, k, v, kp.to(q.dtype), vp.to(q.dtype), vis, plan, q_lens, k_lens, scale)
    return _blocked(q, k, v, kp, vp, vis, window, q_lens, k_lens, scale)


def _blocked(q: Tensor, k: Tensor, v: Tensor, kp: Tensor, vp: Tensor, vis: Tensor, window: Window | None,
             q_lens: list[int], k_lens: list[int], scale: float) -> Tensor:
    """Any device, autograd: query chunks score their window's key span (the banded geometry of ``band_plan``) and
    every pooled block in one softmax. Memory O(N * (span + N / P)), never N x N."""
    b, nq, h, d = q.shape
    nk, hk = k.shape[1], k.shape[2]
    device = q.device
    plan = None if window is None else make_plan(b, nq, nk, window)
    c = plan.chunk if plan is not None else nq
    nc = -(-nq // c)

    def chunked(x: Tensor) -> Tensor:  # (b, nq, ...) -> (b, nc, c, ...), zero-padded (bool masks too)
        out = x.new_zeros((b, nc * c, *x.shape[2:]))
        out[:, :nq] = x
        return out.unflatten(1, (nc, c))

    # (b, chunks, kv heads, query heads per kv head, chunk, d)
    qc = chunked(q.float()).unflatten(3, (hk, h // hk)).permute(0, 1, 3, 4, 2, 5)
    scores = [torch.einsum("bnxgcd,blxd->bnxgcl", qc, kp) * scale]
    scores[0] = scores[0].masked_fill(~chunked(vis)[:, :, None, None], float("-inf"))
    if plan is not None:
        def spans(x: Tensor) -> Tensor:
            xp = torch.nn.functional.pad(x.float(), (0, 0, 0, 0, plan.pad_front, plan.pad_back))
            return xp.as_strided((b, nc, plan.span, hk, x.shape[-1]), (xp.stride(0), c * xp.stride(1),
                                 *xp.stride()[1:]), xp.storage_offset() + (plan.pad_front + plan.span_start(0))
                                 * xp.stride(1))

        q_pos = torch.arange(nc * c, device=device).view(nc, c) + plan.offset
        k_pos = plan.span_start(torch.arange(nc, device=device))[:, None] + torch.arange(plan.span, device=device)
        mask = window_mask(q_pos, k_pos, plan.window)[None]
        mask = mask & ((k_pos >= 0) & (k_pos < torch.tensor(k_lens, device=device)[:, None, None]))[:, :, None, :]
        q_ok = (q_pos - plan.offset)[None] < torch.tensor(q_lens, device=device)[:, None, None]
        mask = mask & q_ok[..., None]
        raw = torch.einsum("bnxgcd,bnlxd->bnxgcl", qc, spans(k)) * scale
        scores.append(raw.masked_fill(~mask[:, :, None, None], float("-inf")))
    s = torch.cat(scores, dim=-1)
    visible = torch.isfinite(s).any(-1, keepdim=True)  # rows that see nothing give zeros, not NaN
    probs = torch.softmax(s.masked_fill(~visible, 0.0), dim=-1) * visible
    nb = kp.shape[1]
    out = torch.einsum("bnxgcl,blxd->bnxgcd", probs[..., :nb], vp)
    if plan is not None:
        out = out + torch.einsum("bnxgcl,bnlxd->bnxgcd", probs[..., nb:], spans(v))
    out = out.permute(0, 1, 4, 2, 3, 5).flatten(3, 4).flatten(1, 2)[:, :nq]
    return out.to(q.dtype)
