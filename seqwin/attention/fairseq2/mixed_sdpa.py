"""``RoutingSDPA``: a fairseq2 SDPA mixing local-window and routing heads, for one :class:`AttentionSpec`.

``RoutingSDPA`` implements fairseq2 0.8.1's ``SDPA.forward(q, q_layout, k, k_layout, v, bias_cache, *,
needs_weights=False)``: heads ``[0, local)`` run :func:`sliding_window_attention`, heads ``[local, local +
routing)`` run :func:`routing_attention`. The routing commitment loss of the last forward is kept in
``sdpa.aux_loss``; :func:`collect_aux_losses` sums them over a model for the training loop to add.
"""

from __future__ import annotations

import torch
from fairseq2.error import NotSupportedError
from fairseq2.models.transformer.attention_bias import AttentionBiasCache
from fairseq2.models.transformer.sdpa.base import SDPA
from fairseq2.nn import BatchLayout
from torch import Tensor, nn

from seqwin.attention.routing import KMeansRouter, routing_attention
from seqwin.attention.sliding_window import sliding_window_attention
from seqwin.attention.specs import AttentionSpec


class RoutingSDPA(SDPA):
    """fairseq2 SDPA for one :class:`AttentionSpec`; see the module docstring.

    Decoding (``q_len < k_len``) works statelessly from fairseq2's KV cache: routing heads re-route the cached
    keys (eval mode; not with ``shared_qk``, whose past queries are not cached).
    ``seqwin.attention.routing.RoutingKVCache`` is the O(window) per-step alternative for custom
    decoders.
    """

    aux_loss: Tensor | None

    def __init__(self, spec: AttentionSpec, num_heads: int, head_dim: int, *, device=None) -> None:
        super().__init__()
        self.spec = spec
        self.num_heads, self.head_dim = num_heads, head_dim
        self.local_heads, self.routing_heads = spec.head_split(num_heads)
        self.router: KMeansRouter | None = None
        if self.routing_heads:
            self.router = KMeansRouter(
                self.routing_heads, head_dim, spec.num_clusters, spec.decay, spec.commitment, device=device
            )
        self.aux_loss = None
        self.dropped_fraction = 0.0

    def forward(
        self,
        q: Tensor,
        q_layout: BatchLayout,
        k: Tensor,
        k_layout: BatchLayout,
        v: Tensor,
        bias_cache: AttentionBiasCache,
        *,
        needs_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if needs_weights:
            raise NotSupportedError(f"`{type(self).__name__}` does not return attention weights.")
        if q_layout.packed or k_layout.packed:
            raise NotSupportedError(f"`{type(self).__name__}` does not support packed batches.")
        h, hk = q.shape[2], k.shape[2]
        if h != self.num_heads:
            raise ValueError(f"expected {self.num_heads} query heads, got {h}")
        group = h // hk  # fairseq2 repeats k/v heads already; a direct caller may not
        if self.local_heads % group:
            raise ValueError(
                f"local_heads ({self.local_heads}) must be a multiple of the query group ({group})"
            )
        seq_lens = q_layout.seq_lens if q_layout.padded else None
        k_seq_lens = k_layout.seq_lens if k_layout.padded else None
        split, k_split = self.local_heads, self.local_heads // group
        outs = []
        if self.local_heads:
            outs.append(
                sliding_window_attention(
                    q[:, :, :split],
                    k[:, :, :k_split],
                    v[:, :, :k_split],
                    window=self.spec.local_window(),
                    seq_lens=seq_lens,
                    k_seq_lens=k_seq_lens,
                )
            )
        if self.routing_heads:
            assert self.router is not None
            decoding = q.shape[1] != k.shape[1]
            out, aux = routing_attention(
                q[:, :, split:],
                k[:, :, k_split:],
                v[:, :, k_split:],
                self.router,
                causal=self.spec.causal,
                seq_lens=None if decoding else seq_lens,
                shared_qk=self.spec.shared_qk,
                window=self.spec.routing_window,
                group_size=self.spec.group_size,
            )
            self.aux_loss = aux["loss"] if self.training else None
            self.dropped_fraction = aux["dropped_fraction"]
            outs.append(out)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), None

    def extra_repr(self) -> str:
        return f"spec={self.spec}, local_heads={self.local_heads}, routing_heads={self.routing_heads}"


def collect_aux_losses(model: nn.Module, *, clear: bool = True) -> Tensor | None:
    """Sum of the routing commitment losses of the last training forward over every ``RoutingSDPA`` in
    ``model`` (``None`` if there are none). ``clear`` resets them so a loss is never added twice."""
    total = None
    for module in model.modules():
        if isinstance(module, RoutingSDPA) and module.aux_loss is not None:
            total = module.aux_loss if total is None else total + module.aux_loss
            if clear:
                module.aux_loss = None
    return total
