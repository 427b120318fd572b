"""Incremental decoding for :func:`~seqwin.models.lm.factory.create_lm_model` models: sampling and generation.

The caches (ring buffers for local and routing heads, block means for pooled heads, WindowKV for full layers) and
:func:`decoding_session`, which switches pooled, routing and mixed layers to their caches, are in
:mod:`seqwin.attention.fairseq2.decoding`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.nn import BatchLayout, IncrementalStateBag
from torch import Tensor

from seqwin.attention.fairseq2.decoding import attention_layers, decoding_session
from seqwin.attention.fairseq2.windowkv import WindowKV
from seqwin.attention.windowkv import WindowKVConfig


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
