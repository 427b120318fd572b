"""Fused CPU path of pooled attention: PyTorch's flash kernel over the pooled blocks, merged with the banded window.

The pooled part is one dense attention of every query over the ``N / P`` block means, under the block-visibility
mask (run in query slabs so the mask stays small). The window part is the banded path of the sliding-window
attention (:func:`~seqwin.attention.sliding_window.cpu_band.band_forward`). Both return log-sum-exps, so they merge
exactly; the fused backwards recompute probabilities from the *merged* output and log-sum-exp alone, so each part's
backward is exact without the other's intermediates. Gradients reach the block means, and autograd takes them on
through the pooling to the keys and values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqwin.attention.lse import additive, merge
from seqwin.attention.sliding_window.band_plan import BandPlan
from seqwin.attention.sliding_window.cpu_band import band_backward, band_forward

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

# The pooled part materializes an additive (batch, queries, blocks) mask: cap one call at this many entries.
_MASK_BUDGET = 1 << 22


def _slabs(batch: int, nq: int, nb: int) -> list[slice]:
    step = max(1, _MASK_BUDGET // max(1, batch * nb))
    return [slice(i, min(i + step, nq)) for i in range(0, nq, step)]


class _FusedPooled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, kp, vp, vis: Tensor, plan: BandPlan | None, q_lens: list[int], k_lens: list[int],
                scale: float):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        b, nq, h, d = q.shape
        qt, kpt, vpt = q.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2)
        out = torch.zeros(b, h, nq, d, device=q.device)
        lse = torch.full((b, h, nq), float("-inf"), device=q.device)
        for sl in _slabs(b, nq, kp.shape[1]):
            mask = vis[:, sl]
            o, l = _flash(qt[:, :, sl], kpt, vpt, 0.0, False, attn_mask=additive(mask).unsqueeze(1), scale=scale)
            out[:, :, sl] = o.float()
            # The kernel returns lse 0 for rows with no visible key; they must not count in the merge.
            lse[:, :, sl] = l.masked_fill(~mask.any(-1)[:, None, :], float("-inf"))
        if plan is not None:
            o_w, l_w = band_forward(q, k, v, plan, q_lens, k_lens, scale)
            out, lse = merge(o_w.float().transpose(1, 2), l_w, out, lse)
        q_ok = torch.arange(nq, device=q.device)[None, :] < torch.tensor(q_lens, device=q.device)[:, None]
        empty = torch.isneginf(lse) | ~q_ok[:, None, :]
        out = out.masked_fill(empty[..., None], 0.0).transpose(1, 2).to(q.dtype).contiguous()
        # +inf makes the recomputed probabilities of empty rows exactly zero in both backwards.
        lse = lse.masked_fill(empty, float("inf"))
        ctx.save_for_backward(q, k, v, kp, vp, vis, out, lse)
        ctx.plan, ctx.q_lens, ctx.k_lens, ctx.scale = plan, q_lens, k_lens, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, kp, vp, vis, out, lse = ctx.saved_tensors
        empty = torch.isposinf(lse)
        grad_out = grad_out.masked_fill(empty.transpose(1, 2)[..., None], 0.0).to(q.dtype).contiguous()
        gt, qt, ot = grad_out.transpose(1, 2), q.transpose(1, 2), out.transpose(1, 2)
        kpt, vpt = kp.transpose(1, 2), vp.transpose(1, 2)
        dq = torch.zeros(q.shape, device=q.device)
        dkp = torch.zeros(kp.shape, device=q.device)
        dvp = torch.zeros(vp.shape, device=q.device)
        for sl in _slabs(q.shape[0], q.shape[1], kp.shape[1]):
            gq, gk, gv = _flash_bwd(gt[:, :, sl], qt[:, :, sl], kpt, vpt, ot[:, :, sl], lse[:, :, sl], 0.0, False,
                                    attn_mask=additive(vis[:, sl]).unsqueeze(1), scale=ctx.scale)
            dq[:, sl] += gq.transpose(1, 2)
            dkp += gk.transpose(1, 2)
            dvp += gv.transpose(1, 2)
        dk = dv = None
        if ctx.plan is not None:
            gq, dk, dv = band_backward(grad_out, q, k, v, out, lse, ctx.plan, ctx.q_lens, ctx.k_lens, ctx.scale)
            dq += gq
        return (dq.to(q.dtype), dk, dv, dkp.to(kp.dtype), dvp.to(vp.dtype), None, None, None, None, None)


def fused_pooled_attention(q: Tensor, k: Tensor, v: Tensor, kp: Tensor, vp: Tensor, vis: Tensor,
                           plan: BandPlan | None, q_lens: list[int], k_lens: list[int], scale: float) -> Tensor:
    """Attention of ``q`` over the block means ``kp, vp`` (in q's dtype) where ``vis (batch, nq, blocks)``, plus,
    with a ``plan``, over the raw keys of its window; arguments already validated by ``pooled_attention``."""
    return _FusedPooled.apply(q, k, v, kp, vp, vis, plan, q_lens, k_lens, scale)
