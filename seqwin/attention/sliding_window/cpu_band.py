"""Fast CPU sliding-window attention: PyTorch's fused CPU flash kernel run over banded key spans.

``aten._scaled_dot_product_flash_attention_for_cpu`` is a fused online-softmax kernel that also returns the
log-sum-exp; its backward recomputes probabilities from that log-sum-exp (FlashAttention-2 style). We run it on
strided views: each query chunk against its key span (see ``band_plan``), interior chunks under one shared band
mask, edge chunks with masks of their own, sinks as a separate small call. Partial results over disjoint key sets
merge exactly through their log-sum-exps, and the backward of each part needs only the merged output and merged
log-sum-exp. Nothing N x N is ever built: memory is O(N * (left + right)). Rows shorter than two spans go to the
whole-row paths of ``cpu_rows`` instead; their masks are then at most two spans wide, so the bound holds.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqwin.attention.lse import additive, merge
from seqwin.attention.reference import Window, window_covers, window_mask
from seqwin.attention.sliding_window.band_plan import BandPlan, make_plan
from seqwin.attention.sliding_window.cpu_rows import DenseRows, MaskedRows, rows_mask

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

# Edge chunks are batched into one call, but their masks are materialized: cap a batch at this many mask entries.
_EDGE_MASK_BUDGET = 1 << 24
# The fused backward returns key/value gradients per span (n, Hk, span, D), overlap included: cap the elements of
# one call's span gradients so peak memory stays flat in N (64k tokens would otherwise hold ~1 GB of them).
_BWD_SPAN_BUDGET = 1 << 23
# Rows with fewer keys than this many spans attend to the whole row under one mask (``cpu_rows.MaskedRows``):
# a span is ``chunk + left + right`` keys rounded up to whole chunks, so such rows are a few chunks long, nearly
# all edge chunks, and the band does as much work as the whole row or more, plus per-chunk gathers and masks.
# Measured fwd+bwd on a Zen 4 (tools/bench_short_rows.py; window +-32, so span 128): 1.9-4.0x faster than the
# band for rows of 48-192 keys, about even at 256-384.
_MASKED_ROWS_SPANS = 2
# The fused kernel's bf16/fp16 path is fast where it runs on AMX tiles; without them (AVX512-BF16 Zen 4, AVX2) it
# is slower than float32: on a Zen 4, bf16 took 1.1-2.9x the time of float32, the casts included, for rows of
# 48-640 keys (tools/bench_short_rows.py). There, half-precision inputs are attended in float32 and the output
# cast back, which is also the more accurate result.
_HALF_IN_FP32 = not getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
# With AMX the bf16 forward is the faster one (1.3-2.3x), but not forward+backward: on a 2-core Sapphire Rapids
# (window +-32, 2 threads, tools/bench_short_rows.py's shapes) it took 7.3 / 20.4 / 17.4 / 19.8 ms in bf16 against
# 4.3 / 16.8 / 13.1 / 19.0 ms in float32 for batches of rows of 108 / 300 / 700 / 2000 keys. So where a gradient is
# wanted, half-precision inputs are attended in float32 on every CPU.
_HALF_IN_FP32_FOR_GRAD = True


def attend_in_fp32(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether half-precision inputs are attended in float32 here (the CPU band, whole-row and dense paths)."""
    if q.dtype == torch.float32:
        return False
    if _HALF_IN_FP32:
        return True
    wants_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    return _HALF_IN_FP32_FOR_GRAD and wants_grad


def _chunks(x: Tensor, plan: BandPlan) -> Tensor:
    """(B, q_len, H, D) -> (B, num_chunks, H, chunk, D) view of x zero-padded to whole chunks."""
    b, n, h, d = x.shape
    pad = plan.num_chunks * plan.chunk - n
    if pad:
        x = torch.cat([x, x.new_zeros(b, pad, h, d)], dim=1)
    return x.view(b, plan.num_chunks, plan.chunk, h, d).transpose(2, 3)


def _interior_spans(x: Tensor, plan: BandPlan, row: int, c0: int, c1: int) -> Tensor:
    """Spans of interior chunks ``[c0, c1)`` of one row: an overlapping strided view of contiguous ``x``, no copy.
    Interior spans lie inside ``[0, k_len)`` by definition, so no padding is needed."""
    _, _, h, d = x.shape
    xr = x[row]
    return xr.as_strided((c1 - c0, h, plan.span, d), (plan.chunk * h * d, d, h * d, 1),
                         xr.storage_offset() + plan.span_start(c0) * h * d)


def _edge_spans(x: Tensor, plan: BandPlan, rows: Tensor, chunks: Tensor) -> Tensor:
    """Gathered ``(n, Hk, span, D)`` spans of edge chunks; out-of-range positions are clamped (masked anyway)."""
    pos = plan.span_start(chunks)[:, None] + torch.arange(plan.span, device=x.device)
    return x[rows[:, None], pos.clamp_(0, x.shape[1] - 1)].transpose(1, 2)


def _work(plan: BandPlan, q_lens: list[int], k_lens: list[int], device: torch.device):
    """Split (row, chunk) pairs into per-row interior ranges and edge pairs. Chunks past a row's last query
    are skipped: their outputs are zero."""
    interior, edge_rows, edge_chunks = [], [], []
    for row, (ql, kl) in enumerate(zip(q_lens, k_lens, strict=True)):
        live = min(plan.num_chunks, -(-ql // plan.chunk))
        c0, c1 = plan.interior_range(kl)
        c0, c1 = min(c0, live), min(c1, live)
        if c1 > c0:
            interior.append((row, c0, c1))
        for c in [*range(0, c0), *range(c1, live)]:
            edge_rows.append(row)
            edge_chunks.append(c)
    rows = torch.tensor(edge_rows, dtype=torch.long, device=device)
    chunks = torch.tensor(edge_chunks, dtype=torch.long, device=device)
    step = max(1, _EDGE_MASK_BUDGET // (plan.chunk * plan.span))
    edges = [(rows[i : i + step], chunks[i : i + step]) for i in range(0, len(edge_rows), step)]
    return interior, edges


def _sink_mask(plan: BandPlan, k_lens: Tensor, device: torch.device) -> Tensor:
    q_pos = torch.arange(plan.q_len, device=device) + plan.offset
    k_pos = torch.arange(plan.num_sinks, device=device)
    # Sinks ignore the left bound and the dilation but keep the right bound (causality).
    right_only = window_mask(q_pos, k_pos, (-1, plan.right))
    return right_only[None] & (k_pos[None, None, :] < k_lens[:, None, None])


def band_forward(q: Tensor, k: Tensor, v: Tensor, plan: BandPlan, q_lens: list[int], k_lens: list[int],
                 scale: float) -> tuple[Tensor, Tensor]:
    """Windowed attention under ``plan``: the output ``(B, q_len, H, D)`` in q's dtype and its log-sum-exp
    ``(B, H, q_len)`` in fp32, ``-inf`` where a query sees no key (its output is then zero). Padded queries are not
    zeroed here. Attentions over other key sets (pooled blocks) merge into it through the log-sum-exp."""
    b, nq, h, d = q.shape
    device = q.device
    interior, edges = _work(plan, q_lens, k_lens, device)
    k_lens_t = torch.tensor(k_lens, dtype=torch.long, device=device)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    qc = _chunks(q, plan)
    band = plan.band_mask(device)

    # Outputs in the final (B, q_len, H, D) layout, padded to whole chunks; lse per chunk.
    out = q.new_zeros(b, plan.num_chunks, plan.chunk, h, d)
    lse = torch.full((b, plan.num_chunks, h, plan.chunk), float("-inf"), device=device)
    for row, c0, c1 in interior:
        n = c1 - c0
        o, l = _flash(qc[row, c0:c1], _interior_spans(k, plan, row, c0, c1),
                      _interior_spans(v, plan, row, c0, c1), 0.0, False,
                      attn_mask=band.expand(n, 1, -1, -1), scale=scale)
        out[row, c0:c1] = o.transpose(1, 2)
        lse[row, c0:c1] = l
    for rows, chunks in edges:
        mask = plan.edge_mask(rows, chunks, k_lens_t)
        o, l = _flash(qc[rows, chunks], _edge_spans(k, plan, rows, chunks), _edge_spans(v, plan, rows, chunks),
                      0.0, False, attn_mask=additive(mask).unsqueeze(1), scale=scale)
        # The kernel returns lse 0 for rows with no visible key; they must not count in merges.
        l = l.masked_fill(~mask.any(-1)[:, None, :], float("-inf"))
        out[rows, chunks] = o.transpose(1, 2)
        lse[rows, chunks] = l

    out = out.view(b, -1, h, d)[:, :nq]
    lse = lse.permute(0, 2, 1, 3).reshape(b, h, -1)[:, :, :nq]
    if plan.num_sinks > 0:
        smask = _sink_mask(plan, k_lens_t, device)
        s = plan.num_sinks
        o_s, l_s = _flash(q.transpose(1, 2), k[:, :s].transpose(1, 2), v[:, :s].transpose(1, 2), 0.0, False,
                          attn_mask=additive(smask).unsqueeze(1), scale=scale)
        l_s = l_s.masked_fill(~smask.any(-1)[:, None, :], float("-inf"))
        merged, lse = merge(out.float().transpose(1, 2), lse, o_s.float(), l_s)
        out = merged.transpose(1, 2).to(q.dtype)
    return out, lse


def band_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, plan: BandPlan,
                  q_lens: list[int], k_lens: list[int], scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients through the windowed keys of an attention whose output is ``out`` with log-sum-exp ``lse``
    (``+inf`` on rows that get no gradient); ``q, k, v, out`` contiguous, as ``band_forward`` took them. The fused
    backward needs nothing else per query, so this is exact also when ``out`` and ``lse`` merge other key sets in:
    it is then those keys' share of the gradient."""
    plan = plan.for_backward()
    b, nq, h, d = q.shape
    hk = k.shape[2]
    device = q.device
    interior, edges = _work(plan, q_lens, k_lens, device)
    k_lens_t = torch.tensor(k_lens, dtype=torch.long, device=device)
    empty = torch.isposinf(lse)
    grad_out = grad_out.masked_fill(empty.transpose(1, 2)[..., None], 0.0).to(q.dtype)

    qc, oc, gc = _chunks(q, plan), _chunks(out, plan), _chunks(grad_out, plan)
    pad = plan.num_chunks * plan.chunk - nq
    lse_c = torch.cat([lse, lse.new_full((b, h, pad), float("inf"))], dim=2) if pad else lse
    lse_c = lse_c.view(b, h, plan.num_chunks, plan.chunk).transpose(1, 2)
    band = plan.band_mask(device)

    # Accumulate in fp32: spans overlap, so key gradients are sums of several partial results.
    dq = torch.zeros(b, plan.num_chunks, plan.chunk, h, d, device=device)
    dk = torch.zeros(b, plan.k_len, hk, d, device=device)
    dv = torch.zeros_like(dk)
    pieces = plan.span // plan.chunk
    step = max(1, _BWD_SPAN_BUDGET // (hk * plan.span * d))
    interior = [(row, a, min(a + step, c1)) for row, c0, c1 in interior for a in range(c0, c1, step)]
    for row, c0, c1 in interior:
        n = c1 - c0
        ks, vs = _interior_spans(k, plan, row, c0, c1), _interior_spans(v, plan, row, c0, c1)
        gq, gk, gv = _flash_bwd(gc[row, c0:c1], qc[row, c0:c1], ks, vs, oc[row, c0:c1], lse_c[row, c0:c1],
                                0.0, False, attn_mask=band.expand(n, 1, -1, -1), scale=scale)
        dq[row, c0:c1] = gq.transpose(1, 2)
        # Overlap-add: span piece j of chunk c lands on the keys of chunk (c + j) of the padded sequence.
        start = plan.span_start(c0)
        for j in range(pieces):
            sl = slice(start + j * plan.chunk, start + (j + n) * plan.chunk)
            piece = slice(j * plan.chunk, (j + 1) * plan.chunk)
            dk[row, sl] += gk[:, :, piece].transpose(1, 2).reshape(n * plan.chunk, hk, d)
            dv[row, sl] += gv[:, :, piece].transpose(1, 2).reshape(n * plan.chunk, hk, d)
    for rows, chunks in edges:
        mask = additive(plan.edge_mask(rows, chunks, k_lens_t)).unsqueeze(1)
        gq, gk, gv = _flash_bwd(gc[rows, chunks], qc[rows, chunks], _edge_spans(k, plan, rows, chunks),
                                _edge_spans(v, plan, rows, chunks), oc[rows, chunks], lse_c[rows, chunks], 0.0,
                                False, attn_mask=mask, scale=scale)
        dq[rows, chunks] = gq.transpose(1, 2).float()
        # Each edge span is one contiguous run of keys: plain slice adds beat a scattered index_add.
        # Positions outside [0, k_len) were clamped copies under a hiding mask: their gradients are zero.
        for i, (row, c) in enumerate(zip(rows.tolist(), chunks.tolist(), strict=True)):
            start = plan.span_start(c)
            lo, hi = max(start, 0), min(start + plan.span, plan.k_len)
            dk[row, lo:hi] += gk[i, :, lo - start : hi - start].transpose(0, 1)
            dv[row, lo:hi] += gv[i, :, lo - start : hi - start].transpose(0, 1)
    dq = dq.view(b, -1, h, d)[:, :nq]

    if plan.num_sinks > 0:
        s = plan.num_sinks
        smask = additive(_sink_mask(plan, k_lens_t, device)).unsqueeze(1)
        gq, gk, gv = _flash_bwd(grad_out.transpose(1, 2), q.transpose(1, 2), k[:, :s].transpose(1, 2),
                                v[:, :s].transpose(1, 2), out.transpose(1, 2), lse, 0.0, False,
                                attn_mask=smask, scale=scale)
        dq = dq + gq.transpose(1, 2)
        dk[:, :s] += gk.transpose(1, 2)
        dv[:, :s] += gv.transpose(1, 2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class _BandAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan: BandPlan, q_lens: list[int], k_lens: list[int], scale: float):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out, lse = band_forward(q, k, v, plan, q_lens, k_lens, scale)
        nq, device = q.shape[1], q.device
        q_ok = torch.arange(nq, device=device)[None, :] < torch.tensor(q_lens, device=device)[:, None]
        empty = torch.isneginf(lse) | ~q_ok[:, None, :]
        out = out.masked_fill_(empty.transpose(1, 2)[..., None], 0.0).contiguous()
        # +inf makes the recomputed probabilities of empty rows exactly zero in the backward.
        lse = lse.masked_fill(empty, float("inf"))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.q_lens, ctx.k_lens, ctx.scale = plan, q_lens, k_lens, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        grads = band_backward(grad_out, q, k, v, out, lse, ctx.plan, ctx.q_lens, ctx.k_lens, ctx.scale)
        return *grads, None, None, None, None


def cpu_band_attention(
    q: Tensor, k: Tensor, v: Tensor, window: Window, *, q_lens: list[int], k_lens: list[int],
    num_sinks: int = 0, dilation: int = 1, scale: float | None = None, chunk: int | None = None,
) -> Tensor:
    """Sliding-window attention on CPU tensors; arguments already validated by the public API. Rows that the
    window covers, or that are short next to the band's key span, take a whole-row path (``cpu_rows``)."""
    if attend_in_fp32(q, k, v):
        out = cpu_band_attention(q.float(), k.float(), v.float(), window, q_lens=q_lens, k_lens=k_lens,
                                 num_sinks=num_sinks, dilation=dilation, scale=scale, chunk=chunk)
        return out.to(q.dtype)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    num_sinks = min(num_sinks, k.shape[1])  # more sinks than keys (a short prompt): every key is a sink
    b, nq, _, _ = q.shape
    nk = k.shape[1]
    plan = make_plan(b, nq, nk, window, num_sinks=num_sinks, dilation=dilation, chunk=chunk)
    if num_sinks == 0 and dilation == 1 and window_covers((window[0], -1), nq, nk):  # every query reaches back
        if window_covers(window, nq, nk):
            return DenseRows.apply(q, k, v, q_lens, k_lens, False, scale)
        if window[1] == 0 and nq == nk and q_lens == k_lens:
            return DenseRows.apply(q, k, v, q_lens, k_lens, True, scale)
    if nk < _MASKED_ROWS_SPANS * plan.span and b * nq * nk <= _EDGE_MASK_BUDGET:
        mask = rows_mask(nq, nk, window, q_lens, k_lens, num_sinks=num_sinks, dilation=dilation, device=q.device)
        return MaskedRows.apply(q, k, v, mask, scale)
    return _BandAttention.apply(q, k, v, plan, q_lens, k_lens, scale)
