"""Every training recipe under ``torchrun --nproc-per-node=2`` (gloo, CPU), with ``trainer.data_parallel`` ddp
and fsdp, takes the same steps as one process with the same global batch.

What is compared, per recipe: the model state (every parameter and buffer) in the checkpoints after steps 1, 2
and 3, and the logged (global) loss of each step, with ``torch.testing.assert_close(atol=ATOL, rtol=RTOL)``
(float32; the runs differ only in the order of floating-point reductions: gloo's all-reduce, summed vs
accumulated gradients). To show the comparison is not vacuous, the weights must also move between step 1 and
step 3 by more than 10 x ATOL (they move ~5e-3; the two runs differ by at most ~1.4e-5, or not at all). Under
FSDP the model a recipe exports at the end (``model.pt``, ``codec.pt``) must equal its last checkpoint exactly.

How "the same global batch" is made, per recipe:

- ``ssl`` / ``asr`` (wav2vec2): batches are length-bucketed and rank ``r`` takes every ``world_size``-th one, so one
  process takes the same micro-batches with ``trainer.update_freq: 2``. Dropout, wav2vec2's span masks and
  distractors are random, but the trainer seeds each micro-batch from its global position, so they are drawn
  identically, and the SSL recipe's Gumbel temperature follows optimizer steps, not forward passes.
- ``codec``: rank ``r`` takes every other batch of ``batch_size`` utterances, so one process with twice the
  batch size sees the union. Gradient accumulation would not do: the EMA codebooks and the discriminator
  update once per forward. The codebooks' EMA statistics are all-reduced across ranks. Crops are random per
  batch, so every utterance is exactly one segment long (no crop, no padding). Quantizer dropout, k-means init
  and dead-code replacement draw from the batch at random and are off.
- ``lm``: rank ``r`` takes every other packed sequence, so one process with twice ``data.batch_size`` sees the
  union. Local and full attention layers: a routing layer's centroids are initialised (and dead ones re-seeded)
  from rank 0's vectors only, so routing LMs match the 1-process run only after that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml
from conftest import write_utterance
from test_codec_util import speechlike, tiny_codec_config
from test_wav2vec2_recipes import MICRO, SSL_MICRO, WORDS

from seqwin.data.librispeech import prepare_librispeech
from seqwin.models.codec.discriminators import DiscriminatorConfig
from seqwin.recipes.codec.config import CodecRecipeConfig
from seqwin.training import TrainerConfig, to_yaml
from seqwin.training.checkpoint import safe_load
from seqwin.training.metrics import read_metrics

RUNNER = Path(__file__).with_name("recipe_runs.py")
STEPS = 3
ATOL, RTOL = 1e-4, 1e-3
TRAINER = {"max_steps": STEPS, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 1, "keep_checkpoints": STEPS,
           "lr": 3e-3}


def _yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def _wav2vec2(root: Path) -> tuple[Path, Path, Path]:
    """Manifests of 12 noise utterances (0.6-1.3 s); SSL and CTC configs batching them one or two at a time."""
    corpus = root / "w2v" / "LibriSpeech"
    for k in range(12):
        write_utterance(corpus, "train", f"20-{1 + k % 2}-{k:04d}", WORDS[k % 4], 9600 + 1000 * k, seed=k)
    manifests = root / "w2v" / "manifests"
    prepare_librispeech(corpus, manifests)
    data = {"manifest_dir": str(manifests), "valid_split": None, "max_num_frames": 24000, "min_audio_len": 8000}
    ssl = _yaml(root / "ssl.yaml", {"model": {"arch": "tiny", "config": SSL_MICRO}, "data": data, "trainer": TRAINER})
    asr = _yaml(root / "asr.yaml", {"model": {"arch": "tiny", "config": MICRO}, "data": data, "trainer": TRAINER})
    return manifests, ssl, asr


def _codec(root: Path) -> Path:
    """12 utterances of exactly one 0.4 s segment (20 frames at hop 320) with transcripts; a distill codec."""
    audio, rows = root / "codec" / "audio", []
    audio.mkdir(parents=True)
    for k in range(12):
        sf.write(audio / f"u{k}.flac", speechlike(0.4, seed=k), 16000, subtype="PCM_16")
        rows.append(f"u{k}.flac\t6400")
    manifests = root / "codec" / "manifests"
    manifests.mkdir()
    (manifests / "train.tsv").write_text("\n".join([str(audio)] + rows) + "\n")
    (manifests / "train.wrd").write_text("\n".join(WORDS[k % 4] for k in range(12)) + "\n")
    model = tiny_codec_config(variant="distill")
    model = replace(model, quantizer=replace(model.quantizer, threshold_ema_dead_code=0.0))
    cfg = CodecRecipeConfig(
        model=model, adversarial_start_step=0,
        discriminator=DiscriminatorConfig(periods=(2, 3), mpd_channels=2, msd_scales=1, msd_channels=2,
                                          stft_ffts=(256,), stft_channels=2, max_channels=8),
        trainer=TrainerConfig(**TRAINER),
    )
    cfg.mel.ffts, cfg.mel.n_mels = (256, 512), 32
    cfg.data.manifest_dir, cfg.data.segment_seconds, cfg.data.valid_utterances = manifests, 0.4, 0
    return _yaml(root / "codec.yaml", yaml.safe_load(to_yaml(cfg)))


def _lm(root: Path) -> Path:
    data = root / "lm" / "text"
    data.mkdir(parents=True)
    text = "".join(f"Line {i}: to be, or not to be, that is the question {i % 7}.\n" for i in range(300))
    for split in ("train", "valid"):
        (data / f"{split}.txt").write_text(text)
    return _yaml(root / "lm.yaml", {
        "model": {"model_dim": 32, "num_layers": 2, "num_heads": 4, "ffn_inner_dim": 64, "max_seq_len": 128,
                  "attention": {"default": {"kind": "local", "window": [15, 0]}, "top": {"kind": "full"},
                                "num_top_layers": 1}},
        "tokenizer": {"kind": "byte"},
        "data": {"dir": str(data), "seq_len": 64, "batch_size": 2, "valid_tokens": 256},
        "trainer": TRAINER,
    })


def _commands(root: Path, world_size: int, data_parallel: str = "ddp") -> list[list[str]]:
    """The four recipes, each at a global batch of 2 x (per-rank batch) whatever ``world_size`` is; outputs in
    ``root/world1``, ``root/world2`` (DDP) or ``root/fsdp2``."""
    one = world_size == 1
    ssl, asr, codec, lm = (root / f"{name}.yaml" for name in ("ssl", "asr", "codec", "lm"))
    out = root / (f"world{world_size}" if data_parallel == "ddp" else f"{data_parallel}{world_size}")
    common = ["--set", f"trainer.data_parallel={data_parallel}"]
    freq = [*common, "--set", f"trainer.update_freq={2 if one else 1}"]
    batch = [*common, "--set", f"data.batch_size={4 if one else 2}"]
    return [
        ["train", "ssl", "--config", str(ssl), *freq, str(out / "ssl")],
        ["train", "asr", "--config", str(asr), *freq, str(out / "asr")],
        ["train", "codec", "--config", str(codec), *batch, str(out / "codec")],
        ["train", "lm", "--config", str(lm), *batch, str(out / "lm")],
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Both launches, side by side: ``python recipe_runs.py`` (1 process) and ``torchrun --nproc-per-node=2
    recipe_runs.py`` (every recipe with DDP, then with FSDP)."""
    root = tmp_path_factory.mktemp("recipes")
    _wav2vec2(root)
    _codec(root)
    _lm(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = {1: [sys.executable, str(RUNNER)],
              2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(RUNNER)]}
    commands = {1: _commands(root, 1), 2: _commands(root, 2) + _commands(root, 2, "fsdp")}
    procs = {}
    for world_size, argv in launch.items():
        path = root / f"commands{world_size}.json"
        path.write_text(json.dumps(commands[world_size]))
        log = (root / f"world{world_size}.log").open("w")
        procs[world_size] = subprocess.Popen([*argv, str(path)], env=env, stdout=log, stderr=subprocess.STDOUT)
    for world_size, proc in procs.items():
        try:
            code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        log_text = (root / f"world{world_size}.log").read_text()
        assert code == 0, f"{world_size}-process run failed ({code}):\n{log_text[-4000:]}"
    return root


def _exported(recipe: str, out: Path) -> dict | None:
    """The model a recipe exports at the end (None: the LM recipe exports nothing beyond its checkpoints)."""
    if recipe in ("ssl", "asr"):
        from seqwin.models.wav2vec2 import checkpoint

        return checkpoint.load(out / "model.pt").model.state_dict()
    if recipe == "codec":
        from seqwin.models.codec import checkpoint

        return checkpoint.load(out).model.state_dict()
    return None


@pytest.mark.parametrize("data_parallel", ["ddp", "fsdp"])
@pytest.mark.parametrize("recipe", ["ssl", "asr", "codec", "lm"])
def test_two_processes_match_one_process(runs, recipe, data_parallel):
    one_dir = runs / "world1" / recipe
    two_dir = runs / ("world2" if data_parallel == "ddp" else "fsdp2") / recipe
    for step in range(1, STEPS + 1):
        one = safe_load(one_dir / "checkpoints" / f"step_{step}.pt")["model"]
        two = safe_load(two_dir / "checkpoints" / f"step_{step}.pt")["model"]
        assert one.keys() == two.keys()
        for name in sorted(one):
            torch.testing.assert_close(two[name], one[name], atol=ATOL, rtol=RTOL,
                                       msg=lambda m, name=name, step=step: f"{recipe} step {step} {name}: {m}")
    losses = {n: [r["loss"] for r in read_metrics(d, "train")] for n, d in (("one", one_dir), ("two", two_dir))}
    assert len(losses["one"]) == STEPS
    torch.testing.assert_close(torch.tensor(losses["two"]), torch.tensor(losses["one"]), atol=ATOL, rtol=RTOL)
    first = safe_load(one_dir / "checkpoints" / "step_1.pt")["model"]
    moved = max(float((one[k].float() - first[k].float()).abs().max()) for k in one if one[k].is_floating_point())
    # Adam moves a weight by about lr (3e-3) per step: ~5e-3 from step 1 to 3, against differences <= 2e-5.
    assert moved > 10 * ATOL, f"{recipe}: weights barely moved ({moved:.2e}); the comparison would prove nothing"
    exported = _exported(recipe, two_dir)
    if exported is not None:  # under FSDP: gathered from the shards into a plain module by rank 0
        for name, value in exported.items():
            torch.testing.assert_close(value, two[name], atol=0, rtol=0, msg=name)
