"""Command-line glue for ``seqwin train lm``, ``seqwin eval lm`` and ``seqwin train tokenizer`` (light imports: the
work happens in :mod:`seqwin.recipes.lm.train`, :mod:`seqwin.recipes.lm.evaluate` and
:mod:`seqwin.models.lm.tokenizer`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="output directory (re-run the command to resume)")
    parser.add_argument("--config", type=Path, required=True, help="recipe YAML, e.g. recipes/lm/mini.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set trainer.max_steps=100 (repeatable)")
    _add_threads(parser)


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's choice; 1 avoids thread stalls on a busy machine)")


def _set_threads(args: argparse.Namespace) -> None:
    from seqwin.errors import UserError

    if args.threads < 0:
        raise UserError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def train(args: argparse.Namespace) -> int:
    from seqwin.recipes.lm.config import LMRecipeConfig
    from seqwin.recipes.lm.train import run_train
    from seqwin.training import load_config

    _set_threads(args)
    cfg = load_config(LMRecipeConfig, args.config, args.set)
    valid = run_train(cfg, args.out)
    if valid:
        print(f"{args.out}: valid loss {valid['loss']:.4f}, perplexity {valid['ppl']:.2f} "
              f"({int(valid['tokens'])} tokens)")
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="a `seqwin train lm` output directory")
    parser.add_argument("--split", default="test", help="split of the config's data.dir (default: test)")
    parser.add_argument("--context", type=int, default=0, help="tokens of context (default: data.seq_len)")
    parser.add_argument("--stride", type=int, default=0,
                        help="score this many tokens per window (default: --context, i.e. disjoint windows)")
    parser.add_argument("--max-tokens", type=int, default=0, help="score only the first N tokens (0: all)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path,
                        help="a checkpoint or LM file (default: OUT/model.pt, else the newest checkpoint in OUT)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    _add_threads(parser)
    wkv = parser.add_argument_group("WindowKV experiment (loss vs KV budget of the full-attention layers)")
    wkv.add_argument("--windowkv", type=_floats, metavar="B1,B2,...",
                     help="budgets to compare, one per row and the same for every layer group, e.g. 1,0.5,0.25,0.12 "
                          "(replaces the perplexity evaluation)")
    wkv.add_argument("--kv-budget", action="append", default=[], metavar="B|B1,B2,...",
                     help="one more row: a budget, or one per layer group of --share-layers full layers (bottom "
                          "first), e.g. 0.75,0.5,0.25 (repeatable; runs the WindowKV experiment)")
    wkv.add_argument("--prompt-len", type=int, default=2048)
    wkv.add_argument("--continuation-len", type=int, default=256)
    wkv.add_argument("--num-prompts", type=int, default=4)
    wkv.add_argument("--window-size", type=int, default=8)
    wkv.add_argument("--obs-window", type=int, default=32)
    wkv.add_argument("--share-layers", type=int, default=8,
                     help="layer group size: consecutive full-attention layers sharing one selection and budget")


def evaluate(args: argparse.Namespace) -> int:
    from seqwin.recipes.lm.evaluate import run_eval

    _set_threads(args)
    return run_eval(args)


def add_tokenizer_args(parser: argparse.ArgumentParser) -> None:
    """``seqwin train tokenizer``: a SentencePiece model (or a byte-level tokenizer) in a directory that
    ``tokenizer.model:`` of an LM recipe can point at."""
    parser.add_argument("out", type=Path, metavar="OUT", help="directory for tokenizer.{json,model,vocab}")
    parser.add_argument("--text", type=Path, nargs="+", metavar="FILE",
                        help="UTF-8 training text, e.g. data/text/train.txt (sentencepiece)")
    parser.add_argument("--kind", choices=["sentencepiece", "byte"], default="sentencepiece")
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    parser.add_argument("--max-sentences", type=int, default=1_000_000, help="lines sampled for training")


def train_tokenizer(args: argparse.Namespace) -> int:
    from seqwin.data.textcorpus import check_text_file
    from seqwin.errors import UserError
    from seqwin.models.lm.tokenizer import ByteTokenizer, train_sentencepiece

    if args.kind == "byte":
        ByteTokenizer().save(args.out)
        print(f"{args.out}: byte-level tokenizer (257 ids: bytes + end of document)")
        return 0
    if not args.text:
        raise UserError("--text FILE is required to train a sentencepiece tokenizer")
    if args.max_sentences < 1:
        raise UserError(f"--max-sentences must be >= 1, got {args.max_sentences}")
    for path in args.text:  # SentencePiece would learn from any bytes, an audio file included
        check_text_file(path)
    tok = train_sentencepiece(args.text, args.out, vocab_size=args.vocab_size, model_type=args.model_type,
                              max_sentences=args.max_sentences)
    sample = args.text[0].read_text(encoding="utf-8", errors="replace")[:200_000]
    ids = tok.encode(sample)
    print(f"{args.out}: {args.model_type} SentencePiece model, {tok.vocab_size} ids (incl. newline); "
          f"{len(sample.encode('utf-8')) / max(1, len(ids)):.2f} bytes/token on the start of {args.text[0]}")
    return 0
