"""The codec evaluation's independent recognizer (pocketsphinx) on real speech from the mini corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from seqwin.recipes.codec.metrics import PocketSphinx


@pytest.mark.slow
def test_pocketsphinx_transcribes_each_utterance_on_its_own(mini_corpus: Path) -> None:
    # `seqwin eval codec` interleaves originals and reconstructions: a recognizer that adapts across calls would
    # make the original's WER depend on the codec. 1-1-0014 is a prompt where a reused decoder's second pass
    # differed from its first.
    wave, rate = sf.read(str(next((mini_corpus / "LibriSpeech").rglob("1-1-0014.flac"))), dtype="float32")
    asr = PocketSphinx(rate)
    first = asr(wave)
    asr(0.05 * np.convolve(wave, np.ones(8) / 8, mode="same"))  # muffled and quiet, as an early codec sounds
    assert first and asr(wave) == first == asr(wave)
