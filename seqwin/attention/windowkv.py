"""WindowKV: compress the KV cache of full-attention layers after prefill by keeping the best token windows.

At the end of prefill, the last ``obs_window`` queries of the prompt (the observation window) attend to the whole
prompt; the attention mass each key receives, summed over those queries and over the query heads that share the
key/value head, scores the key. The prompt before the observation window is cut into windows of ``window_size``
consecutive tokens (from position 0; the remainder joins the always-kept recent part), a window's score is the
sum of its tokens' scores, and each key/value head keeps its top windows within a budget of ``budget * prompt_len``
tokens, plus the recent part. Keeping whole windows rather than single tokens keeps local context intact (WindowKV,
Zuo et al. 2025, after SnapKV's observation-window scoring). Consecutive full-attention layers are grouped
(``share_layers``); the first layer of a group selects and the others reuse its indices, saving the scoring work.

Kept keys still carry their rotary encoding, and new tokens keep absolute positions (from the state bag), so
decoding after compression needs nothing special: the compressed cache is an ordinary growing fairseq2 cache.
Every kept count is the same for all heads and layers, so caches stay rectangular.

:class:`WindowKV` ties this to a fairseq2 model: ``observe()`` captures the observation queries of the full layers
during the prefill forward (forward pre-hooks on their SDPAs), ``compress(state_bag)`` then swaps those layers'
caches for compressed ones. :func:`windowkv_reference` is a direct per-head loop used by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from fairseq2.models.transformer.multihead_attention import AttentionState, FullAttentionState
from fairseq2.nn import IncrementalStateBag
from torch import Tensor, nn


@dataclass(kw_only=True)
class WindowKVConfig:
    budget: float = 0.12
    """Fraction of the prompt's keys kept per layer (1.0: no compression)."""
    window_size: int = 8
    obs_window: int = 32
    share_layers: int = 8
    """Consecutive full-attention layers that share one selection."""

    def validate(self) -> None:
        if not 0.0 < self.budget <= 1.0:
            raise ValueError(f"budget must be in (0, 1], got {self.budget}")
        if self.window_size < 1 or self.obs_window < 1 or self.share_layers < 1:
            raise ValueError("window_size, obs_window and share_layers must be >= 1")


def observation_scores(q_obs: Tensor, k: Tensor, *, scale: float | None = None) -> Tensor:
    """Attention mass per key ``(batch, kv_heads, seq)`` from the observation queries ``q_obs``
    ``(batch, obs, heads, dim)``, which sit at the last ``obs`` positions of ``k`` ``(batch, seq, kv_heads, dim)``
    (causal: an observation query sees keys up to its own position)."""
    b, w, h, d = q_obs.shape
    n, hk = k.shape[1], k.shape[2]
    if w > n or h % hk:
        raise ValueError(f"bad shapes: q_obs {tuple(q_obs.shape)}, k {tuple(k.shape)}")
    scale = d**-0.5 if scale is None else scale
    qg = q_obs.float().view(b, w, hk, h // hk, d)
    logits = torch.einsum("bwgqd,bngd->bgqwn", qg, k.float()) * scale  # (b, hk, group, w, n)
    pos = torch.arange(n, device=k.device)
    q_pos = torch.arange(n - w, n, device=k.device)
    logits = logits.masked_fill(pos[None, :] > q_pos[:, None], float("-inf"))
    return logits.softmax(-1).sum(dim=(2, 3))


def kept_counts(seq_len: int, config: WindowKVConfig) -> tuple[int, int]:
    """``(recent, num_windows)``: tokens always kept at the end and windows selected before them."""
    obs = min(config.obs_window, seq_len)
    recent = obs + (seq_len - obs) % config.window_size
    candidates = (seq_len - recent) // config.window_size
    budget = math.ceil(config.budget * seq_len)
    return recent, max(0, min(candidates, (budget - recent) // config.window_size))


def select_windows(scores: Tensor, config: WindowKVConfig) -> Tensor:
    """Sorted kept positions ``(batch, kv_heads, kept)`` from per-key scores ``(batch, kv_heads, seq)``."""
    b, hk, n = scores.shape
    recent, num_windows = kept_counts(n, config)
    w = config.window_size
    cand = (n - recent) // w
    recent_pos = torch.arange(n - recent, n, device=scores.device).expand(b, hk, recent)
    if num_windows == 0:
        return recent_pos
    window_scores = scores[..., : cand * w].reshape(b, hk, cand, w).sum(-1)
    top = window_scores.topk(num_windows, dim=-1).indices.sort(-1).values  # (b, hk, num_windows)
    pos = (top[..., None] * w + torch.arange(w, device=scores.device)).flatten(-2)
    return torch.cat([pos, recent_pos], dim=-1)


def gather_kv(k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """Keep ``positions`` ``(batch, kv_heads, kept)`` of ``k``/``v`` ``(batch, seq, kv_heads, dim)``."""
    idx = positions.transpose(1, 2)[..., None]  # (b, kept, hk, 1)
    return k.gather(1, idx.expand(-1, -1, -1, k.shape[-1])), v.gather(1, idx.expand(-1, -1, -1, v.shape[-1]))


def windowkv_reference(q_obs: Tensor, k: Tensor, config: WindowKVConfig) -> list[list[list[int]]]:
    """Per (batch, kv head) kept positions, by plain loops over windows (the tests' reference)."""
    b, w, h, d = q_obs.shape
    n, hk = k.shape[1], k.shape[2]
    recent, num_windows = kept_counts(n, config)
    out = []
    for bi in range(b):
        rows = []
        for g in range(hk):
            score = torch.zeros(n, dtype=torch.float64)
            for head in range(g * (h // hk), (g + 1) * (h // hk)):
                for i in range(w):
                    t = n - w + i
                    att = (k[bi, : t + 1, g].double() @ q_obs[bi, i, head].double()) * d**-0.5
                    score[: t + 1] += att.softmax(0)
            windows = [(float(score[s : s + config.window_size].sum()), s)
                       for s in range(0, n - recent, config.window_size)]
            best = sorted(s for _, s in sorted(windows, reverse=True)[:num_windows])
            rows.append([p for s in best for p in range(s, s + config.window_size)] + list(range(n - recent, n)))
        out.append(rows)
    return out


class WindowKV:
    """WindowKV for the full-attention layers ``layers`` (fairseq2 ``MultiheadAttention`` modules with an
    ``sdpa``), in model order. Use ``with wkv.observe(): model(prompt, state_bag=bag)`` then
    ``wkv.compress(bag)``."""

    def __init__(self, layers: Sequence[nn.Module], config: WindowKVConfig) -> None:
        config.validate()
        self.layers, self.config = list(layers), config
        self._queries: dict[int, Tensor] = {}

    @contextmanager
    def observe(self) -> Iterator[None]:
        self._queries.clear()
        handles = []
        for i, attn in enumerate(self.layers):
            def hook(module, args, i=i):  # SDPA args: q, q_layout, k, k_layout, v, bias_cache
                q = args[0]
                self._queries[i] = q[:, -min(self.config.obs_window, q.shape[1]) :].detach()

            handles.append(attn.sdpa.register_forward_pre_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def compress(self, state_bag: IncrementalStateBag) -> int:
        """Replace each observed layer's cache with its kept windows; returns the kept length per layer."""
        if self.config.budget >= 1.0:
            return -1
        kept = -1
        positions = None
        for i, attn in enumerate(self.layers):
            state = state_bag.maybe_get_state(attn, AttentionState)
            if state is None or i not in self._queries:
                raise RuntimeError("WindowKV.compress needs a prefill forward inside observe() first")
            k, v = state.get()
            if i % self.config.share_layers == 0:  # group leader selects, the group reuses
                positions = select_windows(observation_scores(self._queries[i], k), self.config)
            assert positions is not None
            k, v = gather_kv(k, v, positions)
            kept = k.shape[1]
            # Room for every later step when the bag preallocates (capacity_increment=None).
            state_bag.set_state(attn, FullAttentionState(k, v, kept + state_bag.max_num_steps,
                                                         state_bag.capacity_increment))
        self._queries.clear()
        return kept
