"""seqwin wav2vec2 models: attention per layer, windowize, masker, quantizer, fairseq1/fairseq2 import, registry."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import subprocess
import sys

import pytest
import torch
from fairseq2.models.transformer import TransformerNormOrder
from fairseq2.models.wav2vec2 import GumbelWav2Vec2VectorQuantizer
from fairseq2.models.wav2vec2.asr import Wav2Vec2AsrModel
from fairseq2.nn import BatchLayout

from seqwin.attention import AttentionSpec, LayerAttentionConfig
from seqwin.attention.fairseq2 import MixedSDPA, SlidingWindowSDPA
from seqwin.models.wav2vec2.checkpoint import ModelLoadError, load, save
from seqwin.models.wav2vec2.config import InterCtcConfig, asr_presets, ssl_presets
from seqwin.models.wav2vec2.factory import (
    create_seqwin_wav2vec2_asr_model,
    create_seqwin_wav2vec2_model,
    set_encoder_attention,
)
from seqwin.models.wav2vec2.fairseq1 import parse_conv_layers
from seqwin.models.wav2vec2.masker import equalize, row_span_mask
from seqwin.models.wav2vec2.quantizer import EagerGumbelQuantizer

SAMPLES = 4000  # 0.25 s: 12 frames through the small conv stack below


def small(cfg, kind: str = "full", window=(2, 2)):
    """A few-thousand-parameter version of a preset with the paper's conv frontend (fairseq-compatible)."""
    cfg = copy.deepcopy(cfg)
    enc = cfg.model.encoder_config
    enc.model_dim, enc.num_encoder_layers, enc.num_encoder_attn_heads, enc.ffn_inner_dim = 32, 2, 4, 64
    enc.feature_extractor_layer_descs = [(16, 10, 5), (16, 3, 2), (16, 2, 2)]
    enc.feature_dim, enc.pos_conv_kernel_size, enc.num_pos_conv_groups = 16, 8, 4
    enc.dropout_p = enc.attn_dropout_p = enc.layer_drop_p = enc.ffn_inner_dropout_p = 0.0
    enc.norm_order, enc.layer_norm_features = TransformerNormOrder.POST, True  # as the paper's Base
    cfg.frontend.kind = "conv"
    cfg.attention = LayerAttentionConfig(default=AttentionSpec(kind=kind, window=window))
    if hasattr(cfg.model, "quantized_dim"):
        cfg.model.quantized_dim, cfg.model.final_dim, cfg.model.num_codebook_entries = 16, 16, 8
        cfg.model.num_distractors, cfg.model.temporal_mask_span_len, cfg.model.spatial_mask_span_len = 3, 2, 2
    else:
        cfg.model.temporal_mask_span_len, cfg.model.spatial_mask_span_len, cfg.model.target_vocab_size = 2, 4, 12
    return cfg


def _audio(batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    wav = torch.randn(batch, SAMPLES, generator=g)
    lens = [SAMPLES, SAMPLES * 3 // 4, SAMPLES // 2][:batch]
    return wav, BatchLayout.of(wav, seq_lens=lens)


def _logits(model, wav, layout):
    model.eval()
    with torch.no_grad():
        logits, out_layout = model(wav, layout)
    return logits, out_layout


def test_attention_per_layer_and_describe():
    cfg = small(asr_presets()["tiny"])
    cfg.model.encoder_config.num_encoder_layers = 4
    cfg.attention = LayerAttentionConfig(
        default=AttentionSpec(kind="local", window=(4, 4)),
        top=AttentionSpec(kind="mixed", local_heads=2, routing_heads=2, window=(3, 3), num_clusters=2),
        num_top_layers=1, overrides={0: AttentionSpec(kind="full")}, head_windows={1: [(1, 1), (2, 2), (4, 0), (0, 4)]})
    model = create_seqwin_wav2vec2_asr_model(cfg)
    sdpas = [layer.self_attn.sdpa for layer in model.encoder.layers]
    assert type(sdpas[0]).__name__ == "TorchSDPA"
    assert isinstance(sdpas[1], SlidingWindowSDPA) and sdpas[1].window == [(1, 1), (2, 2), (4, 0), (0, 4)]
    assert isinstance(sdpas[2], SlidingWindowSDPA) and sdpas[2].window == (4, 4)
    assert isinstance(sdpas[3], MixedSDPA) and (sdpas[3].local_heads, sdpas[3].routing_heads) == (2, 2)
    assert cfg.attention.describe(4, 4) == "1 x full + 1 x local[(1,1),(2,2),(4,0),(0,4)] + 1 x local(4,4) + " \
                                           "1 x mixed(2x(3,3)+2xrouting)"
    wav, layout = _audio()
    model.train()
    logits, out_layout = model(wav, layout)
    assert logits.shape[:2] == (3, max(out_layout.seq_lens)) and torch.isfinite(logits).all()


@pytest.mark.parametrize("bad,needle", [
    ({"head_windows": {0: [(1, 1)]}}, "4 heads"),
    ({"default": AttentionSpec(kind="mixed", local_heads=1, routing_heads=1)}, "must equal"),
    ({"default": AttentionSpec(kind="local", window=(4, 0), causal=True)}, "bidirectional"),
])
def test_bad_attention_configs(bad, needle):
    cfg = small(asr_presets()["tiny"])
    cfg.attention = LayerAttentionConfig(**bad)
    with pytest.raises(ValueError, match=needle):
        cfg.validate()
        create_seqwin_wav2vec2_asr_model(cfg)


@pytest.mark.parametrize("inter,needle", [
    (InterCtcConfig(weight=1.0), "inter_ctc.weight"),
    (InterCtcConfig(weight=0.3, layer=2), "inter_ctc.layer must be in \\[1, 1\\]"),
    (InterCtcConfig(weight=0.3, layer=0), "inter_ctc.layer"),
])
def test_bad_inter_ctc_configs(inter, needle):
    cfg = small(asr_presets()["tiny"])
    cfg.inter_ctc = inter
    with pytest.raises(ValueError, match=needle):
        cfg.validate()
    cfg.inter_ctc, cfg.model.encoder_config.layer_drop_p = InterCtcConfig(weight=0.3), 0.1
    with pytest.raises(ValueError, match="layer_drop_p"):
        cfg.validate()


@pytest.mark.parametrize("norm_order", [TransformerNormOrder.POST, TransformerNormOrder.PRE])
def test_inter_ctc_loss_is_the_weighted_sum_of_the_last_and_the_middle_layers_ctc(norm_order):
    cfg = small(asr_presets()["tiny"], "local", (2, 2))
    cfg.model.encoder_config.num_encoder_layers, cfg.model.encoder_config.norm_order = 3, norm_order
    cfg.model.use_masking, cfg.model.final_dropout_p = False, 0.0

    def build(weight: float):  # the same weights every time (deepcopy refuses weight-normed modules)
        torch.manual_seed(0)
        return create_seqwin_wav2vec2_asr_model(dataclasses.replace(cfg, inter_ctc=InterCtcConfig(weight=weight,
                                                                                                 layer=2))).train()

    model, plain, cut = build(0.3), build(0.0), build(0.0)
    # references: the plain CTC loss of the whole model, and of the model cut after layer 2 (same norm and head)
    cut.encoder.layers = cut.encoder.layers[:2]
    wav, layout = _audio()
    targets = torch.randint(1, 12, (3, 4))
    target_layout = BatchLayout.of(targets, seq_lens=[4, 3, 2])
    loss = model(wav, layout, targets, target_layout)
    full_loss, cut_loss = plain(wav, layout, targets, target_layout), cut(wav, layout, targets, target_layout)
    assert (full_loss - cut_loss).abs() > 1e-3
    torch.testing.assert_close(loss, 0.7 * full_loss + 0.3 * cut_loss)
    loss.backward()
    assert model.encoder.layers[2].ffn.output_proj.weight.grad.abs().sum() > 0
    model.eval()  # validation and decoding see the plain model
    with torch.no_grad():
        torch.testing.assert_close(model(wav, layout, targets, target_layout), full_loss.detach())


def test_window_covering_everything_equals_dense_and_narrow_window_differs():
    torch.manual_seed(0)
    cfg = small(asr_presets()["tiny"])
    dense = create_seqwin_wav2vec2_asr_model(cfg)
    wav, layout = _audio()
    ref, ref_layout = _logits(dense, wav, layout)
    wide = copy.deepcopy(dense)
    cfg_wide = copy.deepcopy(cfg)
    assert set_encoder_attention(wide, cfg_wide, LayerAttentionConfig(
        default=AttentionSpec(kind="local", window=(-1, -1)))) == 2
    out, _ = _logits(wide, wav, layout)
    valid = torch.arange(ref.shape[1])[None, :] < torch.tensor(ref_layout.seq_lens)[:, None]
    torch.testing.assert_close(out[valid], ref[valid], atol=2e-5, rtol=1e-4)
    narrow = copy.deepcopy(dense)
    set_encoder_attention(narrow, copy.deepcopy(cfg), LayerAttentionConfig(
        default=AttentionSpec(kind="local", window=(1, 1))))
    out, _ = _logits(narrow, wav, layout)
    assert (out[valid] - ref[valid]).abs().max() > 1e-3


def test_padding_does_not_change_outputs_with_windowed_attention():
    torch.manual_seed(0)
    cfg = small(asr_presets()["tiny"], "local", (3, 3))
    # Per-frame conv norms (Large-lv60k style): the Base CNN's first-layer GroupNorm spans the padding by design.
    cfg.model.encoder_config.feature_extractor_layer_norm_convs = True
    model = create_seqwin_wav2vec2_asr_model(cfg).eval()
    wav, layout = _audio()
    batched, out_layout = _logits(model, wav, layout)
    n = layout.seq_lens[2]
    single, single_layout = _logits(model, wav[2:3, :n], BatchLayout.of(wav[2:3, :n], seq_lens=[n]))
    m = out_layout.seq_lens[2]
    assert single_layout.seq_lens[0] == m
    torch.testing.assert_close(batched[2, :m], single[0, :m], atol=2e-5, rtol=1e-4)


def test_logmel_frontend_lengths_and_ssl_loss_falls():
    torch.manual_seed(0)
    cfg = copy.deepcopy(ssl_presets()["tiny"])
    enc = cfg.model.encoder_config
    enc.num_encoder_layers, enc.model_dim, enc.ffn_inner_dim, enc.num_pos_conv_groups = 2, 64, 128, 4
    cfg.model.final_dim = cfg.model.quantized_dim = 32
    model = create_seqwin_wav2vec2_model(cfg)
    wav = torch.randn(2, 16000)
    layout = BatchLayout.of(wav, seq_lens=[16000, 12000])
    _, out_layout = model.encoder_frontend.feature_extractor(wav, layout)
    assert list(out_layout.seq_lens) == [24, 18]  # ((n - 400) // 160 + 1) // 4 frames of 40 ms
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        torch.manual_seed(1)  # same masks and distractors every step: the loss must fall
        loss, out = model(wav, layout, features_penalty_weight=0.0)
        opt.zero_grad()
        (loss.aggregate / out.num_targets).backward()
        opt.step()
        losses.append(loss.contrastive.item() / out.num_targets)
    assert losses[-1] < losses[0] - 0.3, losses


def test_masker_handles_short_rows_and_equalizes():
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([3, 15, 200, 40])
    mask = row_span_mask(lens, 200, 4, 0.5, 2, generator=g)
    counts = mask.sum(1)
    assert (counts >= 1).all() and (counts < lens).all()  # every row masked, none fully
    assert not mask[0, 3:].any() and not mask[1, 15:].any()  # never inside padding
    assert 60 <= counts[2] <= 110  # ~p of a long row (spans overlap a little)
    eq = equalize(mask, generator=g)
    assert (eq.sum(1) == counts.min()).all() and not (eq & ~mask).any()


def test_eager_quantizer_matches_fairseq2():
    torch.manual_seed(0)
    ours = EagerGumbelQuantizer(16, 32, 2, 8, (2.0, 0.5, 0.999))
    theirs = GumbelWav2Vec2VectorQuantizer(16, 32, 2, 8, (2.0, 0.5, 0.999))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 16)
    ours.eval(), theirs.eval()
    with torch.compiler.set_stance("force_eager"):  # fairseq2 compiles inside forward: seconds of Inductor
        a, b = ours(x), theirs(x)
    torch.testing.assert_close(a.quantized_vectors, b.quantized_vectors)
    torch.testing.assert_close(a.prob_perplexity, b.prob_perplexity)


def test_parse_conv_layers():
    assert parse_conv_layers("[(512, 10, 5)] + [(512, 3, 2)] * 2") == [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    with pytest.raises(ValueError):
        parse_conv_layers("__import__('os').system('true')")


# ---- fairseq (v1) checkpoints written the way fairseq names its modules ------------------------------------

_TO_FAIRSEQ1 = [
    (r"^encoder_frontend\.feature_extractor\.layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^encoder_frontend\.feature_extractor\.layers\.0\.group_norm\.", r"feature_extractor.conv_layers.0.2."),
    (r"^encoder_frontend\.post_extract_layer_norm\.", "layer_norm."),
    (r"^encoder_frontend\.model_dim_proj\.", "post_extract_proj."),
    (r"^encoder_frontend\.pos_encoder\.conv\.weight_g$", "encoder.pos_conv.0.parametrizations.weight.original0"),
    (r"^encoder_frontend\.pos_encoder\.conv\.weight_v$", "encoder.pos_conv.0.parametrizations.weight.original1"),
    (r"^encoder_frontend\.pos_encoder\.conv\.", "encoder.pos_conv.0."),
    (r"^encoder_frontend\.layer_norm\.", "encoder.layer_norm."),
    (r"\.self_attn\.output_proj\.", ".self_attn.out_proj."),
    (r"\.ffn\.inner_proj\.", ".fc1."),
    (r"\.ffn\.output_proj\.", ".fc2."),
    (r"\.ffn_layer_norm\.", ".final_layer_norm."),
    (r"^masker\.temporal_mask_embed$", "mask_emb"),
    (r"^quantizer\.entries$", "quantizer.vars"),
    (r"^quantizer\.entry_proj\.", "quantizer.weight_proj."),
    (r"^final_target_proj\.", "project_q."),
]


def to_fairseq1(state: dict, asr: bool) -> dict:
    out = {}
    for key, value in state.items():
        if key == "quantizer.num_updates":
            continue
        for pattern, repl in _TO_FAIRSEQ1:
            key = re.sub(pattern, repl, key)
        if asr:
            key = "w2v_encoder.proj." + key[len("final_proj."):] if key.startswith("final_proj.") else \
                "w2v_encoder.w2v_model." + key
        out[key] = value
    return out


class FakeDictConfig:  # stands in for omegaconf: a class the loader must not import
    def __init__(self, content):
        self._content = content


@pytest.mark.parametrize("asr,pre_norm", [(False, False), (True, False), (True, True)])
def test_import_fairseq1_checkpoint(tmp_path, asr, pre_norm):
    torch.manual_seed(0)
    cfg = small(asr_presets()["tiny"] if asr else ssl_presets()["tiny"])
    if pre_norm:  # Large-lv60k style: fairseq's layer_norm_first, the encoder's last norm kept as such
        enc = cfg.model.encoder_config
        enc.norm_order, enc.layer_norm_features = TransformerNormOrder.PRE, False
    model = (create_seqwin_wav2vec2_asr_model if asr else create_seqwin_wav2vec2_model)(cfg).eval()
    settings = {"encoder_attention_heads": 4, "conv_feature_layers": "[(16, 10, 5), (16, 3, 2)] + [(16, 2, 2)]",
                "layer_norm_first": pre_norm}
    cfg_obj = {"model": FakeDictConfig({"w2v_args": argparse.Namespace(**settings)} if asr else settings)}
    path = tmp_path / "fairseq1.pt"
    torch.save({"cfg": cfg_obj, "model": to_fairseq1(model.state_dict(), asr), "extra_state": {}}, path)
    loaded = load(path)
    assert loaded.source == "fairseq1" and loaded.family.endswith("_asr") == asr
    enc = loaded.config.model.encoder_config
    assert enc.feature_extractor_layer_descs == [(16, 10, 5), (16, 3, 2), (16, 2, 2)]
    assert (enc.num_encoder_layers, enc.num_encoder_attn_heads, enc.model_dim) == (2, 4, 32)
    wav, layout = _audio()
    loaded.model.eval()
    if asr:
        torch.testing.assert_close(_logits(loaded.model, wav, layout)[0], _logits(model, wav, layout)[0])
    else:
        with torch.no_grad():
            a = model.encoder(*model.encoder_frontend(wav, layout))
            b = loaded.model.encoder(*loaded.model.encoder_frontend(wav, layout))
        torch.testing.assert_close(a, b)


def test_import_fairseq2_checkpoint_and_seqwin_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = create_seqwin_wav2vec2_asr_model(small(asr_presets()["tiny"])).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "fs2.pt")
    loaded = load(tmp_path / "fs2.pt", heads=4)
    assert loaded.source == "fairseq2"
    wav, layout = _audio()
    torch.testing.assert_close(_logits(loaded.model, wav, layout)[0], _logits(model, wav, layout)[0])
    save(tmp_path / "model.pt", loaded.model, loaded.config, dictionary=["<s>", "<pad>", "</s>", "<unk>"] + list("AB"))
    again = load(tmp_path / "model.pt")
    assert again.source == "seqwin" and again.dictionary[-1] == "B"
    torch.testing.assert_close(_logits(again.model, wav, layout)[0], _logits(model, wav, layout)[0])


def test_load_errors_are_one_line(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable checkpoint"):
        load(tmp_path / "junk.pt")
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="cannot infer a wav2vec2 architecture"):
        load(tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="no such checkpoint"):
        load(tmp_path / "missing.pt")


def test_fairseq2_extension_registers_families():
    code = (
        "import fairseq2\n"
        "from seqwin.models.wav2vec2.registry import register_seqwin_wav2vec2, get_seqwin_wav2vec2_asr_hub\n"
        "fairseq2.init_fairseq2(extras=register_seqwin_wav2vec2)\n"
        "hub = get_seqwin_wav2vec2_asr_hub()\n"
        "m = hub.create_new_model(hub.get_arch_config('tiny'))\n"
        "print(sorted(hub.get_archs()), type(m.encoder.layers[0].self_attn.sdpa).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "['base_100h', 'base_10h', 'large_100h', 'large_10h', 'tiny'] SlidingWindowSDPA" in out.stdout


def test_presets_have_paper_shapes():
    base, large = ssl_presets()["base"].model.encoder_config, ssl_presets()["large"].model.encoder_config
    assert (base.num_encoder_layers, base.model_dim, base.num_encoder_attn_heads) == (12, 768, 12)
    assert (large.num_encoder_layers, large.model_dim, large.num_encoder_attn_heads) == (24, 1024, 16)
    assert isinstance(create_seqwin_wav2vec2_asr_model(small(asr_presets()["base_10h"])), Wav2Vec2AsrModel)


# ---- word n-gram LM (beam search) ------------------------------------------------------------------------------


def _arpa_prob(arpa: str):
    """p(word | context) under ARPA backoff semantics, from the file's text."""
    import math as m

    probs, bows, order = {}, {}, 0
    for line in arpa.splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            order = int(line[1:].split("-")[0])
            continue
        fields = line.split("\t")
        if order and len(fields) >= 2:
            gram = tuple(fields[1].split())
            probs[gram] = 10 ** float(fields[0])
            if len(fields) == 3:
                bows[gram] = 10 ** float(fields[2])

    def p(context, word):
        if not context:
            return probs.get((word,), probs[("<unk>",)])
        if context + (word,) in probs:
            return probs[context + (word,)]
        return bows.get(context, 1.0) * p(context[1:], word)

    return p, {g[0] for g in probs if len(g) == 1} - {"<s>"}, m


def test_kneser_ney_arpa_is_normalized():
    from seqwin.recipes.wav2vec2.ngram import train_arpa

    sents = [s.split() for s in ["PLEASE ENTER YOUR NUMBER", "ENTER YOUR PASSWORD", "YOUR CALL IS IMPORTANT",
                                 "PLEASE HOLD", "THANK YOU"]]
    p, vocab, _ = _arpa_prob(train_arpa(sents, order=3))
    for context in [(), ("<s>",), ("ENTER",), ("<s>", "PLEASE"), ("ENTER", "YOUR"), ("HOLD", "ON"), ("ZEBRA",)]:
        total = sum(p(context, w) for w in vocab)
        assert abs(total - 1.0) < 1e-6, (context, total)
    assert p(("ENTER",), "YOUR") > p(("ENTER",), "HOLD")  # seen beats unseen


class _Evil:  # a pickle that would run code when loaded by a plain unpickler
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_checkpoint_reader_runs_no_code_from_the_file(tmp_path):
    from seqwin.models.wav2vec2.fairseq1 import plain, read_checkpoint

    target = tmp_path / "created_by_pickle"
    torch.save({"cfg": argparse.Namespace(model={"x": 1}), "evil": _Evil(str(target)), "w": torch.ones(2)},
               tmp_path / "c.pt")
    data = read_checkpoint(tmp_path / "c.pt")
    assert not target.exists()
    assert plain(data["cfg"]) == {"model": {"x": 1}} and torch.equal(data["w"], torch.ones(2))
