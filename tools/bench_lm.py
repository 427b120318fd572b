"""LM benchmark: training tokens/s and peak memory vs context length, decoding tokens/s and cache memory vs
generated length, for full vs local (sliding-window) vs routing attention.

Every training case runs in its own subprocess, so its peak memory (process high-water mark above the baseline
after model creation on CPU; the allocator's peak on CUDA) is its own. Decoding runs one process per kind and
samples speed and cache size along the way. Writes ``lm_bench.json``, ``lm_bench.md`` (the README table) and
``lm_bench.png``.

    python tools/bench_lm.py --out bench_out                       # CPU: contexts 1k..32k, decode to 8k
    python tools/bench_lm.py --device cuda --decode-max 32768 ...  # GPU
    python tools/bench_lm.py --quick                               # smoke run (small sizes)

Model: 2 layers, d=128, 4 heads, vocab 1024. ``local``: window 256 in every layer. ``routing``: every layer has
2 local heads (window 256) + 2 routing heads (context/512 clusters, routing window 512) — the Routing Transformer
mix; decoding keeps per-cluster rings. ``full``: PyTorch's fused causal SDPA, decoding with a growing cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

from bench_common import run_case

KINDS = ("full", "local", "routing")


def _config(kind: str, context: int, max_seq_len: int):
    from seqwin.attention import AttentionSpec, LayerAttentionConfig
    from seqwin.models.lm import LMConfig

    if kind == "full":
        spec = AttentionSpec(kind="full")
    elif kind == "local":
        spec = AttentionSpec(kind="local", window=(255, 0))
    else:
        spec = AttentionSpec(kind="mixed", local_heads=2, routing_heads=2, window=(255, 0),
                             num_clusters=max(2, context // 512), routing_window=512)
    return LMConfig(vocab_size=1024, model_dim=128, num_layers=2, num_heads=4, ffn_inner_dim=512,
                    max_seq_len=max_seq_len, attention=LayerAttentionConfig(default=spec))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker_train(kind: str, context: int, steps: int, device: str, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from fairseq2.nn import BatchLayout

    from seqwin.attention.fairseq2 import collect_aux_losses
    from seqwin.models.lm import create_lm_model

    torch.manual_seed(0)
    model = create_lm_model(_config(kind, context, context + 1)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, 1024, (1, context + 1), device=device)

    def step():
        loss = model(x[:, :-1], BatchLayout.of(x[:, :-1]), x[:, 1:], reduction="mean")
        aux = collect_aux_losses(model)
        (loss if aux is None else loss + aux).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    base = _rss_mib()  # CPU: the process high-water mark with the model and data, before any step
    step()  # warm-up: allocator, routing centroid initialization, optimizer state
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):  # best of the timed steps: the machines are shared, a slow step is someone else's
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    seconds = min(times)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _rss_mib() - base
    return {"kind": kind, "context": context, "step_seconds": seconds, "tokens_per_s": context / seconds,
            "peak_mib": peak, "rss_mib": _rss_mib()}


def worker_decode(kind: str, lengths: list[int], device: str, threads: int) -> list[dict]:
    import torch

    if threads:
        torch.set_num_threads(threads)

    from seqwin.models.lm import Decoder, create_lm_model, decoding_session

    torch.manual_seed(0)
    total = max(lengths)
    # routing clusters sized for the longest sequence, as a model trained at that context would be
    model = create_lm_model(_config(kind, total, max(total, 1024) + 64)).to(device)
    model.train()
    warm = torch.randint(0, 1024, (1, 1024), device=device)
    from fairseq2.nn import BatchLayout

    model(warm, BatchLayout.of(warm))  # initialize routing centroids from data
    rows, token = [], torch.randint(0, 1024, (1, 16), device=device)
    with decoding_session(model), torch.no_grad():
        dec = Decoder(model, total + 16)
        dec.forward(token)
        token = token[:, -1:]
        t0, done = time.perf_counter(), 0
        for n in range(1, total + 1):
            logits = dec.forward(token)
            token = logits[:, -1].argmax(-1, keepdim=True)
            if n in lengths:
                if device == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                rows.append({"kind": kind, "generated": n, "tokens_per_s": (n - done) / (now - t0),
                             "cache_mib": dec.cache_bytes() / 2**20, "rss_mib": _rss_mib()})
                t0, done = now, n
    return rows


def _plot(train: list[dict], decode: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [(train, "context", "tokens_per_s", "training tokens/s"), (train, "context", "peak_mib",
              "training peak memory (MiB)"), (decode, "generated", "tokens_per_s", "decode tokens/s"),
              (decode, "generated", "cache_mib", "decode KV cache (MiB)")]
    for ax, (rows, x, y, title) in zip(axes.flat, panels, strict=True):
        for kind in KINDS:
            pts = [(r[x], r[y]) for r in rows if r["kind"] == kind]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=kind)
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel(x)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _table(train: list[dict], decode: list[dict]) -> str:
    lines = ["| context | " + " | ".join(f"{k} tok/s | {k} peak MiB" for k in KINDS) + " |",
             "|---:|" + "---:|---:|" * len(KINDS)]
    for ctx in sorted({r["context"] for r in train}):
        cells = []
        for kind in KINDS:
            r = next((r for r in train if r["kind"] == kind and r["context"] == ctx), None)
            cells += [f"{r['tokens_per_s']:.0f}", f"{r['peak_mib']:.0f}"] if r else ["skipped", "-"]
        lines.append(f"| {ctx} | " + " | ".join(cells) + " |")
    lines += ["", "| generated | " + " | ".join(f"{k} tok/s | {k} cache MiB" for k in KINDS) + " |",
              "|---:|" + "---:|---:|" * len(KINDS)]
    for n in sorted({r["generated"] for r in decode}):
        cells = []
        for kind in KINDS:
            r = next((r for r in decode if r["kind"] == kind and r["generated"] == n), None)
            cells += [f"{r['tokens_per_s']:.1f}", f"{r['cache_mib']:.2f}"] if r else ["-", "-"]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_out"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--steps", type=int, default=2, help="timed training steps per case (after one warm-up); "
                   "the fastest is reported")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    p.add_argument("--decode-lengths", default="512,1024,2048,4096,8192")
    p.add_argument("--max-case-seconds", type=float, default=300.0,
                   help="a training case slower than this is stopped and larger contexts of its kind skipped")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--quick", action="store_true", help="contexts 512,1024; decode to 512; one timed step")
    p.add_argument("--worker", choices=["train", "decode"], help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--context", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "train":
        print(json.dumps(worker_train(args.kind, args.context, args.steps, args.device, args.threads)))
        return 0
    if args.worker == "decode":
        lengths = [int(x) for x in args.decode_lengths.split(",")]
        print(json.dumps(worker_decode(args.kind, lengths, args.device, args.threads)))
        return 0
    if args.quick:
        args.contexts, args.decode_lengths, args.steps = "512,1024", "128,256,512", 1
    contexts = [int(x) for x in args.contexts.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--device", args.device, "--steps", str(args.steps), "--threads", str(args.threads)]
    train: list[dict] = []
    for kind in kinds:
        for ctx in contexts:
            t0 = time.perf_counter()
            row = run_case(__file__, ["--worker", "train", "--kind", kind, "--context", str(ctx), *common],
                           args.max_case_seconds)
            if "skipped" in row:
                print(f"train {kind} {ctx}: {row['skipped']}; skipping larger contexts")
                break
            train.append(row)
            print(f"train {kind:8s} context {ctx:6d}: {row['tokens_per_s']:8.0f} tok/s, peak {row['peak_mib']:7.1f} "
                  f"MiB ({time.perf_counter() - t0:.0f} s)", flush=True)
    decode: list[dict] = []
    for kind in kinds:
        rows = run_case(__file__, ["--worker", "decode", "--kind", kind, "--decode-lengths", args.decode_lengths,
                                   *common], args.max_case_seconds * 4)
        if isinstance(rows, dict):  # {"skipped": reason}
            print(f"decode {kind}: {rows['skipped']}")
            rows = []
        for r in rows:
            print(f"decode {kind:8s} {r['generated']:6d} tokens: {r['tokens_per_s']:7.1f} tok/s, cache "
                  f"{r['cache_mib']:7.2f} MiB", flush=True)
        decode += rows
    meta = {"device": args.device, "steps": args.steps, "threads": args.threads, "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(), "python": sys.version.split()[0]}
    (args.out / "lm_bench.json").write_text(json.dumps({"meta": meta, "train": train, "decode": decode}, indent=1))
    (args.out / "lm_bench.md").write_text(_table(train, decode))
    _plot(train, decode, args.out / "lm_bench.png")
    print(_table(train, decode))
    print(f"wrote {args.out}/lm_bench.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
