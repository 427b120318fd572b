"""``MixedSDPA``: a fairseq2 SDPA running groups of heads with different attentions, for one :class:`AttentionSpec`.

``MixedSDPA`` implements fairseq2 0.8.1's ``SDPA.forward(q, q_layout, k, k_layout, v, bias_cache, *,
needs_weights=False)`` for ``pooled``, ``routing`` and ``mixed`` specs. Heads come in three consecutive groups
(:meth:`AttentionSpec.head_split`): local heads run :func:`sliding_window_attention`, pooled heads
:func:`pooled_attention` (in a ``mixed`` spec also over their window of raw keys), routing heads
:func:`routing_attention`. The routing commitment loss of the last forward is kept in ``sdpa.aux_loss``;
:func:`collect_aux_losses` sums them over a model for the training loop to add.
"""

from __future__ import annotations

import torch
from fairseq2.error import NotSupportedError
from fairseq2.models.transformer.attention_bias import AttentionBiasCache
from fairseq2.models.transformer.sdpa.base import SDPA
from fairseq2.nn import BatchLayout
from torch import Tensor, nn

from seqwin.attention.pooled import pooled_attention
from seqwin.attention.routing import KMeansRouter, routing_attention
from seqwin.attention.sliding_window import sliding_window_attention
from seqwin.attention.specs import AttentionSpec


class MixedSDPA(SDPA):
    """fairseq2 SDPA for one :class:`AttentionSpec`; see the module docstring.

    With ``spec.shared_qk`` the routing heads take their queries as their keys (the Routing Transformer's shared
    QK; the key projection's rows of those heads go unused): a token is routed by its query, and the keys a query
    matches best are the tokens routed with it.

    Decoding (``q_len < k_len``) works statelessly from fairseq2's KV cache: routing heads re-route the cached
    keys (eval mode; not with ``shared_qk``, whose past queries are not cached). The constant-memory alternative is
    :func:`~seqwin.attention.fairseq2.decoding_session`.
    """

    aux_loss: Tensor | None

    def __init__(self, spec: AttentionSpec, num_heads: int, head_dim: int, *, device=None) -> None:
        super().__init__()
        self.spec = spec
        self.num_heads, self.head_dim = num_heads, head_dim
        self.local_heads, self.pooled_heads, self.routing_heads = spec.head_split(num_heads)
        self.router: KMeansRouter | None = None
        if self.routing_heads:
            self.router = KMeansRouter(
                self.routing_heads, head_dim, spec.num_clusters, spec.decay, spec.commitment, device=device
            )
        self.aux_loss = None
        self.dropped_fraction = 0.0

    def pooled_window(self) -> tuple[int, int] | None:
        """The raw-key window of the pooled heads: the spec's window in a ``mixed`` spec, none in a ``pooled`` one."""
        return self.spec.window if self.spec.kind == "mixed" else None

    def head_groups(self, group: int) -> list[tuple[str, slice, slice]]:
        """``(name, query heads, key/value heads)`` of each non-empty group, with ``group`` query heads per key/value
        head."""
        groups, start = [], 0
        for name, n in (("local", self.local_heads), ("pooled", self.pooled_heads), ("routing", self.routing_heads)):
            if n and (start % group or n % group):
                raise ValueError(f"{name}_heads ({n}) must start and end on a multiple of the query group ({group})")
            if n:
                groups.append((name, slice(start, start + n), slice(start // group, (start + n) // group)))
            start += n
        return groups

    def routing_kv(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the routing heads, given their queries ``q`` and their key/value heads ``k``, ``v``:
        with ``shared_qk`` the keys are the queries, and the values are repeated to one head per query head."""
        if not self.spec.shared_qk:
            return k, v
        return q, v.repeat_interleave(q.shape[2] // v.shape[2], dim=2)

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
        seq_lens = q_layout.seq_lens if q_layout.padded else None
        k_seq_lens = k_layout.seq_lens if k_layout.padded else None
        outs = []
        # fairseq2 repeats k/v heads already (group 1); a direct caller may not
        for name, qh, kh in self.head_groups(h // hk):
            if name == "local":
                outs.append(sliding_window_attention(q[:, :, qh], k[:, :, kh], v[:, :, kh],
                                                     window=self.spec.local_window(), seq_lens=seq_lens,
                                                     k_seq_lens=k_seq_lens))
            elif name == "pooled":
                outs.append(pooled_attention(q[:, :, qh], k[:, :, kh], v[:, :, kh], pool_size=self.spec.pool_size,
                                             causal=self.spec.causal, window=self.pooled_window(),
                                             seq_lens=seq_lens, k_seq_lens=k_seq_lens))
            else:
                assert self.router is not None
                decoding = q.shape[1] != k.shape[1]
                if decoding and self.spec.shared_qk:
                    raise NotSupportedError("decoding shared_qk routing heads needs `decoding_session` and a "
                                            "bounded routing_window (fairseq2's cache holds no past queries)")
                kr, vr = self.routing_kv(q[:, :, qh], k[:, :, kh], v[:, :, kh])
                # The lengths as the layout's device tensor: routing then never waits for the GPU.
                lens_pt = q_layout.seq_lens_pt if q_layout.padded and not decoding else None
                out, aux = routing_attention(
                    q[:, :, qh], kr, vr, self.router, causal=self.spec.causal,
                    seq_lens=lens_pt, shared_qk=self.spec.shared_qk,
                    window=self.spec.routing_window, group_size=self.spec.group_size,
                )
                self.aux_loss = aux["loss"] if self.training else None
                self.dropped_fraction = aux["dropped_fraction"]
                outs.append(out)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), None

    def extra_repr(self) -> str:
        return (f"spec={self.spec}, local_heads={self.local_heads}, pooled_heads={self.pooled_heads}, "
                f"routing_heads={self.routing_heads}")


def collect_aux_losses(model: nn.Module, *, clear: bool = True) -> Tensor | None:
    """Sum of the routing commitment losses of the last training forward over every ``MixedSDPA`` in
    ``model`` (``None`` if there are none). ``clear`` resets them so a loss is never added twice."""
    total = None
    for module in model.modules():
        if isinstance(module, MixedSDPA) and module.aux_loss is not None:
            total = module.aux_loss if total is None else total + module.aux_loss
            if clear:
                module.aux_loss = None
    return total
