"""``seqwin train tokenizer``: train a SentencePiece model (or write a byte-level tokenizer) into a directory that
``tokenizer.model:`` of an LM recipe can point at."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="directory for tokenizer.{json,model,vocab}")
    parser.add_argument("--text", type=Path, nargs="+", metavar="FILE",
                        help="UTF-8 training text, e.g. data/text/train.txt (sentencepiece)")
    parser.add_argument("--kind", choices=["sentencepiece", "byte"], default="sentencepiece")
    parser.add_argument("--vocab-size", type=int, default=2000)
    parser.add_argument("--model-type", choices=["unigram", "bpe"], default="unigram")
    parser.add_argument("--max-sentences", type=int, default=1_000_000, help="lines sampled for training")


def train(args: argparse.Namespace) -> int:
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
