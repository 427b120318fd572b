"""wav2vec2 recipes through the CLI: SSL -> CTC -> eval -> windowize, resume, bad configs (micro models)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml
from conftest import write_utterance

from seqwin.cli import main as cli
from seqwin.data.librispeech import prepare_librispeech
from seqwin.training.metrics import read_metrics

WORDS = ["HELLO WORLD", "GOOD MORNING", "PLEASE HOLD", "THANK YOU"]
MICRO = {  # a few-thousand-parameter tiny preset: log-mel frontend, windowed attention
    "model": {"encoder_config": {"model_dim": 32, "num_encoder_layers": 2, "num_encoder_attn_heads": 4,
                                 "ffn_inner_dim": 64, "num_pos_conv_groups": 4, "pos_conv_kernel_size": 8}},
    "attention": {"default": {"kind": "local", "window": [4, 4]}},
}
SSL_MICRO = {**MICRO, "model": {**MICRO["model"], "final_dim": 16, "quantized_dim": 16,
                                "num_codebook_entries": 8, "num_distractors": 4}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """LibriSpeech-layout noise corpus (0.6-1.5 s utterances) and its manifests."""
    root = tmp_path_factory.mktemp("w2v") / "LibriSpeech"
    for s, split in enumerate(["train", "dev"]):
        for k in range(8):
            write_utterance(root, split, f"{20 + s}-{1 + k % 2}-{k:04d}", WORDS[k % 4], 9600 + 1600 * k, seed=k)
    prepare_librispeech(root, root.parent / "manifests")
    return root.parent


def _recipe(tmp: Path, kind: str, model: dict, **sections) -> Path:
    cfg = {"model": {"arch": "tiny", "config": model},
           "data": {"manifest_dir": None, "max_num_frames": 40000, "min_audio_len": 8000},
           "trainer": {"max_steps": 4, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 2, "lr": 1e-3},
           **sections}
    path = tmp / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(argv: list[str]) -> int:
    return cli.main([str(a) for a in argv])


def _edit_distance(ref, hyp) -> int:
    """Levenshtein distance between two sequences (characters of a string, or words)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def test_ssl_ctc_eval_windowize_end_to_end(corpus, tmp_path, capsys):
    manifests = corpus / "manifests"
    ssl_yaml = _recipe(tmp_path, "ssl", SSL_MICRO)
    data = f"data.manifest_dir={manifests}"
    assert _run(["train", "ssl", "--config", ssl_yaml, "--set", data, tmp_path / "ssl"]) == 0
    ssl_dir = tmp_path / "ssl"
    for name in ["model.pt", "model.yaml", "config.yaml", "metrics.jsonl", "tb", "checkpoints/step_4.pt"]:
        assert (ssl_dir / name).exists(), name
    train_rows = read_metrics(ssl_dir, "train")
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert {"contrastive", "diversity", "accuracy", "audio_s_per_s"} <= set(train_rows[0])
    assert read_metrics(ssl_dir, "valid")[-1]["step"] == 4

    # resume: the same command with more steps continues from step 4
    assert _run(["train", "ssl", "--config", ssl_yaml, "--set", data, "--set", "trainer.max_steps=6", ssl_dir]) == 0
    assert [r["step"] for r in read_metrics(ssl_dir, "train")] == [1, 2, 3, 4, 5, 6]

    asr_yaml = _recipe(tmp_path, "asr", MICRO, finetune={"freeze_encoder_steps": 2},
                       init={"ssl_checkpoint": str(ssl_dir / "model.pt")})
    assert _run(["train", "asr", "--config", asr_yaml, "--set", data, tmp_path / "asr"]) == 0
    assert (tmp_path / "asr" / "model.pt").exists()
    assert {"wer", "cer", "loss"} <= set(read_metrics(tmp_path / "asr", "valid")[-1])

    # eval: a manifest and a LibriSpeech split directory, the OUT directory ending the --data list
    out = tmp_path / "eval"
    assert _run(["eval", "asr", "--checkpoint", tmp_path / "asr", "--data", manifests / "dev.tsv",
                 corpus / "LibriSpeech" / "train", out]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["splits"]) == {"dev", "train"} and summary["attention"] == "2 x local(4,4)"
    rows = [line.split("\t") for line in (out / "hypotheses.tsv").read_text().splitlines()[1:]]
    assert len(rows) == 16
    for name, split in summary["splits"].items():
        pairs = [(ref, hyp) for s, utt, ref, hyp in rows if s == name]
        assert split["num_utts"] == 8
        # the corpus fixture's utterance ...-000k says WORDS[k % 4]
        assert all(ref == WORDS[int(Path(utt).stem[-4:]) % 4] for s, utt, ref, _ in rows if s == name)
        # the rates are the edit distances counted here, over the reference lengths
        chars = sum(_edit_distance(ref, hyp) for ref, hyp in pairs) / sum(len(ref) for ref, _ in pairs)
        words = sum(_edit_distance(ref.split(), hyp.split()) for ref, hyp in pairs) / sum(
            len(ref.split()) for ref, _ in pairs)
        assert split["cer"] == pytest.approx(100 * chars) and split["wer"] == pytest.approx(100 * words)
    # the same model decoding the same dev set in `eval asr` and in the trainer's final validation
    final_valid = read_metrics(tmp_path / "asr", "valid")[-1]
    assert summary["splits"]["dev"]["cer"] == pytest.approx(final_valid["cer"])
    assert summary["splits"]["dev"]["wer"] == pytest.approx(final_valid["wer"])

    # windowize: a window covering every frame decodes exactly like dense attention
    for window in ["full", "-1,-1", "1,0"]:
        model = tmp_path / f"model_{window}.pt"
        assert _run(["windowize", f"--window={window}", tmp_path / "asr" / "model.pt", model]) == 0
        assert _run(["eval", "asr", "--checkpoint", model, "--data", manifests / "dev.tsv",
                     tmp_path / f"eval_{window}"]) == 0
    hyps = {w: (tmp_path / f"eval_{w}" / "hypotheses.tsv").read_text() for w in ["full", "-1,-1", "1,0"]}
    assert hyps["full"] == hyps["-1,-1"]
    summaries = {w: json.loads((tmp_path / f"eval_{w}" / "summary.json").read_text()) for w in hyps}
    assert summaries["1,0"]["attention"] == "2 x local(1,0)"
    dense, narrow = (summaries[w]["splits"]["dev"]["cer"] for w in ("full", "1,0"))
    print(f"dev CER with dense attention {dense:.1f}%, with window (1,0) {narrow:.1f}%")


@pytest.mark.parametrize("kind", ["ssl", "asr"])
def test_bf16_training_starts_like_float32(corpus, tmp_path, kind):
    """``trainer.precision: bf16``: from the same init, data and masks, the first steps' losses stay within bf16
    rounding of float32's (fairseq2 computes the contrastive and CTC losses in float32)."""
    cfg = _recipe(tmp_path, kind, SSL_MICRO if kind == "ssl" else MICRO)
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert _run(["train", kind, "--config", cfg, "--set", f"data.manifest_dir={corpus / 'manifests'}",
                     "--set", "trainer.max_steps=2", "--set", f"trainer.precision={precision}", out]) == 0
        losses[precision] = [r["loss"] for r in read_metrics(out, "train")]
    assert losses["bf16"] != losses["fp32"]  # the forward did run in bf16
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_eval_beam_search_with_word_lm(corpus, tmp_path):
    pytest.importorskip("flashlight.lib.text.decoder", reason="beam search needs flashlight-text")
    manifests = corpus / "manifests"
    asr_yaml = _recipe(tmp_path, "asr", MICRO)
    assert _run(["train", "asr", "--config", asr_yaml, "--set", f"data.manifest_dir={manifests}", "--set",
                 "trainer.max_steps=2", tmp_path / "asr"]) == 0
    assert _run(["eval", "asr", "--checkpoint", tmp_path / "asr", "--data", manifests / "dev.tsv", "--lm",
                 manifests / "train.wrd", "--beam-size", "8", tmp_path / "eval"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["decoding"] == "beam search + word LM" and (tmp_path / "eval" / "lm.arpa").exists()
    vocabulary = set(" ".join(WORDS).split())
    hyps = [line.split("\t")[3] for line in (tmp_path / "eval" / "hypotheses.tsv").read_text().splitlines()[1:]]
    assert all(set(h.split()) <= vocabulary for h in hyps)  # the lexicon constrains the output to LM words


def test_windowize_fairseq1_checkpoint_and_wer_change(corpus, tmp_path, capsys):
    """A dense fairseq (v1)-format CTC checkpoint: eval as is, windowize, eval again; the window changes the
    hypotheses (a window covering everything would not)."""
    import torch
    from test_wav2vec2_models import small, to_fairseq1

    from seqwin.models.wav2vec2.config import asr_presets
    from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_asr_model

    torch.manual_seed(0)
    cfg = small(asr_presets()["tiny"])
    cfg.model.target_vocab_size = 4 + len(set("".join(WORDS)))  # specials + letters incl. "|" (space)
    model = create_seqwin_wav2vec2_asr_model(cfg)
    with torch.no_grad():  # a confident, position-dependent head so that attention changes show in the output
        model.final_proj.weight.mul_(50.0)
    settings = {"encoder_attention_heads": 4, "conv_feature_layers": "[(16, 10, 5), (16, 3, 2), (16, 2, 2)]"}
    fs1 = tmp_path / "checkpoint_best.pt"
    torch.save({"args": argparse.Namespace(w2v_args=argparse.Namespace(**settings)),
                "model": to_fairseq1(model.state_dict(), asr=True)}, fs1)
    manifests = corpus / "manifests"
    dict_ltr = manifests / "dict.ltr.txt"
    assert _run(["eval", "asr", "--checkpoint", fs1, "--dict", dict_ltr, "--data", manifests / "dev.tsv",
                 tmp_path / "dense"]) == 0
    assert _run(["windowize", "--window=1,1", "--dict", dict_ltr, fs1, tmp_path / "w1.pt"]) == 0
    assert "fairseq1 seqwin_wav2vec2_asr" in capsys.readouterr().out
    assert _run(["eval", "asr", "--checkpoint", tmp_path / "w1.pt", "--data", manifests / "dev.tsv",
                 tmp_path / "window"]) == 0
    dense, window = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("dense", "window"))
    assert dense["source"] == "fairseq1" and window["attention"] == "2 x local(1,1)"
    hyps = [(tmp_path / d / "hypotheses.tsv").read_text() for d in ("dense", "window")]
    assert hyps[0] != hyps[1]
    print("fairseq1 checkpoint, dev: dense WER {:.1f} CER {:.1f}; window (1,1) WER {:.1f} CER {:.1f}".format(
        dense["splits"]["dev"]["wer"], dense["splits"]["dev"]["cer"], window["splits"]["dev"]["wer"],
        window["splits"]["dev"]["cer"]))


@pytest.mark.parametrize("sets,needle", [
    (["model.config.model.encoder_config.model_dimm=3"], "unknown config key model.config.model.encoder_config"),
    (["model.arch=huge"], "unknown preset 'huge'"),
    (["trainer.warmup_steps=10"], "trainer.warmup_steps"),
    (["model.config.attention.default.window=[-5, 2]"], "window"),
    (["data.manifest_dir=/nonexistent"], "manifest /nonexistent/train.tsv not found"),
])
def test_bad_configs_are_one_line_errors(corpus, tmp_path, capsys, sets, needle):
    cfg = _recipe(tmp_path, "ssl", SSL_MICRO)
    argv = ["train", "ssl", "--config", cfg, "--set", f"data.manifest_dir={corpus / 'manifests'}"]
    for s in sets:
        argv += ["--set", s]
    assert _run(argv + [tmp_path / "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_resume_refuses_another_model(corpus, tmp_path, capsys):
    cfg = _recipe(tmp_path, "ssl", SSL_MICRO)
    data = f"data.manifest_dir={corpus / 'manifests'}"
    assert _run(["train", "ssl", "--config", cfg, "--set", data, "--set", "trainer.max_steps=2", tmp_path / "o"]) == 0
    other = "model.config.attention.default.window=[8, 8]"
    assert _run(["train", "ssl", "--config", cfg, "--set", data, "--set", other, tmp_path / "o"]) == 2
    assert "checkpoints of another model" in capsys.readouterr().err


def test_windowize_cli_errors(tmp_path, capsys):
    assert _run(["windowize", "--window", "3,3", tmp_path / "x.pt", tmp_path / "y.pt"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_trainer_anneal_by_time(tmp_path):
    """The shared trainer's ``anneal_by_time`` (added for the demo's time budgets): a run its time budget stops
    long before ``max_steps`` still ends with a decayed LR."""
    import time

    import torch
    from torch import nn

    from seqwin.training import Trainer, TrainerConfig

    cfg = TrainerConfig(max_steps=10_000, max_seconds=0.8, anneal_by_time=True, warmup_steps=0, lr=1.0,
                        min_lr_ratio=0.1, log_every=1000, checkpoint_every=10_000)

    def step_fn(model, x):
        time.sleep(0.02)
        return model(x).pow(2).mean(), {}, 1

    trainer = Trainer(cfg, nn.Linear(2, 1), tmp_path, step_fn=step_fn,
                      batches=lambda epoch, skip, **ranks: (torch.randn(4, 2) for _ in range(10)))
    trainer.fit()
    assert trainer.step < 200 and trainer.scheduler.get_last_lr()[0] < 0.2
