"""The work behind ``seqwin generate``: encode the prompt, sample, decode, report speed and cache memory."""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from seqwin.data.errors import DataError
from seqwin.errors import UserError
from seqwin.models.lm.decoding import SamplingConfig, attention_layers, generate
from seqwin.models.lm.tokenizer import CodeTokenizer, load_tokenizer
from seqwin.recipes.lm.kv_budget import parse_kv_budget, windowkv_config
from seqwin.recipes.lm.train import load_trained


def _prompt_ids(args: argparse.Namespace, tok) -> list[int]:
    if isinstance(tok, CodeTokenizer):
        if args.prompt is not None or args.prompt_file is not None:
            raise UserError(f"{args.out} models speech codes: give --prompt-codes FILE.npy, not text")
        if args.prompt_codes is None:
            return [tok.eos_idx]  # start of a new utterance
        try:
            codes = np.load(args.prompt_codes, allow_pickle=False)
            if args.prompt_frames:
                codes = codes[..., : args.prompt_frames]
            return tok.encode_codes(codes).tolist()
        except (OSError, ValueError) as exc:
            raise DataError(f"{args.prompt_codes}: {exc}") from None
    if args.prompt_codes is not None:
        raise UserError(f"{args.out} models text: --prompt-codes is for code LMs")
    if args.prompt_file is not None:
        try:
            text = args.prompt_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{args.prompt_file}: cannot read the prompt ({exc})") from None
    else:
        text = args.prompt if args.prompt is not None else "\n"
    ids = tok.encode(text)
    if not ids:
        raise UserError("the prompt encodes to no tokens")
    return ids


def run_generate(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1 or args.num_samples < 1 or args.prompt_frames < 0 or args.threads < 0:
        raise UserError("--max-new-tokens and --num-samples must be >= 1, --prompt-frames and --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    try:
        sampling.validate()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    budget = parse_kv_budget(args.kv_budget)  # before loading anything: a typo fails fast
    ids = _prompt_ids(args, load_tokenizer(args.out))
    # min_seq_len extends the rotary table if the config's is shorter (it is not part of the weights)
    _, tok, model, step = load_trained(args.out, checkpoint=args.checkpoint, device=args.device,
                                       min_seq_len=len(ids) + args.max_new_tokens)
    num_full = sum(kind == "full" for kind, _ in attention_layers(model))
    windowkv = windowkv_config(budget, num_full_layers=num_full, share_layers=args.share_layers)
    prompt = torch.tensor([ids] * args.num_samples)
    result = generate(model, prompt, args.max_new_tokens, sampling, eos_idx=tok.eos_idx,
                      windowkv=windowkv if windowkv.compresses else None, seed=args.seed)
    info = (f"[{args.out} step {step}: prompt {len(ids)} tokens ({result.prefill_seconds:.2f} s), "
            f"{result.tokens.shape[1]} new tokens at {result.tokens_per_second:.1f} tokens/s per sample, "
            f"cache {result.cache_bytes / 2**20:.2f} MiB"
            + (f", WindowKV kept {'/'.join(map(str, result.kept))} of {len(ids)} prompt keys per layer group"
               if result.kept else "") + "]")
    if isinstance(tok, CodeTokenizer):
        out = args.output or args.out / "generated.npy"
        stem = str(out)[: -len(".npy")] if str(out).endswith(".npy") else str(out)
        for i, row in enumerate(result.tokens):
            # prompt + continuation as one utterance; int16 as in seqwin tokenize's files
            codes = tok.decode_codes([t for t in ids if t != tok.eos_idx] + row.tolist()).astype(np.int16)
            path = f"{stem}.npy" if len(result.tokens) == 1 else f"{stem}.{i}.npy"
            tmp = f"{path}.tmp.npy"
            np.save(tmp, codes)
            os.replace(tmp, path)
            print(f"{path}: codes {codes.shape} (codebooks, frames), the prompt's {len(ids) // tok.codebooks} "
                  "frames included")
        print(info)
        return 0
    texts = [tok.decode(row.tolist()) for row in result.tokens]
    prompt_text = tok.decode(ids)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i}")
        print(prompt_text + text)
    print(info)
    if args.output:
        args.output.write_text("\n\n".join(prompt_text + t for t in texts) + "\n", encoding="utf-8")
    return 0
