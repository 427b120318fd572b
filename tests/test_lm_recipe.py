"""LM recipes end to end on tiny data: tokenizers, packing, train/resume, eval, generate, the speech-code path."""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest
import torch
from fairseq2.nn import BatchLayout
from lm_helpers import TINY_RECIPE

from seqwin.cli import generate as generate_cli
from seqwin.cli.main import main
from seqwin.errors import UserError
from seqwin.models.lm.tokenizer import ByteTokenizer, CodeTokenizer, load_tokenizer, train_sentencepiece
from seqwin.recipes.lm.data import PackedBatches, eval_windows
from seqwin.recipes.lm.scoring import score_stream
from seqwin.training.checkpoint import safe_load
from seqwin.training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "".join(f"Line {i}: to be, or not to be — that is the question {i % 7}.\n  Whether 'tis nobler\n\n"
               for i in range(400))


def _text_corpus(tmp_path):
    data = tmp_path / "text"
    data.mkdir()
    for split, n in (("train", 300), ("valid", 60), ("test", 60)):
        (data / f"{split}.txt").write_text(TEXT[: n * 60] + "é✓\n", encoding="utf-8")
    return data


def _generate(argv):
    parser = argparse.ArgumentParser()
    generate_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["generate", *argv])
    return args.func(args)


def test_tokenizers_round_trip(tmp_path):
    text = "Hello,  world\n\n  indented é✓ line\n"
    byte = ByteTokenizer()
    assert byte.decode(byte.encode(text)) == text
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    spm = train_sentencepiece([tmp_path / "t.txt"], tmp_path / "tok", vocab_size=320)
    ids = spm.encode(text)
    assert spm.decode(ids) == text  # lossless: whitespace kept, unseen characters as byte pieces
    assert ids.count(spm.newline_idx) == 3 and max(ids) < spm.vocab_size
    assert load_tokenizer(tmp_path / "tok").encode(text) == ids
    codes = CodeTokenizer(2, 16)
    arr = np.array([[1, 2, 3], [4, 5, 15], [9, 9, 9]])
    flat = codes.encode_codes(arr)
    assert flat.tolist() == [1, 20, 2, 21, 3, 31]
    assert np.array_equal(codes.decode_codes([*flat.tolist(), codes.eos_idx, 5]), arr[:2])
    assert codes.decode_codes([20, 1, 20, 2]).tolist() == [[1], [4]]  # realigns, drops the broken frame
    with pytest.raises(ValueError, match="must lie in"):
        codes.encode_codes(np.array([[0, 16], [0, 0]]))


def test_packed_batches_are_deterministic_and_resumable():
    tokens = np.arange(1000, dtype=np.int32)
    packed = PackedBatches(tokens, seq_len=31, batch_size=4, seed=1)
    epoch = list(packed(3, 0))
    assert all(b.shape == (4, 32) for b in epoch)
    assert all(torch.equal(b[:, 1:], b[:, :-1] + 1) for b in epoch)  # consecutive tokens
    assert all(torch.equal(a, b) for a, b in zip(epoch[2:], packed(3, 2), strict=True))
    assert not torch.equal(epoch[0], next(iter(packed(4, 0))))


def test_eval_windows_score_each_token_once():
    for n, context, stride in ((50, 8, 8), (50, 8, 3), (9, 16, 16), (100, 10, 1)):
        scored = []
        for begin, end, count in eval_windows(n, context, stride):
            assert end - begin <= context and end <= n - 1
            targets = list(range(begin + 1, end + 1))[-count:]
            assert all(t - begin >= min(t, context - stride + 1) for t in targets)
            scored += targets
        assert scored == list(range(1, n))


def test_score_stream_equals_one_forward():
    from seqwin.models.lm import LMConfig, create_lm_model

    torch.manual_seed(0)
    model = create_lm_model(LMConfig(vocab_size=20, model_dim=16, num_layers=1, num_heads=2, ffn_inner_dim=32))
    tokens = np.random.default_rng(0).integers(0, 20, 40)
    nll, count = score_stream(model.eval(), tokens, context=64, stride=64)
    x = torch.from_numpy(tokens)[None]
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(x[:, :-1], BatchLayout.of(x[:, :-1]))[0], x[0, 1:],
                                                reduction="sum")
    assert count == 39 and math.isclose(nll, ref.item(), rel_tol=1e-5)


def test_train_resume_eval_generate_text(tmp_path, capsys):
    data = _text_corpus(tmp_path)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_RECIPE % ("byte", data, "text"))
    out = tmp_path / "lm"
    assert main(["train", "lm", "--config", str(cfg), str(out)]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2.pt", "step_4.pt"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4]
    assert any("routing_aux" in r for r in rows) and rows[-1]["split"] == "valid"
    final = safe_load(out / "checkpoints" / "step_4.pt")["model"]
    capsys.readouterr()
    assert main(["train", "lm", "--config", str(cfg), str(out)]) == 0  # a finished run: nothing left to do
    assert read_metrics(out, "train") == rows[:2]

    # A run killed after its step-2 checkpoint leaves step_2.pt and the metrics up to step 2: the same command
    # continues from step 2 and ends exactly where the uninterrupted run did (the trainer is deterministic on CPU).
    (out / "checkpoints" / "step_4.pt").unlink()
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))
    assert main(["train", "lm", "--config", str(cfg), str(out)]) == 0
    resumed = read_metrics(out)
    assert [(r["split"], r["step"]) for r in resumed] == [("train", 2), ("train", 4), ("valid", 4)]
    for key in ("loss", "ce", "grad_norm", "lr"):
        assert resumed[1][key] == rows[1][key], key
    assert resumed[2]["loss"] == rows[2]["loss"]
    weights = safe_load(out / "checkpoints" / "step_4.pt")["model"]
    assert weights.keys() == final.keys() and all(torch.equal(weights[n], final[n]) for n in final)

    assert main(["train", "lm", "--config", str(cfg), str(out), "--set", "model.model_dim=48"]) == 2
    assert "different model config (model.model_dim)" in capsys.readouterr().err

    assert main(["eval", "lm", str(out), "--split", "test", "--context", "64", "--stride", "32",
                 "--max-tokens", "600", "--batch-size", "8", "--json", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["tokens"] == 600 == res["bytes"]  # byte tokens: one per byte
    assert math.isclose(res["bits_per_byte"], res["loss"] / math.log(2), rel_tol=1e-9)
    assert math.isclose(res["ppl"], math.exp(res["loss"]), rel_tol=1e-9)
    # Guessing uniformly over the 257 byte ids gives ppl 257; this run reaches about 99 after 4 steps and about
    # 137 at its step-2 checkpoint (measured).
    assert res["ppl"] < 0.6 * ByteTokenizer.vocab_size
    step_2 = str(out / "checkpoints" / "step_2.pt")
    assert main(["eval", "lm", str(out), "--split", "test", "--context", "64", "--stride", "32", "--max-tokens",
                 "600", "--checkpoint", step_2, "--json", str(tmp_path / "e2.json")]) == 0
    assert json.loads((tmp_path / "e2.json").read_text())["ppl"] > res["ppl"] * 1.1
    # Scoring the validation tokens as the trainer does reproduces its final validation loss from the checkpoint.
    assert main(["eval", "lm", str(out), "--split", "valid", "--context", "64", "--stride", "64", "--max-tokens",
                 "512", "--batch-size", "2", "--json", str(tmp_path / "v.json")]) == 0
    valid = json.loads((tmp_path / "v.json").read_text())
    assert valid["tokens"] == rows[2]["tokens"] and math.isclose(valid["loss"], rows[2]["loss"], rel_tol=1e-6)
    capsys.readouterr()

    assert _generate([str(out), "--prompt", "Line 3:", "--max-new-tokens", "12", "--top-k", "5",
                      "--output", str(tmp_path / "g.txt")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("Line 3:") and "12 new tokens" in printed
    assert (tmp_path / "g.txt").read_text().startswith("Line 3:")
    with pytest.raises(UserError, match="--prompt-codes is for code LMs"):
        _generate([str(out), "--prompt-codes", str(tmp_path / "x.npy")])


def test_windowkv_eval_table(tmp_path, capsys):
    data = _text_corpus(tmp_path)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_RECIPE % ("sentencepiece", data, "text"))
    out = tmp_path / "lm"
    assert main(["train", "lm", "--config", str(cfg), str(out), "--set",
                 "model.attention={default: {kind: full}}", "--set", "trainer.max_steps=2"]) == 0
    assert (out / "tokenizer.model").exists()
    capsys.readouterr()
    wkv = ["--prompt-len", "256", "--continuation-len", "32", "--num-prompts", "2", "--window-size", "8",
           "--obs-window", "16"]
    assert main(["eval", "lm", str(out), "--split", "valid", "--windowkv", "1,0.5,0.25", *wkv]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line.split() for line in lines if line.strip().endswith(tuple("0123456789")) and "%" in line]
    assert [row[0] for row in table] == ["100%", "50%", "25%"]
    assert [row[1] for row in table] == ["256", "128", "64"]  # one group: both full layers (--share-layers 8)
    assert float(table[0][5]) == 0.0

    # per-group budgets: --share-layers 1 makes each of the 2 full layers a group; rows add to the sweep
    assert main(["eval", "lm", str(out), "--split", "valid", "--windowkv", "1,0.5", "--kv-budget", "0.5,0.25",
                 "--kv-budget", "1,0.25", "--share-layers", "1", "--json", str(tmp_path / "wkv.json"), *wkv]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [line.split() for line in lines if line.strip().endswith(tuple("0123456789")) and "%" in line]
    assert [row[:3] for row in table] == [["100%", "256/256", "100.0%"], ["50%", "128/128", "50.0%"],
                                          ["50%/25%", "128/64", "37.5%"], ["100%/25%", "256/64", "62.5%"]]
    rows = json.loads((tmp_path / "wkv.json").read_text())
    assert [r["budget"] for r in rows] == [1.0, 0.5, [0.5, 0.25], [1.0, 0.25]]
    assert [r["kept"] for r in rows] == [[256, 256], [128, 128], [128, 64], [256, 64]]
    assert rows[0]["loss"] != rows[2]["loss"]
    # user mistakes: one line naming the option, exit code 2
    assert main(["eval", "lm", str(out), "--split", "valid", "--kv-budget", "0.5,0.25,0.1", "--share-layers", "1",
                 *wkv]) == 2
    assert "--kv-budget: 3 budgets given, but 2 full-attention layers in groups of 1" in capsys.readouterr().err
    assert main(["eval", "lm", str(out), "--split", "valid", "--kv-budget", "0.5,2", *wkv]) == 2
    assert "--kv-budget: budgets must lie in (0, 1], got 2" in capsys.readouterr().err

    assert _generate([str(out), "--prompt", "Line 3: to be, or not to be " * 8, "--max-new-tokens", "4",
                      "--kv-budget", "0.5,0.25", "--share-layers", "1"]) == 0
    info = capsys.readouterr().out.splitlines()[-1]
    assert re.search(r"WindowKV kept \d+/\d+ of \d+ prompt keys per layer group", info), info
    with pytest.raises(UserError, match="^--kv-budget: 2 budgets given, but 2 full-attention layers in groups of 8"):
        _generate([str(out), "--prompt", "Line 3:", "--kv-budget", "0.5,0.25"])
    with pytest.raises(UserError, match="^--kv-budget: expected a fraction"):
        _generate([str(out), "--prompt", "Line 3:", "--windowkv-budget", "half"])  # the old name still works


def _codes_split(folder, n, rng, bad=True):
    """A ``seqwin tokenize`` output (format seqwin-codes/1) with n utterances of 3 quantizers x 16 codes."""
    (folder / "codes").mkdir(parents=True)
    utts = []
    for i in range(n):
        np.save(folder / "codes" / f"u{i}.npy", rng.integers(0, 16, (3, 40 + i)).astype(np.int16))
        utts.append({"id": f"u{i}", "codes": f"codes/u{i}.npy", "source": "-", "num_samples": 320 * (40 + i),
                     "num_frames": 40 + i})
    if bad:
        np.save(folder / "codes" / "bad.npy", np.full((3, 10), 99, dtype=np.int16))
        utts.append({"id": "bad", "codes": "codes/bad.npy", "source": "-", "num_samples": 3200, "num_frames": 10})
    index = {"format": "seqwin-codes/1", "sample_rate": 16000, "hop_length": 320, "frame_rate": 50.0,
             "num_quantizers": 3, "codebook_size": 16, "checkpoint": "-", "causal": True, "utterances": utts,
             "skipped": []}
    (folder / "index.json").write_text(json.dumps(index))


def test_speech_code_lm(tmp_path, capsys):
    codes = tmp_path / "codes"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("valid", 3), ("test", 3)):
        _codes_split(codes / split, n, rng)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_RECIPE % ("codes", codes, "codes"))
    out = tmp_path / "speechlm"
    assert main(["train", "lm", "--config", str(cfg), str(out)]) == 0
    issues = (out / "issues.tsv").read_text()
    assert "bad.npy" in issues and "must lie in [0, 16)" in issues
    prompt = rng.integers(0, 16, (3, 9))
    np.save(tmp_path / "prompt.npy", prompt)
    assert _generate([str(out), "--prompt-codes", str(tmp_path / "prompt.npy"), "--prompt-frames", "5",
                      "--max-new-tokens", "20", "--output", str(tmp_path / "cont.npy")]) == 0
    generated = np.load(tmp_path / "cont.npy")
    assert generated.shape[0] == 2 and generated.dtype == np.int16 and generated.max() < 16
    assert np.array_equal(generated[:, :5], prompt[:2, :5]) and generated.shape[1] >= 5
    assert main(["eval", "lm", str(out), "--split", "test"]) == 0
    assert "per token" in capsys.readouterr().out
    cfg.write_text((TINY_RECIPE % ("codes", codes, "codes")).replace("codebook_size: 16", "codebook_size: 32"))
    assert main(["train", "lm", "--config", str(cfg), str(tmp_path / "other")]) == 2
    assert "codebook_size is 16" in capsys.readouterr().err


def test_bf16_training_runs_like_float32(tmp_path):
    """``trainer.precision: bf16`` (autocast over local, routing and full heads): the loss of the same steps from
    the same init stays within bf16 rounding of float32's."""
    data = _text_corpus(tmp_path)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_RECIPE % ("byte", data, "text"))
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(["train", "lm", "--config", str(cfg), "--set", f"trainer.precision={precision}", str(out)]) == 0
        losses[precision] = [r["ce"] for r in read_metrics(out, "train")]
    assert losses["bf16"] != losses["fp32"]  # the forward did run in bf16
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.03)
