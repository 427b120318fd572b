"""The ``seqwin_lm`` fairseq2 model family: config presets, factory, and loading of ``seqwin train lm`` checkpoints.

``register_seqwin_lm(container)`` registers the family explicitly (``fairseq2.init_fairseq2(extras=...)`` or a call
from your own fairseq2 extension; seqwin declares no ``fairseq2.extension`` entry point): once registered,
fairseq2's model hub, asset cards and recipes can name the family (``model_family: seqwin_lm``) and the
architectures below. Our training checkpoints and LM files hold ``{"model": state_dict, ...}``; the state-dict
converter takes the model part and drops the tied output weight, which fairseq2's loader yields only once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fairseq2.composition.models import register_model_family
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.runtime.config_registry import ConfigRegistrar
from fairseq2.runtime.dependency import DependencyContainer

from seqwin.attention import AttentionSpec, LayerAttentionConfig
from seqwin.models.lm.config import SEQWIN_LM_FAMILY, LMConfig
from seqwin.models.lm.factory import create_lm_model


def convert_checkpoint(state_dict: Mapping[str, Any], config: LMConfig) -> dict[str, Any]:
    model = state_dict.get("model", state_dict)
    if config.tied_embeddings:
        model = {k: v for k, v in model.items() if k != "final_proj.weight"}
    return dict(model)


def rt_wikitext103() -> LMConfig:
    """Routing Transformer, Wikitext-103 shape (Roy et al. 2021; see recipes/lm/rt_wikitext103.yaml for which
    numbers come from the paper/public code and which are ours): local window 256 everywhere, 8 local + 8 routing
    heads (8 clusters, routing window 512) in the top 2 of 10 layers, d=1024, 4096-token sequences."""
    local = AttentionSpec(kind="local", window=(255, 0), causal=True)
    mixed = AttentionSpec(kind="mixed", local_heads=8, routing_heads=8, window=(255, 0), num_clusters=8,
                          routing_window=512, causal=True)
    return LMConfig(model_dim=1024, num_layers=10, num_heads=16, ffn_inner_dim=4096, ffn="relu", dropout_p=0.3,
                    max_seq_len=65536, tied_embeddings=True, vocab_size=32_001,
                    attention=LayerAttentionConfig(default=local, top=mixed, num_top_layers=2))


def rt_pg19() -> LMConfig:
    """Routing Transformer, PG-19 shape (see recipes/lm/rt_pg19.yaml): 22 layers, 8192-token sequences, local
    window 256, 8 local + 8 routing heads (16 clusters, routing window 512) in the top 4 layers, d=1024."""
    local = AttentionSpec(kind="local", window=(255, 0), causal=True)
    mixed = AttentionSpec(kind="mixed", local_heads=8, routing_heads=8, window=(255, 0), num_clusters=16,
                          routing_window=512, causal=True)
    return LMConfig(model_dim=1024, num_layers=22, num_heads=16, ffn_inner_dim=4096, ffn="relu", dropout_p=0.1,
                    max_seq_len=65536, tied_embeddings=True, vocab_size=32_001,
                    attention=LayerAttentionConfig(default=local, top=mixed, num_top_layers=4))


def mini() -> LMConfig:
    """The demo model (recipes/lm/mini.yaml) with a 1024-piece SentencePiece vocabulary."""
    local = AttentionSpec(kind="local", window=(255, 0), causal=True)
    mixed = AttentionSpec(kind="mixed", local_heads=2, routing_heads=2, window=(255, 0), num_clusters=8,
                          routing_window=256, causal=True)
    return LMConfig(model_dim=96, num_layers=3, num_heads=4, ffn_inner_dim=384, vocab_size=1025,
                    attention=LayerAttentionConfig(default=local, top=mixed, num_top_layers=1))


ARCHS = {"mini": mini, "rt_wikitext103": rt_wikitext103, "rt_pg19": rt_pg19}


def register_seqwin_lm(container: DependencyContainer) -> None:
    """Register the ``seqwin_lm`` family and its architectures in a fairseq2 dependency container."""
    register_model_family(container, SEQWIN_LM_FAMILY, kls=TransformerLM, config_kls=LMConfig,
                          factory=create_lm_model, state_dict_converter=convert_checkpoint, supports_meta=False)
    arch = ConfigRegistrar(container, LMConfig)
    for name, make in ARCHS.items():
        arch(name)(make)
