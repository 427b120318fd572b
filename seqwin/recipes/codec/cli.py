"""``seqwin train codec`` / ``seqwin eval codec`` argument parsing (light: heavy imports happen inside).

seqwin train codec --config recipes/codec/mini.yaml OUT [--set data.manifest_dir=DIR ...]
seqwin eval codec --checkpoint OUT --data DIR/test.tsv -o REPORT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="recipe YAML (recipes/codec/*.yaml)")
    parser.add_argument("out", type=Path, metavar="OUT", help="output directory; re-run the same command to resume")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set trainer.max_steps=100 (repeatable)")


def train(args: argparse.Namespace) -> int:
    from seqwin.recipes.codec.config import CodecRecipeConfig
    from seqwin.recipes.codec.train import train_codec
    from seqwin.training import load_config

    cfg = load_config(CodecRecipeConfig, args.config, args.overrides)
    train_codec(cfg, args.out)
    return 0


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="codec.pt, step_N.pt or a training run dir")
    parser.add_argument("--data", type=Path, required=True, nargs="+",
                        help="manifest(s) (.tsv, with .wrd for reference transcripts), audio files or directories")
    parser.add_argument("-o", "--out", type=Path, required=True, help="report directory (metrics.json, index.html)")
    parser.add_argument("--num-quantizers", type=int, default=None, help="decode from the first N levels only")
    parser.add_argument("--max-utterances", type=int, default=None, help="evaluate at most this many")
    parser.add_argument("--no-asr", dest="asr", action="store_false",
                        help="skip the pocketsphinx intelligibility (WER) measurement")
    parser.add_argument("--asr-utterances", type=int, default=None,
                        help="run pocketsphinx on the first N utterances only (default: all)")
    parser.add_argument("--report-utterances", type=int, default=8,
                        help="utterances with audio players and spectrograms in index.html (default 8)")


def evaluate(args: argparse.Namespace) -> int:
    from seqwin.recipes.codec.evaluate import evaluate_codec

    summary = evaluate_codec(args.checkpoint, args.data, args.out, num_quantizers=args.num_quantizers,
                             max_utterances=args.max_utterances, asr=args.asr,
                             asr_utterances=args.asr_utterances,
                             report_utterances=args.report_utterances)
    for line in summary:
        print(line)
    return 0
