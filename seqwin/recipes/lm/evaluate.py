"""``seqwin eval lm``: perplexity (token- and byte-normalized) at a context length, or WindowKV's loss vs budget."""

from __future__ import annotations

import argparse
import json
import math
import time

from seqwin.errors import UserError
from seqwin.models.lm.decoding import attention_layers
from seqwin.recipes.lm.data import load_tokens
from seqwin.recipes.lm.kv_budget import parse_kv_budget, windowkv_config
from seqwin.recipes.lm.scoring import score_stream, windowkv_loss_table
from seqwin.recipes.lm.train import load_trained, num_bytes


def perplexity_metrics(nll: float, tokens: int, nbytes: int) -> dict[str, float]:
    """Token-normalized loss/perplexity, and byte-normalized bits per byte/perplexity when bytes are known."""
    out = {"tokens": float(tokens), "loss": nll / tokens, "ppl": math.exp(nll / tokens)}
    if nbytes:
        out.update(bytes=float(nbytes), bits_per_byte=nll / nbytes / math.log(2), byte_ppl=math.exp(nll / nbytes))
    return out


def run_eval(args: argparse.Namespace) -> int:
    for name in ("context", "stride", "max_tokens"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    if args.windowkv is not None or args.kv_budget:
        return _run_windowkv(args)
    cfg, tok, model, step = load_trained(args.out, checkpoint=args.checkpoint, device=args.device,
                                         min_seq_len=args.context)
    context = args.context or cfg.data.seq_len
    stride = args.stride or context
    if stride > context:
        raise UserError(f"--stride ({stride}) must not exceed --context ({context})")
    tokens = load_tokens(cfg.data.dir, args.split, cfg.data.format, tok, args.out)
    if args.max_tokens:
        tokens = tokens[: args.max_tokens + 1]
    t0 = time.perf_counter()
    nll, count = score_stream(model, tokens, context=context, stride=stride, batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    metrics = perplexity_metrics(nll, count, num_bytes(tok, tokens[1:]))
    print(f"{args.out} (step {step}) on {args.split}: context {context}, stride {stride}, {count} tokens "
          f"in {seconds:.1f} s")
    line = f"  loss {metrics['loss']:.4f} nats/token, perplexity {metrics['ppl']:.3f} per token"
    if "bytes" in metrics:
        line += (f"; {int(metrics['bytes'])} bytes: {metrics['bits_per_byte']:.4f} bits/byte, "
                 f"perplexity {metrics['byte_ppl']:.4f} per byte")
    print(line)
    if args.json:
        record = {"out": str(args.out), "step": step, "split": args.split, "context": context, "stride": stride,
                  **metrics}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


def _run_windowkv(args: argparse.Namespace) -> int:
    # rows: --windowkv's uniform budgets, then each --kv-budget (one fraction or one per layer group)
    budgets: list[float | list[float]] = list(args.windowkv or [])
    if args.windowkv is not None and (not budgets or any(not 0 < b <= 1 for b in budgets)):
        raise UserError(f"--windowkv budgets must lie in (0, 1], got {budgets}")
    budgets += [parse_kv_budget(text) for text in args.kv_budget or []]
    total = args.prompt_len + args.continuation_len
    cfg, tok, model, step = load_trained(args.out, checkpoint=args.checkpoint, device=args.device,
                                         min_seq_len=total)
    kinds = [kind for kind, _ in attention_layers(model)]
    if "full" not in kinds:
        raise UserError(f"{args.out}: the model has no full-attention layer for WindowKV to compress ({kinds})")
    num_full = kinds.count("full")
    # every row's budget is checked against the model's layer groups before any decoding starts
    num_swept = len(args.windowkv or [])
    wkv = [windowkv_config(budget, num_full_layers=num_full, window_size=args.window_size,
                           obs_window=args.obs_window, share_layers=args.share_layers,
                           option="--windowkv" if i < num_swept else "--kv-budget")
           for i, budget in enumerate(budgets)][0]
    tokens = load_tokens(cfg.data.dir, args.split, cfg.data.format, tok, args.out)
    try:
        rows = windowkv_loss_table(model, tokens, budgets, prompt_len=args.prompt_len,
                                   continuation_len=args.continuation_len, num_prompts=args.num_prompts,
                                   config=wkv)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    base = next((r for r in rows if r.is_full), rows[0])
    groups = wkv.num_groups(num_full)
    print(f"{args.out} (step {step}) on {args.split}: WindowKV on {num_full}/{len(kinds)} full layers "
          f"({groups} group{'s' if groups != 1 else ''} of up to {wkv.share_layers} sharing one selection), "
          f"{args.num_prompts} prompts of {args.prompt_len} tokens, next-token loss on the next "
          f"{args.continuation_len} (windows of {wkv.window_size}, observation {wkv.obs_window}); "
          "budget and kept prompt keys per layer group, bottom first")
    kept = ["/".join(map(str, r.kept)) for r in rows]
    wb, wk = max(7, *(len(r.label) for r in rows)), max(6, *map(len, kept))
    print(f"  {'budget':>{wb}} {'kept':>{wk}} {'cache':>7} {'loss':>8} {'ppl':>9} {'Δloss':>8}")
    for r, k in zip(rows, kept, strict=True):
        print(f"  {r.label:>{wb}} {k:>{wk}} {r.kept_fraction:7.1%} {r.loss:8.4f} {r.ppl:9.3f} "
              f"{r.loss - base.loss:+8.4f}")
    if args.json:
        args.json.write_text(json.dumps([{"budget": r.budget, "kept": r.kept, "kept_fraction": r.kept_fraction,
                                          "loss": r.loss, "ppl": r.ppl} for r in rows], indent=1) + "\n")
    return 0
