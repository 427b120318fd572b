"""Config mistakes that only show up across sections or against the data fail before training, with one message
naming the key: negative attention windows, more routing clusters than tokens, a batch larger than the data."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import make_librispeech
from test_codec_util import tiny_codec_config, write_corpus

from seqwin.cli.main import main as seqwin
from seqwin.data.librispeech import prepare_librispeech
from seqwin.errors import UserError
from seqwin.models.wav2vec2.config import SeqwinWav2Vec2Config, ssl_presets
from seqwin.recipes.codec.config import CodecRecipeConfig
from seqwin.recipes.lm.config import LMRecipeConfig
from seqwin.recipes.lm.data import PackedBatches
from seqwin.recipes.wav2vec2.config import DataConfig, ModelSection, check_data_parallel, check_routing_fits
from seqwin.recipes.wav2vec2.train import check_batches
from seqwin.training import ConfigError, load_config
from seqwin.training.config import from_dict, to_dict


def _load(kls, tmp_path, tree: dict):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_config(kls, path)


def _ssl_model(attention: dict) -> SeqwinWav2Vec2Config:
    return ModelSection(arch="tiny", config={"attention": attention}).build(ssl_presets(), SeqwinWav2Vec2Config)


LM_MODEL = {"model_dim": 32, "num_layers": 2, "num_heads": 4, "ffn_inner_dim": 64, "max_seq_len": 256}


# ---- negative windows ----

def test_negative_window_lm(tmp_path):
    tree = {"model": {**LM_MODEL, "attention": {"default": {"kind": "local", "window": [-4, 0]}}}}
    with pytest.raises(ConfigError, match=r"^model\.attention\.default: window must be \(left, right\) with sides "
                                          r">= -1, got \(-4, 0\)"):
        _load(LMRecipeConfig, tmp_path, tree)


def test_negative_window_wav2vec2():
    with pytest.raises(ConfigError, match=r"^model\.config\.attention\.default: window must be .* got \(-3, 4\)"):
        _ssl_model({"default": {"kind": "local", "window": [-3, 4]}})
    tree = to_dict(ssl_presets()["tiny"])  # per-head windows: straight into the model config
    tree["attention"]["head_windows"] = {0: [[-2, 1]] * tree["model"]["encoder_config"]["num_encoder_attn_heads"]}
    with pytest.raises(ConfigError, match=r"^model\.config\.attention\.head_windows\[0\]: windows must be"):
        from_dict(SeqwinWav2Vec2Config, tree, "model.config")


def test_negative_window_codec(tmp_path):
    tree = {"model": {"bottleneck": "attention", "causal": False, "attention": {"window": [-1, 8]}}}
    with pytest.raises(ConfigError, match=r"^model\.attention\.window must be bounded"):
        _load(CodecRecipeConfig, tmp_path, tree)


# ---- more routing clusters than tokens ----

def test_more_clusters_than_tokens_lm(tmp_path):
    top = {"kind": "mixed", "local_heads": 2, "routing_heads": 2, "window": [15, 0], "num_clusters": 65,
           "routing_window": 16}
    tree = {"model": {**LM_MODEL, "attention": {"default": {"kind": "local", "window": [15, 0]}, "top": top,
                                                "num_top_layers": 1}},
            "data": {"seq_len": 64}}
    with pytest.raises(ConfigError, match=r"^model\.attention\.top\.num_clusters \(65\) is more than the 64 tokens "
                                          r"of a training sequence \(data\.seq_len\)"):
        _load(LMRecipeConfig, tmp_path, tree)
    tree["data"]["seq_len"] = 65  # as many clusters as tokens is fine
    assert _load(LMRecipeConfig, tmp_path, tree).data.seq_len == 65


def test_more_clusters_than_frames_wav2vec2():
    model = _ssl_model({"default": {"kind": "routing", "num_clusters": 64}})
    data = DataConfig(max_audio_len=16000)  # 1 s = 25 frames of the tiny preset's 40 ms log-mel stacks
    with pytest.raises(ConfigError, match=r"^model\.config\.attention\.default\.num_clusters \(64\) is more than "
                                          r"the 25 tokens of the longest training utterance \(data\.max_audio_len"):
        check_routing_fits(model, data)
    check_routing_fits(model, DataConfig(max_audio_len=64 * 640))


# ---- a batch larger than the data ----

def test_batch_larger_than_data_lm(tmp_path):
    tokens = np.arange(1000, dtype=np.int32)  # 14 sequences of 64 at the largest epoch offset
    PackedBatches(tokens, 64, 7, world_size=2).check_fits()
    with pytest.raises(ConfigError, match=r"^data\.batch_size \(8\) x 2 processes needs 16 sequences of "
                                          r"data\.seq_len \(64\) tokens per step but the training split has only 14"):
        PackedBatches(tokens, 64, 8, world_size=2).check_fits()


def test_batch_larger_than_data_lm_cli(tmp_path, capsys):
    """Through the CLI: one line on stderr, exit code 2, before any training step."""
    data = tmp_path / "text"
    data.mkdir()
    for split in ("train", "valid"):
        (data / f"{split}.txt").write_text("to be or not to be\n" * 20)  # 380 tokens: 5 sequences of 64
    config = tmp_path / "lm.yaml"
    config.write_text(yaml.safe_dump({"model": LM_MODEL, "tokenizer": {"kind": "byte"},
                                      "data": {"dir": str(data), "seq_len": 64, "batch_size": 8},
                                      "trainer": {"max_steps": 2, "warmup_steps": 1}}))
    assert seqwin(["train", "lm", "--config", str(config), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ": error: data.batch_size (8) needs 8 sequences of data.seq_len (64)" in err
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_batch_larger_than_data_codec(tmp_path):
    from seqwin.recipes.codec.train import train_codec

    cfg = CodecRecipeConfig(model=tiny_codec_config(variant="none"))
    cfg.data.manifest_dir, cfg.data.batch_size = write_corpus(tmp_path / "corpus", count=3), 4
    cfg.teachers.transcripts = "none"
    with pytest.raises(UserError, match=r"^data\.batch_size \(4\) needs 4 utterances of train per step but the "
                                        r"training split has only 3: no full batch"):
        train_codec(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_batch_larger_than_data_wav2vec2(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech", splits=("train",))  # 6 utterances of 0.05-0.3 s
    prepare_librispeech(root, tmp_path / "manifests")
    data = DataConfig(manifest_dir=tmp_path / "manifests", min_audio_len=800, max_num_frames=100_000)
    train = data.dataset("train", None)
    check_batches(train, data, world_size=1)  # everything in one batch: fine for one process
    with pytest.raises(ConfigError, match=r"^data\.max_num_frames \(100000\) packs the 6 training utterances into "
                                          r"1 batch\(es\), fewer than the 2 processes"):
        check_batches(train, data, world_size=2)


# ---- FSDP needs every rank to run the same layers ----

def test_fsdp_refuses_layer_drop():
    model = ModelSection(arch="tiny", config={"model": {"encoder_config": {"layer_drop_p": 0.1}}}).build(
        ssl_presets(), SeqwinWav2Vec2Config)
    check_data_parallel(model, "ddp")
    with pytest.raises(ConfigError, match=r"^model\.config\.model\.encoder_config\.layer_drop_p \(0\.1\) needs "
                                          r"trainer\.data_parallel ddp"):
        check_data_parallel(model, "fsdp")
