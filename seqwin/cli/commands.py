"""Every ``seqwin`` subcommand, in one table (:data:`COMMANDS`, in ``seqwin --help`` order).

A plain command maps to the function that adds its parser and handler (``add_parser(subparsers)`` in its
``seqwin.cli`` module). ``train`` and ``eval`` are families of tasks: each task names the functions of a recipe's
``cli`` module that add its arguments and run it. Those modules import nothing heavy, so ``seqwin --help`` stays
fast; the recipes themselves are imported when a task runs. Training tasks hold their output directory's lock
from start to end.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from seqwin.cli import codec, generate, import_hf, prepare, transcribe, windowize
from seqwin.recipes.codec import cli as codec_recipe
from seqwin.recipes.lm import cli as lm_recipe
from seqwin.recipes.wav2vec2 import cli as wav2vec2_recipe

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Task:
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Handler
    help: str


@dataclass(frozen=True)
class Family:
    """``seqwin NAME TASK ...``: a command whose subcommands are recipe tasks."""

    help: str
    tasks: dict[str, Task]
    holds_out_dir: bool = False
    """Run each task holding its output directory's lock (training)."""


COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None] | Family] = {
    "prepare": prepare.add_parser,
    "train": Family("train a model from a recipe config", holds_out_dir=True, tasks={
        "lm": Task(lm_recipe.add_train_args, lm_recipe.train,
                   "long-context language model (full/local/routing attention per layer)"),
        "tokenizer": Task(lm_recipe.add_tokenizer_args, lm_recipe.train_tokenizer,
                          "SentencePiece (or byte-level) tokenizer for LMs"),
        "ssl": Task(wav2vec2_recipe.add_ssl_args, wav2vec2_recipe.train_ssl,
                    "wav2vec 2.0 self-supervised pretraining (windowed attention)"),
        "asr": Task(wav2vec2_recipe.add_asr_args, wav2vec2_recipe.train_asr, "wav2vec 2.0 CTC fine-tuning on letters"),
        "codec": Task(codec_recipe.add_train_args, codec_recipe.train,
                      "FuseCodec speech codec (GAN, RVQ 8x1024, teacher fusion/distillation)"),
    }),
    "eval": Family("evaluate a trained model", tasks={
        "lm": Task(lm_recipe.add_eval_args, lm_recipe.evaluate,
                   "LM perplexity per token and per byte, or WindowKV loss vs KV budget"),
        "asr": Task(wav2vec2_recipe.add_eval_args, wav2vec2_recipe.evaluate,
                    "wav2vec2 CTC decoding (greedy, or beam search + word LM), WER/CER"),
        "codec": Task(codec_recipe.add_eval_args, codec_recipe.evaluate,
                      "codec PESQ/STOI/mel/SI-SNR/codebook usage/pocketsphinx WER + HTML"),
    }),
    "transcribe": transcribe.add_parser,
    "tokenize": codec.add_tokenize_parser,
    "detokenize": codec.add_detokenize_parser,
    "generate": generate.add_parser,
    "windowize": windowize.add_parser,
    "import": import_hf.add_parser,
}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    for name, command in COMMANDS.items():
        if isinstance(command, Family):
            _add_family(subparsers, name, command)
        else:
            command(subparsers)


def _add_family(subparsers: argparse._SubParsersAction, name: str, family: Family) -> None:
    parser = subparsers.add_parser(name, help=family.help, description=family.help)
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for task_name, task in family.tasks.items():
        p = sub.add_parser(task_name, help=task.help, description=task.help)
        task.add_args(p)
        p.set_defaults(func=_holding_out_dir(task.run) if family.holds_out_dir else task.run)


def _holding_out_dir(run: Handler) -> Handler:
    """Run a training task holding its output directory's lock from start to end (config, caches, checkpoints,
    the exported model): a second run into the same OUT stops at once instead of interleaving with this one."""
    def locked(args: argparse.Namespace) -> int:
        from seqwin.training.run_dir import hold_run_dir

        out = args.out if hasattr(args, "out") else args.out_dir  # the wav2vec2 recipes name OUT out_dir
        with hold_run_dir(Path(out)):
            return run(args)

    return locked
