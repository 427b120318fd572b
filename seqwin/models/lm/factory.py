"""``create_lm_model``: build a fairseq2 ``TransformerLM`` from an :class:`LMConfig`.

Per layer, :func:`seqwin.attention.fairseq2.make_sdpa` picks the SDPA of the layer's causal spec and
:func:`~seqwin.attention.fairseq2.make_state_factory` its incremental-decoding cache:

- ``full``: fairseq2's ``TorchSDPA`` with a causal bias (PyTorch's fused kernel) and the default growing cache;
- ``local``: :class:`~seqwin.attention.fairseq2.SlidingWindowSDPA` (one window, or one per head) with the
  ring-buffer cache, so decoding memory stays O(window);
- ``pooled`` / ``routing`` / ``mixed``: :class:`~seqwin.attention.fairseq2.MixedSDPA` (routing heads' k-means
  centroids are buffers, saved with the model); for decoding see :mod:`seqwin.models.lm.decoding`.

Rotary positions are applied to queries and keys in every layer (one shared table); embeddings are optionally tied
to the output projection.
"""

from __future__ import annotations

import torch.nn as nn
from fairseq2.models.transformer import (
    FeedForwardNetwork,
    GLUFeedForwardNetwork,
    StandardFeedForwardNetwork,
    StandardMultiheadAttention,
    TransformerEmbeddingFrontend,
    TransformerNormOrder,
)
from fairseq2.models.transformer_lm import (
    StandardTransformerLMDecoder,
    StandardTransformerLMDecoderLayer,
    TransformerLM,
)
from fairseq2.nn import Linear, Projection, RMSNorm, RotaryEncoder, StandardEmbedding, TiedProjection
from torch import Tensor

from seqwin.attention.fairseq2 import make_sdpa, make_state_factory
from seqwin.models.lm.config import LMConfig


def _normal(weight: Tensor, bias: Tensor | None, std: float) -> None:
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)
    if bias is not None:
        nn.init.zeros_(bias)


class LMFactory:
    def __init__(self, config: LMConfig) -> None:
        config.validate()
        if config.vocab_size < 1:
            raise ValueError("LMConfig.vocab_size must be set (from the tokenizer) before building the model")
        self.config = config
        self.layers = config.layers()

    def create_model(self) -> TransformerLM:
        cfg = self.config
        embed = StandardEmbedding(cfg.vocab_size, cfg.model_dim, cfg.pad_idx,
                                  init_fn=lambda e: _normal(e.weight, None, cfg.model_dim**-0.5))
        frontend = TransformerEmbeddingFrontend(cfg.model_dim, embed, pos_encoder=None, no_scale=True,
                                                dropout_p=cfg.dropout_p)
        rope = RotaryEncoder(cfg.head_dim, cfg.max_seq_len, theta=cfg.rope_theta)
        layers = [self.create_layer(i, rope) for i in range(cfg.num_layers)]
        decoder = StandardTransformerLMDecoder(layers, RMSNorm(cfg.model_dim, bias=False))
        final_proj: Projection
        if cfg.tied_embeddings:
            final_proj = TiedProjection(embed.weight, bias=None)
        else:
            final_proj = Linear(cfg.model_dim, cfg.vocab_size, bias=False,
                                init_fn=lambda p: _normal(p.weight, None, cfg.model_dim**-0.5))
        return TransformerLM(cfg.model_dim, frontend, decoder, final_proj, cfg.pad_idx, cfg.max_seq_len)

    def _init_proj(self, layer_idx: int):
        # GPT-2/LLaMA style: residual branches scaled down with depth so deep stacks start near identity.
        scale = (2 * (layer_idx + 1)) ** 0.5

        def init(proj: Linear) -> None:
            _normal(proj.weight, proj.bias, proj.weight.shape[1] ** -0.5 / scale)

        return init

    def create_layer(self, idx: int, rope: RotaryEncoder) -> StandardTransformerLMDecoderLayer:
        cfg, layer = self.config, self.layers[idx]
        attn = StandardMultiheadAttention(
            cfg.model_dim, cfg.num_heads, make_sdpa(layer, cfg.num_heads, cfg.head_dim),
            num_key_value_heads=cfg.num_kv_heads, qkv_proj_init_fn=self._init_proj(idx), pos_encoder=rope,
            output_proj_init_fn=self._init_proj(idx), bias=False, state_factory=make_state_factory(layer),
        )
        ffn: FeedForwardNetwork
        if cfg.ffn == "glu":
            ffn = GLUFeedForwardNetwork(cfg.model_dim, cfg.ffn_inner_dim, bias=False,
                                        proj_init_fn=self._init_proj(idx))
        else:
            ffn = StandardFeedForwardNetwork(cfg.model_dim, cfg.ffn_inner_dim, bias=False,
                                             proj_init_fn=self._init_proj(idx))
        return StandardTransformerLMDecoderLayer(
            attn, RMSNorm(cfg.model_dim, bias=False), ffn, RMSNorm(cfg.model_dim, bias=False),
            norm_order=TransformerNormOrder.PRE, dropout_p=cfg.dropout_p,
        )


def create_lm_model(config: LMConfig) -> TransformerLM:
    """A fairseq2 ``TransformerLM`` for ``config`` (``config.vocab_size`` must be set)."""
    return LMFactory(config).create_model()


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())
