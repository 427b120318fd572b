"""``seqwin train ssl``: argument parsing only (the recipe is imported when the task runs)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_common_train_args(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--config", type=Path, required=True, help=f"recipe YAML, e.g. {example}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (YAML syntax), e.g. trainer.max_steps=100; repeatable")
    parser.add_argument("out_dir", metavar="OUT", help="output directory (re-run the same command to resume)")


def add_train_args(parser: argparse.ArgumentParser) -> None:
    add_common_train_args(parser, "recipes/wav2vec2/ssl/mini.yaml")


def train(args: argparse.Namespace) -> int:
    from seqwin.recipes.wav2vec2.pretrain import train as run

    return run(args)
