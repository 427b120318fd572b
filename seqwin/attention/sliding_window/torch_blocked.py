"""Blocked sliding-window attention in plain PyTorch (any device, autograd, attention dropout).

Same geometry as the fused CPU path (``band_plan``): each query chunk sees a strided span of keys, so scores are
``(batch, chunks, heads, chunk, span)`` -- O(N * (left + right)) memory, never N x N. Autograd differentiates it;
this is the path for attention dropout in training and for devices without a fused kernel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqwin.attention.reference import Window, window_mask
from seqwin.attention.sliding_window.band_plan import make_plan


def blocked_attention(
    q: Tensor, k: Tensor, v: Tensor, window: Window, *, q_lens: list[int], k_lens: list[int],
    num_sinks: int = 0, dilation: int = 1, scale: float | None = None, dropout_p: float = 0.0,
    chunk: int | None = None,
) -> Tensor:
    b, nq, h, d = q.shape
    nk, hk = k.shape[1], k.shape[2]
    device = q.device
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    plan = make_plan(b, nq, nk, window, num_sinks=num_sinks, dilation=dilation, chunk=chunk)
    c, span, nc = plan.chunk, plan.span, plan.num_chunks

    def pad_seq(x: Tensor, front: int, back: int) -> Tensor:
        return torch.nn.functional.pad(x, (0, 0, 0, 0, front, back))

    # (b, chunks, kv heads, query heads per kv head, chunk, d)
    qc = pad_seq(q, 0, nc * c - nq).unflatten(1, (nc, c)).unflatten(3, (hk, h // hk)).permute(0, 1, 3, 4, 2, 5).float()

    def spans(x: Tensor) -> Tensor:
        xp = pad_seq(x, plan.pad_front, plan.pad_back).float()
        first = plan.pad_front + plan.span_start(0)
        return xp.as_strided((b, nc, span, hk, x.shape[-1]), (xp.stride(0), c * xp.stride(1), *xp.stride()[1:]),
                             xp.storage_offset() + first * xp.stride(1))

    ks, vs = spans(k), spans(v)
    q_pos = torch.arange(nc * c, device=device).view(nc, c) + plan.offset
    k_pos = plan.span_start(torch.arange(nc, device=device))[:, None] + torch.arange(span, device=device)
    k_lens_t = torch.tensor(k_lens, device=device)
    q_lens_t = torch.tensor(q_lens, device=device)
    # (b, n, c, span): window, key validity (real, not a sink, inside the row), query validity.
    mask = window_mask(q_pos, k_pos, plan.window, dilation=dilation)[None]
    mask = mask & ((k_pos >= num_sinks) & (k_pos < k_lens_t[:, None, None]))[:, :, None, :]
    mask = mask & (q_pos < nq + plan.offset)[None, :, :, None]
    mask = mask & ((q_pos - plan.offset)[None] < q_lens_t[:, None, None])[..., None]

    scores = torch.einsum("bnxgcd,bnlxd->bnxgcl", qc, ks) * scale
    scores = scores.masked_fill(~mask[:, :, None, None], float("-inf"))
    if num_sinks > 0:
        s = min(num_sinks, nk)
        sink_k, sink_v = k[:, :s].float(), v[:, :s].float()
        sink_pos = torch.arange(s, device=device)
        sink_mask = window_mask(q_pos, sink_pos, (-1, plan.right))[None] & (sink_pos < k_lens_t[:, None, None, None])
        sink_mask = sink_mask & ((q_pos - plan.offset)[None] < q_lens_t[:, None, None])[..., None]
        sink_scores = torch.einsum("bnxgcd,blxd->bnxgcl", qc, sink_k) * scale
        sink_scores = sink_scores.masked_fill(~sink_mask[:, :, None, None], float("-inf"))
        scores = torch.cat([scores, sink_scores], dim=-1)
    # Rows with no visible key: softmax of all -inf is NaN; give them zeros instead.
    visible = torch.isfinite(scores).any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~visible, 0.0), dim=-1) * visible
    if dropout_p > 0:
        probs = torch.nn.functional.dropout(probs, dropout_p)
    out = torch.einsum("bnxgcl,bnlxd->bnxgcd", probs[..., :span], vs)
    if num_sinks > 0:
        out = out + torch.einsum("bnxgcl,blxd->bnxgcd", probs[..., span:], sink_v)
    out = out.permute(0, 1, 4, 2, 3, 5).flatten(3, 4).flatten(1, 2)[:, :nq]  # (b, chunks * chunk, heads, d)
    return out.to(q.dtype)
