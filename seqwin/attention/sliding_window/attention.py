"""``sliding_window_attention``: the public entry point, argument checks, and the backend dispatcher."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from seqwin.attention.reference import Window, check_window, sliding_window_attention_reference, window_covers

BACKENDS = ("auto", "cpu", "blocked", "triton", "reference")


def _lens(seq_lens: Tensor | Sequence[int] | None, batch: int, max_len: int, name: str) -> list[int]:
    if seq_lens is None:
        return [max_len] * batch
    lens = [int(x) for x in (seq_lens.tolist() if isinstance(seq_lens, Tensor) else seq_lens)]
    if len(lens) != batch:
        raise ValueError(f"{name} has {len(lens)} entries for a batch of {batch}")
    if any(n < 0 or n > max_len for n in lens):
        raise ValueError(f"{name} entries must be in [0, {max_len}], got {lens}")
    return lens


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be (batch, seq, heads, head_dim)")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    if q.shape[2] % k.shape[2] != 0:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"q, k, v must share one dtype of float32/bfloat16/float16, got {q.dtype}/{k.dtype}/{v.dtype}")


def _pick_backend(q: Tensor) -> str:
    if q.device.type == "cpu":
        return "cpu"
    if q.device.type == "cuda":
        from seqwin.kernels import triton_available  # noqa: PLC0415 - optional, imported only on GPU

        if triton_available():
            return "triton"
    return "blocked"


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: Window | Sequence[Window] = (-1, -1),
    seq_lens: Tensor | Sequence[int] | None = None,
    k_seq_lens: Tensor | Sequence[int] | None = None,
    num_sinks: int = 0,
    dilation: int = 1,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
) -> Tensor:
    """Sliding-window attention; layout ``(batch, seq, heads, head_dim)``, output shaped like ``q``.

    ``window=(left, right)``: query ``i`` sees keys ``i-left .. i+right`` (inclusive, ``-1`` = unbounded), with
    bottom-right alignment when q and k lengths differ; a list of windows gives one per query head. ``seq_lens``
    pads queries (and keys unless ``k_seq_lens`` is given); ``num_sinks`` first keys are visible to all queries
    (respecting the right bound); ``dilation`` keeps keys at distances that are multiples of it. k/v may have
    fewer heads than q (grouped-query). Queries that see no key output zeros. ``dropout_p`` drops attention
    probabilities (training) and runs on the blocked path. See ``seqwin.attention.reference`` for the definition.
    """
    _check(q, k, v)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if num_sinks < 0:
        raise ValueError(f"num_sinks must be >= 0, got {num_sinks}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    b, nq, h, _ = q.shape
    nk = k.shape[1]
    q_lens = _lens(seq_lens, b, nq, "seq_lens")
    k_lens = _lens(k_seq_lens if k_seq_lens is not None else seq_lens, b, nk, "k_seq_lens")

    windows = list(window) if window and isinstance(window[0], (tuple, list)) else [window]
    windows = [check_window(w) for w in windows]
    if len(windows) > 1:
        return _per_head(q, k, v, windows, q_lens, k_lens, num_sinks, dilation, scale, dropout_p, backend)
    window = windows[0]

    if (backend == "auto" and dropout_p == 0 and v.shape[-1] == q.shape[-1]
            and _sees_every_key(window, nq, nk, q_lens, k_lens, num_sinks, dilation)):
        return _dense(q, k, v, scale)
    if backend == "auto":
        backend = "blocked" if dropout_p > 0 else _pick_backend(q)
    if dropout_p > 0 and backend != "blocked":
        raise ValueError("attention dropout runs on the 'blocked' backend only")
    if backend == "reference":
        lens = torch.tensor(q_lens, device=q.device)
        klens = torch.tensor(k_lens, device=q.device)
        return sliding_window_attention_reference(q, k, v, window=window, seq_lens=lens, k_seq_lens=klens,
                                                  num_sinks=num_sinks, dilation=dilation, scale=scale)
    if nq == 0 or nk == 0:
        return q.new_zeros(q.shape[:-1] + (v.shape[-1],))
    if backend == "cpu":
        if q.device.type != "cpu":
            raise ValueError("backend='cpu' needs CPU tensors")
        from seqwin.attention.sliding_window.cpu_band import cpu_band_attention  # noqa: PLC0415

        if v.shape[-1] != q.shape[-1]:  # the fused kernel wants one head dim: zero-pad the narrower side
            return _pad_head_dims(q, k, v, lambda q_, k_, v_: cpu_band_attention(
                q_, k_, v_, window, q_lens=q_lens, k_lens=k_lens, num_sinks=num_sinks, dilation=dilation,
                scale=scale if scale is not None else q.shape[-1] ** -0.5))
        return cpu_band_attention(q, k, v, window, q_lens=q_lens, k_lens=k_lens, num_sinks=num_sinks,
                                  dilation=dilation, scale=scale)
    if backend == "triton":
        from seqwin.kernels.sliding_window import triton_sliding_window_attention  # noqa: PLC0415

        return triton_sliding_window_attention(q, k, v, window, q_lens=q_lens, k_lens=k_lens,
                                               num_sinks=num_sinks, dilation=dilation, scale=scale)
    from seqwin.attention.sliding_window.torch_blocked import blocked_attention  # noqa: PLC0415

    return blocked_attention(q, k, v, window, q_lens=q_lens, k_lens=k_lens, num_sinks=num_sinks,
                             dilation=dilation, scale=scale, dropout_p=dropout_p)


def _sees_every_key(window: Window, nq: int, nk: int, q_lens: list[int], k_lens: list[int], num_sinks: int,
                    dilation: int) -> bool:
    """Whether every query sees every key: no padding, no dilation, and a window that covers the whole row. A
    decoding step against a ring-buffer cache (one query, its window's keys) is the everyday case."""
    if nq == 0 or nk == 0 or dilation != 1 or any(n != nq for n in q_lens) or any(n != nk for n in k_lens):
        return False
    return window_covers(window, nq, nk, num_sinks)


def _dense(q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> Tensor:
    """Unmasked attention by PyTorch's fused SDPA, ``(batch, seq, heads, dim)``. One head dim and key/value heads
    repeated to the query heads: the cases its fused kernels (FlashAttention, memory-efficient, CPU flash) take
    on every device and dtype, so no N x N score matrix is built. On CPUs half precision follows the band path's
    rule (``cpu_band.attend_in_fp32``)."""
    dtype = q.dtype
    if q.device.type == "cpu":
        from seqwin.attention.sliding_window.cpu_band import attend_in_fp32  # noqa: PLC0415

        if attend_in_fp32(q, k, v):
            q, k, v = q.float(), k.float(), v.float()
    if k.shape[2] != q.shape[2]:
        group = q.shape[2] // k.shape[2]
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           scale=scale)
    return out.transpose(1, 2).to(dtype)


def _pad_head_dims(q: Tensor, k: Tensor, v: Tensor, fn) -> Tensor:
    dv, dqk = v.shape[-1], q.shape[-1]
    width = max(dv, dqk)

    def pad(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[-1]))

    return fn(pad(q), pad(k), pad(v))[..., :dv]


def _per_head(q, k, v, windows, q_lens, k_lens, num_sinks, dilation, scale, dropout_p, backend) -> Tensor:
    """Different windows per query head: one call per distinct window over the heads that share it."""
    h, hk = q.shape[2], k.shape[2]
    if len(windows) != h:
        raise ValueError(f"got {len(windows)} per-head windows for {h} query heads")
    group = h // hk
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    for w in dict.fromkeys(windows):
        heads = [i for i in range(h) if windows[i] == w]
        idx = torch.tensor(heads, device=q.device)
        kv_idx = idx // group
        o = sliding_window_attention(
            q.index_select(2, idx), k.index_select(2, kv_idx), v.index_select(2, kv_idx), window=w,
            seq_lens=q_lens, k_seq_lens=k_lens, num_sinks=num_sinks, dilation=dilation, scale=scale,
            dropout_p=dropout_p, backend=backend,
        )
        out = out.index_copy(2, idx, o)
    return out
