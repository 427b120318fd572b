"""Model files of every family: one envelope (format tag, version, config, weights, extras), round trips, files
written in the layouts before the envelope, and one clear error for another family's or a broken file."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from lm_helpers import layer_kinds, tiny_lm_config
from test_codec_util import tiny_codec_config
from test_wav2vec2_models import small

from seqwin.io.checkpoint_files import safe_load
from seqwin.io.config_dict import to_dict
from seqwin.io.model_file import ModelLoadError
from seqwin.models.codec import checkpoint as codec_checkpoint
from seqwin.models.codec import create_codec
from seqwin.models.lm import checkpoint as lm_checkpoint
from seqwin.models.lm import create_lm_model
from seqwin.models.lm.tokenizer import ByteTokenizer, CodeTokenizer, SentencePieceTokenizer, train_sentencepiece
from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
from seqwin.models.wav2vec2.config import ASR_FAMILY, SSL_FAMILY, asr_presets, ssl_presets

pytestmark = pytest.mark.usefixtures("one_thread")

LETTERS = ["<s>", "<pad>", "</s>", "<unk>", "|", "A", "B"]


@dataclass
class Saved:
    """One family's model as saved: the file, what went into it, and how to read it back."""

    family: str
    path: Path
    model: torch.nn.Module
    config: Any
    load: Any


def _wav2vec2(tmp: Path) -> Saved:
    cfg = small(asr_presets()["tiny"])
    cfg.model.target_vocab_size = len(LETTERS)
    model = wav2vec2_checkpoint.create_model(cfg)
    path = wav2vec2_checkpoint.save(tmp / "asr.pt", model, cfg, dictionary=LETTERS)
    return Saved("wav2vec2", path, model, cfg, wav2vec2_checkpoint.load)


def _codec(tmp: Path) -> Saved:
    model = create_codec(tiny_codec_config()).eval()
    return Saved("codec", codec_checkpoint.save(tmp / "codec.pt", model), model, model.cfg, codec_checkpoint.load)


def _lm(tmp: Path) -> Saved:
    cfg = tiny_lm_config(layer_kinds(["local", "full", "full"]), vocab_size=ByteTokenizer.vocab_size)
    model = create_lm_model(cfg)
    path = lm_checkpoint.save(tmp / "lm.pt", model, cfg, tokenizer=ByteTokenizer(), step=7)
    return Saved("lm", path, model, cfg, lm_checkpoint.load)


SAVERS = {"wav2vec2": _wav2vec2, "codec": _codec, "lm": _lm}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Saved]:
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("files")
    return {name: make(tmp) for name, make in SAVERS.items()}


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("family", SAVERS)
def test_round_trip(saved, family):
    s = saved[family]
    loaded = s.load(s.path)
    _assert_same_weights(loaded.model, s.model)
    assert loaded.config == s.config
    assert not loaded.model.training


def test_round_trip_extras(saved):
    assert wav2vec2_checkpoint.load(saved["wav2vec2"].path).dictionary == LETTERS
    lm = lm_checkpoint.load(saved["lm"].path)
    assert isinstance(lm.tokenizer, ByteTokenizer) and lm.step == 7
    assert codec_checkpoint.load(saved["codec"].path).extras == {}


@pytest.mark.parametrize("family,fmt,extras", [
    ("wav2vec2", "seqwin.wav2vec2_asr", {"dictionary": LETTERS}),
    ("codec", "seqwin.codec", {}),
    ("lm", "seqwin.lm", {"tokenizer": {"kind": "byte"}, "step": 7}),
])
def test_envelope_fields(saved, family, fmt, extras):
    s = saved[family]
    data = safe_load(s.path)
    assert set(data) == {"format", "version", "config", "model", "extras"}
    assert (data["format"], data["version"], data["extras"]) == (fmt, 1, extras)
    assert data["config"] == to_dict(s.config)
    assert data["model"].keys() == s.model.state_dict().keys()


def test_ssl_and_asr_carry_their_own_tags(tmp_path):
    cfg = small(ssl_presets()["tiny"])
    path = wav2vec2_checkpoint.save(tmp_path / "ssl.pt", wav2vec2_checkpoint.create_model(cfg), cfg)
    assert safe_load(path)["format"] == "seqwin.wav2vec2"
    loaded = wav2vec2_checkpoint.load(path)
    assert loaded.family == SSL_FAMILY and loaded.dictionary is None and loaded.source == "seqwin"


# -- files from before the envelope ---------------------------------------------------------------------------


def test_old_wav2vec2_file_loads(saved, tmp_path):
    s = saved["wav2vec2"]
    torch.save({"seqwin_family": ASR_FAMILY, "config": to_dict(s.config), "model": s.model.state_dict(),
                "dictionary": LETTERS}, tmp_path / "model.pt")
    loaded = wav2vec2_checkpoint.load(tmp_path / "model.pt")
    _assert_same_weights(loaded.model, s.model)
    assert (loaded.family, loaded.config, loaded.dictionary) == (ASR_FAMILY, s.config, LETTERS)


def test_old_wav2vec2_run_directory_loads_and_resumes(saved, tmp_path):
    """``model.yaml`` in the old layout beside a trainer checkpoint; a resumed run finds it the same model."""
    s = saved["wav2vec2"]
    old_yaml = yaml.safe_dump({"seqwin_family": ASR_FAMILY, "config": to_dict(s.config), "dictionary": LETTERS},
                              sort_keys=False)
    (tmp_path / "model.yaml").write_text(old_yaml)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": s.model.state_dict(), "step": 5}, tmp_path / "checkpoints" / "step_5.pt")
    loaded = wav2vec2_checkpoint.load(tmp_path)
    _assert_same_weights(loaded.model, s.model)
    assert (loaded.source, loaded.dictionary) == ("seqwin-training", LETTERS)
    new_yaml = wav2vec2_checkpoint.model_yaml(s.config, LETTERS)
    assert wav2vec2_checkpoint.same_model(old_yaml, new_yaml)
    other = copy.deepcopy(s.config)
    other.model.encoder_config.num_encoder_layers += 1
    assert not wav2vec2_checkpoint.same_model(old_yaml, wav2vec2_checkpoint.model_yaml(other, LETTERS))


def test_old_codec_file_loads(saved, tmp_path):
    s = saved["codec"]
    torch.save({"format": "seqwin-codec/1", "config": to_dict(s.config), "model": s.model.state_dict()},
               tmp_path / "codec.pt")
    loaded = codec_checkpoint.load(tmp_path / "codec.pt")
    _assert_same_weights(loaded.model, s.model)
    assert loaded.config == s.config


def test_old_lm_run_directory_loads(saved, tmp_path):
    """An LM run from before the LM file: config.yaml, tokenizer files and trainer checkpoints only."""
    s = saved["lm"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": to_dict(s.config), "tokenizer": {"kind": "byte"}}))
    ByteTokenizer().save(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": s.model.state_dict(), "step": 3}, tmp_path / "checkpoints" / "step_3.pt")
    loaded = lm_checkpoint.load(tmp_path)
    _assert_same_weights(loaded.model, s.model)
    assert (loaded.config, loaded.step, loaded.tokenizer.kind) == (s.config, 3, "byte")
    # the weights of one checkpoint file, the config of the run it belongs to
    torch.save({"model": s.model.state_dict(), "step": 9}, tmp_path / "elsewhere.pt")
    assert lm_checkpoint.load(tmp_path, checkpoint=tmp_path / "elsewhere.pt").step == 9
    # once the run has exported its LM file, that is what the directory means
    lm_checkpoint.save(tmp_path / "model.pt", s.model, s.config, tokenizer=ByteTokenizer(), step=11)
    assert lm_checkpoint.load(tmp_path).step == 11


def test_lm_file_carries_its_tokenizer(tmp_path):
    text = tmp_path / "train.txt"
    text.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(200)))
    spm = train_sentencepiece([text], tmp_path / "tok", vocab_size=320)
    for tok in (spm, CodeTokenizer(2, 16)):
        cfg = tiny_lm_config(layer_kinds(["full"] * 3), vocab_size=tok.vocab_size)
        path = lm_checkpoint.save(tmp_path / f"{tok.kind}.pt", create_lm_model(cfg), cfg, tokenizer=tok)
        loaded = lm_checkpoint.load(path).tokenizer
        assert type(loaded) is type(tok) and loaded.vocab_size == tok.vocab_size
    assert isinstance(loaded, CodeTokenizer) and (loaded.codebooks, loaded.codebook_size) == (2, 16)
    again = lm_checkpoint.load(tmp_path / "sentencepiece.pt").tokenizer
    assert isinstance(again, SentencePieceTokenizer)
    assert again.encode("the quick fox\nline 3") == spm.encode("the quick fox\nline 3")


# -- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,other,message", [
    ("codec", "lm", "is an LM model file (seqwin train lm), not a codec model file"),
    ("lm", "wav2vec2", "is a wav2vec2 ASR model file (seqwin train asr), not an LM model file"),
    ("wav2vec2", "codec", "is a codec model file (seqwin train codec), not a wav2vec2 model file"),
])
def test_another_familys_file_is_named(saved, family, other, message):
    path = saved[other].path
    with pytest.raises(ModelLoadError) as info:
        saved[family].load(path)
    assert str(info.value) == f"{path} {message}"


@pytest.mark.parametrize("family", SAVERS)
@pytest.mark.parametrize("keep", [0.02, 0.5])
def test_truncated_file(saved, tmp_path, family, keep):
    data = saved[family].path.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match=rf"^{path}: not a readable checkpoint \("):
        saved[family].load(path)


def test_newer_version_and_unknown_format(saved, tmp_path):
    data = safe_load(saved["codec"].path)
    torch.save({**data, "version": 2}, tmp_path / "v2.pt")
    with pytest.raises(ModelLoadError, match="version 2; this seqwin reads versions up to 1"):
        codec_checkpoint.load(tmp_path / "v2.pt")
    torch.save({**data, "format": "seqwin.tts"}, tmp_path / "tts.pt")
    with pytest.raises(ModelLoadError, match="unknown model format 'seqwin.tts'"):
        codec_checkpoint.load(tmp_path / "tts.pt")


def test_weights_that_do_not_fit(saved, tmp_path):
    data = safe_load(saved["codec"].path)
    data["config"]["latent_dim"] = 48
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError, match=rf"^{tmp_path / 'bad.pt'}: weights do not fit the model config"):
        codec_checkpoint.load(tmp_path / "bad.pt")
