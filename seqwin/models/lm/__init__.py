"""Decoder-only language models with per-layer full / local / routing / mixed attention (the ``seqwin_lm``
fairseq2 family), their tokenizers and incremental decoding (ring-buffer, routing and WindowKV caches)."""

from seqwin.models.lm.config import SEQWIN_LM_FAMILY, LMConfig
from seqwin.models.lm.decoding import Decoder, GenerationResult, SamplingConfig, decoding_session, generate
from seqwin.models.lm.factory import count_parameters, create_lm_model
from seqwin.models.lm.family import register_seqwin_lm
from seqwin.models.lm.tokenizer import (
    ByteTokenizer,
    CodeTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    train_sentencepiece,
)

__all__ = [
    "SEQWIN_LM_FAMILY",
    "ByteTokenizer",
    "CodeTokenizer",
    "Decoder",
    "GenerationResult",
    "LMConfig",
    "SamplingConfig",
    "SentencePieceTokenizer",
    "count_parameters",
    "create_lm_model",
    "decoding_session",
    "generate",
    "load_tokenizer",
    "register_seqwin_lm",
    "train_sentencepiece",
]
