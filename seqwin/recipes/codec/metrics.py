"""Codec quality metrics: PESQ (wide band), STOI, log-mel distance, SI-SNR, codebook statistics, and
intelligibility as the word error rate of an independent recognizer (PyPI ``pocketsphinx``, whose wheel bundles
an en-us acoustic model, dictionary and language model) on original and reconstructed audio."""

from __future__ import annotations

import logging
import re

import numpy as np

log = logging.getLogger(__name__)


def pesq_wb(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float | None:
    """Wide-band PESQ (MOS-LQO, about 1.0-4.6); ``None`` when PESQ finds no speech (silence, very short input)."""
    from pesq import PesqError, pesq

    if sample_rate != 16000:
        return None  # wide-band PESQ is defined at 16 kHz only
    try:
        return float(pesq(sample_rate, reference, degraded, "wb"))
    except PesqError as exc:
        log.info("PESQ undefined for this utterance (%s)", type(exc).__name__)
        return None


def stoi(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float | None:
    """Short-time objective intelligibility (0-1); ``None`` for inputs too short to score (< ~0.4 s of speech)."""
    from pystoi import stoi as _stoi

    value = float(_stoi(reference, degraded, sample_rate, extended=False))
    return value if np.isfinite(value) and value > 1e-5 else None


def normalize_words(text: str) -> str:
    """Upper case, letters/digits/apostrophes only: pocketsphinx's lower-case output vs LibriSpeech-style refs."""
    return " ".join(re.sub(r"[^A-Z0-9' ]+", " ", text.upper()).split())


class PocketSphinx:
    """English ASR from the ``pocketsphinx`` wheel (no download): 16 kHz int16 in, words out.

    Every utterance gets a fresh decoder (≈ 0.3 s): a reused one carries adaptation state (cepstral mean and
    more; resetting the CMN alone was not enough) from utterance to utterance, so an original's transcript
    depended on the reconstruction decoded before it (measured: the same file decoded twice in a row by one
    decoder gave two different transcripts).
    """

    def __init__(self, sample_rate: int = 16000) -> None:
        if sample_rate != 16000:
            raise ValueError(f"the bundled en-us model expects 16 kHz audio, got {sample_rate}")
        self.sample_rate = sample_rate

    def __call__(self, wave: np.ndarray) -> str:
        from pocketsphinx import Decoder

        decoder = Decoder(samprate=self.sample_rate, loglevel="FATAL")
        pcm = (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)
        decoder.start_utt()
        decoder.process_raw(pcm.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        return normalize_words(hyp.hypstr) if hyp is not None else ""


def word_error_rate(references: list[str], hypotheses: list[str]) -> float | None:
    """Corpus WER (errors / reference words) over the pairs with a non-empty reference."""
    import jiwer

    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r.strip()]
    if not pairs:
        return None
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def mean_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
