"""Masked unit prediction (``loss.kind: units``): MFCCs of the log-mel features, k-means, the model's loss and
gradients, and the recipe end to end (train, resume, fine-tune from it, config errors)."""

from __future__ import annotations

import pytest
import torch
from fairseq2.nn import BatchLayout
from test_wav2vec2_recipes import MICRO, SSL_MICRO, _recipe, _run, corpus  # noqa: F401 (corpus: fixture)

from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
from seqwin.models.wav2vec2.config import SeqwinWav2Vec2Config, ssl_presets
from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_model
from seqwin.models.wav2vec2.units import NUM_CEPS, UnitPredictionModel, fit_kmeans, mfcc_of_logmel
from seqwin.recipes.wav2vec2 import report
from seqwin.recipes.wav2vec2.config import ModelSection
from seqwin.training import CheckpointManager
from seqwin.training.metrics import read_metrics


def test_mfcc_is_the_dct_of_each_stacked_frame():
    feats = torch.randn(2, 5, 3 * 20)  # 3 stacked frames of 20 mel bins
    mfcc = mfcc_of_logmel(feats, 20)
    assert mfcc.shape == (2, 5, 3 * NUM_CEPS)
    m, k = torch.arange(20.0), torch.arange(NUM_CEPS)[:, None]
    # orthonormal DCT-II, written out
    basis = torch.cos(torch.pi / 20 * (m + 0.5) * k) * (2 / 20) ** 0.5
    basis[0] /= 2**0.5
    # the second 10 ms frame of the last step of the second utterance, after the step is standardized
    step = feats[1, 4]
    sub = ((step - step.mean()) / (step.var(unbiased=False) + 1e-5).sqrt())[20:40]
    torch.testing.assert_close(mfcc[1, 4, NUM_CEPS:2 * NUM_CEPS], basis @ sub, atol=1e-5, rtol=1e-5)


def test_kmeans_finds_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    points = (centers[:, None] + 0.3 * torch.randn(4, 200, 2, generator=gen)).reshape(-1, 2)
    found = fit_kmeans(points, 4, seed=1)
    # every true center has a centroid within the noise, and each its own
    nearest = torch.cdist(centers, found).argmin(1)
    assert sorted(nearest.tolist()) == [0, 1, 2, 3]
    assert torch.cdist(centers, found).min(1).values.max() < 0.2


def test_kmeans_needs_k_points():
    with pytest.raises(ValueError, match="at least 7 points"):
        fit_kmeans(torch.randn(6, 2), 7)


def _micro_model(num_units: int = 6) -> UnitPredictionModel:
    cfg = ModelSection(arch="tiny", config=SSL_MICRO).build(ssl_presets(), SeqwinWav2Vec2Config)
    torch.manual_seed(0)
    wav2vec2 = create_seqwin_wav2vec2_model(cfg)
    centroids = torch.randn(num_units, cfg.frontend.stack * NUM_CEPS)
    return UnitPredictionModel(wav2vec2, 32, cfg.frontend.num_mel_bins, centroids)


def test_unit_loss_trains_the_encoder_and_only_it():
    model = _micro_model()
    waves = torch.randn(2, 16000)
    out = model(waves, BatchLayout.of(waves, [16000, 12000]))
    assert out.num_targets > 0 and torch.isfinite(out.loss) and 0 <= int(out.correct) <= out.num_targets
    out.loss.backward()
    grads = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "head.weight" in grads and any(n.startswith("wav2vec2.encoder.layers.0.") for n in grads)
    assert any(n.startswith("wav2vec2.encoder_frontend.") for n in grads)  # the mask embedding, projections
    assert not any(n.startswith(("wav2vec2.quantizer", "wav2vec2.final_")) for n in grads)


def test_units_are_the_nearest_centroid_of_each_frame():
    model = _micro_model()
    raw = torch.randn(1, 7, model.centroids.shape[1] // NUM_CEPS * model.num_mel_bins)
    mfcc = mfcc_of_logmel(raw, model.num_mel_bins)[0]
    want = torch.stack([((model.centroids - f) ** 2).sum(1).argmin() for f in mfcc])
    assert model.units(raw)[0].tolist() == want.tolist()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # targets are computed in float32 under autocast too
        assert model.units(raw)[0].tolist() == want.tolist()


def test_loss_scores_the_units_of_the_masked_frames():
    """The loss, rebuilt by hand with boolean masks: the units come from the raw features (not from the learned
    layer norm, here far from identity, which would move them), and each masked frame is scored on its own."""
    model = _micro_model()
    frontend = model.wav2vec2.encoder_frontend
    with torch.no_grad():
        norm = frontend.post_extract_layer_norm
        norm.weight.copy_(torch.rand(norm.weight.shape) * 2 + 0.5)
        norm.bias.copy_(torch.randn(norm.bias.shape))
    waves = torch.randn(2, 16000)
    layout = BatchLayout.of(waves, [16000, 12000])
    torch.manual_seed(3)
    out = model(waves, layout)
    torch.manual_seed(3)
    feats, feats_layout, raw = frontend.extract_features(waves, layout)
    hidden, mask = frontend.process_features(feats, feats_layout, model.wav2vec2.masker)
    hidden = model.wav2vec2.encoder(hidden, feats_layout)
    logits, wanted = model.head(hidden[mask]).float(), model.units(raw)[mask]
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits, wanted, reduction="sum"))
    assert out.num_targets == int(mask.sum()) and int(out.correct) == int((logits.argmax(-1) == wanted).sum())


def test_units_recipe_trains_resumes_and_fine_tunes(corpus, tmp_path, capsys):  # noqa: F811
    data = f"data.manifest_dir={corpus / 'manifests'}"
    ssl_yaml = _recipe(tmp_path, "ssl", SSL_MICRO, loss={"kind": "units", "num_units": 8})
    out = tmp_path / "ssl"
    assert _run(["train", "ssl", "--config", ssl_yaml, "--set", data, out]) == 0
    assert {"units_ce", "accuracy"} <= set(read_metrics(out, "train")[0])
    assert {"units_ce", "accuracy"} <= set(read_metrics(out, "valid")[-1])
    summary = report.table(out, None, [], None)
    assert "units_ce" in summary and "masked-frame accuracy" in summary
    first = CheckpointManager(out / "checkpoints").load_latest()[1]["model"]["centroids"]
    assert first.shape == (8, 4 * NUM_CEPS)  # the tiny preset stacks 4 log-mel frames

    # resume with more steps (and another seed, which would fit other units): the checkpoint's units are kept
    more = ["--set", "trainer.max_steps=6", "--set", "trainer.seed=5"]
    assert _run(["train", "ssl", "--config", ssl_yaml, "--set", data, *more, out]) == 0
    assert [r["step"] for r in read_metrics(out, "train")] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(CheckpointManager(out / "checkpoints").load_latest()[1]["model"]["centroids"], first)

    # a resume that would not fit the checkpoints is a one-line error naming the field
    for sets, field in ((["loss.num_units=9"], "loss.num_units"), (["loss.kind=contrastive"], "loss.kind")):
        argv = ["train", "ssl", "--config", ssl_yaml, "--set", data, "--set", "trainer.max_steps=8"]
        assert _run(argv + [a for s in sets for a in ("--set", s)] + [out]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and field in err and "Traceback" not in err

    # a step checkpoint loads as the model it holds (e.g. to fine-tune from a run that was stopped)
    exported = wav2vec2_checkpoint.load(out / "model.pt")
    step = wav2vec2_checkpoint.load(out / "checkpoints" / "step_6.pt")
    assert step.model.state_dict().keys() == exported.model.state_dict().keys()
    for key, value in exported.model.state_dict().items():
        torch.testing.assert_close(step.model.state_dict()[key], value, msg=key)

    asr_yaml = _recipe(tmp_path, "asr", MICRO, init={"ssl_checkpoint": str(out / "model.pt")})
    assert _run(["train", "asr", "--config", asr_yaml, "--set", data, tmp_path / "asr"]) == 0
    assert "cer" in read_metrics(tmp_path / "asr", "valid")[-1]


def test_units_need_the_logmel_frontend(corpus, tmp_path, capsys):  # noqa: F811
    encoder = {**SSL_MICRO["model"]["encoder_config"], "feature_dim": 512}  # the conv layers' channels
    conv = {**SSL_MICRO, "model": {**SSL_MICRO["model"], "encoder_config": encoder}, "frontend": {"kind": "conv"}}
    cfg = _recipe(tmp_path, "ssl", conv, loss={"kind": "units"})
    assert _run(["train", "ssl", "--config", cfg, "--set", f"data.manifest_dir={corpus / 'manifests'}",
                 tmp_path / "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert "loss.kind units" in err and "logmel" in err and "\n" not in err
