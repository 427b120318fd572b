"""Teachers: a tiny randomly initialised fairseq2 wav2vec2 as semantic teacher, CTC transcripts, the text encoder,
and the per-utterance on-disk cache (reused, never recomputed)."""

from __future__ import annotations

import pytest
import torch
from test_codec_util import speechlike, tiny_wav2vec2, write_corpus

from seqwin.errors import UserError
from seqwin.models.codec.teachers import (
    CtcTranscriber,
    FeatureCache,
    HashedNgramTextEncoder,
    SemanticTeacher,
    load_wav2vec2_teacher,
    save_wav2vec2_teacher,
)
from seqwin.recipes.codec.config import CodecRecipeConfig, TeacherConfig
from seqwin.recipes.codec.data import SegmentDataset, read_split
from seqwin.recipes.codec.teacher_features import TeacherFeatures
from seqwin.training import ConfigError, load_config


def test_semantic_teacher_averages_layers_and_round_trips(tmp_path):
    model, cfg = tiny_wav2vec2()
    teacher = SemanticTeacher(model)
    wave = torch.from_numpy(speechlike(1.0))
    feats = teacher(wave)
    assert feats.shape == (49, 16)  # 50 Hz conv front end: (16000 - 400) // 320 + 1 frames
    layers = []
    handle = model.encoder.register_layer_hook(lambda i, out, layout, n: layers.append(out) or True)
    teacher(wave)
    handle.remove()
    assert len(layers) == 2
    torch.testing.assert_close(feats, torch.stack(layers).mean(0)[0])
    path = tmp_path / "teacher.pt"
    save_wav2vec2_teacher(path, model, cfg)
    loaded, _ = load_wav2vec2_teacher(path)
    reloaded = SemanticTeacher(loaded)
    torch.testing.assert_close(reloaded(wave), feats)
    assert reloaded.name == teacher.name
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_wav2vec2_teacher(tmp_path / "junk.pt")
    with pytest.raises(TypeError, match="wav2vec2"):
        SemanticTeacher(torch.nn.Linear(2, 2))


def test_ctc_transcriber_and_text_encoder():
    symbols = ("<s>", "<pad>", "</s>", "<unk>", "|", "E", "T", "A")
    model, _ = tiny_wav2vec2(asr_vocab=len(symbols))
    text = CtcTranscriber(model, symbols)(torch.from_numpy(speechlike(1.0)))
    assert set(text) <= set("ETA ")  # greedy CTC over the dictionary's letters, words split at "|"
    enc = HashedNgramTextEncoder(dim=64)
    vecs = enc.encode(["HELLO", "HELLOS", "WORLD"])
    assert vecs.shape == (3, 64) and torch.allclose(vecs.norm(dim=-1), torch.ones(3))
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2]) + 0.3  # shared n-grams -> similar vectors
    assert torch.equal(HashedNgramTextEncoder(dim=64).encode(["HELLO"]), vecs[:1])  # deterministic
    assert enc.encode([]).shape == (0, 64)


def test_feature_cache_reuses_and_repairs(tmp_path):
    cache = FeatureCache(tmp_path, "teacher-a")
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(3, 2)

    first = cache.get("utt1", compute)
    again = cache.get("utt1", compute)
    assert len(calls) == 1 and torch.equal(first, again) and (cache.hits, cache.misses) == (1, 1)
    cache.path("utt1").write_bytes(b"torn")
    assert torch.equal(cache.get("utt1", compute), first) and len(calls) == 2
    assert FeatureCache(tmp_path, "teacher-b").path("utt1") != cache.path("utt1")


def test_recipe_teachers_cached_per_utterance(tmp_path):
    manifests = write_corpus(tmp_path, count=3)
    model, cfg = tiny_wav2vec2()
    save_wav2vec2_teacher(tmp_path / "teacher.pt", model, cfg)
    recipe = CodecRecipeConfig(teachers=TeacherConfig(semantic_checkpoint=tmp_path / "teacher.pt"))
    recipe.model.teacher_dim = 16
    recipe.data.manifest_dir = manifests
    utts = read_split(manifests, "train", with_text=True)
    feats = TeacherFeatures(recipe, tmp_path / "cache")
    feats.prepare(utts)
    assert feats.semantic_cache.misses == 3 and feats.context_cache.misses == 3
    again = TeacherFeatures(recipe, tmp_path / "cache")
    again.prepare(utts)
    assert again.semantic_cache.misses == 0 and again.semantic_cache.hits == 3 and again.context_cache.hits == 3
    data = SegmentDataset(utts, segment_samples=3200, hop=320, batch_size=3, sample_rate=16000, seed=0)
    batch = next(iter(data.batches(0)))
    tb = again.batch(batch, frames=10)
    assert tb.semantic.shape == (3, 10, 16) and tb.context.shape == (3, 10, 16)
    assert tb.semantic_global.shape == (3, 16) and tb.context_present.all()
    recipe.model.teacher_dim = 32
    with pytest.raises(UserError, match="teacher_dim"):
        TeacherFeatures(recipe, tmp_path / "cache")


def test_variant_needs_teachers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {variant: context_align}\nteachers: {transcripts: none}\n")
    with pytest.raises(ConfigError, match="context_align needs transcripts"):
        load_config(CodecRecipeConfig, path)
    path.write_text("teachers: {transcripts: asr}\n")
    with pytest.raises(ConfigError, match="teachers.transcripts: asr needs asr_checkpoint"):
        load_config(CodecRecipeConfig, path)


def test_wav2vec2_recipe_models_serve_as_teachers(tmp_path):
    checkpoint = pytest.importorskip("seqwin.models.wav2vec2.checkpoint")
    from seqwin.models.wav2vec2.config import asr_presets

    cfg = asr_presets()["tiny"]
    symbols = ["<s>", "<pad>", "</s>", "<unk>", "|", "E", "T", "A"]
    cfg.model.target_vocab_size = len(symbols)
    torch.manual_seed(0)
    model = checkpoint.create_model(cfg)
    checkpoint.save(tmp_path / "model.pt", model, cfg, dictionary=symbols)
    manifests = write_corpus(tmp_path / "corpus", count=2)
    recipe = CodecRecipeConfig(teachers=TeacherConfig(semantic_checkpoint=tmp_path / "model.pt",
                                                      transcripts="asr", asr_checkpoint=tmp_path / "model.pt"))
    recipe.model.teacher_dim = model.model_dim
    recipe.data.manifest_dir = manifests
    feats = TeacherFeatures(recipe, tmp_path / "cache")
    assert feats.transcriber.symbols == tuple(symbols)  # the model file's own letters
    utts = read_split(manifests, "train", with_text=False)
    feats.prepare(utts)
    assert feats.semantic_features(utts[0]).shape[1] == model.model_dim
    assert feats.context_tokens(utts[0]).shape[1] == model.model_dim
