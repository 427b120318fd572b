"""The plain dense reference for every attention pattern in seqwin.

Everything here builds the full query x key boolean mask from the definition and runs a masked softmax in fp32.
It is O(N^2) in time and memory on purpose: it is the thing every fast path is tested against, so it must be
obviously correct rather than fast.

Window semantics (same as FlashAttention-2's ``window_size``): window ``(left, right)``, both inclusive, in key
positions relative to the query; query ``i`` sees key ``j`` iff ``i - left <= j <= i + right``; ``-1`` means that
side is unbounded. When ``q_len != k_len`` the query sits at key position ``i + k_len - q_len`` (bottom-right
alignment, as in decoding). Keys at positions ``>= k_seq_len`` of their row are never seen; padded queries and
queries that see no key output zeros. The first ``num_sinks`` keys are visible to every query whose window's right
bound reaches them (they ignore the left bound and the dilation). With ``dilation=d`` only keys at distance
``(i - j) % d == 0`` inside the window are seen.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Window = tuple[int, int]


def check_window(window: Window) -> Window:
    """Validate a ``(left, right)`` window and return it as a tuple of ints."""
    try:
        left, right = (int(x) for x in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be a pair (left, right), got {window!r}") from None
    if left < -1 or right < -1:
        raise ValueError(f"window sides must be >= 0 or -1 (unbounded), got {(left, right)}")
    return left, right


def window_covers(window: Window, q_len: int, k_len: int, num_sinks: int = 0) -> bool:
    """Whether every query's window holds every key, bottom-right aligned and before any padding: query ``i``
    sits at key position ``i + k_len - q_len``, so the last query must reach back to the first key that is not a
    sink (``left >= k_len - 1 - num_sinks``) and the first forward to the last key (``right >= q_len - 1``)."""
    left, right = check_window(window)
    return (left < 0 or left >= k_len - 1 - min(num_sinks, k_len)) and (right < 0 or right >= q_len - 1)


def window_mask(
    q_pos: Tensor, k_pos: Tensor, window: Window, *, num_sinks: int = 0, dilation: int = 1
) -> Tensor:
    """Boolean visibility for query positions ``q_pos[..., :, None]`` and key positions ``k_pos[..., None, :]``.

    Positions are absolute key positions (queries already aligned). Broadcasts like ordinary tensors.
    Sequence-length validity is not applied here.
    """
    left, right = check_window(window)
    rel = k_pos.unsqueeze(-2) - q_pos.unsqueeze(-1)  # j - i
    ok = torch.ones_like(rel, dtype=torch.bool)
    if left >= 0:
        ok &= rel >= -left
    if right >= 0:
        ok &= rel <= right
    if dilation > 1:
        ok &= rel.remainder(dilation) == 0
    if num_sinks > 0:
        sink = k_pos.unsqueeze(-2) < num_sinks
        if right >= 0:
            sink = sink & (rel <= right)
        ok |= sink
    return ok


def _lengths(seq_lens: Tensor | None, batch: int, max_len: int, device: torch.device) -> Tensor:
    if seq_lens is None:
        return torch.full((batch,), max_len, dtype=torch.long, device=device)
    return torch.as_tensor(seq_lens, dtype=torch.long, device=device).clamp(max=max_len)


def masked_attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, *, scale: float | None = None) -> Tensor:
    """Dense softmax attention with a boolean ``mask`` broadcastable to ``(batch, heads, q_len, k_len)``.

    Layout ``(batch, seq, heads, head_dim)``; k/v may have fewer heads dividing q's (grouped-query attention).
    Rows with no visible key output zeros. Computes in fp32 and returns q's dtype.
    """
    b, n, h, d = q.shape
    hk = k.shape[2]
    if h % hk != 0:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hk})")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qf, kf, vf = (x.float().transpose(1, 2) for x in (q, k, v))
    if hk != h:
        kf = kf.repeat_interleave(h // hk, dim=1)
        vf = vf.repeat_interleave(h // hk, dim=1)
    scores = (qf @ kf.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    # A row with no visible key would be softmax(-inf, ...) = NaN; define it as zeros instead.
    any_visible = mask.any(dim=-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1) * any_visible
    return (probs @ vf).transpose(1, 2).to(q.dtype)


def sliding_window_mask(
    batch: int,
    q_len: int,
    k_len: int,
    window: Window,
    *,
    seq_lens: Tensor | None = None,
    k_seq_lens: Tensor | None = None,
    num_sinks: int = 0,
    dilation: int = 1,
    device: torch.device | str = "cpu",
) -> Tensor:
    """The full ``(batch, 1, q_len, k_len)`` boolean mask of a sliding window, padding included."""
    device = torch.device(device)
    q_lens = _lengths(seq_lens, batch, q_len, device)
    k_lens = _lengths(k_seq_lens if k_seq_lens is not None else seq_lens, batch, k_len, device)
    q_pos = torch.arange(q_len, device=device) + (k_len - q_len)
    k_pos = torch.arange(k_len, device=device)
    mask = window_mask(q_pos, k_pos, window, num_sinks=num_sinks, dilation=dilation)
    q_ok = torch.arange(q_len, device=device)[None, :] < q_lens[:, None]
    k_ok = k_pos[None, :] < k_lens[:, None]
    return (mask[None] & q_ok[:, :, None] & k_ok[:, None, :]).unsqueeze(1)


def sliding_window_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: Window | list[Window] = (-1, -1),
    seq_lens: Tensor | None = None,
    k_seq_lens: Tensor | None = None,
    num_sinks: int = 0,
    dilation: int = 1,
    scale: float | None = None,
) -> Tensor:
    """Dense reference of :func:`seqwin.attention.sliding_window_attention`.

    ``window`` may also be a list with one ``(left, right)`` per query head (per-head windows).
    """
    b, nq, h, _ = q.shape
    nk = k.shape[1]
    windows = window if isinstance(window, list) else [window]
    masks = [
        sliding_window_mask(b, nq, nk, w, seq_lens=seq_lens, k_seq_lens=k_seq_lens,
                            num_sinks=num_sinks, dilation=dilation, device=q.device)
        for w in windows
    ]
    if len(masks) > 1 and len(masks) != h:
        raise ValueError(f"got {len(masks)} per-head windows for {h} heads")
    return masked_attention_reference(q, k, v, torch.cat(masks, dim=1), scale=scale)


def block_attention_mask(
    batch: int, seq_len: int, block_size: int, *, shift: int = 0, seq_lens: Tensor | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Non-overlapping blocks (the 1-D form of Swin windows): token ``i`` sees token ``j`` iff both lie in the
    same block, where blocks start at positions ``-shift + m * block_size``. ``shift=block_size // 2`` gives the
    shifted partition used in alternate layers."""
    device = torch.device(device)
    pos = torch.arange(seq_len, device=device)
    block_id = torch.div(pos + shift, block_size, rounding_mode="floor")
    mask = block_id[:, None] == block_id[None, :]
    lens = _lengths(seq_lens, batch, seq_len, device)
    ok = pos[None, :] < lens[:, None]
    return (mask[None] & ok[:, :, None] & ok[:, None, :]).unsqueeze(1)
