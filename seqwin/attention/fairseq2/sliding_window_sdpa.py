"""fairseq2 SDPA implementations backed by seqwin attention (padded and packed batches, dropout in training)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from fairseq2.error import NotSupportedError
from fairseq2.models.transformer.attention_bias import AttentionBiasCache
from fairseq2.models.transformer.sdpa.base import SDPA
from fairseq2.nn import BatchLayout
from torch import Tensor

from seqwin.attention.reference import Window, check_window
from seqwin.attention.sliding_window.attention import sliding_window_attention


def unpack(x: Tensor, layout: BatchLayout) -> Tensor:
    """Packed ``(total, ...)`` -> padded ``(batch, max_len, ...)`` using the layout's sequence boundaries."""
    lens = list(layout.seq_lens)
    out = x.new_zeros((len(lens), max(lens, default=0), *x.shape[1:]))
    for i, (begin, n) in enumerate(zip(layout.seq_begin_indices, lens, strict=False)):
        out[i, :n] = x[begin : begin + n]
    return out


def repack(x: Tensor, layout: BatchLayout, total: int) -> Tensor:
    """Inverse of :func:`unpack`."""
    out = x.new_zeros((total, *x.shape[2:]))
    for i, (begin, n) in enumerate(zip(layout.seq_begin_indices, layout.seq_lens, strict=False)):
        out[begin : begin + n] = x[i, :n]
    return out


def layout_lens(layout: BatchLayout) -> Sequence[int] | None:
    return list(layout.seq_lens) if (layout.padded or layout.packed) else None


class SlidingWindowSDPA(SDPA):
    """Sliding-window attention as a fairseq2 SDPA.

    ``window`` is one ``(left, right)`` or one per head (multi-scale models). For incremental decoding build the
    attention layer with ``state_factory=SlidingWindowAttentionStateFactory(left, num_sinks)`` so the KV cache
    stays O(window).
    """

    def __init__(
        self, window: Window | Sequence[Window], *, num_sinks: int = 0, dilation: int = 1,
        dropout_p: float = 0.0, scale: float | None = None, backend: str = "auto",
    ) -> None:
        super().__init__()
        per_head = bool(window) and isinstance(window[0], (tuple, list))
        self.window = [check_window(w) for w in window] if per_head else check_window(window)
        self.num_sinks = num_sinks
        self.dilation = dilation
        self.dropout_p = dropout_p
        self.scale = scale
        self.backend = backend

    def forward(
        self, q: Tensor, q_layout: BatchLayout, k: Tensor, k_layout: BatchLayout, v: Tensor,
        bias_cache: AttentionBiasCache, *, needs_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if needs_weights:
            raise NotSupportedError(f"{type(self).__name__} does not return attention weights.")
        packed = q_layout.packed
        if packed != k_layout.packed:
            raise ValueError("queries and keys must both be packed or both be padded")
        if packed:
            total = q.shape[0]
            q, k, v = unpack(q, q_layout), unpack(k, k_layout), unpack(v, k_layout)
        out = sliding_window_attention(
            q, k, v, window=self.window, seq_lens=layout_lens(q_layout), k_seq_lens=layout_lens(k_layout),
            num_sinks=self.num_sinks, dilation=self.dilation, scale=self.scale,
            dropout_p=self.dropout_p if self.training else 0.0, backend=self.backend,
        )
        if packed:
            out = repack(out, q_layout, total)
        return out, None

    def extra_repr(self) -> str:
        return (f"window={self.window}, num_sinks={self.num_sinks}, dilation={self.dilation}, "
                f"dropout_p={self.dropout_p:G}, backend={self.backend}")


def windowize(model: torch.nn.Module, window: Window, **kwargs) -> int:
    """Swap every ``self_attn.sdpa`` in a fairseq2 model for :class:`SlidingWindowSDPA`; returns how many."""
    count = 0
    for module in model.modules():
        attn = getattr(module, "self_attn", None)
        if attn is not None and isinstance(getattr(attn, "sdpa", None), SDPA):
            dropout_p = getattr(attn.sdpa, "dropout_p", 0.0)
            attn.sdpa = SlidingWindowSDPA(window, dropout_p=dropout_p, **kwargs)
            count += 1
    return count
