"""``seqwin windowize``: give a wav2vec2 model sliding-window attention (or import it as is) as a seqwin model file.

    seqwin windowize --window 64,64 CKPT OUT.pt            every encoder layer sees +-64 frames
    seqwin windowize --window 64,64 --layers 0,1,2 CKPT OUT.pt
    seqwin windowize --window full CKPT OUT.pt              import only (dense attention, as trained)

CKPT: a seqwin model or training directory, a fairseq2 wav2vec2 / wav2vec2_asr checkpoint, a fairseq (v1)
wav2vec 2.0 checkpoint (pretraining or CTC fine-tuning), or a Hugging Face wav2vec2 folder (see `seqwin import
hf`). Only the attention pattern changes -- the projections are shared by every kind -- so OUT evaluates and
fine-tunes like the input; fine-tuning briefly with the window usually recovers most of what the window costs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("seqwin.windowize")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("windowize", help="convert a wav2vec2 model's attention to sliding windows",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--window", required=True, metavar="L,R",
                   help="frames each query sees to its left and right (-1 = unbounded; write --window=-1,8), or 'full'")
    p.add_argument("--layers", metavar="I,J,...", help="only these encoder layers (default: all)")
    p.add_argument("--heads", type=int, help="attention heads of an imported checkpoint whose config does not say")
    p.add_argument("--dict", metavar="DICT", help="dict.ltr.txt to store with a CTC model that carries none")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("out", metavar="OUT", help="output seqwin model file (e.g. model_w64.pt)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from seqwin.attention import AttentionSpec, LayerAttentionConfig
    from seqwin.data.errors import DataError
    from seqwin.data.manifest import CharDictionary
    from seqwin.errors import UserError
    from seqwin.models.wav2vec2 import checkpoint
    from seqwin.models.wav2vec2.config import ASR_FAMILY
    from seqwin.models.wav2vec2.factory import set_encoder_attention
    from seqwin.recipes.wav2vec2.evaluate import parse_window

    loaded = checkpoint.load(Path(args.checkpoint), heads=args.heads)
    enc = loaded.config.model.encoder_config
    spec = AttentionSpec(kind="full") if args.window == "full" else AttentionSpec(kind="local",
                                                                                  window=parse_window(args.window))
    attention = LayerAttentionConfig(default=spec)
    if args.layers:
        try:
            layers = [int(x) for x in args.layers.split(",")]
        except ValueError:
            raise UserError(f"--layers expects comma-separated layer indices, got {args.layers!r}") from None
        bad = [i for i in layers if not -enc.num_encoder_layers <= i < enc.num_encoder_layers]
        if bad:
            raise UserError(f"--layers {bad}: the model has {enc.num_encoder_layers} encoder layers")
        chosen = {j % enc.num_encoder_layers for j in layers}
        current = loaded.config.attention.expand(enc.num_encoder_layers, enc.num_encoder_attn_heads)
        # the other layers keep their attention, per-head windows included
        attention = LayerAttentionConfig(
            default=current[0].spec,
            overrides={i: (spec if i in chosen else la.spec) for i, la in enumerate(current)},
            head_windows={i: la.head_windows for i, la in enumerate(current) if i not in chosen and la.head_windows})
    try:
        changed = set_encoder_attention(loaded.model, loaded.config, attention)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    dictionary = loaded.dictionary
    if args.dict:
        try:
            dictionary = list(CharDictionary.load(Path(args.dict)).symbols)
        except DataError as exc:
            raise UserError(str(exc)) from None
        if loaded.family == ASR_FAMILY and len(dictionary) != loaded.config.model.target_vocab_size:
            raise UserError(f"--dict has {len(dictionary)} symbols, the CTC head "
                            f"{loaded.config.model.target_vocab_size}")
    out = Path(args.out)
    checkpoint.save(out, loaded.model, loaded.config, dictionary=dictionary, normalize=loaded.normalize)
    print(f"{args.checkpoint} ({loaded.source} {loaded.family}) -> {out}: {changed} layer(s) changed, attention "
          f"{loaded.config.attention.describe(enc.num_encoder_layers, enc.num_encoder_attn_heads)}")
    return 0
