"""seqwin transcribe: exact chunked / streaming CTC inference, word times, output formats, bad inputs."""

from __future__ import annotations

import copy
import io
import json
import re
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from fairseq2.models.transformer import TransformerNormOrder
from fairseq2.nn import BatchLayout

from seqwin.attention import AttentionSpec, LayerAttentionConfig
from seqwin.cli import main as cli
from seqwin.cli import transcribe as transcribe_cli
from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
from seqwin.models.wav2vec2.config import asr_presets, ssl_presets
from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_asr_model, create_seqwin_wav2vec2_model
from seqwin.recipes.wav2vec2.chunked import ChunkEncoder, StreamEncoder, encode_file, receptive_field
from seqwin.recipes.wav2vec2.decode import greedy_ctc, ids_to_words

SYMBOLS = ["<s>", "<pad>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S"]
SR = 16000


def micro(frontend: str = "logmel", window=(4, 4), **encoder) -> object:
    """A few-thousand-parameter CTC config: log-mel (40 ms frames) or a small conv stack (40 samples per frame)."""
    cfg = copy.deepcopy(asr_presets()["tiny"])
    enc = cfg.model.encoder_config
    enc.model_dim, enc.num_encoder_layers, enc.num_encoder_attn_heads, enc.ffn_inner_dim = 32, 2, 4, 64
    enc.num_pos_conv_groups, enc.pos_conv_kernel_size = 4, 8
    enc.dropout_p = enc.attn_dropout_p = enc.ffn_inner_dropout_p = 0.0
    if frontend == "conv":
        cfg.frontend.kind = "conv"
        enc.feature_extractor_layer_descs = [(16, 10, 5), (16, 3, 2), (16, 3, 2), (16, 2, 2)]
        enc.feature_dim, enc.norm_order, enc.layer_norm_features = 16, TransformerNormOrder.POST, True
    for key, value in encoder.items():
        setattr(enc, key, value)
    cfg.model.target_vocab_size = len(SYMBOLS)
    cfg.attention = LayerAttentionConfig(default=AttentionSpec(kind="local", window=window)) \
        if window != "full" else LayerAttentionConfig()
    return cfg


def build(cfg, seed: int = 0, *, confident: bool = False):
    torch.manual_seed(seed)
    model = create_seqwin_wav2vec2_asr_model(cfg).eval()
    with torch.no_grad():
        for layer in model.encoder.layers:  # BERT-style init (std 0.02) makes attention a whisper next to the
            layer.self_attn.v_proj.weight.mul_(10.0)  # residual: amplify it so that the frames at the edge of
            layer.self_attn.output_proj.weight.mul_(10.0)  # the receptive field visibly move the logits
        if confident:  # frame-dependent letters with large logit gaps, so that the text is not all blanks
            model.final_proj.weight.mul_(30.0)
            model.final_proj.bias[0] -= 2.0
    return model


def wave(seconds: float, seed: int = 0, extra: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR) + extra) / SR
    tone = np.sin(2 * np.pi * (150 + 60 * np.sin(2 * np.pi * 0.7 * t)) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (0.2 * tone + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def whole(model, w: np.ndarray, normalize: bool = False) -> torch.Tensor:
    x = torch.from_numpy(w)[None]
    if normalize:
        x = torch.nn.functional.layer_norm(x, x.shape[1:])
    with torch.inference_mode():
        return model(x, BatchLayout.of(x))[0][0]


def whole_text(model, w: np.ndarray) -> str:
    x = torch.from_numpy(w)[None]
    with torch.inference_mode():
        logits, layout = model(x, BatchLayout.of(x))
    return ids_to_words(greedy_ctc(logits, layout)[0], SYMBOLS)


def chunked(model, cfg, w: np.ndarray, chunk: int, *, normalize=False, context=0) -> torch.Tensor:
    enc = ChunkEncoder(model, receptive_field(cfg, normalize=normalize), context_frames=context)
    return torch.cat(list(encode_file(enc, lambda a, b: w[a:b], len(w), chunk)))


# ---- receptive field and exactness ---------------------------------------------------------------------------


def test_receptive_field_of_presets_matches_the_help_text():
    presets = asr_presets()
    tiny = receptive_field(presets["tiny"])
    assert (tiny.stride, tiny.width, tiny.left, tiny.right) == (640, 880, 16 + 6 * 32, 15 + 6 * 32)
    assert [lv.name for lv in tiny.levels] == ["log-mel"]
    base = receptive_field(presets["base_10h"])
    assert not base.exact and base.unbounded[0] == "layer 0: full" and base.levels[0].name == "conv group norm"
    assert (base.stride, base.width) == (320, 400)
    for name, layers in [("base_10h", 12), ("large_10h", 24)]:
        cfg = presets[name]
        cfg.attention = LayerAttentionConfig(default=AttentionSpec(kind="local", window=(16, 16)))
        rf = receptive_field(cfg)
        assert (rf.left, rf.right) == (64 + 16 * layers, 63 + 16 * layers)
        assert f"(R=16: {rf.latency_seconds():.3f} s)" in transcribe_cli.__doc__
    assert f"tiny             {tiny.latency_seconds():.3f} s" in transcribe_cli.__doc__
    # per-head windows: the widest side of any head counts; a stacked position encoder adds its layers' kernels
    # (kernel max(3, 9 // 2) = 4 padded "same": 1 left, 2 right, twice)
    cfg = micro("conv", pos_encoder_depth=2, pos_conv_kernel_size=9)
    cfg.attention = LayerAttentionConfig(default=AttentionSpec(kind="local", window=(1, 1)),
                                           head_windows={0: [(2, 1), (0, 3), (1, 1), (5, 0)]})
    rf = receptive_field(cfg)
    assert (rf.left, rf.right) == (2 * 1 + 5 + 1, 2 * 2 + 3 + 1)


EXACT = {
    "log-mel, even pos conv": (micro(), False),
    "log-mel + waveform normalisation": (micro(window=(2, 5)), True),
    "conv + group norm, odd pos conv, per-head windows": (micro("conv", pos_conv_kernel_size=7), False),
    "conv + layer norms, stacked pos conv": (micro("conv", window=(1, 2), feature_extractor_layer_norm_convs=True,
                                                   pos_encoder_depth=2, pos_conv_kernel_size=9), False),
    "rotary positions": (micro(window=(3, 1), pos_encoder_type="rotary"), False),
}
EXACT["conv + group norm, odd pos conv, per-head windows"][0].attention.head_windows = {
    1: [(2, 1), (0, 3), (1, 1), (4, 0)]}


@pytest.mark.parametrize("name", list(EXACT))
def test_receptive_field_is_what_the_encoder_depends_on(name):
    """Perturb one frame of features: exactly the output frames within (left, right) of it change."""
    cfg, normalize = EXACT[name]
    model = build(cfg)
    rf = receptive_field(cfg, normalize=normalize)
    frontend = model.encoder_frontend

    def encode(feats):
        layout = BatchLayout.of(feats)
        with torch.inference_mode():
            seqs, _ = frontend.process_features(frontend.post_extract_layer_norm(feats), layout)
            return model.final_proj(model.encoder(seqs, layout))[0]

    torch.manual_seed(1)
    feats = torch.randn(1, 60, cfg.model.encoder_config.feature_dim)
    moved = feats.clone()
    moved[0, 30] += torch.randn(feats.shape[-1])
    changed = ((encode(moved) - encode(feats)).abs().amax(-1) > 0).nonzero().flatten().tolist()
    assert changed == list(range(30 - rf.right, 30 + rf.left + 1))


@pytest.mark.parametrize("name", list(EXACT))
def test_chunked_logits_equal_whole_file_logits(name):
    cfg, normalize = EXACT[name]
    model = build(cfg)
    rf = receptive_field(cfg, normalize=normalize)
    assert rf.exact
    w = wave(0.5, extra=137 if rf.stride == 640 else 23)  # odd lengths: the last frame's audio is partial
    ref = whole(model, w, normalize)
    for chunk in [0, 1, 2, 5, rf.right // 2, rf.left + rf.right + 3]:  # smaller and larger than the context
        got = chunked(model, cfg, w, chunk, normalize=normalize)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0, msg=f"chunk {chunk}")


def test_chunks_need_whole_file_statistics():
    """Encoding a chunk on its own normalises it with its own statistics: frames well inside its receptive field
    still differ from the whole file's, which is what the statistics pass prevents."""
    cfg = micro()
    model = build(cfg)
    rf = receptive_field(cfg)
    w = wave(1.0) * np.linspace(0.2, 3.0, SR, dtype=np.float32)  # louder towards the end
    head = whole(model, w[: SR // 2])
    inside = head.shape[0] - rf.right
    assert (head[:inside] - whole(model, w)[:inside]).abs().max() > 1e-2
    torch.testing.assert_close(chunked(model, cfg, w, 3)[:inside], whole(model, w)[:inside], atol=1e-5, rtol=0)


def test_dense_models_chunk_approximately():
    cfg = micro(window="full")
    model = build(cfg)
    rf = receptive_field(cfg)
    assert not rf.exact and "unbounded (layer 0: full; layer 1: full)" in rf.describe()
    w = wave(0.8, extra=99)
    ref = whole(model, w)
    torch.testing.assert_close(chunked(model, cfg, w, 0), ref, atol=1e-5, rtol=0)  # one chunk: exact
    near = chunked(model, cfg, w, 4, context=2)
    assert (near - ref).abs().max() > 1e-3  # a short context: visibly different logits
    far = chunked(model, cfg, w, 4, context=ref.shape[0])  # context covering the file: exact again
    torch.testing.assert_close(far, ref, atol=1e-5, rtol=0)


def test_dense_checkpoint_is_transcribed_approximately_and_says_so(setup, tmp_path, capsys, caplog):
    cfg = micro(window="full")
    wav2vec2_checkpoint.save(tmp_path / "dense.pt", build(cfg, confident=True), cfg, dictionary=SYMBOLS)
    assert run([setup["audio"] / "a.flac", "--checkpoint", tmp_path / "dense.pt", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["exact"] is False
    assert "chunks approximate the whole-file logits: layer 0: full; layer 1: full" in caplog.text


def test_stream_encoder_emits_exact_logits_as_audio_arrives():
    cfg = micro("conv", window=(2, 1), feature_extractor_layer_norm_convs=True)  # no whole-utterance statistics
    model = build(cfg)
    rf = receptive_field(cfg)
    w = wave(0.4, extra=11)
    stream = StreamEncoder(ChunkEncoder(model, rf, context_frames=0), step_frames=3)
    pieces, lags = [], []
    for start in range(0, len(w), 333):
        if (logits := stream.feed(w[start:start + 333])) is not None:
            pieces.append(logits)
            lags.append(stream.received - stream.emitted * rf.stride)
    pieces.append(stream.finish())
    assert len(pieces) > 5 and len(stream.buffer) < 2000  # only the context is kept
    torch.testing.assert_close(torch.cat(pieces), whole(model, w), atol=1e-5, rtol=0)
    assert min(lags) >= rf.right * rf.stride + rf.width - rf.stride  # never ahead of the right context


def _peaky(path: str) -> torch.Tensor:
    """Logits whose argmax spells ``path`` frame by frame ('.' = blank)."""
    ids = torch.tensor([0 if c == "." else SYMBOLS.index(c) for c in path])
    logits = torch.full((len(path), len(SYMBOLS)), -5.0)
    logits[torch.arange(len(path)), ids] = 5.0
    return logits


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_word_times_follow_the_ctc_path(decoder, tmp_path):
    """THE: T at frames 2-3 .. E at 7 (ends after frame 7); HAT: H at 13 .. T at 18-19 (ends after 19, or after
    18 where the beam decoder only knows where a letter starts). Fed in chunks of 4 frames."""
    from seqwin.recipes.wav2vec2.transcript import BeamStream, GreedyStream

    path = "..TT.H.E..||.H.AA.TT.|.."
    if decoder == "greedy":
        stream, end = GreedyStream(SYMBOLS, 0.04), 20
    else:
        pytest.importorskip("flashlight.lib.text.decoder", reason="beam search needs flashlight-text")
        from seqwin.recipes.wav2vec2.beam import lexicon_decoder

        (tmp_path / "lm.wrd").write_text("THE HAT\nHAT\n")
        stream, end = BeamStream(lexicon_decoder(SYMBOLS, tmp_path / "lm.wrd", tmp_path, beam_size=4),
                                 SYMBOLS, 0.04), 19
    logits = _peaky(path)
    for i in range(0, len(path), 4):
        stream.step(logits[i:i + 4])
    text, words = stream.finish()
    assert text == "THE HAT"
    assert [(w.word, w.start, w.end) for w in words] == [("THE", 0.08, 0.32), ("HAT", 0.52, round(end * 0.04, 3))]


# ---- the command ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("transcribe")
    cfg = micro()
    model = build(cfg, seed=3, confident=True)
    wav2vec2_checkpoint.save(root / "model.pt", model, cfg, dictionary=SYMBOLS)
    audio = root / "audio"
    (audio / "sub").mkdir(parents=True)
    waves = {"a": wave(1.3, 1, 77), "sub/b": wave(2.1, 2, 5), "c": wave(0.7, 3)}
    for name, w in waves.items():
        sf.write(audio / f"{name}.flac", w, SR, subtype="PCM_16")
    # what the file holds after 16-bit quantisation: the reference for every comparison
    waves = {k: sf.read(audio / f"{k}.flac", dtype="float32")[0] for k in waves}
    texts = {k: whole_text(model, w) for k, w in waves.items()}
    assert any(texts.values())
    return {"root": root, "ckpt": root / "model.pt", "audio": audio, "waves": waves, "texts": texts}


def run(argv) -> int:
    return cli.main(["transcribe", *map(str, argv)])


def test_txt_json_srt_end_to_end(setup, tmp_path, capsys):
    s = setup
    assert run([s["audio"], "--checkpoint", s["ckpt"], "--chunk-seconds", "0.3"]) == 0
    out, err = capsys.readouterr()
    lines = dict(line.split("\t") for line in out.splitlines())
    assert lines == s["texts"] and "3 file(s)" in err

    assert run([s["audio"], "--checkpoint", s["ckpt"], "--format", "json", "-o", tmp_path / "t.jsonl"]) == 0
    records = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert {r["id"]: r["text"] for r in records} == s["texts"]
    for r in records:
        assert r["exact"] and r["word_times"] == "greedy CTC path"
        assert " ".join(w["word"] for w in r["words"]) == r["text"]
        times = [t for w in r["words"] for t in (w["start"], w["end"])]
        assert times == sorted(times) and all(0 <= t <= r["duration"] for t in times)
        assert all(w["start"] < w["end"] for w in r["words"])

    assert run([s["audio"], "--checkpoint", s["ckpt"], "--format", "srt", "-o", tmp_path / "srt"]) == 0
    for r in records:
        cues = (tmp_path / "srt" / f"{r['id']}.srt").read_text().strip().split("\n\n") if r["words"] else []
        stamps, words = [], []
        for n, cue in enumerate(filter(None, cues), start=1):
            index, span, text = cue.split("\n")
            assert int(index) == n
            start, end = (_seconds(x) for x in span.split(" --> "))
            stamps += [start, end]
            words += text.split()
        assert stamps == sorted(stamps) and words == r["text"].split()


def _seconds(stamp: str) -> float:
    h, m, rest = stamp.split(":")
    sec, ms = rest.split(",")
    assert re.fullmatch(r"\d\d:\d\d:\d\d,\d\d\d", stamp)
    return int(h) * 3600 + int(m) * 60 + int(sec) + int(ms) / 1000


def test_manifest_input_and_skipped_files(setup, tmp_path, capsys, caplog):
    s = setup
    (tmp_path / "list.tsv").write_text(f"{s['audio']}\na.flac\t{len(s['waves']['a'])}\nbad.flac\t100\n")
    sf.write(s["audio"].parent / "slow.wav", wave(0.5), 8000)
    (s["audio"].parent / "empty.flac").write_bytes(b"")
    sf.write(s["audio"].parent / "short.wav", wave(0.01), SR)
    argv = [tmp_path / "list.tsv", s["audio"].parent / "slow.wav", s["audio"].parent / "empty.flac",
            s["audio"].parent / "short.wav", "--checkpoint", s["ckpt"]]
    assert run(argv) == 0
    out, err = capsys.readouterr()
    assert out == f"a\t{s['texts']['a']}\n"
    assert "1 file(s)" in err and "4 skipped" in err
    for reason in ["wrong sample rate", "empty file", "too short: 160 samples", "missing file"]:
        assert reason in caplog.text  # one logged line per skipped input
    assert run([*argv, "--strict"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0  # one line


def test_stdin_streaming_partials_and_final_text(setup, monkeypatch, capsys):
    s = setup
    w = s["waves"]["sub/b"]
    pcm = np.round(w * 32768).astype("<i2").tobytes()

    class Stdin:
        buffer = io.BytesIO(pcm)

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert run(["-", "--checkpoint", s["ckpt"], "--step-seconds", "0.2", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["text"] == s["texts"]["sub/b"]  # the final text is the whole-file text
    partials = re.findall(r"^\[\s*([\d.]+) s\] (.*)$", err, flags=re.M)
    assert len(partials) >= 3
    assert [float(t) for t, _ in partials] == sorted(float(t) for t, _ in partials)
    facts = record["streaming"]
    rf = receptive_field(micro())
    assert facts["right_context_s"] == round(rf.latency_seconds(), 3) and facts["updates"] == len(partials)
    assert facts["right_context_s"] <= facts["lag_mean_s"] <= facts["lag_max_s"] <= facts["right_context_s"] + 0.3
    assert facts["partials_use_running_statistics"]


def test_beam_search_with_lm_gives_word_times(setup, tmp_path, capsys):
    pytest.importorskip("flashlight.lib.text.decoder", reason="beam search needs flashlight-text")
    s = setup
    (tmp_path / "lm.wrd").write_text("THE CAT SAT\nTHAT IS IT\nNO\nA HAT\n")
    assert run([s["audio"], "--checkpoint", s["ckpt"], "--lm", tmp_path / "lm.wrd", "--beam-size", "8",
                "--lm-weight", "0.5", "--chunk-seconds", "0.4", "--format", "json"]) == 0
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(records) == 3 and any(r["words"] for r in records)
    # chunk by chunk, the beam search finds what `seqwin eval asr --lm` finds on whole-file logits
    from seqwin.recipes.wav2vec2.beam import make_beam_decoder

    beam = make_beam_decoder(SYMBOLS, tmp_path / "lm.wrd", tmp_path / "whole", beam_size=8, lm_weight=0.5)
    model = build(micro(), seed=3, confident=True)
    for r in records:
        logits = whole(model, s["waves"][r["id"]])
        assert r["text"] == beam(logits[None], [logits.shape[0]])[0]
    for r in records:
        assert r["decoding"] == "beam search + word LM" and r["word_times"] == "beam decoder letter frames"
        assert set(r["text"].split()) <= {"THE", "CAT", "SAT", "THAT", "IS", "IT", "NO", "A", "HAT"}
        assert [w["word"] for w in r["words"]] == r["text"].split()
        assert all(0 <= w["start"] < w["end"] <= r["duration"] for w in r["words"])


@pytest.mark.parametrize("argv,needle", [
    (["{audio}", "--checkpoint", "{root}/nope.pt"], "no such checkpoint"),
    (["{audio}", "--checkpoint", "{root}/ssl.pt"], "no CTC head"),
    (["{root}/empty_dir", "--checkpoint", "{ckpt}"], "no audio files"),
    (["-", "{audio}", "--checkpoint", "{ckpt}"], "cannot be combined"),
    (["{audio}", "--checkpoint", "{ckpt}", "--format", "srt"], "needs -o DIR"),
    (["{audio}", "--checkpoint", "{ckpt}", "--chunk-seconds", "-1"], "--chunk-seconds must be >= 0"),
    (["{root}/slow.wav", "--checkpoint", "{ckpt}"], "no input could be transcribed"),
    (["{root}/slow.wav", "--checkpoint", "{ckpt}", "--strict"], "wrong sample rate"),
])
def test_bad_inputs_are_one_line_errors(setup, capsys, argv, needle):
    s = setup
    root = s["root"]
    (root / "empty_dir").mkdir(exist_ok=True)
    sf.write(root / "slow.wav", wave(0.5), 8000)
    if not (root / "ssl.pt").exists():
        ssl = copy.deepcopy(ssl_presets()["tiny"])
        enc = ssl.model.encoder_config
        enc.model_dim, enc.num_encoder_layers, enc.ffn_inner_dim, enc.num_pos_conv_groups = 32, 1, 64, 4
        ssl.model.final_dim = ssl.model.quantized_dim = 16
        ssl.model.num_codebook_entries, ssl.model.num_distractors = 8, 4
        wav2vec2_checkpoint.save(root / "ssl.pt", create_seqwin_wav2vec2_model(ssl), ssl)
    args = [a.format(root=root, audio=s["audio"], ckpt=s["ckpt"]) for a in argv]
    assert run(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and err[-1].startswith("seqwin transcribe: error:")


def test_empty_stdin_is_an_error(setup, monkeypatch, capsys):
    class Stdin:
        buffer = io.BytesIO(b"")

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert run(["-", "--checkpoint", setup["ckpt"]]) == 2
    assert "stdin: no audio" in capsys.readouterr().err
