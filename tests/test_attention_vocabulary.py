"""One attention vocabulary (``seqwin.attention.LayerAttentionConfig``) for the wav2vec2 encoder, the LM and the
codec bottleneck: per-head windows in an LM, one set of checks whose errors name the field, and model files and
recipes written with the earlier wav2vec2-only attention section still loading."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from fairseq2.nn import BatchLayout

from seqwin.attention import AttentionSpec, LayerAttentionConfig
from seqwin.attention.fairseq2 import MixedSDPA, SlidingWindowSDPA
from seqwin.cli.main import main as seqwin
from seqwin.models.lm import Decoder, create_lm_model, decoding_session
from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
from seqwin.models.wav2vec2.config import SeqwinWav2Vec2AsrConfig, SeqwinWav2Vec2Config, asr_presets, ssl_presets
from seqwin.recipes.codec.config import CodecRecipeConfig
from seqwin.recipes.lm.config import LMRecipeConfig
from seqwin.recipes.wav2vec2.config import ModelSection
from seqwin.training import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
LM_MODEL = {"model_dim": 32, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2, "ffn_inner_dim": 64,
            "max_seq_len": 512}
LOCAL = {"kind": "local", "window": [7, 0]}
HEAD_WINDOWS = [(3, 0), (7, 0), (1, 0), (15, 0)]


def _load(kls, tmp_path, tree: dict):
    if kls is LMRecipeConfig:  # sequences the tiny LMs' rotary table covers
        tree = {"data": {"seq_len": 64}, **tree}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_config(kls, path)


# ---- per-head windows in an LM ----

def test_lm_per_head_windows_decode_like_the_full_forward(tmp_path):
    attention = {"default": LOCAL, "head_windows": {1: [list(w) for w in HEAD_WINDOWS]}}
    cfg = _load(LMRecipeConfig, tmp_path, {"model": {**LM_MODEL, "attention": attention}}).model
    assert cfg.attention.describe(3, 4) == "1 x local(7,0) + 1 x local[(3,0),(7,0),(1,0),(15,0)] + 1 x local(7,0)"
    cfg.vocab_size = 41
    torch.manual_seed(0)
    model = create_lm_model(cfg).eval()
    attn = [layer.self_attn for layer in model.decoder.layers]
    assert isinstance(attn[1].sdpa, SlidingWindowSDPA) and attn[1].sdpa.window == HEAD_WINDOWS
    assert attn[0].sdpa.window == (7, 0)
    assert attn[1].state_factory.window_left == 15 and attn[0].state_factory.window_left == 7  # longest head

    x = torch.randint(0, 41, (2, 40))
    with torch.no_grad():
        full = model(x, BatchLayout.of(x))
    with decoding_session(model):
        dec = Decoder(model, x.shape[1])
        steps = torch.cat([dec.forward(x[:, a:b]) for a, b in [(0, 9), *[(i, i + 1) for i in range(9, 40)]]], 1)
    torch.testing.assert_close(steps, full, atol=2e-5, rtol=1e-4)

    plain_cfg = copy.deepcopy(cfg)
    plain_cfg.attention.head_windows = {}
    torch.manual_seed(0)
    plain = create_lm_model(plain_cfg).eval()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values(),
                                                 strict=True))
    with torch.no_grad():  # same weights: only the per-head windows differ
        assert (plain(x, BatchLayout.of(x)) - full).abs().max() > 1e-3


# ---- the checks, one error per mistake, naming the field ----

def _lm(tmp_path, attention):
    return _load(LMRecipeConfig, tmp_path, {"model": {**LM_MODEL, "attention": attention}})


def _wav2vec2(tmp_path, attention):  # the tiny preset: 6 layers of 4 heads
    return ModelSection(arch="tiny", config={"attention": attention}).build(ssl_presets(), SeqwinWav2Vec2Config)


def _codec(tmp_path, attention):
    return _load(CodecRecipeConfig, tmp_path, {"model": {"bottleneck": "attention", "causal": True,
                                                         "attention": attention}})


MIXED_TOP = {"top": {"kind": "mixed", "local_heads": 2, "routing_heads": 2, "window": [7, 0], "num_clusters": 4},
             "num_top_layers": 1}


def _mixed_top(local: int, routing: int) -> dict:
    return {**MIXED_TOP, "top": {"kind": "mixed", "local_heads": local, "routing_heads": routing, "window": [7, 0]}}


@pytest.mark.parametrize("build,attention,error", [
    (_lm, {"default": LOCAL, "head_windows": {0: [[3, 0]] * 2}},
     r"model\.attention\.head_windows\[0\]: 2 windows for 4 heads$"),
    (_lm, {"default": LOCAL, **MIXED_TOP, "head_windows": {-1: [[3, 0]] * 4}},
     r"model\.attention\.head_windows\[-1\]: layer 2 is 'mixed' \(top\), per-head windows need 'local'$"),
    (_lm, {"default": LOCAL, "head_windows": {0: [[3, 0], [3, 2], [3, 0], [3, 0]]}},
     r"model\.attention\.head_windows\[0\]: a causal layer needs windows with right == 0"),
    (_lm, {"default": LOCAL, "head_windows": {1: [[-1, 0], [3, 0], [3, 0], [3, 0]]}},
     r"model\.attention\.head_windows\[1\]: a local window needs a bounded left side"),
    (_lm, {"default": LOCAL, "head_windows": {3: [[3, 0]] * 4}},
     r"model\.attention\.head_windows\[3\]: layer index out of range for 3 layers$"),
    (_lm, {"default": LOCAL, "head_windows": {0: [[-2, 0]] * 4}},
     r"model\.attention\.head_windows\[0\]: windows must be \(left, right\) with sides >= -1"),
    (_lm, {"default": LOCAL, "overrides": {5: LOCAL}},
     r"model\.attention\.overrides\.5: layer index out of range for 3 layers$"),
    (_lm, {"default": LOCAL, "num_top_layers": 4, "top": LOCAL},
     r"model\.attention\.num_top_layers must be in \[0, 3\], got 4$"),
    (_lm, {"default": LOCAL, **_mixed_top(1, 2)},
     r"model\.attention\.top: local_heads \(1\) \+ routing_heads \(2\) must equal the layer's 4 heads$"),
    (_lm, {"default": LOCAL, **_mixed_top(1, 3)},
     r"model\.attention\.top: local_heads \(1\) must be a multiple of the query heads per key/value head \(2\)$"),
    (_lm, {"default": {"kind": "local", "window": [8, 8]}},
     r"model\.attention\.default: a causal spec needs a window with right == 0"),
    (_wav2vec2, {"overrides": {1: {"kind": "local", "window": [4, 0], "causal": True}}},
     r"model\.config\.attention\.overrides\.1: the wav2vec2 encoder is bidirectional"),
    (_wav2vec2, {"overrides": {0: {"kind": "full"}}, "head_windows": {0: [[1, 1]] * 4}},
     r"model\.config\.attention\.head_windows\[0\]: layer 0 is 'full' \(overrides\.0\), per-head windows need"),
    (_wav2vec2, {"head_windows": {2: [[1, 1]] * 3}},
     r"model\.config\.attention\.head_windows\[2\]: 3 windows for 4 heads$"),
    (_codec, {"window": [8, 4]}, r"model\.attention\.window: a causal spec needs a window with right == 0"),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_bad_attention_configs_name_the_field(tmp_path, build, attention, error):
    with pytest.raises(ConfigError, match="^" + error):
        build(tmp_path, attention)


def test_wav2vec2_recipe_section_takes_per_head_windows(tmp_path):
    cfg = _wav2vec2(tmp_path, {"overrides": {0: {"kind": "full"}}, "head_windows": {-1: [[1, 1], [2, 2], [4, 0],
                                                                                         [0, 4]]}})
    assert cfg.attention.describe(6, 4) == "1 x full + 4 x local(32,32) + 1 x local[(1,1),(2,2),(4,0),(0,4)]"


def test_bad_per_head_windows_are_one_line_cli_errors(tmp_path, capsys):
    config = tmp_path / "lm.yaml"
    config.write_text(yaml.safe_dump({"model": {**LM_MODEL, "attention": {"default": LOCAL,
                                                                          "head_windows": {0: [[3, 0]]}}},
                                      "tokenizer": {"kind": "byte"}, "data": {"dir": str(tmp_path), "seq_len": 64}}))
    assert seqwin(["train", "lm", "--config", str(config), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and ": error: model.attention.head_windows[0]: 1 windows for 4 heads" in err


# ---- files and recipes written before the vocabulary was shared ----

def test_old_wav2vec2_model_file_loads_and_computes_the_same():
    """A CTC model file saved by the earlier ``EncoderAttentionConfig`` (full, per-head local, local and mixed
    local + routing layers), with its input and eval-mode output at save time."""
    loaded = wav2vec2_checkpoint.load(DATA / "wav2vec2_asr_old_attention.pt")
    attention = loaded.config.attention
    assert isinstance(attention, LayerAttentionConfig)
    assert attention.head_windows == {1: [(1, 1), (2, 2), (4, 0), (0, 4)]}
    assert attention.describe(4, 4) == ("1 x full + 1 x local[(1,1),(2,2),(4,0),(0,4)] + 1 x local(4,4) + "
                                        "1 x mixed(2x(3,3)+2xrouting)")
    sdpas = [layer.self_attn.sdpa for layer in loaded.model.encoder.layers]
    assert isinstance(sdpas[1], SlidingWindowSDPA) and isinstance(sdpas[3], MixedSDPA)
    io = torch.load(DATA / "wav2vec2_asr_old_attention_io.pt", weights_only=True)
    model = loaded.model.eval()
    with torch.no_grad():
        logits, layout = model(io["wav"], BatchLayout.of(io["wav"], seq_lens=io["seq_lens"]))
    assert list(layout.seq_lens) == io["out_lens"]
    torch.testing.assert_close(logits, io["logits"], atol=1e-5, rtol=1e-4)


def test_windowize_keeps_the_other_layers_per_head_windows(tmp_path, capsys):
    out = tmp_path / "model_w2.pt"
    assert seqwin(["windowize", "--window", "2,2", "--layers", "2", str(DATA / "wav2vec2_asr_old_attention.pt"),
                   str(out)]) == 0
    assert "1 layer(s) changed" in capsys.readouterr().out
    described = wav2vec2_checkpoint.load(out).config.attention.describe(4, 4)
    assert described == ("1 x full + 1 x local[(1,1),(2,2),(4,0),(0,4)] + 1 x local(2,2) + "
                         "1 x mixed(2x(3,3)+2xrouting)")


RECIPE_ATTENTION = {
    "wav2vec2/ssl/mini.yaml": "6 x local(32,32)",
    "wav2vec2/ssl/base_960h.yaml": "12 x local(128,128)",
    "wav2vec2/asr/mini.yaml": "6 x local(32,32)",
    "wav2vec2/asr/base_10h.yaml": "12 x local(128,128)",
    "wav2vec2/asr/base_100h.yaml": "12 x local(128,128)",
    "lm/mini.yaml": "2 x local(255,0) + 1 x mixed(2x(255,0)+2xrouting)",
    "lm/mini_speech.yaml": "2 x local(255,0) + 1 x mixed(2x(255,0)+2xrouting)",
    "lm/rt_wikitext103.yaml": "8 x local(255,0) + 2 x mixed(8x(255,0)+8xrouting)",
    "lm/rt_pg19.yaml": "18 x local(255,0) + 4 x mixed(8x(255,0)+8xrouting)",
    "codec/mini.yaml": "2 x local(32,32)",
    "codec/mini_long.yaml": "2 x local(32,32)",
    "codec/fusecodec_librispeech.yaml": None,  # LSTM bottleneck: no attention
}


@pytest.mark.parametrize("name", sorted(RECIPE_ATTENTION))
def test_recipe_attention_sections_load(name):
    path = REPO / "recipes" / name
    tree = yaml.safe_load(path.read_text())
    family = name.split("/")[0]
    if family == "wav2vec2":
        asr = name.startswith("wav2vec2/asr/")
        cfg = ModelSection(**tree["model"]).build(asr_presets() if asr else ssl_presets(),
                                                  SeqwinWav2Vec2AsrConfig if asr else SeqwinWav2Vec2Config)
        enc = cfg.model.encoder_config
        described = cfg.attention.describe(enc.num_encoder_layers, enc.num_encoder_attn_heads)
    elif family == "lm":
        model = load_config(LMRecipeConfig, path).model
        assert all(layer.spec.causal for layer in model.layers())
        described = model.attention.describe(model.num_layers, model.num_heads)
    else:
        codec = load_config(CodecRecipeConfig, path).model
        if codec.bottleneck != "attention":
            assert RECIPE_ATTENTION[name] is None
            return
        described = f"{codec.attention.num_layers} x {codec.attention.spec(codec.causal).describe()}"
    assert described == RECIPE_ATTENTION[name]


def test_clusters_fit_check_names_the_section():
    attention = LayerAttentionConfig(default=AttentionSpec(kind="local", window=(4, 4)),
                                     top=AttentionSpec(kind="routing", num_clusters=9), num_top_layers=1,
                                     overrides={0: AttentionSpec(kind="routing", num_clusters=3)})
    attention.check_clusters_fit(9, "a sequence")
    with pytest.raises(ValueError, match=r"^model\.attention\.top\.num_clusters \(9\) is more than the 8 tokens of "
                                         r"a sequence: clusters would stay empty; lower it$"):
        attention.check_clusters_fit(8, "a sequence", key="model.attention")
    attention.num_top_layers = 0  # an unused top section is not checked
    attention.check_clusters_fit(3, "a sequence")
    with pytest.raises(ValueError, match=r"^attention\.overrides\.0\.num_clusters \(3\)"):
        attention.check_clusters_fit(2, "a sequence")
