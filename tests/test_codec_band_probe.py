"""tools/codec_band_probe.py: band swaps change only their band; band levels read a muffled band as quieter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import codec_band_probe as probe  # noqa: E402

RATE = 16000


def _tones(*freqs: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return sum(np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def _band_power(wave: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / RATE)
    return float(spec[(freqs >= lo) & (freqs < hi)].sum())


def test_swap_band_takes_only_that_band():
    low_high, other_high = _tones(300, 2500), _tones(300, 3000) * 0.5
    mixed = probe.swap_band(low_high, other_high, 1000, 4000, RATE)
    assert np.allclose(probe.swap_band(low_high, low_high, 1000, 4000, RATE), low_high, atol=1e-5)
    assert np.isclose(_band_power(mixed, 0, 1000), _band_power(low_high, 0, 1000), rtol=1e-4)
    assert np.isclose(_band_power(mixed, 1000, 4000), _band_power(other_high, 1000, 4000), rtol=1e-4)
    assert _band_power(mixed, 2400, 2600) < 1e-6 * _band_power(low_high, 2400, 2600)


def test_swap_magnitude_keeps_a_signal_with_its_own_magnitude():
    wave = _tones(200, 1500, 3500) + np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.1
    assert np.allclose(probe.swap_magnitude(wave, wave, 1000, 4000), wave, atol=1e-4)
    louder = probe.swap_magnitude(wave, 2 * wave, 1000, 4000)  # same phase, twice the magnitude in the band
    assert np.isclose(_band_power(louder, 1200, 3800) / _band_power(wave, 1200, 3800), 4.0, rtol=0.05)
    assert np.isclose(_band_power(louder, 0, 800), _band_power(wave, 0, 800), rtol=0.02)


def test_band_levels_read_a_muffled_band():
    speech = _tones(300, 2500, 5000)
    muffled = probe.swap_band(speech, speech * 0.5, 2000, 4000, RATE)  # -6 dB in 2-4 kHz
    levels = probe.band_levels([(speech, muffled)], RATE)
    by_band = dict(zip(zip(probe.EDGES_HZ[:-1], probe.EDGES_HZ[1:], strict=True), levels["speech_db"], strict=True))
    assert np.isclose(by_band[(2000, 4000)], -6.02, atol=0.1)
    assert abs(by_band[(0, 500)]) < 0.1 and abs(by_band[(4000, 6000)]) < 0.1
    assert levels["silence_db"] == [None] * len(levels["silence_db"])  # a steady tone has no near-silent frames


def test_degradations_are_what_they_say():
    speech = _tones(300, 2500, 5000)
    d = probe.degradations(speech, RATE, np.random.default_rng(0))
    assert np.isclose(_band_power(d["1-4 kHz -6 dB"], 1000, 4000) / _band_power(speech, 1000, 4000), 10 ** -0.6,
                      rtol=1e-3)
    assert _band_power(d["low-pass 4 kHz"], 4000, 8001) < 1e-9 * _band_power(speech, 4000, 8001)
    noise = d["white noise 20 dB SNR"] - speech
    assert np.isclose(np.mean(noise**2) / np.mean(speech**2), 0.01, rtol=0.05)


def test_probe_end_to_end_on_a_tiny_codec(tmp_path, monkeypatch):
    from test_codec_util import tiny_codec_config, write_corpus

    from seqwin.models.codec import checkpoint as codec_checkpoint
    from seqwin.models.codec import create_codec

    # The plumbing is under test here, not pocketsphinx (slow on synthetic audio): a recognizer that hears
    # "HELLO WORLD" in anything.
    monkeypatch.setattr(probe, "PocketSphinx", lambda rate: lambda wave: "HELLO WORLD")
    manifests = write_corpus(tmp_path / "corpus", count=2)
    codec = codec_checkpoint.save(tmp_path / "codec.pt", create_codec(tiny_codec_config(variant="none")))
    for extra in ([], ["--checkpoint", str(codec)]):
        monkeypatch.setattr(sys, "argv", ["codec_band_probe", "--data", str(manifests / "train.tsv"),
                                          "--utterances", "2", "-o", str(tmp_path / "out"), *extra])
        probe.main()
        result = json.loads((tmp_path / "out" / "band_probe.json").read_text())
        assert result["utterances"] == 2 and result["wer_original"] == 0.5  # refs: HELLO WORLD, GOOD MORNING
        if extra:
            assert len(result["swaps"]) == len(probe.SWAPS_HZ) and len(result["speech_db"]) == len(probe.EDGES_HZ) - 1
        else:
            assert set(result["wer_degraded_original"]) == {"1-4 kHz -6 dB", "1-4 kHz -10 dB", "low-pass 4 kHz",
                                                            "white noise 20 dB SNR"}
