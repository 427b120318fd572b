"""Greedy CTC decoding over letter vocabularies (fairseq ``dict.ltr.txt`` layout) and WER/CER scoring."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jiwer
import torch
from fairseq2.nn import BatchLayout
from torch import Tensor

from seqwin.data.manifest import WORD_BOUNDARY, CharDictionary

SPECIAL_IDS = frozenset(range(len(CharDictionary.SPECIALS)))  # <s> (blank), <pad>, </s>, <unk>


def greedy_ctc(logits: Tensor, layout: BatchLayout) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks and the other special symbols."""
    best = logits.argmax(-1).cpu()
    out = []
    for row, n in zip(best, layout.seq_lens, strict=True):
        ids = torch.unique_consecutive(row[:n]).tolist()
        out.append([i for i in ids if i not in SPECIAL_IDS])
    return out


def ids_to_words(ids: Iterable[int], symbols: Sequence[str]) -> str:
    """Letter ids -> ``"HELLO WORLD"`` (``|`` separates words)."""
    text = "".join(symbols[i] if i < len(symbols) else "" for i in ids)
    return " ".join(text.replace(WORD_BOUNDARY, " ").split())


def letters_to_words(ltr: str) -> str:
    """A ``.ltr`` line (``H E L L O | W O R L D |``) -> ``HELLO WORLD``."""
    return " ".join("".join(ltr.split()).replace(WORD_BOUNDARY, " ").split())


def error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER in percent (errors summed over utterances / reference length). Utterances with an
    empty reference are left out of the rates (jiwer cannot score them) and counted."""
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r.strip()]
    if not pairs:
        return {"wer": float("nan"), "cer": float("nan"), "num_utts": 0, "num_empty_refs": len(refs)}
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    words = jiwer.process_words(r, h)
    chars = jiwer.process_characters(r, h)
    return {
        "wer": 100.0 * words.wer, "cer": 100.0 * chars.cer, "num_utts": len(pairs),
        "num_words": sum(len(x.split()) for x in r), "num_chars": sum(len(x) for x in r),
        "word_errors": words.substitutions + words.deletions + words.insertions,
        "char_errors": chars.substitutions + chars.deletions + chars.insertions,
        "num_empty_refs": len(refs) - len(pairs),
    }
