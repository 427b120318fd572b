"""Decode-step benchmark: one new token per sequence against a long context, with seqwin's ring-buffer window cache
next to a full KV cache, side by side in one run.

One attention layer's decode step for a batch of ``B`` sequences that already hold ``N`` tokens (``H`` heads of
dim ``D``, bf16 on a GPU, fp32 on a CPU):

* ``seqwin_ring``: ``SlidingWindowKVCache`` with look-back ``W`` — append the token, then
  ``sliding_window_attention(q, keys, values, window=(W, 0))`` over the ``W + 1`` keys it returns; memory is
  O(W) whatever ``N`` is.
* ``full_cache``: a preallocated ``(B, N + steps, H, D)`` cache; write the new row, then PyTorch's SDPA of the
  query over every key so far (FlashAttention's decoding path on a GPU): what a full-attention model pays.
* ``full_cache_window``: the same full cache, SDPA over its last ``W + 1`` rows — the windowed result from a full
  cache: the ring's arithmetic at the full cache's memory.

Every case runs in its own subprocess (``bench_common.run_case``). Cells: tokens/s (``B * steps / time``), the
ratio to ``seqwin_ring``, and the cache's size. Writes ``decode.json``, ``decode.md`` and ``decode.png``.

    python tools/bench_decode.py --device cuda --out bench_out/decode   # contexts 4k/32k/128k, B=1 and 16
    python tools/bench_decode.py --quick                                # CPU smoke run (small sizes)

Needs torch and seqwin's attention core only (no fairseq2), so it runs on a bare GPU image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_common import cpu_name, run_case

METHODS = ("seqwin_ring", "full_cache", "full_cache_window")


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _make_step(case: dict):
    """Return ``(step, cache_bytes)``: ``step(q, k, v)`` appends one token and attends it to the cache."""
    import torch
    import torch.nn.functional as F

    from seqwin.attention import SlidingWindowKVCache, sliding_window_attention

    b, n, h, d, w = case["batch"], case["context"], case["heads"], case["dim"], case["window"]
    dtype = getattr(torch, case["dtype"])
    device = case["device"]
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(rows: int):
        return torch.randn(b, rows, h, d, device=device, dtype=dtype, generator=gen)

    if case["method"] == "seqwin_ring":
        cache = SlidingWindowKVCache(w)
        for start in range(0, n, 4096):  # prefill in chunks: only the last w rows stay
            rows = min(4096, n - start)
            cache.update(rand(rows), rand(rows))

        def step(q, k, v):
            keys, values = cache.update(k, v)
            return sliding_window_attention(q, keys, values, window=(w, 0))

        return step, cache.size_bytes

    total = n + case["steps"] + case["warmup"]
    cache_k = torch.empty(b, total, h, d, device=device, dtype=dtype)
    cache_v = torch.empty_like(cache_k)
    cache_k[:, :n], cache_v[:, :n] = rand(n), rand(n)
    windowed = case["method"] == "full_cache_window"
    at = n  # the next free row

    def step(q, k, v):
        nonlocal at
        cache_k[:, at], cache_v[:, at] = k[:, 0], v[:, 0]
        lo = max(0, at - w) if windowed else 0
        at += 1
        return F.scaled_dot_product_attention(q.transpose(1, 2), cache_k[:, lo:at].transpose(1, 2),
                                              cache_v[:, lo:at].transpose(1, 2)).transpose(1, 2)

    return step, lambda: 2 * cache_k.numel() * cache_k.element_size()


def run_worker(case: dict) -> dict:
    import torch

    torch.manual_seed(0)
    step, cache_bytes = _make_step(case)
    b, h, d = case["batch"], case["heads"], case["dim"]
    dtype, device = getattr(torch, case["dtype"]), case["device"]
    tokens = [torch.randn(3, b, 1, h, d, device=device, dtype=dtype) for _ in range(case["warmup"] + case["steps"])]
    with torch.no_grad():
        for q, k, v in tokens[: case["warmup"]]:  # compilation, allocator, the ring's first wrap
            step(q, k, v)
        _sync(device)
        t0 = time.perf_counter()
        for q, k, v in tokens[case["warmup"] :]:
            out = step(q, k, v)
        _sync(device)
        seconds = time.perf_counter() - t0
    assert out.shape == (b, 1, h, d) and bool(torch.isfinite(out).all())
    return {"tokens_per_s": b * case["steps"] / seconds, "step_ms": seconds / case["steps"] * 1e3,
            "cache_mib": cache_bytes() / 2**20}


def _table(info: dict, rows: list[dict]) -> str:
    head = (f"{info['device']}, torch {info['torch']}, {info['dtype']}, H={info['heads']}, D={info['dim']}, "
            f"W={info['window']}. Cells: tokens/s (x = seqwin_ring's tokens/s / this), cache MiB")
    lines = [head, "", "| context | batch | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for n in dict.fromkeys(r["context"] for r in rows):
        for b in dict.fromkeys(r["batch"] for r in rows):
            by_method = {r["method"]: r for r in rows if r["context"] == n and r["batch"] == b}
            ours = by_method.get("seqwin_ring", {}).get("tokens_per_s")
            cells = []
            for m in METHODS:
                r = by_method.get(m, {})
                if "tokens_per_s" not in r:
                    cells.append(r.get("skipped", "—"))
                    continue
                ratio = f" ({ours / r['tokens_per_s']:.2f}x)" if ours and m != "seqwin_ring" else ""
                cells.append(f"{r['tokens_per_s']:.0f}{ratio}, {r['cache_mib']:.0f} MiB")
            lines.append(f"| {n} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(info: dict, rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no decode.png")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = list(dict.fromkeys(r["batch"] for r in rows))
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4.2), squeeze=False)
    for b, ax in zip(batches, axes[0], strict=True):
        for m in METHODS:
            pts = [(r["context"], r["tokens_per_s"]) for r in rows
                   if r["batch"] == b and r["method"] == m and "tokens_per_s" in r]
            if pts:
                ax.loglog(*zip(*pts, strict=True), marker="o", label=m)
        ax.set(title=f"batch {b}", xlabel="context (tokens)", ylabel="decode tokens/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{info['device']} {info['dtype']} H={info['heads']} D={info['dim']} W={info['window']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_out/decode"))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 32768, 131072])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--window", type=int, default=1024, help="the ring's look-back W")
    p.add_argument("--steps", type=int, default=200, help="timed decode steps per case")
    p.add_argument("--timeout", type=float, default=300, help="seconds per case")
    p.add_argument("--quick", action="store_true", help="contexts 512/2048, batches 1/4, H=4, D=64, W=128, 20 steps")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    if args.quick:
        args.contexts, args.batches, args.heads, args.dim, args.window, args.steps = [512, 2048], [1, 4], 4, 64, 128, 20
    sizes = [*args.contexts, *args.batches, args.heads, args.dim, args.window, args.steps]
    if min(sizes) < 1:
        p.error("--contexts, --batches, --heads, --dim, --window and --steps must be positive")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")

    started = time.perf_counter()
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    info = {"device": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(), "torch": torch.__version__,
            "dtype": dtype, "heads": args.heads, "dim": args.dim, "window": args.window, "steps": args.steps}
    if args.device == "cuda":
        import triton

        info["triton"] = triton.__version__
    rows: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for n in args.contexts:
        for b in args.batches:
            for method in METHODS:
                case = {"method": method, "context": n, "batch": b, "heads": args.heads, "dim": args.dim,
                        "window": args.window, "dtype": dtype, "device": args.device, "steps": args.steps,
                        "warmup": 10}
                res = run_case(__file__, ["--worker", json.dumps(case)], args.timeout)
                rows.append({**case, **res})
                # after every case: a run cut short by a time limit keeps what it measured
                (args.out / "decode.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
                shown = (f"{res['tokens_per_s']:10.0f} tok/s {res['cache_mib']:8.0f} MiB" if "tokens_per_s" in res
                         else res["skipped"])
                print(f"N={n:7} B={b:3} {method:18} {shown}", flush=True)
    info["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "decode.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    table = _table(info, rows)
    (args.out / "decode.md").write_text(table)
    written = ["decode.json", "decode.md"] + (["decode.png"] if _plot(info, rows, args.out / "decode.png") else [])
    print(table)
    print(f"wrote {', '.join(f'{args.out}/{name}' for name in written)} in {info['seconds']:.0f} s")


if __name__ == "__main__":
    main()
