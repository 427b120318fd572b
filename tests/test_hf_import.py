"""Hugging Face wav2vec2 folders: import against `transformers`' own forward, vocabularies, the `seqwin import hf`
command and its errors, and the windowed fine-tuning path (import -> windowize -> train asr -> eval asr).

Every model is made here, tiny and random (nothing is downloaded); every parameter is perturbed before saving so
that layer norms and biases, which transformers initializes to ones and zeros, are told apart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_utterance
from fairseq2.nn import BatchLayout
from safetensors.torch import load_file, save_file
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForPreTraining,
    Wav2Vec2Model,
)

from seqwin.cli.main import main
from seqwin.data.librispeech import prepare_librispeech
from seqwin.data.manifest import WORD_BOUNDARY, CharDictionary
from seqwin.models.wav2vec2 import hf
from seqwin.models.wav2vec2.checkpoint import ModelLoadError, import_hf, load
from seqwin.training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

LETTERS = list("ABDEGHILMNOPRSTUWY'")
# post-norm ("base") and layer-norm-first ("large", XLS-R) layouts, and the other two mixes of the same switches
VARIANTS = {
    "base": dict(do_stable_layer_norm=False, feat_extract_norm="group", conv_bias=False),
    "large": dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True),
    "post_layer": dict(do_stable_layer_norm=False, feat_extract_norm="layer", conv_bias=True),
    "pre_group": dict(do_stable_layer_norm=True, feat_extract_norm="group", conv_bias=False),
}
KINDS = {"Wav2Vec2Model": Wav2Vec2Model, "Wav2Vec2ForPreTraining": Wav2Vec2ForPreTraining,
         "Wav2Vec2ForCTC": Wav2Vec2ForCTC}


def hf_config(variant: str = "base", **overrides) -> Wav2Vec2Config:
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embeddings=8,
                  num_conv_pos_embedding_groups=4, codevector_dim=16, proj_codevector_dim=8,
                  num_codevectors_per_group=8, vocab_size=4 + len(LETTERS) + 1, mask_time_prob=0.05,
                  **VARIANTS[variant])
    return Wav2Vec2Config(**{**fields, **overrides})


def make_model(kind: str, config: Wav2Vec2Config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = KINDS[kind](config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def write_tokenizer(folder: Path, layout: str) -> Wav2Vec2CTCTokenizer:
    """``fairseq``: <pad> <s> </s> <unk> | letters (facebook/wav2vec2-base-960h); ``tutorial``: letters, |,
    [UNK], [PAD], then <s> </s> added by the tokenizer (the transformers fine-tuning blog post)."""
    if layout == "fairseq":
        tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", *LETTERS]
        specials = {}
    else:
        tokens = [*LETTERS, "|", "[UNK]", "[PAD]"]
        specials = {"unk_token": "[UNK]", "pad_token": "[PAD]"}
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.json"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab), word_delimiter_token="|", **specials)
    tokenizer.save_pretrained(folder)
    return tokenizer


def save(model: torch.nn.Module, folder: Path, *, safe: bool = True, do_normalize: bool = True, **kwargs) -> Path:
    model.save_pretrained(folder, safe_serialization=safe, **kwargs)
    Wav2Vec2FeatureExtractor(do_normalize=do_normalize, return_attention_mask=True).save_pretrained(folder)
    return folder


def batch(padded: bool, seed: int = 1) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    wav = torch.randn(2, 4000, generator=g)
    lens = [4000, 2600] if padded else [4000, 4000]
    if not padded:
        return wav, lens, None
    wav[1, lens[1]:] = 0.0
    mask = (torch.arange(4000)[None, :] < torch.tensor(lens)[:, None]).long()
    return wav, lens, mask


def encoder_out(model, wav, lens):
    layout = BatchLayout.of(wav, seq_lens=lens)
    seqs, layout = model.encoder_frontend(wav, layout)
    return model.encoder(seqs, layout), list(layout.seq_lens)


def max_error(ours: torch.Tensor, theirs: torch.Tensor, frames: list[int]) -> float:
    return max(float((ours[i, :n] - theirs[i, :n]).abs().max()) for i, n in enumerate(frames))


@pytest.mark.parametrize("kind,variant,safe", [
    ("Wav2Vec2Model", "base", True), ("Wav2Vec2Model", "large", False),
    ("Wav2Vec2ForPreTraining", "base", False), ("Wav2Vec2ForPreTraining", "large", True),
    ("Wav2Vec2ForCTC", "base", True), ("Wav2Vec2ForCTC", "large", False),
    ("Wav2Vec2ForCTC", "post_layer", True), ("Wav2Vec2ForPreTraining", "pre_group", True),
])
def test_import_matches_transformers(tmp_path, kind, variant, safe):
    config = hf_config(variant)
    model = make_model(kind, config)
    if kind == "Wav2Vec2ForCTC":
        write_tokenizer(tmp_path / "m", "fairseq")
    loaded = load(save(model, tmp_path / "m", safe=safe))
    assert loaded.source == "hf" and loaded.family == ("seqwin_wav2vec2_asr" if kind == "Wav2Vec2ForCTC"
                                                       else "seqwin_wav2vec2")
    assert loaded.config.attention.describe(2, 2) == "2 x full"
    encoder = model if kind == "Wav2Vec2Model" else model.wav2vec2
    for padded in (False, True):
        wav, lens, mask = batch(padded)
        with torch.no_grad():
            theirs = encoder(wav, attention_mask=mask).last_hidden_state
            ours, frames = encoder_out(loaded.model, wav, lens)
        assert max_error(ours, theirs, frames) <= 1e-4, (padded, max_error(ours, theirs, frames))
        if padded:
            assert frames[1] < frames[0] == theirs.shape[1]
        with torch.no_grad():
            if kind == "Wav2Vec2ForCTC":  # the fairseq layout: blank first already, the same order
                logits, _ = loaded.model(wav, BatchLayout.of(wav, seq_lens=lens))
                assert max_error(logits, model(wav, attention_mask=mask).logits, frames) <= 1e-4
            elif kind == "Wav2Vec2ForPreTraining":  # the heads: projections and the quantizer (argmax in eval)
                out = model(wav, attention_mask=mask)
                assert max_error(loaded.model.final_proj(ours), out.projected_states, frames) <= 1e-4
                feats, layout, _ = loaded.model.encoder_frontend.extract_features(wav, BatchLayout.of(wav, lens))
                targets = loaded.model.final_target_proj(loaded.model.quantizer(feats).quantized_vectors)
                assert max_error(targets, out.projected_quantized_states, frames) <= 1e-4


def test_weight_norm_names_shards_and_fp16(tmp_path):
    """Position-conv weight norm as weight_g/weight_v (transformers before parametrizations), sharded weights
    with an index, and fp16 tensors all read into the same model."""
    model = make_model("Wav2Vec2ForPreTraining", hf_config("large"))
    folder = save(model, tmp_path / "old")
    path = folder / "model.safetensors"
    state = load_file(path)
    renamed = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    assert renamed.keys() != state.keys()
    save_file(renamed, path, metadata={"format": "pt"})
    sharded = save(model, tmp_path / "sharded", max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file() and not (sharded / "model.safetensors").exists()
    half = save(model.half(), tmp_path / "half")
    wav, lens, _ = batch(False)
    outputs = []
    for source in (folder, sharded, half):
        with torch.no_grad():
            outputs.append(encoder_out(load(source).model, wav, lens)[0])
    assert torch.equal(outputs[0], outputs[1])
    assert (outputs[0] - outputs[2]).abs().max() < 0.05  # fp16 weights, fp32 model: rounding only


@pytest.mark.parametrize("layout,added", [("tutorial", True), ("tutorial", False), ("fairseq", False)])
def test_ctc_vocabulary_and_blank(tmp_path, layout, added):
    """The blank (pad_token_id) becomes output 0 wherever transformers has it; bos/eos/unk outputs 1-3, inert
    when the head has no such token; the letters follow with their names; logits match per token."""
    tokenizer = write_tokenizer(tmp_path / "m", layout)
    size = len(tokenizer) if added else len(tokenizer.get_vocab()) - (2 if layout == "tutorial" else 0)
    config = hf_config("base", vocab_size=size, pad_token_id=tokenizer.pad_token_id)
    model = make_model("Wav2Vec2ForCTC", config)
    loaded = load(save(model, tmp_path / "m"))
    symbols = loaded.dictionary
    assert symbols[:4] == list(CharDictionary.SPECIALS) and hf.SPECIAL_SYMBOLS == CharDictionary.SPECIALS
    assert sorted(symbols[4:]) == sorted([*LETTERS, WORD_BOUNDARY]) and hf.WORD_BOUNDARY == WORD_BOUNDARY
    wav, lens, mask = batch(True)
    with torch.no_grad():
        theirs = model(wav, attention_mask=mask).logits
        ours, layout_out = loaded.model(wav, BatchLayout.of(wav, seq_lens=lens))
    frames = list(layout_out.seq_lens)
    vocab = tokenizer.get_vocab()
    pairs = [(0, tokenizer.pad_token_id)] + [(symbols.index(t), vocab[t]) for t in [*LETTERS, "|"]]
    for slot, token in ((1, tokenizer.bos_token), (2, tokenizer.eos_token), (3, tokenizer.unk_token)):
        if vocab[token] < size:
            pairs.append((slot, vocab[token]))
        else:  # the head has no row for it: never emitted
            assert ours[0, :, slot].max() < -1e3
    for ours_id, their_id in pairs:
        assert max_error(ours[..., ours_id], theirs[..., their_id], frames) <= 1e-4, (ours_id, their_id)
    assert len(pairs) == size


def _cli_error(capsys, argv) -> str:
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_import_command_and_bad_folders(tmp_path, capsys):
    write_tokenizer(tmp_path / "ctc", "fairseq")
    folder = save(make_model("Wav2Vec2ForCTC", hf_config("large")), tmp_path / "ctc", do_normalize=False)
    assert main(["import", "hf", str(folder), str(tmp_path / "ctc.pt")]) == 0
    printed = capsys.readouterr().out
    assert "seqwin_wav2vec2_asr, 2 layers x 32 dim, pre-norm, 24 CTC symbols, normalize=false" in printed
    again = load(tmp_path / "ctc.pt")
    assert again.source == "seqwin" and again.dictionary == load(folder).dictionary and not again.normalize
    ssl = save(make_model("Wav2Vec2ForPreTraining", hf_config("base")), tmp_path / "ssl")
    assert main(["import", "hf", str(ssl), str(tmp_path / "ssl.pt")]) == 0
    assert load(tmp_path / "ssl.pt").normalize  # do_normalize: true

    bare = tmp_path / "bare"
    bare.mkdir()
    assert "no config.json" in _cli_error(capsys, ["import", "hf", bare, tmp_path / "x.pt"])
    assert "no such directory" in _cli_error(capsys, ["import", "hf", tmp_path / "nope", tmp_path / "x.pt"])
    (bare / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    assert "model_type 'hubert' is not a wav2vec2 model" in _cli_error(capsys, ["import", "hf", bare,
                                                                               tmp_path / "x.pt"])
    (bare / "config.json").write_text(hf_config().to_json_string())
    assert "no weights" in _cli_error(capsys, ["import", "hf", bare, tmp_path / "x.pt"])
    (bare / "model.safetensors").write_bytes(b"not safetensors")
    assert "not a readable safetensors file" in _cli_error(capsys, ["import", "hf", bare, tmp_path / "x.pt"])
    for overrides, needle in [
        ({"feat_extract_activation": "relu"}, "feat_extract_activation 'relu' is not supported"),
        ({"hidden_act": "gelu_new"}, "hidden_act 'gelu_new' is not supported"),
        ({"add_adapter": True}, "adapter layers"),
        ({"adapter_attn_dim": 16}, "adapter layers"),
        ({"architectures": ["Wav2Vec2ForSequenceClassification"]}, "Wav2Vec2ForSequenceClassification is not"),
        ({"conv_dim": [16, 16, 32]}, "conv_dim[-1] equal to hidden_size"),
        ({"layer_norm_eps": 1e-6}, "layer_norm_eps"),
        ({"architectures": ["Wav2Vec2ForCTC"]}, "architecture Wav2Vec2ForCTC, but the weights have no lm_head"),
        ({"conv_kernel": [10, 3]}, "conv_dim, conv_kernel and conv_stride must be lists of one length"),
    ]:
        (ssl / "config.json").write_text(json.dumps({**json.loads(hf_config().to_json_string()), **overrides}))
        err = _cli_error(capsys, ["import", "hf", ssl, tmp_path / "x.pt"])
        assert needle in err and str(ssl) in err, (overrides, err)
    (folder / "config.json").write_text(hf_config("large", vocab_size=30).to_json_string())
    assert "lm_head has 24 outputs, config.json's vocab_size says 30" in _cli_error(
        capsys, ["import", "hf", folder, tmp_path / "x.pt"])
    (folder / "vocab.json").write_text(json.dumps({"<pad>": 0, "|": 1}))
    (folder / "config.json").write_text(hf_config("large").to_json_string())
    assert "no token for CTC output(s) [" in _cli_error(capsys, ["import", "hf", folder, tmp_path / "x.pt"])
    # a folder given where a checkpoint is expected: the same one-line errors
    assert "not a readable safetensors file" in _cli_error(capsys, ["windowize", "--window", "2,2", bare,
                                                                     tmp_path / "x.pt"])
    assert not (tmp_path / "x.pt").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["import", "hf", "--help"])
    assert exit_info.value.code == 0 and "save_pretrained" in capsys.readouterr().out


def test_bare_encoder_gets_fresh_heads(tmp_path, caplog):
    model = make_model("Wav2Vec2Model", hf_config("base", mask_time_prob=0.0))
    folder = save(model, tmp_path / "m")
    assert not any(k.startswith("masked_spec_embed") for k in model.state_dict())
    loaded = import_hf(folder)
    assert "freshly initialized" in caplog.text and "quantizer" in caplog.text
    assert loaded.model.quantizer.entries.shape == (1, 2 * 8, 8)
    save_file({**load_file(folder / "model.safetensors"), "classifier.weight": torch.zeros(2, 2)},
              folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match="weight classifier.weight has no counterpart"):
        import_hf(folder)


# ---- the windowed fine-tuning path, through the CLI ------------------------------------------------------------

WORDS = ["HELLO WORLD", "GOOD MORNING", "PLEASE HOLD", "THANK YOU"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hf") / "LibriSpeech"
    for s, split in enumerate(["train", "dev"]):
        for k in range(6):
            write_utterance(root, split, f"{30 + s}-1-{k:04d}", WORDS[k % 4], 8000 + 1600 * k, seed=k)
    prepare_librispeech(root, root.parent / "manifests")
    return root.parent / "manifests"


def test_windowize_finetune_and_eval(corpus, tmp_path, capsys):
    """IndicWav2Vec's path: a pretrained dense model -> local windows -> CTC fine-tuning -> WER."""
    folder = save(make_model("Wav2Vec2ForPreTraining", hf_config("large")), tmp_path / "hf")
    assert main(["import", "hf", str(folder), str(tmp_path / "ssl.pt")]) == 0
    assert main(["windowize", "--window", "2,2", str(tmp_path / "ssl.pt"), str(tmp_path / "ssl_w2.pt")]) == 0
    recipe = {"model": {"arch": "tiny", "config": {}}, "init": {"ssl_checkpoint": str(tmp_path / "ssl_w2.pt")},
              "data": {"manifest_dir": str(corpus), "max_num_frames": 40000, "min_audio_len": 8000,
                       "normalize": True},
              "trainer": {"max_steps": 8, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 8, "lr": 3e-3}}
    (tmp_path / "asr.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "asr"
    assert main(["train", "asr", "--config", str(tmp_path / "asr.yaml"), str(out)]) == 0
    losses = [row["loss"] for row in read_metrics(out, "train")]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) < sum(losses[:3])
    tuned = load(out / "model.pt")
    assert tuned.config.attention.describe(2, 2) == "2 x local(2,2)" and tuned.normalize
    assert main(["eval", "asr", "--checkpoint", str(out), "--data", str(corpus / "dev.tsv"), str(tmp_path / "ev")]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["attention"] == "2 x local(2,2)" and summary["normalize"] is True
    assert math.isfinite(summary["splits"]["dev"]["wer"])


def test_windowize_ctc_folder_changes_logits(corpus, tmp_path):
    """A CTC folder given straight to windowize and eval asr: the window changes the logits, not the letters;
    eval follows the folder's do_normalize."""
    model = make_model("Wav2Vec2ForCTC", hf_config("large"))  # conv bias: the waveform's scale matters
    with torch.no_grad():  # a confident head: hypotheses that show what changes upstream
        model.lm_head.weight.mul_(20.0)
    for name, do_normalize in (("hf", True), ("raw", False)):
        write_tokenizer(tmp_path / name, "fairseq")
        save(model, tmp_path / name, do_normalize=do_normalize)
    folder = tmp_path / "hf"
    assert main(["windowize", "--window", "1,1", str(folder), str(tmp_path / "w1.pt")]) == 0
    dense, windowed = load(folder), load(tmp_path / "w1.pt")
    assert windowed.dictionary == dense.dictionary and windowed.normalize
    wav, lens, _ = batch(True)
    with torch.no_grad():
        a, _ = dense.model(wav, BatchLayout.of(wav, seq_lens=lens))
        b, _ = windowed.model(wav, BatchLayout.of(wav, seq_lens=lens))
    assert (a - b).abs().max() > 1e-2
    runs = {"dense": folder, "w1": tmp_path / "w1.pt", "raw": tmp_path / "raw"}
    for name, checkpoint in runs.items():
        assert main(["eval", "asr", "--checkpoint", str(checkpoint), "--data", str(corpus / "dev.tsv"),
                     str(tmp_path / f"eval_{name}")]) == 0
    summaries = {n: json.loads((tmp_path / f"eval_{n}" / "summary.json").read_text()) for n in runs}
    assert {n: s["attention"] for n, s in summaries.items()} == {"dense": "2 x full", "w1": "2 x local(1,1)",
                                                                 "raw": "2 x full"}
    assert summaries["dense"]["source"] == "hf"
    assert {n: s["normalize"] for n, s in summaries.items()} == {"dense": True, "w1": True, "raw": False}
    hyps = {n: (tmp_path / f"eval_{n}" / "hypotheses.tsv").read_text() for n in runs}
    assert hyps["dense"] != hyps["raw"]  # the noise corpus is far from unit variance: normalizing shows
