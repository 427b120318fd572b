"""The fairseq2 SDPA (and decoding cache) of one layer's :class:`~seqwin.attention.specs.LayerAttention`.

Every seqwin model builds its attention layers here, so a spec means the same thing in the wav2vec2 encoder and
in the LM decoder:

- ``full``: fairseq2's dense ``TorchSDPA`` (PyTorch's fused kernel), with a causal bias when the spec is causal;
- ``local``: :class:`SlidingWindowSDPA` over the layer's window, or its per-head windows;
- ``pooled`` / ``routing`` / ``mixed``: :class:`MixedSDPA` (routing heads' k-means centroids are buffers, saved
  with the model).
"""

from __future__ import annotations

from fairseq2.models.transformer import CausalAttentionBias, IdentityBias, TorchSDPA
from fairseq2.models.transformer.sdpa.base import SDPA

from seqwin.attention.fairseq2.mixed_sdpa import MixedSDPA
from seqwin.attention.fairseq2.sliding_window_sdpa import SlidingWindowSDPA
from seqwin.attention.fairseq2.sliding_window_state import SlidingWindowAttentionStateFactory
from seqwin.attention.specs import LayerAttention


def make_sdpa(layer: LayerAttention, num_heads: int, head_dim: int, *, dropout_p: float = 0.0) -> SDPA:
    """The SDPA of one layer with ``num_heads`` heads of ``head_dim``; ``dropout_p``: attention dropout in
    training (full and local layers)."""
    spec = layer.spec
    if spec.kind == "full":
        return TorchSDPA(CausalAttentionBias() if spec.causal else IdentityBias(), dropout_p=dropout_p)
    if spec.kind == "local":
        return SlidingWindowSDPA(layer.windows(), dropout_p=dropout_p)
    # Pooled and routing heads have no attention dropout: their kernels do not implement it.
    return MixedSDPA(spec, num_heads, head_dim)


def make_state_factory(layer: LayerAttention) -> SlidingWindowAttentionStateFactory | None:
    """The incremental-decoding KV cache of a causal layer: a ring buffer of the longest look-back of its heads
    for a ``local`` layer, so decoding memory stays O(window); ``None`` (fairseq2's growing cache) otherwise.
    Pooled, routing and mixed layers get theirs from :func:`~seqwin.attention.fairseq2.decoding_session`."""
    if layer.spec.kind == "local" and layer.spec.causal:
        return SlidingWindowAttentionStateFactory(layer.max_look_back())
    return None
