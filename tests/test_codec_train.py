"""GAN training through the shared trainer: discriminator state checkpointed as trainer extras, exact resume,
codebook-usage logging, export; and the shipped recipe configs load and build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_codec_util import speechlike, tiny_codec_config, write_corpus

from seqwin.models.codec import checkpoint as codec_checkpoint
from seqwin.models.codec import create_codec
from seqwin.models.codec.discriminators import DiscriminatorConfig
from seqwin.models.codec.losses import MultiScaleMelLoss
from seqwin.recipes.codec.config import CodecRecipeConfig
from seqwin.recipes.codec.train import GanStep, latent_offset, train_codec, validate_codec
from seqwin.training import TrainerConfig, load_config
from seqwin.training.checkpoint import safe_load
from seqwin.training.config import ConfigError
from seqwin.training.metrics import read_metrics

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "codec"


def _recipe(manifests: Path, max_steps: int, variant: str = "distill") -> CodecRecipeConfig:
    cfg = CodecRecipeConfig(
        model=tiny_codec_config(variant=variant),
        discriminator=DiscriminatorConfig(periods=(2, 3), mpd_channels=2, msd_scales=1, msd_channels=2,
                                          stft_ffts=(256,), stft_channels=2, max_channels=8),
        adversarial_start_step=2,
        trainer=TrainerConfig(max_steps=max_steps, warmup_steps=1, lr=1e-3, log_every=1, checkpoint_every=2,
                              device="cpu"),
    )
    cfg.mel.ffts, cfg.mel.n_mels = (256, 512), 32
    cfg.data.manifest_dir, cfg.data.batch_size, cfg.data.segment_seconds = manifests, 2, 0.4
    cfg.data.valid_split, cfg.data.valid_utterances = "train", 2
    return cfg


@pytest.mark.slow
def test_gan_training_resumes_exactly(tmp_path, monkeypatch):
    manifests = write_corpus(tmp_path / "corpus", count=4)
    train_codec(_recipe(manifests, 4), tmp_path / "full")
    real_step = GanStep.__call__
    calls = {"n": 0}

    def crashing(self, model, batch):  # killed during step 3, after the step-2 checkpoint
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, model, batch)

    monkeypatch.setattr(GanStep, "__call__", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_codec(_recipe(manifests, 4), tmp_path / "part")
    monkeypatch.setattr(GanStep, "__call__", real_step)
    train_codec(_recipe(manifests, 4), tmp_path / "part")  # the same command again resumes from step 2
    full = safe_load(tmp_path / "full" / "checkpoints" / "step_4.pt")
    part = safe_load(tmp_path / "part" / "checkpoints" / "step_4.pt")
    for key in ("model",):
        for name, value in full[key].items():
            torch.testing.assert_close(part[key][name], value, msg=name)
    for name, value in full["extra"]["discriminator"].items():
        torch.testing.assert_close(part["extra"]["discriminator"][name], value, msg=name)
    assert full["extra"]["d_optimizer"]["state"]  # the discriminator's AdamW moments are checkpointed
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert "d_loss" not in train_rows[0] and train_rows[2]["d_loss"] > 0  # discriminators join at step 2
    assert {"waveform", "mel", "commitment", "distill", "adversarial", "feature_matching"} <= set(train_rows[-1])
    assert all(f"usage_q{i}" in train_rows[-1] for i in range(1, 5))
    valid = [r for r in rows if r["split"] == "valid"][-1]
    assert {"mel_distance", "si_snr", "usage_q1", "perplexity_q4"} <= set(valid)
    model = codec_checkpoint.load(tmp_path / "full").model  # the exported codec.pt
    assert model.cfg == _recipe(manifests, 4).model and not model.training
    from_step = codec_checkpoint.load(tmp_path / "full" / "checkpoints" / "step_4.pt").model
    for name, value in model.state_dict().items():
        torch.testing.assert_close(from_step.state_dict()[name], value)


def test_bf16_training_runs_like_float32(tmp_path):
    """``trainer.precision: bf16`` with the discriminators in play from step 2: every loss term of the same steps
    from the same init stays within bf16 rounding of float32's (the losses compute in float32)."""
    manifests = write_corpus(tmp_path / "corpus", count=4)
    rows = {}
    for precision in ("fp32", "bf16"):
        cfg = _recipe(manifests, 3)
        cfg.trainer.precision = precision
        train_codec(cfg, tmp_path / precision)
        rows[precision] = read_metrics(tmp_path / precision, "train")
    assert rows["bf16"][0]["mel"] != rows["fp32"][0]["mel"]  # the forward did run in bf16
    for fp32, bf16 in zip(rows["fp32"], rows["bf16"], strict=True):
        for term in ("waveform", "mel", "adversarial", "feature_matching"):
            if term in fp32:
                assert bf16[term] == pytest.approx(fp32[term], rel=0.05), (fp32["step"], term)


def _step_once(tmp_path: Path, cfg: CodecRecipeConfig, manifests: Path, at_step: int = 0):
    """One generator step of a fresh codec on the first batch of ``manifests``; returns (model, loss, values)."""
    from seqwin.models.codec.discriminators import create_discriminators
    from seqwin.recipes.codec.data import SegmentDataset, read_split
    from seqwin.recipes.codec.teacher_features import TeacherFeatures

    torch.manual_seed(0)
    model = create_codec(cfg.model)
    disc = create_discriminators(cfg.discriminator)
    d_opt = torch.optim.AdamW(disc.parameters())
    step = GanStep(cfg, disc, d_opt, torch.optim.lr_scheduler.LambdaLR(d_opt, lambda s: 1.0),
                   TeacherFeatures(cfg, tmp_path / "cache"), torch.device("cpu"), 2)
    step.step = at_step
    utts = read_split(manifests, "train", with_text=True)
    batch = next(iter(SegmentDataset(utts, segment_samples=3200, hop=320, batch_size=2, sample_rate=16000,
                                     seed=0).batches(0)))
    loss, values, _ = step(model, batch)
    return model, loss, values


def test_the_mel_weight_follows_its_ramp(tmp_path):
    manifests = write_corpus(tmp_path / "corpus", count=2)
    cfg = _recipe(manifests, 2)
    cfg.adversarial_start_step = 5
    cfg.losses.mel, cfg.losses.mel_start, cfg.losses.mel_ramp_steps = 200.0, 40.0, 4
    _, loss, values = _step_once(tmp_path, cfg, manifests, at_step=2)
    assert values["mel_weight"] == pytest.approx(120.0)
    weights = {"waveform": 500.0, "mel": 120.0, "commitment": 10.0, "distill": 120.0}
    assert set(weights) == {k for k in values if k in weights}
    assert float(loss) == pytest.approx(sum(w * values[k] for k, w in weights.items()), rel=1e-5)


@pytest.mark.parametrize("variant", ["fusion", "context_align"])
def test_variant_steps_use_the_teachers(tmp_path, variant):
    manifests = write_corpus(tmp_path / "corpus", count=2)
    cfg = _recipe(manifests, 2, variant=variant)
    cfg.adversarial_start_step = 5  # reconstruction + teacher terms only
    cfg.model.modality_dropout = 0.0  # keep both fusion branches so the gradient check is deterministic
    model, loss, values = _step_once(tmp_path, cfg, manifests)
    loss.backward()
    if variant == "fusion":  # the teachers' global vectors reach the latent through the cross-attention
        assert "distill" not in values and model.fusion.context_in.weight.grad.abs().sum() > 0
    else:
        assert 0.31 < values["distill"] < 1.32 and model.teacher_proj.proj.weight.grad.abs().sum() > 0
    assert "d_loss" not in values


def test_discriminator_update_leaves_no_generator_side_effects(tmp_path):
    from seqwin.recipes.codec.data import SegmentDataset, read_split
    from seqwin.recipes.codec.teacher_features import TeacherFeatures
    manifests = write_corpus(tmp_path / "corpus", count=2)
    cfg = _recipe(manifests, 2, variant="none")
    cfg.adversarial_start_step = 0
    torch.manual_seed(0)
    model = create_codec(cfg.model)
    from seqwin.models.codec.discriminators import create_discriminators

    disc = create_discriminators(cfg.discriminator)
    d_opt = torch.optim.AdamW(disc.parameters(), lr=1e-3)
    d_sched = torch.optim.lr_scheduler.LambdaLR(d_opt, lambda s: 1.0)
    step = GanStep(cfg, disc, d_opt, d_sched, TeacherFeatures(cfg, tmp_path / "cache"), torch.device("cpu"), 2)
    utts = read_split(manifests, "train", with_text=True)
    batch = next(iter(SegmentDataset(utts, segment_samples=3200, hop=320, batch_size=2, sample_rate=16000,
                                     seed=0).batches(0)))
    before = [p.detach().clone() for p in disc.parameters()]
    loss, values, units = step(model, batch)
    assert any(not torch.equal(b, p) for b, p in zip(before, disc.parameters(), strict=True))  # D was updated
    assert all(p.grad is None for p in disc.parameters())  # ... and left no gradient behind
    assert all(p.requires_grad for p in disc.parameters())
    loss.backward()
    assert all(p.grad is None for p in disc.parameters())  # the generator loss never reaches D's weights
    assert values["d_loss"] > 0 and units == int(batch.seq_lens.sum())


@pytest.mark.parametrize("name", ["mini", "mini_long", "fusecodec_librispeech"])
def test_shipped_configs_load(name):
    cfg = load_config(CodecRecipeConfig, RECIPES / f"{name}.yaml")
    assert cfg.model.hop_length == 320 and cfg.model.frame_rate == 50.0
    assert (cfg.model.quantizer.num_quantizers, cfg.model.quantizer.codebook_size) == (8, 1024)
    if name == "fusecodec_librispeech":
        assert (cfg.model.latent_dim, cfg.model.channels, cfg.model.bottleneck) == (1024, 64, "lstm")
        assert cfg.model.variant == "fusion" and cfg.model.teacher_dim == 768


def test_dead_code_threshold_must_be_below_average_code_use():
    # mini's first config: 8 x 1 s batches = 400 frames for 1024 codes (0.39 per code) with threshold 2, so
    # nearly every code counted as dead and was overwritten by a batch vector at every step
    batch8 = ["data.batch_size=8", "data.segment_seconds=1.0"]
    with pytest.raises(ConfigError, match="threshold_ema_dead_code"):
        load_config(CodecRecipeConfig, RECIPES / "mini.yaml", [*batch8, "model.quantizer.threshold_ema_dead_code=2"])
    cfg = load_config(CodecRecipeConfig, RECIPES / "mini.yaml",
                      [*batch8, "model.quantizer.threshold_ema_dead_code=0.3"])
    assert cfg.model.quantizer.threshold_ema_dead_code == 0.3  # 0.3 < 0.39: accepted
    with pytest.raises(ConfigError, match="0.195"):  # the same threshold at 4 x 1 s (200 frames) is refused
        load_config(CodecRecipeConfig, RECIPES / "mini.yaml", ["data.batch_size=4", "data.segment_seconds=1.0",
                                                               "model.quantizer.threshold_ema_dead_code=0.3"])
    with pytest.raises(ConfigError, match="bigger batches"):  # the paper config is fine at its batch, not at 4 x 1 s
        load_config(CodecRecipeConfig, RECIPES / "fusecodec_librispeech.yaml",
                    ["data.batch_size=4", "data.segment_seconds=1.0"])
    load_config(CodecRecipeConfig, RECIPES / "fusecodec_librispeech.yaml",
                ["data.batch_size=4", "data.segment_seconds=1.0", "model.quantizer.threshold_ema_dead_code=0"])


def test_latent_offset_flags_a_cloud_far_from_the_origin():
    torch.manual_seed(0)
    cloud = torch.randn(200, 8)
    assert latent_offset(cloud) < 0.5  # centred: the mean is small against the spread
    assert latent_offset(cloud + 10.0) > 5.0  # far off-centre (the collapsing attention mini codec: about 5)


def test_validation_scores_stoi_pesq_and_the_recognizer(tmp_path):
    manifests = write_corpus(tmp_path / "corpus", count=3, seconds=1.2)
    cfg = _recipe(manifests, 1)
    model = create_codec(cfg.model).eval()
    waves = [torch.from_numpy(speechlike(1.5, seed=k)) for k in range(2)]
    mel = MultiScaleMelLoss(16000, (256, 512), 32)
    plain = validate_codec(model, waves, mel)
    assert 0.0 <= plain["stoi"] <= 1.0 and 1.0 <= plain["pesq"] <= 4.6
    assert "wer_recon" not in plain
    scored = validate_codec(model, waves, mel, ["HELLO WORLD", "GOOD MORNING"])
    # an untrained codec's output is not speech: every reference word is missed or substituted
    assert 0.0 <= scored["wer_original"] and scored["wer_recon"] >= 0.5
    assert validate_codec(model, waves, mel, ["", ""]).keys() == plain.keys()  # no reference words: no WER


def test_valid_asr_scores_the_valid_split_whole(tmp_path):
    manifests = write_corpus(tmp_path / "corpus", count=4)
    cfg = _recipe(manifests, 2)
    cfg.data.valid_asr, cfg.data.valid_max_seconds = True, 0.1
    train_codec(cfg, tmp_path / "run")
    valid = read_metrics(tmp_path / "run", "valid")[-1]
    assert {"stoi", "pesq", "wer_original", "wer_recon"} <= set(valid)
