"""The ``seqwin train lm`` recipe config (YAML in ``recipes/lm/*.yaml``; ``--set key=value`` overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from seqwin.models.lm.config import LMConfig
from seqwin.training import TrainerConfig


@dataclass(kw_only=True)
class TokenizerConfig:
    kind: Literal["sentencepiece", "byte", "codes"] = "sentencepiece"
    model: Path | None = None
    """A directory from ``seqwin train tokenizer`` to reuse; ``None``: train one into ``OUT/`` (sentencepiece)."""
    vocab_size: int = 2000
    model_type: Literal["unigram", "bpe"] = "unigram"
    max_sentences: int = 300_000
    """Lines SentencePiece samples from the training text."""
    codebooks: int = 1
    """Codes: how many quantizer levels (from the first) the LM models, flattened frame by frame."""
    codebook_size: int = 1024

    def validate(self) -> None:
        if self.vocab_size < 8 or self.max_sentences < 1:
            raise ValueError("vocab_size must be >= 8 and max_sentences >= 1")
        if self.codebooks < 1 or self.codebook_size < 2:
            raise ValueError("codebooks must be >= 1 and codebook_size >= 2")


@dataclass(kw_only=True)
class DataConfig:
    dir: Path = Path("data/text")
    """``seqwin prepare text`` output ({train,valid,test}.txt), or a code directory ({split}.tsv index, see
    ``seqwin.recipes.lm.data``)."""
    format: Literal["text", "codes"] = "text"
    seq_len: int = 4096
    """Tokens per packed training sequence."""
    batch_size: int = 1
    valid_split: str = "valid"
    valid_tokens: int = 32768
    """Tokens of the valid split scored at each validation (0: all)."""

    def validate(self) -> None:
        if self.seq_len < 2 or self.batch_size < 1 or self.valid_tokens < 0:
            raise ValueError("need seq_len >= 2, batch_size >= 1, valid_tokens >= 0")


@dataclass(kw_only=True)
class LMRecipeConfig:
    model: LMConfig = field(default_factory=LMConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        if self.model.max_seq_len < self.data.seq_len:
            raise ValueError(f"model.max_seq_len ({self.model.max_seq_len}) must cover data.seq_len "
                             f"({self.data.seq_len})")
        if (self.data.format == "codes") != (self.tokenizer.kind == "codes"):
            raise ValueError("data.format codes goes with tokenizer.kind codes (and text with the others)")
        self.model.attention.check_clusters_fit(self.data.seq_len, "a training sequence (data.seq_len)",
                                                key="model.attention")
