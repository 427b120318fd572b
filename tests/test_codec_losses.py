"""Loss signs and weights: each term is >= 0, zero (or minimal) at its optimum, and descends the right way."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch
from test_codec_util import speechlike, tiny_codec_config

from seqwin.models.codec import create_codec
from seqwin.models.codec.discriminators import DiscriminatorConfig, create_discriminators
from seqwin.models.codec.losses import (
    TERMS,
    LossWeights,
    MultiScaleMelLoss,
    context_align_loss,
    discriminator_loss,
    distill_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    generator_total,
    waveform_l1,
)

SOFTPLUS_1 = math.log1p(math.exp(-1.0))  # -log sigmoid(1)


def test_weights_match_the_spec():
    assert asdict(LossWeights()) == {"waveform": 500.0, "mel": 45.0, "feature_matching": 2.0, "adversarial": 1.0,
                                     "commitment": 10.0, "distill": 120.0, "mel_start": None, "mel_ramp_steps": 0}
    terms = {name: torch.tensor(1.0) for name in TERMS}
    assert float(generator_total(terms, LossWeights())) == pytest.approx(678.0)
    assert float(generator_total({"mel": torch.tensor(2.0)}, LossWeights())) == pytest.approx(90.0)
    with pytest.raises(KeyError):
        generator_total({"melody": torch.tensor(1.0)}, LossWeights())
    with pytest.raises(ValueError, match="weight must be >= 0"):
        LossWeights(adversarial=-1.0).validate()
    with pytest.raises(KeyError):
        generator_total({"mel_start": torch.tensor(1.0)}, LossWeights())


def test_mel_weight_ramps_linearly_then_holds():
    ramp = LossWeights(mel=200.0, mel_start=40.0, mel_ramp_steps=1000)
    ramp.validate()
    assert [ramp.at_step(s).mel for s in (0, 250, 999, 1000, 5000)] == pytest.approx([40.0, 80.0, 199.84, 200.0, 200.0])
    assert ramp.at_step(250).waveform == 500.0 and ramp.mel == 200.0  # only the mel weight moves; no mutation
    assert LossWeights(mel=135.0).at_step(0).mel == 135.0
    assert float(generator_total({"mel": torch.tensor(1.0)}, ramp.at_step(500))) == pytest.approx(120.0)
    for bad in (dict(mel_start=10.0), dict(mel_start=-1.0, mel_ramp_steps=10)):
        with pytest.raises(ValueError, match="mel_start"):
            LossWeights(**bad).validate()


def test_lsgan_signs():
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    assert float(discriminator_loss(ones, zeros)) == 0.0  # perfect discriminator
    assert float(discriminator_loss(zeros, ones)) == 2.0  # fully fooled
    assert float(generator_adversarial_loss(ones)) == 0.0  # generator fools D
    assert float(generator_adversarial_loss(zeros)) == 1.0
    fake = torch.full((2, 5), 0.5, requires_grad=True)
    discriminator_loss(ones, [fake]).backward()
    assert (fake.grad > 0).all()  # the discriminator pushes D(fake) down
    fake.grad = None
    generator_adversarial_loss([fake]).backward()
    assert (fake.grad < 0).all()  # the generator pushes D(fake) up


def test_feature_matching_and_reconstruction_terms():
    real = [[torch.randn(2, 3, 4), torch.randn(2, 5)]]
    fake = [[r.clone().requires_grad_(True) for r in real[0]]]
    assert float(feature_matching_loss(real, fake).detach()) == 0.0
    shifted = [[(r + 1).requires_grad_(True) for r in real[0]]]
    assert float(feature_matching_loss(real, shifted).detach()) == pytest.approx(1.0)
    x = torch.from_numpy(speechlike(0.5))[None]
    mel = MultiScaleMelLoss(16000)
    assert float(mel(x, x)) == 0.0 and float(waveform_l1(x, x)) == 0.0
    assert float(mel(0.5 * x, x)) > 0.3 and float(waveform_l1(0.5 * x, x)) > 0


def test_distill_and_context_align_signs():
    mask = torch.ones(1, 4, dtype=torch.bool)
    teacher = torch.randn(1, 4, 8)
    assert float(distill_loss(teacher, mask, [(teacher, None)])) == pytest.approx(SOFTPLUS_1, abs=1e-5)
    assert float(distill_loss(-teacher, mask, [(teacher, None)])) == pytest.approx(SOFTPLUS_1 + 1.0, abs=1e-5)
    # two teachers: -log sigmoid of the mean cosine (the paper's 1/2 [cos S + cos C])
    two = distill_loss(teacher, mask, [(teacher, None), (-teacher, None)])
    assert float(two) == pytest.approx(math.log(2.0), abs=1e-5)
    # a row whose second teacher is absent averages over the one present
    absent = distill_loss(teacher, mask, [(teacher, None), (-teacher, torch.tensor([False]))])
    assert float(absent) == pytest.approx(SOFTPLUS_1, abs=1e-5)
    pred = torch.randn(1, 4, 8, requires_grad=True)
    before = torch.nn.functional.cosine_similarity(pred, teacher, dim=-1).mean()
    distill_loss(pred, mask, [(teacher, None)]).backward()
    with torch.no_grad():
        after = torch.nn.functional.cosine_similarity(pred - 0.1 * pred.grad, teacher, dim=-1).mean()
    assert after > before  # descending the loss turns RVQ level 1 toward the teacher
    assert float(context_align_loss(teacher, mask, teacher)) == pytest.approx(SOFTPLUS_1, abs=1e-5)
    half = torch.tensor([[True, True, False, False]])
    ctx = torch.cat((teacher[:, :2], -teacher[:, 2:]), dim=1)
    assert float(context_align_loss(teacher, half, ctx)) == pytest.approx(SOFTPLUS_1, abs=1e-5)  # mask respected


def test_commitment_is_positive_in_training_only():
    torch.manual_seed(0)
    model = create_codec(tiny_codec_config())
    x = torch.from_numpy(speechlike(0.4))[None]
    assert float(model.train()(x).commitment) > 0
    assert float(model.eval()(x).commitment) == 0.0


def test_discriminators_shapes_and_gradients():
    torch.manual_seed(0)
    cfg = DiscriminatorConfig(periods=(2, 3), mpd_channels=2, msd_scales=2, msd_channels=2, stft_ffts=(256, 128),
                              stft_channels=4, max_channels=16)
    disc = create_discriminators(cfg)
    wave = torch.randn(2, 4000, requires_grad=True)
    logits, feats = disc(wave)
    assert len(logits) == len(feats) == 6 and all(lg.shape[0] == 2 for lg in logits)
    generator_adversarial_loss(logits).backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all()


def test_short_mel_scales_get_fewer_bands_and_none_is_empty():
    mel = MultiScaleMelLoss(16000, (64, 128, 2048), 64)
    bands = [m.n_mels for m in mel.mels]
    assert bands == [8, 16, 64]
    for m in mel.mels:  # every triangular filter covers at least one FFT bin
        assert bool((m.mel_scale.fb.sum(0) > 0).all())
    x = torch.from_numpy(speechlike(0.5))[None]
    assert float(mel(x, x)) == 0.0 and float(mel(0.5 * x, x)) > 0.3
