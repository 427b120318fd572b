"""CTC beam search with a word n-gram LM: torchaudio's lexicon-constrained decoder on flashlight-text + KenLM.

Uses the PyPI package ``flashlight-text`` (a pinned dependency; torchaudio's ``ctc_decoder`` is built on it).
The LM is an ARPA file, or a transcript file (``.wrd``/``.txt``) from which an interpolated Kneser-Ney model
is estimated (:mod:`seqwin.recipes.wav2vec2.ngram`). The lexicon spells each LM
word with the model's letters followed by the word boundary ``|``; words using letters the model lacks are
left out (and counted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from seqwin.data.manifest import WORD_BOUNDARY, CharDictionary
from seqwin.errors import UserError
from seqwin.recipes.wav2vec2.ngram import arpa_vocabulary, write_arpa_from_text

log = logging.getLogger("seqwin.wav2vec2.beam")


def prepare_lm(lm: Path, out_dir: Path, order: int) -> Path:
    if not lm.is_file():
        raise UserError(f"--lm {lm}: no such file")
    if lm.suffix == ".arpa":
        return lm
    arpa = write_arpa_from_text([lm], out_dir / "lm.arpa", order)
    log.info("%d-gram LM from %s -> %s", order, lm, arpa)
    return arpa


def write_lexicon(words: list[str], symbols: list[str], path: Path) -> int:
    letters = set(symbols) - set(CharDictionary.SPECIALS)
    kept = [w for w in words if w and set(w) <= letters]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {' '.join(w)} {WORD_BOUNDARY}\n" for w in kept), encoding="utf-8")
    if len(kept) < len(words):
        log.warning("lexicon: %d of %d LM words use letters the model lacks and were left out",
                    len(words) - len(kept), len(words))
    return len(kept)


def lexicon_decoder(symbols: list[str], lm: Path, out_dir: Path, *, order: int = 3, beam_size: int = 50,
                    lm_weight: float = 2.0, word_score: float = 0.0):
    """torchaudio's ``CTCDecoder`` (batch calls, or ``decode_begin`` / ``decode_step`` / ``decode_end`` over a
    stream of log-probabilities); the lexicon and an estimated LM are written to ``out_dir``."""
    try:  # torchaudio imports without flashlight-text and fails on the first call: check the dependency itself
        from flashlight.lib.text.decoder import KenLM  # noqa: F401
    except ImportError:
        raise UserError("--lm needs the flashlight-text package: pip install flashlight-text==0.0.7") from None
    from torchaudio.models.decoder import ctc_decoder

    arpa = prepare_lm(lm, out_dir, order)
    lexicon = out_dir / "lexicon.txt"
    if write_lexicon(arpa_vocabulary(arpa), symbols, lexicon) == 0:
        raise UserError(f"--lm {lm}: no LM word can be spelled with the model's letters")
    return ctc_decoder(lexicon=str(lexicon), tokens=list(symbols), lm=str(arpa), nbest=1, beam_size=beam_size,
                       lm_weight=lm_weight, word_score=word_score, blank_token=symbols[0],
                       sil_token=WORD_BOUNDARY, unk_word="<unk>")


def make_beam_decoder(symbols: list[str], lm: Path, out_dir: Path, *, order: int = 3, beam_size: int = 50,
                      lm_weight: float = 2.0, word_score: float = 0.0) -> Callable[[Tensor, list[int]], list[str]]:
    """``decode(logits (N, S, V), lengths) -> transcripts``."""
    decoder = lexicon_decoder(symbols, lm, out_dir, order=order, beam_size=beam_size, lm_weight=lm_weight,
                              word_score=word_score)

    def decode(logits: Tensor, lengths: list[int]) -> list[str]:
        emissions = torch.log_softmax(logits.float(), dim=-1).cpu().contiguous()
        results = decoder(emissions, torch.tensor(lengths, dtype=torch.int32))
        return [" ".join(w for w in r[0].words if w) if r else "" for r in results]

    return decode
