"""``seqwin train ssl``, ``seqwin train asr`` and ``seqwin eval asr``: argument parsing only (the recipes are
imported when they run)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _add_train_args(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--config", type=Path, required=True, help=f"recipe YAML, e.g. {example}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (YAML syntax), e.g. trainer.max_steps=100; repeatable")
    parser.add_argument("out_dir", metavar="OUT", help="output directory (re-run the same command to resume)")


def add_ssl_args(parser: argparse.ArgumentParser) -> None:
    _add_train_args(parser, "recipes/wav2vec2/ssl/mini.yaml")


def train_ssl(args: argparse.Namespace) -> int:
    from seqwin.recipes.wav2vec2.config import SslRecipeConfig
    from seqwin.recipes.wav2vec2.pretrain import run
    from seqwin.training import load_config

    run(load_config(SslRecipeConfig, args.config, args.set), Path(args.out_dir))
    return 0


def add_asr_args(parser: argparse.ArgumentParser) -> None:
    _add_train_args(parser, "recipes/wav2vec2/asr/mini.yaml")


def train_asr(args: argparse.Namespace) -> int:
    from seqwin.recipes.wav2vec2.config import AsrRecipeConfig
    from seqwin.recipes.wav2vec2.finetune import run
    from seqwin.training import load_config

    run(load_config(AsrRecipeConfig, args.config, args.set), Path(args.out_dir))
    return 0


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a `seqwin train asr` output (dir or model.pt), a fairseq2 / fairseq (v1) "
                             "wav2vec2 CTC checkpoint, or a Hugging Face Wav2Vec2ForCTC folder")
    parser.add_argument("--data", nargs="+", required=True, metavar="DATA",
                        help="manifests (<split>.tsv with .wrd or .ltr beside) or LibriSpeech split directories")
    parser.add_argument("out_dir", metavar="OUT", nargs="?",
                        help="writes summary.json and hypotheses.tsv here (may also end the --data list)")
    parser.add_argument("--dict", metavar="DICT",
                        help="dict.ltr.txt for checkpoints that carry no vocabulary (default: beside the first "
                             "manifest)")
    parser.add_argument("--window", metavar="L,R",
                        help="decode with sliding-window attention of L,R frames in every encoder layer "
                             "(or 'full' for dense), whatever the model was trained with")
    parser.add_argument("--heads", type=int, help="attention heads of an imported checkpoint whose config does "
                                                  "not say (default: model_dim // 64)")
    parser.add_argument("--max-num-frames", type=int, default=1_600_000,
                        help="padded samples per batch (default: 100 s of 16 kHz audio)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_beam_search_args(parser)


def add_beam_search_args(parser: argparse.ArgumentParser) -> None:
    """CTC beam search with a word n-gram LM: ``eval asr`` and ``transcribe``."""
    lm = parser.add_argument_group("beam search with a word n-gram LM (needs flashlight-text)")
    lm.add_argument("--lm", metavar="LM", help="an ARPA file, or transcripts (.wrd/.txt) to estimate one from")
    lm.add_argument("--lm-order", type=int, default=3, help="n-gram order when estimating from text (default 3)")
    lm.add_argument("--beam-size", type=int, default=50)
    lm.add_argument("--lm-weight", type=float, default=2.0)
    lm.add_argument("--word-score", type=float, default=0.0, help="score added per emitted word")


def evaluate(args: argparse.Namespace) -> int:
    from seqwin.errors import UserError
    from seqwin.recipes.wav2vec2.evaluate import evaluate as run

    if args.out_dir is None:  # `--data A B OUT`: argparse hands OUT to the greedy --data list
        if len(args.data) < 2:
            raise UserError("missing OUT (the output directory)")
        args.out_dir = args.data.pop()

    return run(args)
