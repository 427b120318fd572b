"""Attention benchmark: seqwin vs dense SDPA, FlexAttention and lucidrains' local-attention, side by side.

``seqwin_pooled`` is local+pooled-global attention: the same causal window plus the means of the earlier blocks of
``--pool-size`` keys (``pooled_attention``), next to the plain window (``seqwin``) and routing.

Every case runs in its own subprocess so peak memory (the process high-water mark on CPU, the allocator's on
CUDA) belongs to that case alone. Writes ``results.json``, ``results.md`` (the README table) and ``attention.png``.

    python tools/bench_attention.py --out bench_out                 # CPU, the README table
    python tools/bench_attention.py --device cuda --dtype bf16 ...  # GPU
    python tools/bench_attention.py --quick [--device cuda]         # a small grid (see QUICK)

Needs torch alone (plus matplotlib for the plot): seqwin's attention core, FlexAttention and dense SDPA; the
lucidrains peers run where the optional ``bench`` extra is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from bench_common import cpu_name, reset_peak_rss, run_case, status_kb

SWA_METHODS = ["seqwin", "seqwin_pooled", "flex", "dense_masked", "dense_causal", "local_attention"]
ROUTING_METHODS = ["seqwin_routing", "seqwin_routing_causal", "seqwin_window", "dense", "lucidrains_routing"]

# --quick: a few cases per suite. Every case is a fresh process (a few seconds of start-up, plus compilation for
# flex), so on a GPU this is about 30 cases, meant to finish within 4 minutes; the CPU grid is smaller still.
QUICK = {
    "cuda": {"lengths": [4096, 16384], "windows": [1024], "window_sweep_length": 16384, "routing_lengths": [16384],
             "min_seconds": 0.25, "timeout": 60.0},
    "cpu": {"lengths": [1024], "windows": [], "window_sweep_length": 1024, "routing_lengths": [1024],
            "min_seconds": 0.1, "timeout": 60.0},
}


# ----------------------------------------------------------------------------------------------------------------
# Worker: one (method, shape, mode) case.


def _make_swa(method: str, n: int, window: int, pool_size: int, device: str, dtype, heads: int, dim: int):
    """Return ``fn(q, k, v) -> out`` for one method; q/k/v are (1, n, heads, dim)."""
    import torch
    import torch.nn.functional as F

    if method == "seqwin":
        from seqwin.attention import sliding_window_attention

        return lambda q, k, v: sliding_window_attention(q, k, v, window=(window, 0))
    if method == "seqwin_pooled":
        from seqwin.attention import pooled_attention

        return lambda q, k, v: pooled_attention(q, k, v, pool_size=pool_size, causal=True, window=(window, 0))
    if method == "dense_masked":
        i = torch.arange(n, device=device)
        mask = (i[None, :] <= i[:, None]) & (i[None, :] >= i[:, None] - window)
        return lambda q, k, v: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask).transpose(1, 2)
    if method == "dense_causal":  # full causal attention, no mask tensor: the fused kernel's best case
        return lambda q, k, v: F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)
    if method == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def band(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (kv_idx >= q_idx - window)

        block_mask = create_block_mask(band, None, None, n, n, device=device)
        compiled = torch.compile(flex_attention, dynamic=False)
        return lambda q, k, v: compiled(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                        block_mask=block_mask).transpose(1, 2)
    if method == "local_attention":
        from local_attention import LocalAttention

        attn = LocalAttention(window_size=window, causal=True, look_backward=1, look_forward=0,
                              autopad=True, exact_windowsize=True, use_rotary_pos_emb=False).to(device)
        return lambda q, k, v: attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    raise ValueError(method)


def _make_routing(method: str, n: int, clusters: int, device: str, heads: int, dim: int):
    """Return ``fn(q, k, v) -> (out, dropped_fraction)`` for the routing suite (non-causal unless named)."""
    import torch.nn.functional as F

    group = -(-n // clusters)
    if method in ("seqwin_routing", "seqwin_routing_causal"):
        from seqwin.attention.routing import KMeansRouter, routing_attention

        router = KMeansRouter(heads, dim, clusters).to(device)
        causal = method.endswith("causal")
        # Causal: each query sees the last `group` keys of its cluster, the same budget as a non-causal group.
        kw = {"causal": True, "window": group} if causal else {}

        def run(q, k, v):
            out, aux = routing_attention(q, k, v, router, **kw)
            return out, aux["dropped_fraction"]

        return run
    if method == "seqwin_window":  # the same number of keys per query, as a symmetric window
        from seqwin.attention import sliding_window_attention

        return lambda q, k, v: (sliding_window_attention(q, k, v, window=(group // 2, group // 2)), 0.0)
    if method == "dense":
        return lambda q, k, v: (F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2), 0.0)
    if method == "lucidrains_routing":
        from routing_transformer.routing_transformer import KmeansAttention

        attn = KmeansAttention(clusters, group, heads, dim).to(device)

        def run(q, k, v):
            out, _ = attn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            # Tokens that no cluster picked come back as all-zero rows (a tensor: read after timing, no sync here).
            dropped = (out.detach() == 0).all(-1).float().mean()
            return out.transpose(1, 2), dropped

        return run
    raise ValueError(method)


def _run_case(case: dict) -> dict:
    import torch

    device, mode = case["device"], case["mode"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[case["dtype"]]
    torch.manual_seed(0)
    n, h, d, window = case["n"], case["heads"], case["dim"], case["window"]
    q, k, v = (torch.randn(1, n, h, d, device=device, dtype=dtype, requires_grad=mode == "fwdbwd")
               for _ in range(3))
    dropped = {}
    if case["method"] in ROUTING_METHODS:
        routed = _make_routing(case["method"], n, case["clusters"], device, h, d)

        def fn(q, k, v):
            out, dropped["fraction"] = routed(q, k, v)
            return out
    else:
        fn = _make_swa(case["method"], n, window, case["pool_size"], device, dtype, h, d)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step():
        if mode == "fwd":
            with torch.no_grad():
                fn(q, k, v)
        else:
            out = fn(q, k, v)
            out.backward(torch.ones_like(out))
        sync()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    t0 = time.perf_counter()
    step()  # warm-up (and compilation for flex)
    first = time.perf_counter() - t0
    times = []
    while len(times) < 2 or (sum(times) < case["min_seconds"] and len(times) < 10):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (status_kb("VmHWM") - base) / 1024
    if case["method"] in ROUTING_METHODS:
        keys = n * (n if case["method"] == "dense" else -(-n // case["clusters"]))
    else:
        keys = sum(min(i, window) + 1 for i in range(n))  # visible keys summed over queries
        if case["method"] == "seqwin_pooled":  # plus the finished blocks before each query's own
            keys += sum(i // case["pool_size"] for i in range(n))
    flops = 4 * h * d * keys * (1.0 if mode == "fwd" else 3.5)  # backward ~2.5x forward, as FlashAttention counts
    best = min(times)
    result = {"ms": best * 1e3, "first_ms": first * 1e3, "peak_mb": peak_mb, "useful_gflops": flops / best / 1e9}
    if "fraction" in dropped:
        result["dropped"] = float(dropped["fraction"])  # read after timing: ours is a device tensor
    return result


# ----------------------------------------------------------------------------------------------------------------
# Driver.


def _matmul_gflops(device: str, dtype_name: str) -> float:
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    size = 4096 if device == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ a
    reps = 20 if device == "cuda" else 5
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * reps / (time.perf_counter() - t0) / 1e9


def _available(method: str) -> bool:
    module = {"local_attention": "local_attention", "lucidrains_routing": "routing_transformer"}.get(method)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_out"))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default fp32 on CPU, bf16 on GPU")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--window", type=int, default=256, help="causal look-back for the length sweep")
    p.add_argument("--pool-size", type=int, default=64, help="keys per pooled block (seqwin_pooled)")
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--windows", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048],
                   help="windows for the window sweep (at --window-sweep-length)")
    p.add_argument("--window-sweep-length", type=int, default=8192)
    p.add_argument("--methods", nargs="+", default=SWA_METHODS, choices=SWA_METHODS)
    p.add_argument("--suite", choices=["window", "routing", "all"], default="all")
    p.add_argument("--routing-lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    p.add_argument("--routing-heads", type=int, default=4)
    p.add_argument("--routing-methods", nargs="+", default=ROUTING_METHODS, choices=ROUTING_METHODS)
    p.add_argument("--max-ms", type=float, default=20000, help="stop growing N for a method past this time")
    p.add_argument("--timeout", type=float, default=300, help="seconds per case")
    p.add_argument("--min-seconds", type=float, default=1.0, help="time each case for at least this long")
    p.add_argument("--quick", action="store_true", help="a small grid per device (QUICK), replacing the grid flags")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
        print(json.dumps(_run_case(json.loads(args.worker))))
        return

    started = time.perf_counter()
    dtype = args.dtype or ("fp32" if args.device == "cpu" else "bf16")
    if args.quick:
        for name, value in QUICK[args.device].items():
            setattr(args, name, value)
    methods = [m for m in args.methods if _available(m)]
    routing_methods = [m for m in args.routing_methods if _available(m)]
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    info = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": dtype,
        "heads": args.heads, "routing_heads": args.routing_heads, "dim": args.dim, "pool_size": args.pool_size,
        "matmul_gflops": _matmul_gflops(args.device, dtype),
    }
    print(f"device: {info['device']}, {dtype} matmul {info['matmul_gflops']:.0f} GFLOP/s", flush=True)
    rows = []
    sweeps = []
    if args.suite in ("window", "all"):
        sweeps += [("length", n, args.window, methods, args.heads) for n in args.lengths]
        sweeps += [("window", args.window_sweep_length, w, methods, args.heads) for w in args.windows]
    if args.suite in ("routing", "all"):
        sweeps += [("routing", n, 0, routing_methods, args.routing_heads) for n in args.routing_lengths]
    too_slow: set[tuple[str, str, str]] = set()
    for sweep, n, window, sweep_methods, heads in sweeps:
        for mode in ("fwd", "fwdbwd"):
            for method in sweep_methods:
                key = (sweep, method, mode)
                # Routing uses c = sqrt(N) clusters, but 64 at both N=4096 and N=8192: one fixed reference point.
                clusters = 64 if n in (4096, 8192) else max(8, round(n**0.5))
                case = {"method": method, "mode": mode, "n": n, "window": window, "heads": heads,
                        "dim": args.dim, "device": args.device, "dtype": dtype, "min_seconds": args.min_seconds,
                        "clusters": clusters, "pool_size": args.pool_size}
                if key in too_slow:
                    res = {"skipped": f"slower than {args.max_ms:.0f} ms at a smaller size"}
                elif args.device == "cpu" and mode == "fwdbwd" and method == "flex":
                    res = {"skipped": "FlexAttention has no CPU backward"}
                else:
                    res = run_case(__file__, ["--worker", json.dumps(case)], args.timeout)
                    if res.get("ms", 0) > args.max_ms or "over" in res.get("skipped", ""):
                        too_slow.add(key)
                rows.append({"sweep": sweep, **case, **res})
                shown = f"{res['ms']:9.1f} ms {res['peak_mb']:8.0f} MB" if "ms" in res else res["skipped"]
                if "dropped" in res:
                    shown += f"  dropped {res['dropped']:.1%}"
                print(f"{sweep:6} N={n:6} W={window:5} {mode:6} {method:16} {shown}", flush=True)
    info["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    (args.out / "results.md").write_text(_table(info, rows))
    written = ["results.json", "results.md"]
    if _plot(info, rows, args.out / "attention.png"):
        written.append("attention.png")
    print(_table(info, rows))
    print(f"wrote {', '.join(f'{args.out}/{name}' for name in written)} in {info['seconds']:.0f} s")


def _table(info: dict, rows: list[dict]) -> str:
    """Markdown tables: each method's time, ratio to seqwin's (x), useful GFLOP/s, extra peak memory."""
    head = (f"{info['device']}, {info['dtype']}, D={info['dim']}, matmul ceiling {info['matmul_gflops']:.0f} "
            "GFLOP/s. Cells: time (x = time / seqwin's time), useful GFLOP/s, extra peak MB")
    parts = [head, ""]
    for title, sweeps, baseline in (
        (f"Sliding window (causal look-back), H={info['heads']}; seqwin_pooled adds the means of earlier blocks of "
         f"{info.get('pool_size', 64)} keys", ("length", "window"), "seqwin"),
        (f"Routing, H={info.get('routing_heads', 4)}, c=sqrt(N) clusters (64 at N=4096/8192); dropped = "
         "queries left with no output", ("routing",), "seqwin_routing"),
    ):
        sel = [r for r in rows if r["sweep"] in sweeps]
        if not sel:
            continue
        methods = list(dict.fromkeys(r["method"] for r in sel))
        parts += [f"**{title}**", "", "| sweep | N | window | mode | " + " | ".join(methods) + " |",
                  "|---|---|---|---|" + "---|" * len(methods)]
        groups: dict[tuple, dict] = {}
        for r in sel:
            groups.setdefault((r["sweep"], r["n"], r["window"], r["mode"]), {})[r["method"]] = r
        for (sweep, n, window, mode), by_method in groups.items():
            ours = by_method.get(baseline, {}).get("ms")
            cells = []
            for m in methods:
                r = by_method.get(m, {})
                if "ms" not in r:
                    cells.append("—")
                    continue
                ratio = f" ({r['ms'] / ours:.1f}x)" if ours and m != baseline else ""
                cell = f"{r['ms']:.1f} ms{ratio}, {r['useful_gflops']:.0f} GF, {r['peak_mb']:.0f} MB"
                if "dropped" in r:
                    cell += f", dropped {r['dropped']:.0%}"
                cells.append(cell)
            shown_window = window if sweep != "routing" else "-"
            parts.append(f"| {sweep} | {n} | {shown_window} | {mode} | " + " | ".join(cells) + " |")
        parts.append("")
    slope = _routing_slope(rows)
    if slope is not None:
        parts.append(f"seqwin_routing forward+backward time vs N, log-log slope: {slope:.2f}")
    return "\n".join(parts) + "\n"


def _routing_slope(rows: list[dict]) -> float | None:
    """Least-squares slope of log(time) against log(N)."""
    pts = [(math.log(r["n"]), math.log(r["ms"])) for r in rows
           if r["sweep"] == "routing" and r["method"] == "seqwin_routing" and r["mode"] == "fwdbwd" and "ms" in r]
    if len(pts) < 3:
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def _plot(info: dict, rows: list[dict], path: Path) -> bool:
    """Write the figure; ``False`` where matplotlib is not installed (a bare GPU image), the tables still hold
    every number."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no attention.png")
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("length", "fwd", "ms", "window: fwd time vs N"), ("length", "fwdbwd", "ms", "window: fwd+bwd time"),
              ("length", "fwdbwd", "peak_mb", "window: fwd+bwd extra peak MB"),
              ("window", "fwdbwd", "ms", "window sweep: fwd+bwd time vs window"),
              ("routing", "fwdbwd", "ms", "routing: fwd+bwd time vs N")]
    panels = [p for p in panels if any(r["sweep"] == p[0] for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for (sweep, mode, field, title), ax in zip(panels, axes[0], strict=True):
        for method in dict.fromkeys(r["method"] for r in rows if r["sweep"] == sweep):
            xkey = "window" if sweep == "window" else "n"
            pts = [(r[xkey], r[field]) for r in rows
                   if r["sweep"] == sweep and r["mode"] == mode and r["method"] == method and "ms" in r]
            if pts:
                ax.loglog(*zip(*pts, strict=True), marker="o", label=method)
        ax.set(title=title, xlabel="window" if sweep == "window" else "sequence length",
               ylabel="MB" if field == "peak_mb" else "ms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{info['device']} {info['dtype']} D={info['dim']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


if __name__ == "__main__":
    main()
