"""``seqwin generate OUT``: sample a continuation from a trained LM (text, or speech codes for code LMs).

Decoding is incremental: sliding-window layers keep a ring buffer (constant memory), routing layers per-cluster
rings, full layers a growing cache that ``--kv-budget`` compresses after the prompt (WindowKV).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="sample text (or codes) from a trained LM", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, metavar="OUT", help="a `seqwin train lm` output directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="prompt text (default: a newline)")
    src.add_argument("--prompt-file", type=Path, help="read the prompt text from a file")
    src.add_argument("--prompt-codes", type=Path, help="code LMs: a .npy of codes (quantizers, frames) to continue")
    p.add_argument("--prompt-frames", type=int, default=0,
                   help="code LMs: keep only the first N frames of --prompt-codes (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=200,
                   help="new tokens (code LMs: codebooks tokens per frame)")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--kv-budget", "--windowkv-budget", dest="kv_budget", default="1", metavar="B|B1,B2,...",
                   help="WindowKV: fraction of the prompt's KV kept in full-attention layers (1: no compression), "
                        "or one per layer group of --share-layers layers, bottom first, e.g. 0.75,0.5,0.25")
    p.add_argument("--share-layers", type=int, default=8,
                   help="WindowKV layer group size: consecutive full-attention layers sharing one selection")
    p.add_argument("--output", type=Path,
                   help="write the text here (code LMs: prompt + continuation codes as .npy, for seqwin detokenize)")
    p.add_argument("--checkpoint", type=Path,
                   help="a checkpoint or LM file (default: OUT/model.pt, else the newest checkpoint in OUT)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's choice; 1 is often fastest for small models' single steps)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from seqwin.recipes.lm.generate import run_generate

    return run_generate(args)
