"""Sliding-window attention in Triton: fused forward and backward, padded and packed (varlen) layouts.

Semantics are those of ``seqwin.attention.reference`` (window ``(left, right)`` inclusive, ``-1`` unbounded,
bottom-right alignment, per-row padding, sinks, dilation, grouped-query heads). Kernels: ``_sw_fwd`` (forward,
online softmax in fp32), ``_sw_bwd`` (dq, dk/dv and the sinks' split-off tail; deterministic, no atomics);
geometry helpers in ``_sw_common``; block sizes and launches in ``_sw_launch``; ``aot_check`` compiles them for a
GPU target without a GPU. Work is proportional to the window, not to the sequence length squared: each query
block visits only the key blocks its window (and the sinks) can reach, and each key block only the query blocks
that can see it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._sw_launch import Geometry, backward, forward

Window = tuple[int, int]

__all__ = ["triton_sliding_window_attention", "triton_sliding_window_attention_varlen"]


def _on_device(x: Tensor):
    # Triton launches on the *current* CUDA device; make it the tensors' one (q on cuda:1 while cuda:0 is current).
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


class _SlidingWindowFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, geo: Geometry) -> Tensor:
        with _on_device(q):
            o, lse = forward(q, k, v, geo)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.geo = geo
        return o

    @staticmethod
    @once_differentiable
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        do = do.to(q.dtype)  # the dots need one operand dtype (a no-op unless autocast handed us another)
        with _on_device(q):
            dq, dk, dv = backward(do, q, k, v, o, lse, ctx.geo)
        return dq, dk, dv, None


def _window(window: Window, reach: int) -> tuple[int, int]:
    left, right = (int(x) for x in window)
    if left < -1 or right < -1:
        raise ValueError(f"window sides must be >= 0 or -1 (unbounded), got {(left, right)}")
    # An unbounded side becomes a distance beyond any reachable key, so the kernels need no special case.
    return (reach if left < 0 else min(left, reach)), (reach if right < 0 else min(right, reach))


def _check_common(q: Tensor, k: Tensor, v: Tensor, head_axis: int, num_sinks: int, dilation: int) -> None:
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"q, k, v must share one dtype of float32/bfloat16/float16, got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    if max(q.shape[-1], v.shape[-1]) > 256:
        raise ValueError(f"head dims up to 256 are supported, got {q.shape[-1]} / {v.shape[-1]}")
    h, hk = q.shape[head_axis], k.shape[head_axis]
    if hk == 0 or h % hk != 0:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hk})")
    if dilation < 1 or num_sinks < 0:
        raise ValueError(f"need dilation >= 1 and num_sinks >= 0, got {dilation}, {num_sinks}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")


def _check_grid(batch: int, heads: int) -> None:
    if batch * heads >= 65536:  # (sequence, head) pairs go on the second grid axis
        raise ValueError(f"batch * heads must be below 65536 (CUDA grid limit), got {batch} * {heads}")


def triton_sliding_window_attention(
    q: Tensor, k: Tensor, v: Tensor, window: Window, *, q_lens: Sequence[int], k_lens: Sequence[int],
    num_sinks: int = 0, dilation: int = 1, scale: float | None = None,
) -> Tensor:
    """Sliding-window attention on ``(batch, seq, heads, head_dim)`` tensors, differentiable in q, k and v.

    ``q_lens``/``k_lens`` give each row's valid length (padding beyond them is never attended, padded queries
    output zeros and get zero gradient). k/v may have fewer heads than q (grouped-query). Returns q's dtype with
    v's head dim.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0]:
        raise ValueError(f"expected (batch, seq, heads, dim) tensors, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    _check_common(q, k, v, 2, num_sinks, dilation)
    b, nq, _, d = q.shape
    nk = k.shape[1]
    q_lens, k_lens = [int(x) for x in q_lens], [int(x) for x in k_lens]
    if len(q_lens) != b or len(k_lens) != b:
        raise ValueError(f"q_lens and k_lens need {b} entries, got {len(q_lens)} and {len(k_lens)}")
    if any(not 0 <= n <= nq for n in q_lens) or any(not 0 <= n <= nk for n in k_lens):
        raise ValueError(f"lengths out of range: q_lens {q_lens} (max {nq}), k_lens {k_lens} (max {nk})")
    if b == 0 or nq == 0 or nk == 0 or q.shape[2] == 0:
        return q.new_zeros(q.shape[:-1] + (v.shape[-1],))
    _check_grid(b, q.shape[2])
    left, right = _window(window, 2 * (nq + nk) + 1024)
    geo = Geometry(
        lens_q=torch.tensor(q_lens, dtype=torch.int32, device=q.device),
        lens_k=torch.tensor(k_lens, dtype=torch.int32, device=q.device),
        batch=b, n_q=nq, n_k=nk, left=left, right=right, num_sinks=min(num_sinks, nk), dilation=dilation,
        scale=1.0 / math.sqrt(d) if scale is None else float(scale), varlen=False,
    )
    return _SlidingWindowFn.apply(q, k, v, geo)


def triton_sliding_window_attention_varlen(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor, window: Window, *,
    max_seqlen_q: int | None = None, max_seqlen_k: int | None = None, num_sinks: int = 0, dilation: int = 1,
    scale: float | None = None, packed_grid: bool = False,
) -> Tensor:
    """Packed variable-length form: q ``(total_q, heads, head_dim)``, k/v ``(total_k, kv_heads, head_dim)``.

    Sequence ``b`` owns query rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]`` and key rows ``cu_seqlens_k[b]:...``;
    windows are aligned bottom-right per sequence (``off = k_len_b - q_len_b``) and sinks are each sequence's
    first keys. Passing ``max_seqlen_*`` avoids a device-to-host sync.

    ``packed_grid``: launch one program per actual block through a block table instead of a (blocks of the
    longest sequence) x (sequences * heads) grid. For many sequences of skewed lengths (routing attention's
    clusters) and for 65536 or more (sequence, head) pairs; ``max_seqlen_*`` then only steer the block-size
    heuristics and the window's finite stand-in for "unbounded", so any upper bound will do.
    """
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3 or k.shape[:2] != v.shape[:2]:
        raise ValueError(f"expected (total, heads, dim) tensors, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    _check_common(q, k, v, 1, num_sinks, dilation)
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.shape != cu_seqlens_k.shape or cu_seqlens_q.numel() < 1:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must be 1-D with batch + 1 entries each")
    batch = cu_seqlens_q.numel() - 1
    if max_seqlen_q is None:
        max_seqlen_q = int(cu_seqlens_q.diff().max()) if batch else 0
    if max_seqlen_k is None:
        max_seqlen_k = int(cu_seqlens_k.diff().max()) if batch else 0
    if batch == 0 or max_seqlen_q == 0 or q.shape[1] == 0:
        return q.new_zeros(q.shape[:-1] + (v.shape[-1],))
    if not packed_grid:
        _check_grid(batch, q.shape[1])
    left, right = _window(window, 2 * (max_seqlen_q + max_seqlen_k) + 1024)
    geo = Geometry(
        lens_q=cu_seqlens_q.to(device=q.device, dtype=torch.int32),
        lens_k=cu_seqlens_k.to(device=q.device, dtype=torch.int32),
        batch=batch, n_q=max_seqlen_q, n_k=max(max_seqlen_k, 1), left=left, right=right, num_sinks=num_sinks,
        dilation=dilation, scale=1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale), varlen=True,
        packed=packed_grid,
    )
    return _SlidingWindowFn.apply(q, k, v, geo)
