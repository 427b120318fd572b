"""WindowKV on a fairseq2 model: compress the full-attention layers' KV caches after prefill.

``observe()`` captures the observation queries of the full layers during the prefill forward (forward pre-hooks
on their SDPAs), ``compress(state_bag)`` then swaps those layers' caches for compressed ones, chosen by
:func:`seqwin.attention.windowkv.select_windows` (the algorithm, its config and its reference live there).
Kept keys still carry their rotary encoding, and new tokens keep absolute positions (from the state bag), so
decoding after compression needs nothing special: the compressed cache is an ordinary growing fairseq2 cache.
When layer groups kept different lengths, :meth:`WindowKV.decode` gives each layer its own causal mask (fairseq2
shares one per forward).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from fairseq2.models.transformer.attention_bias import AttentionBiasCache
from fairseq2.models.transformer.multihead_attention import AttentionState, FullAttentionState
from fairseq2.nn import IncrementalStateBag
from torch import Tensor, nn

from seqwin.attention.windowkv import WindowKVConfig, gather_kv, observation_scores, select_windows


class WindowKV:
    """WindowKV for the full-attention layers ``layers`` (fairseq2 ``MultiheadAttention`` modules with an
    ``sdpa``), in model order. Use ``with wkv.observe(): model(prompt, state_bag=bag)``, then ``wkv.compress(bag)``,
    and run later forwards inside ``wkv.decode()``."""

    def __init__(self, layers: Sequence[nn.Module], config: WindowKVConfig) -> None:
        config.validate()
        self.layers, self.config = list(layers), config
        self.budgets = config.group_budgets(len(self.layers))  # checks a per-group list against the layers
        self._queries: dict[int, tuple[Tensor, float | None]] = {}
        self._lengths: list[int] = []

    def group(self, layer: int) -> int:
        """Layer group of the ``layer``-th full-attention layer."""
        return layer // self.config.share_layers

    @contextmanager
    def observe(self) -> Iterator[None]:
        self._queries.clear()
        handles = []
        for i, attn in enumerate(self.layers):
            if self.budgets[self.group(i)] >= 1.0 or i % self.config.share_layers:
                continue  # only the leaders of compressed groups score

            def hook(module, args, i=i):  # SDPA args: q, q_layout, k, k_layout, v, bias_cache
                q = args[0]
                # the layer's own softmax scale, so that scores are its real attention (None: 1/sqrt(head_dim))
                self._queries[i] = (q[:, -min(self.config.obs_window, q.shape[1]) :].detach(),
                                    getattr(module, "scale", None))

            handles.append(attn.sdpa.register_forward_pre_hook(hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def compress(self, state_bag: IncrementalStateBag) -> list[int]:
        """Replace each observed layer's cache with its kept windows; returns the kept prompt length per layer
        group (a group with budget 1.0 keeps the whole prompt)."""
        kept = [0] * len(self.budgets)
        self._lengths = []
        positions = None
        for i, attn in enumerate(self.layers):
            g = self.group(i)
            state = state_bag.maybe_get_state(attn, AttentionState)
            if state is None:
                raise RuntimeError("WindowKV.compress needs a prefill forward inside observe() first")
            k, v = state.get()
            if self.budgets[g] < 1.0:
                if i % self.config.share_layers == 0:  # group leader selects, the group reuses
                    if i not in self._queries:
                        raise RuntimeError("WindowKV.compress needs a prefill forward inside observe() first")
                    q_obs, scale = self._queries[i]
                    positions = select_windows(observation_scores(q_obs, k, scale=scale), self.config,
                                               self.budgets[g])
                assert positions is not None
                k, v = gather_kv(k, v, positions)
                # Room for every later step when the bag preallocates (capacity_increment=None).
                state_bag.set_state(attn, FullAttentionState(k, v, k.shape[1] + state_bag.max_num_steps,
                                                             state_bag.capacity_increment))
            kept[g] = k.shape[1]
            self._lengths.append(k.shape[1])
        self._queries.clear()
        return kept

    @contextmanager
    def decode(self) -> Iterator[None]:
        """Context for the forwards after :meth:`compress`. fairseq2 builds one causal mask per forward and shares
        it between layers (its bias cache is keyed by the bias alone); when groups kept different lengths a
        chunk of several queries needs a mask per key length, so each full layer then gets a fresh bias cache."""
        if len(set(self._lengths)) <= 1:
            yield
            return

        def hook(module: nn.Module, args: tuple) -> tuple:  # SDPA args: q, q_layout, k, k_layout, v, bias_cache
            return (*args[:5], AttentionBiasCache(), *args[6:])

        handles = [attn.sdpa.register_forward_pre_hook(hook) for attn in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
