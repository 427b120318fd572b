"""Incremental decoding for :func:`~seqwin.models.lm.factory.create_lm_model` models: caches, sampling, generation.

Caches per layer kind (fairseq2 ``IncrementalStateBag`` + attention-state factories):

- ``local``: the ring buffer of the last ``left`` keys (set at build time), constant memory;
- ``routing`` / ``mixed`` with a bounded ``routing_window``: inside :func:`decoding_session`, the layer's
  ``RoutingSDPA`` is wrapped so that its state does the attention itself — local heads through a ring buffer,
  routing heads through :class:`~seqwin.attention.routing.kv_cache.RoutingKVCache` (per-cluster rings of
  ``routing_window`` keys), so memory is constant too. Without a ``routing_window`` the routing heads fall back to
  ``RoutingSDPA``'s own path over a growing cache (not with ``shared_qk``);
- ``full``: fairseq2's growing cache, optionally compressed after prefill by WindowKV
  (:mod:`seqwin.attention.windowkv`).

The state/SDPA handshake: fairseq2's attention calls ``state.get()`` right before ``sdpa(...)``; our state
registers itself in a per-layer handoff there (and when it is created), and the wrapping SDPA takes it and lets
the state compute the output with the query. Without a registered state (training, plain forward) the wrapper just
calls the original SDPA.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from fairseq2.models.transformer import StandardMultiheadAttention, TorchSDPA
from fairseq2.models.transformer.multihead_attention import AttentionState
from fairseq2.models.transformer.sdpa.base import SDPA
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.nn import BatchLayout, IncrementalStateBag
from torch import Tensor

from seqwin.attention import SlidingWindowKVCache, SlidingWindowSDPA, sliding_window_attention
from seqwin.attention.fairseq2.routing_sdpa import RoutingSDPA
from seqwin.attention.routing.kv_cache import RoutingKVCache
from seqwin.attention.windowkv import WindowKV, WindowKVConfig


class _Handoff:
    def __init__(self) -> None:
        self.state: RoutingDecodeState | None = None

    def take(self) -> RoutingDecodeState | None:
        state, self.state = self.state, None
        return state


class RoutingDecodeState(AttentionState):
    """Constant-memory decoding state of a routing or mixed layer (see the module docstring)."""

    def __init__(self, k: Tensor, v: Tensor, sdpa: RoutingSDPA, handoff: _Handoff) -> None:
        spec = sdpa.spec
        self.sdpa, self.handoff = sdpa, handoff
        self.local_heads = sdpa.local_heads
        self.local = SlidingWindowKVCache(spec.window[0]) if sdpa.local_heads else None
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
        h, hk = q.shape[2], k.shape[2]
        split, k_split = self.local_heads, self.local_heads // (h // hk)
        if self.num_tokens == 0:  # prefill: the layer's own full causal forward, then fill the caches
            out, _ = self.sdpa(q, q_layout, k_rep, k_layout, v_rep, bias_cache)
            if self.local is not None:
                self.local.update(k[:, :, :k_split], v[:, :, :k_split])
            if self.routing is not None:
                ingest_routing(self.routing, q[:, :, split:], k[:, :, k_split:], v[:, :, k_split:])
        else:
            outs = []
            if self.local is not None:
                ck, cv = self.local.update(k[:, :, :k_split], v[:, :, :k_split])
                outs.append(sliding_window_attention(q[:, :, :split], ck, cv, window=self.sdpa.spec.local_window()))
            if self.routing is not None:
                outs.append(self.routing.step(q[:, :, split:], k[:, :, k_split:], v[:, :, k_split:]))
            out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        self.num_tokens += q.shape[1]
        self._pending = (k[:, :0], v[:, :0])  # cached now; do not hold on to the prompt's keys
        return out

    def reorder(self, new_order: Tensor) -> None:
        if self.local is not None:
            self.local.reorder(new_order)
        if self.routing is not None and self.routing.keys is not None:
            for name in ("keys", "values", "count"):
                setattr(self.routing, name, getattr(self.routing, name).index_select(0, new_order))

    def size_bytes(self) -> int:
        return sum(c.size_bytes() for c in (self.local, self.routing) if c is not None)

    def capacity_bytes(self) -> int:
        return self.size_bytes()


@torch.no_grad()
def ingest_routing(cache: RoutingKVCache, q: Tensor, k: Tensor, v: Tensor) -> None:
    """Write a prompt's tokens into ``cache`` at once, exactly as ``cache.step`` would one by one: token t of
    cluster c lands in ring slot ``rank % window`` (its rank among c's tokens so far), and only each cluster's
    last ``window`` tokens survive. ``q`` ``(batch, n, heads, dim)``, ``k``/``v`` with heads or kv heads."""
    if cache.keys is None:  # the first step allocates the rings
        cache.step(q[:, :1], k[:, :1], v[:, :1])
        q, k, v = q[:, 1:], k[:, 1:], v[:, 1:]
    n, h = q.shape[1], q.shape[2]
    if n == 0:
        return
    assert cache.keys is not None and cache.values is not None and cache.count is not None
    if k.shape[2] != h:
        k, v = k.repeat_interleave(h // k.shape[2], dim=2), v.repeat_interleave(h // k.shape[2], dim=2)
    ids = cache.router.assign(q if cache.shared_qk else k)  # (b, h, n)
    onehot = torch.nn.functional.one_hot(ids, cache.router.num_clusters)  # (b, h, n, c)
    before = cache.count.gather(-1, ids)  # tokens of the cluster written before this prompt
    rank = before + (onehot.cumsum(2) - onehot).gather(-1, ids[..., None])[..., 0]
    total = cache.count + onehot.sum(2)
    keep = rank >= total.gather(-1, ids) - cache.window  # each cluster's last `window` tokens
    bi, hi, ti = keep.nonzero(as_tuple=True)
    ci, slot = ids[bi, hi, ti], rank[bi, hi, ti] % cache.window
    cache.keys[bi, hi, ci, slot] = k[bi, ti, hi].to(cache.keys.dtype)
    cache.values[bi, hi, ci, slot] = v[bi, ti, hi].to(cache.values.dtype)
    cache.count = total
    cache.num_steps += n


class RoutingDecodeStateFactory:
    def __init__(self, sdpa: RoutingSDPA, handoff: _Handoff) -> None:
        self.sdpa, self.handoff = sdpa, handoff

    def __call__(self, k: Tensor, v: Tensor, max_seq_len: int, capacity_increment: int | None) -> AttentionState:
        return RoutingDecodeState(k, v, self.sdpa, self.handoff)


class StatefulRoutingSDPA(SDPA):
    """Decoding-time wrapper of a ``RoutingSDPA``: lets a registered :class:`RoutingDecodeState` attend."""

    def __init__(self, inner: RoutingSDPA, handoff: _Handoff) -> None:
        super().__init__()
        self.inner, self.handoff = inner, handoff

    def forward(self, q, q_layout, k, k_layout, v, bias_cache, *, needs_weights: bool = False):
        state = self.handoff.take()
        if state is None:
            return self.inner(q, q_layout, k, k_layout, v, bias_cache, needs_weights=needs_weights)
        return state.attend(q, q_layout, k, k_layout, v, bias_cache), None


def attention_layers(model: TransformerLM) -> list[tuple[str, StandardMultiheadAttention]]:
    """``(kind, self_attn)`` per decoder layer; kind is ``full``, ``local`` or ``routing``."""
    out = []
    for layer in model.decoder.layers:
        attn = layer.self_attn
        sdpa = attn.sdpa.inner if isinstance(attn.sdpa, StatefulRoutingSDPA) else attn.sdpa
        if isinstance(sdpa, TorchSDPA):
            out.append(("full", attn))
        elif isinstance(sdpa, SlidingWindowSDPA):
            out.append(("local", attn))
        elif isinstance(sdpa, RoutingSDPA):
            out.append(("routing", attn))
        else:
            raise TypeError(f"unknown SDPA {type(sdpa).__name__} in a decoder layer")
    return out


@contextmanager
def decoding_session(model: TransformerLM) -> Iterator[TransformerLM]:
    """Eval mode plus constant-memory routing caches for the duration of the block (restored afterwards)."""
    was_training = model.training
    model.eval()
    swapped = []
    for kind, attn in attention_layers(model):
        sdpa = attn.sdpa
        if kind != "routing" or not isinstance(sdpa, RoutingSDPA):
            continue
        if sdpa.spec.routing_window is None:
            if sdpa.spec.shared_qk:
                raise ValueError("decoding a shared_qk routing layer needs a bounded routing_window")
            continue  # RoutingSDPA's own decode path over fairseq2's growing cache
        handoff = _Handoff()
        swapped.append((attn, sdpa, attn.state_factory))
        attn.sdpa = StatefulRoutingSDPA(sdpa, handoff)
        attn.state_factory = RoutingDecodeStateFactory(sdpa, handoff)
    try:
        yield model
    finally:
        for attn, sdpa, factory in swapped:
            attn.sdpa, attn.state_factory = sdpa, factory
        model.train(was_training)


@dataclass(kw_only=True)
class SamplingConfig:
    temperature: float = 1.0
    """0: greedy."""
    top_k: int = 0
    """Keep the k most likely tokens (0: all)."""
    top_p: float = 1.0
    """Keep the smallest set of tokens whose probability reaches p."""

    def validate(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {self}")


def sample_next(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
    """Next tokens ``(batch,)`` from last-position logits ``(batch, vocab)``."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already reach top_p (the first token always stays)
        drop = probs.cumsum(-1) - probs >= cfg.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


class Decoder:
    """Step-by-step decoding of one batch of equal-length prompts inside a :func:`decoding_session`."""

    def __init__(self, model: TransformerLM, max_len: int, windowkv: WindowKVConfig | None = None,
                 capacity_increment: int | None = 16) -> None:
        if max_len > model.max_seq_len:
            raise ValueError(f"{max_len} tokens exceed the model's max_seq_len ({model.max_seq_len}); "
                             "raise model.max_seq_len (rotary table) to decode this far")
        self.model = model
        self.bag = IncrementalStateBag(max_len + 1, capacity_increment=capacity_increment)
        full = [attn for kind, attn in attention_layers(model) if kind == "full"]
        if windowkv is not None:  # checked even when nothing compresses: a bad budget is still a mistake
            windowkv.validate()
            windowkv.group_budgets(len(full))  # a per-group list must match the model's layer groups
        self.windowkv = WindowKV(full, windowkv) if windowkv is not None and windowkv.compresses else None
        self.kept: list[int] = []
        """WindowKV: prompt keys kept per full-layer group after prefill (empty: not compressed)."""

    @torch.no_grad()
    def forward(self, ids: Tensor) -> Tensor:
        """Logits ``(batch, len, vocab)`` of the next ``ids`` ``(batch, len)``; the first call is the prefill,
        where WindowKV (if any) observes and then compresses the full layers' caches."""
        first = self.bag.step_nr == 0
        if first and self.windowkv is not None:
            with self.windowkv.observe():
                logits = self.model(ids, BatchLayout.of(ids), state_bag=self.bag)
            self.kept = self.windowkv.compress(self.bag)
        elif self.windowkv is not None:
            with self.windowkv.decode():
                logits = self.model(ids, BatchLayout.of(ids), state_bag=self.bag)
        else:
            logits = self.model(ids, BatchLayout.of(ids), state_bag=self.bag)
        self.bag.increment_step_nr(ids.shape[1])
        return logits

    def cache_bytes(self) -> int:
        return self.bag.size_bytes()


@dataclass
class GenerationResult:
    tokens: Tensor
    """``(batch, new)`` generated ids (stopping early at ``eos`` for batch size 1)."""
    prefill_seconds: float
    decode_seconds: float
    cache_bytes: int
    """Incremental state after the last step."""
    kept: list[int]
    """WindowKV: prompt keys kept per full-layer group (empty: not compressed)."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens.shape[1] / max(self.decode_seconds, 1e-9)


@torch.no_grad()
def generate(
    model: TransformerLM, prompt: Tensor, max_new_tokens: int, sampling: SamplingConfig, *,
    eos_idx: int | None = None, windowkv: WindowKVConfig | None = None, seed: int = 0,
) -> GenerationResult:
    """Sample up to ``max_new_tokens`` after ``prompt`` ``(batch, len)`` with incremental decoding."""
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be (batch, len >= 1), got {tuple(prompt.shape)}")
    sampling.validate()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    with decoding_session(model):
        dec = Decoder(model, prompt.shape[1] + max_new_tokens, windowkv)
        t0 = time.perf_counter()
        logits = dec.forward(prompt.to(device))[:, -1]
        t1 = time.perf_counter()
        out = []
        for i in range(max_new_tokens):
            token = sample_next(logits, sampling, generator)
            out.append(token)
            if eos_idx is not None and prompt.shape[0] == 1 and int(token[0]) == eos_idx:
                break
            if i + 1 < max_new_tokens:
                logits = dec.forward(token[:, None])[:, -1]
        t2 = time.perf_counter()
        tokens = torch.stack(out, 1) if out else prompt.new_zeros(prompt.shape[0], 0)
        return GenerationResult(tokens.cpu(), t1 - t0, t2 - t1, dec.cache_bytes(), dec.kept)
