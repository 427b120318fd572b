"""Incremental decoding of fairseq2 ``TransformerLM`` decoders built from seqwin's SDPAs, in bounded memory.

Caches per layer kind (fairseq2 ``IncrementalStateBag`` + attention-state factories):

- ``local``: the ring buffer of the last ``left`` keys (set at build time), constant memory;
- ``pooled`` / ``routing`` / ``mixed``: inside :func:`decoding_session`, the layer's ``MixedSDPA`` is wrapped so
  that its state does the attention itself, one cache per head group — local heads through a ring buffer, pooled
  heads through :class:`~seqwin.attention.pooled.PooledKVCache` (finished block means, the running sum of the
  current block, a ring of their window: it grows by one key per ``pool_size`` tokens), routing heads through
  :class:`~seqwin.attention.routing.RoutingKVCache` (per-cluster rings of ``routing_window`` keys, constant).
  Routing heads without a ``routing_window`` make the whole layer fall back to ``MixedSDPA``'s own path over a
  growing cache (not with ``shared_qk``);
- ``full``: fairseq2's growing cache, optionally compressed after prefill by WindowKV
  (:mod:`seqwin.attention.fairseq2.windowkv`).

The state/SDPA handshake: fairseq2's attention calls ``state.get()`` right before ``sdpa(...)``; our state
registers itself in a per-layer handoff there (and when it is created), and the wrapping SDPA takes it and lets
the state compute the output with the query. Without a registered state (training, plain forward) the wrapper just
calls the original SDPA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from fairseq2.models.transformer import StandardMultiheadAttention, TorchSDPA
from fairseq2.models.transformer.multihead_attention import AttentionState
from fairseq2.models.transformer.sdpa.base import SDPA
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.nn import BatchLayout
from torch import Tensor

from seqwin.attention.fairseq2.mixed_sdpa import MixedSDPA
from seqwin.attention.fairseq2.sliding_window_sdpa import SlidingWindowSDPA
from seqwin.attention.pooled import PooledKVCache
from seqwin.attention.routing import RoutingKVCache, ingest_routing
from seqwin.attention.sliding_window import SlidingWindowKVCache, sliding_window_attention


class _Handoff:
    def __init__(self) -> None:
        self.state: MixedDecodeState | None = None

    def take(self) -> MixedDecodeState | None:
        state, self.state = self.state, None
        return state


class MixedDecodeState(AttentionState):
    """Decoding state of a pooled, routing or mixed layer: one cache per head group (see the module docstring)."""

    def __init__(self, k: Tensor, v: Tensor, sdpa: MixedSDPA, handoff: _Handoff) -> None:
        spec = sdpa.spec
        self.sdpa, self.handoff = sdpa, handoff
        self.local = SlidingWindowKVCache(spec.window[0]) if sdpa.local_heads else None
        self.pooled = None
        if sdpa.pooled_heads:
            window = sdpa.pooled_window()
            self.pooled = PooledKVCache(spec.pool_size, None if window is None else window[0])
        self.routing = None
        if sdpa.routing_heads:
            assert sdpa.router is not None and spec.routing_window is not None
            self.routing = RoutingKVCache(sdpa.router, spec.routing_window, shared_qk=spec.shared_qk)
        self.num_tokens = 0
        self._pending = (k, v)
        handoff.state = self

    def append(self, k: Tensor, v: Tensor) -> None:
        self._pending = (k, v)

    def get(self) -> tuple[Tensor, Tensor]:
        self.handoff.state = self
        return self._pending

    @torch.no_grad()
    def attend(self, q: Tensor, q_layout: BatchLayout, k_rep: Tensor, k_layout: BatchLayout, v_rep: Tensor,
               bias_cache) -> Tensor:
        """Output for the queries ``q`` of the pending tokens; caches them."""
        k, v = self._pending
        groups = self.sdpa.head_groups(q.shape[2] // k.shape[2])
        if self.num_tokens == 0:  # prefill: the layer's own full causal forward, then fill the caches
            out, _ = self.sdpa(q, q_layout, k_rep, k_layout, v_rep, bias_cache)
            for name, qh, kh in groups:
                if name == "local":
                    self.local.update(k[:, :, kh], v[:, :, kh])
                elif name == "pooled":
                    self.pooled.ingest(k[:, :, kh], v[:, :, kh])
                else:
                    kr, vr = self.sdpa.routing_kv(q[:, :, qh], k[:, :, kh], v[:, :, kh])
                    ingest_routing(self.routing, q[:, :, qh], kr, vr)
        else:
            outs = []
            for name, qh, kh in groups:
                if name == "local":
                    ck, cv = self.local.update(k[:, :, kh], v[:, :, kh])
                    outs.append(sliding_window_attention(q[:, :, qh], ck, cv, window=self.sdpa.spec.local_window()))
                elif name == "pooled":
                    outs.append(self.pooled.step(q[:, :, qh], k[:, :, kh], v[:, :, kh]))
                else:
                    kr, vr = self.sdpa.routing_kv(q[:, :, qh], k[:, :, kh], v[:, :, kh])
                    outs.append(self.routing.step(q[:, :, qh], kr, vr))
            out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        self.num_tokens += q.shape[1]
        self._pending = (k[:, :0], v[:, :0])  # cached now; do not hold on to the prompt's keys
        return out

    def reorder(self, new_order: Tensor) -> None:
        if self.local is not None:
            self.local.reorder(new_order)
        if self.pooled is not None:
            self.pooled.reorder(new_order)
        if self.routing is not None and self.routing.keys is not None:
            for name in ("keys", "values", "count"):
                setattr(self.routing, name, getattr(self.routing, name).index_select(0, new_order))

    def size_bytes(self) -> int:
        return sum(c.size_bytes() for c in (self.local, self.pooled, self.routing) if c is not None)

    def capacity_bytes(self) -> int:
        return self.size_bytes()


class MixedDecodeStateFactory:
    def __init__(self, sdpa: MixedSDPA, handoff: _Handoff) -> None:
        self.sdpa, self.handoff = sdpa, handoff

    def __call__(self, k: Tensor, v: Tensor, max_seq_len: int, capacity_increment: int | None) -> AttentionState:
        return MixedDecodeState(k, v, self.sdpa, self.handoff)


class StatefulMixedSDPA(SDPA):
    """Decoding-time wrapper of a ``MixedSDPA``: lets a registered :class:`MixedDecodeState` attend."""

    def __init__(self, inner: MixedSDPA, handoff: _Handoff) -> None:
        super().__init__()
        self.inner, self.handoff = inner, handoff

    def forward(self, q, q_layout, k, k_layout, v, bias_cache, *, needs_weights: bool = False):
        state = self.handoff.take()
        if state is None:
            return self.inner(q, q_layout, k, k_layout, v, bias_cache, needs_weights=needs_weights)
        return state.attend(q, q_layout, k, k_layout, v, bias_cache), None


def attention_layers(model: TransformerLM) -> list[tuple[str, StandardMultiheadAttention]]:
    """``(kind, self_attn)`` per decoder layer; kind is ``full``, ``local``, or the spec kind of a ``MixedSDPA``
    (``pooled``, ``routing`` or ``mixed``)."""
    out = []
    for layer in model.decoder.layers:
        attn = layer.self_attn
        sdpa = attn.sdpa.inner if isinstance(attn.sdpa, StatefulMixedSDPA) else attn.sdpa
        if isinstance(sdpa, TorchSDPA):
            out.append(("full", attn))
        elif isinstance(sdpa, SlidingWindowSDPA):
            out.append(("local", attn))
        elif isinstance(sdpa, MixedSDPA):
            out.append((sdpa.spec.kind, attn))
        else:
            raise TypeError(f"unknown SDPA {type(sdpa).__name__} in a decoder layer")
    return out


@contextmanager
def decoding_session(model: TransformerLM) -> Iterator[TransformerLM]:
    """Eval mode plus the per-group decoding caches of pooled, routing and mixed layers for the duration of the
    block (restored afterwards)."""
    was_training = model.training
    model.eval()
    swapped = []
    for _, attn in attention_layers(model):
        sdpa = attn.sdpa
        if not isinstance(sdpa, MixedSDPA):
            continue
        if sdpa.routing_heads and sdpa.spec.routing_window is None:
            if sdpa.spec.shared_qk:
                raise ValueError("decoding a shared_qk routing layer needs a bounded routing_window")
            continue  # MixedSDPA's own decode path over fairseq2's growing cache
        handoff = _Handoff()
        swapped.append((attn, sdpa, attn.state_factory))
        attn.sdpa = StatefulMixedSDPA(sdpa, handoff)
        attn.state_factory = MixedDecodeStateFactory(sdpa, handoff)
    try:
        yield model
    finally:
        for attn, sdpa, factory in swapped:
            attn.sdpa, attn.state_factory = sdpa, factory
        model.train(was_training)
