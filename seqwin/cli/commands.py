"""``seqwin train TASK`` and ``seqwin eval TASK``: each task lives in a recipe module, registered here by name.

A recipe module provides ``add_train_args(parser)`` + ``train(args) -> int`` and/or ``add_eval_args(parser)`` +
``evaluate(args) -> int``. Modules are imported only when their task runs, so ``seqwin --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

# task name -> (recipe module, one-line help).
TRAIN_TASKS: dict[str, tuple[str, str]] = {
    "lm": ("seqwin.recipes.lm.cli", "long-context language model (full/local/routing attention per layer)"),
    "tokenizer": ("seqwin.recipes.lm.tokenizer_cli", "SentencePiece (or byte-level) tokenizer for LMs"),
    "ssl": ("seqwin.recipes.wav2vec2.ssl_cli", "wav2vec 2.0 self-supervised pretraining (windowed attention)"),
    "asr": ("seqwin.recipes.wav2vec2.asr_cli", "wav2vec 2.0 CTC fine-tuning on letters"),
    "codec": ("seqwin.recipes.codec.entry", "FuseCodec speech codec (GAN, RVQ 8x1024, teacher fusion/distillation)"),
}
EVAL_TASKS: dict[str, tuple[str, str]] = {
    "lm": ("seqwin.recipes.lm.cli", "LM perplexity per token and per byte, or WindowKV loss vs KV budget"),
    "asr": ("seqwin.recipes.wav2vec2.asr_cli", "wav2vec2 CTC decoding (greedy, or beam search + word LM), WER/CER"),
    "codec": ("seqwin.recipes.codec.entry", "codec PESQ/STOI/mel/SI-SNR/codebook usage/pocketsphinx WER + HTML"),
}


def _dispatch(module: str, attr: str):
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), attr)(args)

    return run


def _dispatch_train(module: str, attr: str):
    """Run a training task holding its output directory's lock from start to end (config, caches, checkpoints,
    the exported model): a second run into the same OUT stops at once instead of interleaving with this one."""
    def run(args: argparse.Namespace) -> int:
        from seqwin.training.run_dir import hold_run_dir

        out = args.out if hasattr(args, "out") else args.out_dir  # the wav2vec2 recipes name OUT out_dir
        with hold_run_dir(Path(out)):
            return getattr(importlib.import_module(module), attr)(args)

    return run


def _add(subparsers, name: str, help_text: str, tasks: dict[str, tuple[str, str]], args_fn: str, run_fn: str,
         dispatch=_dispatch):
    if not tasks:
        return
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for task, (module, task_help) in tasks.items():
        p = sub.add_parser(task, help=task_help, description=task_help)
        getattr(importlib.import_module(module), args_fn)(p)
        p.set_defaults(func=dispatch(module, run_fn))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    _add(subparsers, "train", "train a model from a recipe config", TRAIN_TASKS, "add_train_args", "train",
         _dispatch_train)
    _add(subparsers, "eval", "evaluate a trained model", EVAL_TASKS, "add_eval_args", "evaluate")
