"""CPU sliding-window attention over whole rows: the paths for rows short enough that banding does not pay.

``cpu_band`` cuts long rows into query chunks and their key spans. When a row is not much longer than one span,
that costs more than attending to the whole row: each chunk is an edge chunk with a gathered span and a mask of
its own, and the span is padded past both ends of the sequence. Two whole-row paths cover those cases:

- ``DenseRows``: the window covers every key (optionally causal); one unmasked fused call per row, sliced to its
  length, so no mask is built at all;
- ``MaskedRows``: one fused call over the whole batch under the exact ``(B, q_len, k_len)`` window mask (padding,
  sinks and dilation included). Memory is O(B * q_len * k_len), so the caller uses it for short rows only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqwin.attention.lse import additive
from seqwin.attention.reference import Window, window_mask

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class DenseRows(torch.autograd.Function):
    """Windows that cover every key (optionally causal): one unmasked fused call per row."""

    @staticmethod
    def forward(ctx, q, k, v, q_lens: list[int], k_lens: list[int], causal: bool, scale: float):
        out = torch.zeros_like(q)
        lses = []
        for row, (ql, kl) in enumerate(zip(q_lens, k_lens, strict=True)):
            if ql == 0 or kl == 0:
                lses.append(None)
                continue
            o, l = _flash(q[row : row + 1, :ql].transpose(1, 2), k[row : row + 1, :kl].transpose(1, 2),
                          v[row : row + 1, :kl].transpose(1, 2), 0.0, causal, scale=scale)
            out[row, :ql] = o[0].transpose(0, 1)
            lses.append(l)
        ctx.save_for_backward(q, k, v, out)
        ctx.lses, ctx.q_lens, ctx.k_lens, ctx.causal, ctx.scale = lses, q_lens, k_lens, causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out = ctx.saved_tensors
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for row, (ql, kl, l) in enumerate(zip(ctx.q_lens, ctx.k_lens, ctx.lses, strict=True)):
            if l is None:
                continue
            pairs = ((grad_out, ql), (q, ql), (k, kl), (v, kl), (out, ql))
            t = [x[row : row + 1, :n].transpose(1, 2) for x, n in pairs]
            gq, gk, gv = _flash_bwd(*t, l, 0.0, ctx.causal, scale=ctx.scale)
            dq[row, :ql] = gq[0].transpose(0, 1)
            dk[row, :kl] = gk[0].transpose(0, 1)
            dv[row, :kl] = gv[0].transpose(0, 1)
        return dq, dk, dv, None, None, None, None


def rows_mask(q_len: int, k_len: int, window: Window, q_lens: list[int], k_lens: list[int], *, num_sinks: int,
              dilation: int, device: torch.device) -> Tensor:
    """Boolean ``(B, q_len, k_len)`` visibility of every query of every row (bottom-right aligned)."""
    q_pos = torch.arange(q_len, device=device) + (k_len - q_len)
    k_pos = torch.arange(k_len, device=device)
    mask = window_mask(q_pos, k_pos, window, num_sinks=num_sinks, dilation=dilation)
    q_ok = torch.arange(q_len, device=device) < torch.tensor(q_lens, device=device)[:, None]
    k_ok = k_pos < torch.tensor(k_lens, device=device)[:, None]
    return mask[None] & q_ok[:, :, None] & k_ok[:, None, :]


class MaskedRows(torch.autograd.Function):
    """Any window over short rows: one fused call for the whole batch under the exact mask."""

    @staticmethod
    def forward(ctx, q, k, v, mask: Tensor, scale: float):
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, N, D) views, as the kernel wants
        am = additive(mask).unsqueeze(1)
        out, lse = _flash(q, k, v, 0.0, False, attn_mask=am, scale=scale)
        # Queries that see no key (padding, or a window that misses every key) output zeros; +inf in their
        # log-sum-exp makes their recomputed probabilities, and so their gradients, exactly zero. torch 2.9.1's
        # kernel already returns zeros and a finite log-sum-exp there; this pins the result instead of relying on
        # an undocumented detail of the kernel (the band path does the same).
        empty = ~mask.any(-1)[:, None, :]
        out = out.masked_fill_(empty[..., None], 0.0)
        lse = lse.masked_fill(empty, float("inf"))
        ctx.save_for_backward(q, k, v, out, lse, am)
        ctx.scale = scale
        return out.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, am = ctx.saved_tensors
        dq, dk, dv = _flash_bwd(grad_out.transpose(1, 2).to(q.dtype), q, k, v, out, lse, 0.0, False,
                                attn_mask=am, scale=ctx.scale)
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2), None, None
