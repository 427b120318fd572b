"""Tiny LMs shared by the LM tests (test_lm_model.py, test_windowkv.py)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.nn import BatchLayout

from seqwin.attention import AttentionSpec, LayerAttentionConfig
from seqwin.attention.fairseq2 import collect_aux_losses
from seqwin.models.lm import LMConfig, create_lm_model


def tiny_lm_config(attention: LayerAttentionConfig, **overrides) -> LMConfig:
    """4 heads of 8 dims over 2 key/value heads, 3 layers, vocabulary 41; ``overrides`` replace any field."""
    fields: dict = dict(vocab_size=41, model_dim=32, num_layers=3, num_heads=4, num_kv_heads=2, ffn_inner_dim=64,
                        max_seq_len=512)
    return LMConfig(attention=attention, **{**fields, **overrides})


def tiny_lm(attention: LayerAttentionConfig, *, seed: int = 0, **overrides) -> TransformerLM:
    """A seeded :func:`tiny_lm_config` model in eval mode, after one training-mode forward so that routing layers
    have initialized (and moved) their centroids on data; full and local layers are unaffected by it."""
    torch.manual_seed(seed)
    cfg = tiny_lm_config(attention, **overrides)
    model = create_lm_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 50))
    model.train()
    model(x, BatchLayout.of(x))
    collect_aux_losses(model)  # drop the warm-up's commitment losses
    return model.eval()


def layer_kinds(kinds: Sequence[str], local_window: tuple[int, int] = (15, 0)) -> LayerAttentionConfig:
    """Full attention, except local sliding-window attention where ``kinds[i] == "local"``."""
    overrides = {i: AttentionSpec(kind="local", window=local_window) for i, kind in enumerate(kinds) if kind == "local"}
    return LayerAttentionConfig(default=AttentionSpec(kind="full"), overrides=overrides)


# `seqwin train lm` config for tiny runs: % (tokenizer kind, data dir, data format)
TINY_RECIPE = """
model: {model_dim: 32, num_layers: 2, num_heads: 4, ffn_inner_dim: 64, max_seq_len: 4096,
        attention: {default: {kind: local, window: [15, 0]},
                    top: {kind: mixed, local_heads: 2, routing_heads: 2, window: [15, 0], num_clusters: 4,
                          routing_window: 16},
                    num_top_layers: 1}}
tokenizer: {kind: %s, vocab_size: 320, codebooks: 2, codebook_size: 16}
data: {dir: %s, format: %s, seq_len: 64, batch_size: 2, valid_tokens: 512}
trainer: {max_steps: 4, warmup_steps: 1, lr: 0.003, checkpoint_every: 2, log_every: 2}
"""
