"""``seqwin tokenize`` and ``seqwin detokenize``: speech <-> FuseCodec codes.

seqwin tokenize INPUT... -o OUT --checkpoint CKPT [--num-quantizers N] [--chunk-seconds S] [--batch-size B] [--bf16]
seqwin detokenize CODES -o WAV_DIR --checkpoint CKPT

INPUT: audio files, folders (searched recursively) or .tsv manifests. OUT gets codes/<id>.npy (int16,
shape (num_quantizers, frames)), index.json and index.tsv; the format is documented in
seqwin.recipes.codec.tokenize. CKPT: a codec training run directory, its codec.pt or a checkpoints/step_N.pt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seqwin.errors import UserError


def add_tokenize_parser(subparsers: argparse._SubParsersAction) -> None:
    tok = subparsers.add_parser("tokenize", help="speech -> codec codes (.npy per utterance + index)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tok.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="audio files, folders or .tsv manifests")
    tok.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    tok.add_argument("--checkpoint", type=Path, required=True, help="codec run dir, codec.pt or step_N.pt")
    tok.add_argument("--num-quantizers", type=int, default=None, help="keep the first N RVQ levels (default: all)")
    tok.add_argument("--batch-size", type=int, default=16, help="files per batch (default 16)")
    tok.add_argument("--chunk-seconds", type=float, default=60.0,
                     help="encode longer files in chunks of this length (default 60; exact for causal codecs)")
    tok.add_argument("--chunk-context-seconds", type=float, default=1.0,
                     help="BiLSTM codecs only: audio each chunk sees on each side (default 1)")
    tok.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    tok.add_argument("--strict", action="store_true", help="stop at the first unusable input instead of skipping")
    tok.add_argument("--bf16", action="store_true",
                     help="run the encoder in bfloat16 (faster on CPUs with bf16 instructions; codes near a code "
                          "boundary can differ from float32's; recorded as index.json 'precision')")
    tok.set_defaults(func=_tokenize)


def add_detokenize_parser(subparsers: argparse._SubParsersAction) -> None:
    detok = subparsers.add_parser("detokenize", help="codec codes -> 16-bit WAV files",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    detok.add_argument("codes", type=Path, metavar="CODES", help="tokenize output folder, its index.json, or a .npy")
    detok.add_argument("-o", "--out", type=Path, required=True, help="output folder for <id>.wav")
    detok.add_argument("--checkpoint", type=Path, required=True, help="codec run dir, codec.pt or step_N.pt")
    detok.set_defaults(func=_detokenize)


def _prepare(args: argparse.Namespace, *, decoder: bool = True, bf16: bool = False):
    import torch

    from seqwin.cpu_memory import keep_freed_memory
    from seqwin.models.codec import checkpoint

    keep_freed_memory()  # large activations: reuse freed heap instead of fresh page-faulted mmaps per layer
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"{args.out}: exists and is not a directory")
    return checkpoint.load(args.checkpoint, decoder=decoder).model.fold_for_inference(bf16=bf16)


def _tokenize(args: argparse.Namespace) -> int:
    from seqwin.data.inputs import collect_inputs
    from seqwin.recipes.codec.tokenize import tokenize

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.chunk_context_seconds < 0:
        raise UserError(f"--chunk-context-seconds must be >= 0, got {args.chunk_context_seconds}")
    inputs = collect_inputs(args.inputs)
    model = _prepare(args, decoder=False, bf16=args.bf16)  # encoder side only: the decoder is not even built
    summary = tokenize(model, inputs, args.out, checkpoint=str(args.checkpoint), num_quantizers=args.num_quantizers,
                       batch_size=args.batch_size, chunk_seconds=args.chunk_seconds,
                       chunk_context_seconds=args.chunk_context_seconds, strict=args.strict, bf16=args.bf16)
    print(f"{args.out}: " + "; ".join(summary.lines()))
    if not summary.utterances:
        raise UserError("no input could be tokenized")
    return 0


def _detokenize(args: argparse.Namespace) -> int:
    import time

    from seqwin.data.codes_index import read_codes_index
    from seqwin.recipes.codec.tokenize import detokenize

    index, items = read_codes_index(args.codes)
    model = _prepare(args)
    start = time.monotonic()
    count = detokenize(model, items, args.out, index=index)
    print(f"{args.out}: {count} file(s) decoded in {time.monotonic() - start:.1f} s")
    return 0
