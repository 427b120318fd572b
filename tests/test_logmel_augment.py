"""Training-time augmentation of the log-mel frontend: mel-axis warping (pitch/formant shift) and white noise."""

from __future__ import annotations

import math

import pytest
import torch
from fairseq2.nn import BatchLayout

from seqwin.models.wav2vec2.config import FrontendConfig
from seqwin.models.wav2vec2.frontend import LogMelFeatureExtractor


def _tone(hz: float, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(16000 * seconds)) / 16000
    return torch.sin(2 * math.pi * hz * t)


def test_warp_moves_a_peak_up_and_down_within_the_range() -> None:
    front = LogMelFeatureExtractor(80, 4, freq_warp=0.3).train()
    feats = torch.zeros(64, 3, 80)  # (N, F, M): one peak at bin 40 in every frame
    feats[:, :, 40] = 1.0
    torch.manual_seed(0)
    peaks = front._warp(feats).argmax(2)
    assert torch.all(peaks == peaks[:, :1])  # one factor per utterance
    assert peaks.min() < 40 < peaks.max()
    assert 40 * 0.7 - 1 <= peaks.min() and peaks.max() <= 40 * 1.3 + 1
    assert torch.equal(LogMelFeatureExtractor(80, 4, freq_warp=1e-6)._warp(feats).argmax(2), feats.argmax(2))


def test_augmentation_is_training_only_and_keeps_padding_zero() -> None:
    front = LogMelFeatureExtractor(80, 4, freq_warp=0.2, noise_p=1.0, noise_snr_db=0.0)
    waves = torch.randn(2, 16000)
    waves[1, 8000:] = 0.0
    layout = BatchLayout.of(waves, [16000, 8000])
    front.eval()
    a, _ = front(waves, layout)
    b, _ = front(waves, layout)
    assert torch.equal(a, b)
    front.train()
    c, out_layout = front(waves, layout)
    assert c.shape == a.shape and list(out_layout.seq_lens) == [24, 12]
    assert (c - a).abs().mean() > 0.1
    assert torch.all(c[1, 12:] == 0)


def test_noise_follows_the_snr() -> None:
    wave = _tone(440.0)[None] * 0.5
    front = LogMelFeatureExtractor(80, 4, noise_p=1.0, noise_snr_db=20.0)
    torch.manual_seed(0)
    noisy = front._add_noise(wave, [wave.shape[1]])
    snr = 10 * math.log10(float(wave.pow(2).mean() / (noisy - wave).pow(2).mean()))
    assert 19.0 < snr < 41.0
    assert torch.equal(LogMelFeatureExtractor(80, 4, noise_p=0.0)._add_noise(wave, [wave.shape[1]]), wave)


@pytest.mark.parametrize("field,value", [("freq_warp", 0.5), ("freq_warp", -0.1), ("noise_p", 1.5)])
def test_bad_augmentation_config_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        FrontendConfig(kind="logmel", **{field: value}).validate()
