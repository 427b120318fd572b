"""CPU sliding-window attention over speech-shaped batches: many short padded rows, as a CTC or codec batch has.

One case is one batch of about ``--tokens`` frames: ``B = tokens // N`` rows of up to ``N`` frames (lengths spread
over [3N/4, N]), a symmetric window ``+-window``, forward and backward, in fp32 or bf16. Methods, side by side:

- ``seqwin``: ``sliding_window_attention`` as the models call it; rows shorter than two key spans are attended
  whole under one mask (``cpu_rows.MaskedRows``), longer ones banded; bf16 runs the kernel in float32 where a
  gradient is wanted, and on CPUs without AMX always (``cpu_band.attend_in_fp32``);
- ``seqwin_band``: the same with the banded path forced at every length;
- ``seqwin_bf16_kernel`` (bf16 cases): the same with the kernel forced to run in bf16;
- ``dense_sdpa``: torch's ``scaled_dot_product_attention`` under the same boolean ``(B, 1, N, N)`` mask, built in
  the call (from the reference's ``sliding_window_mask``) as each new batch needs it.

Each case runs in its own subprocess; the best of ``--repeats`` timed calls after a warm-up counts. Writes
``results.json``, ``results.md`` and ``short_rows.png`` under ``--out``.

    python tools/bench_short_rows.py --out bench_out/short_rows --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_common import cpu_name, run_case

METHODS = ["seqwin", "seqwin_band", "seqwin_bf16_kernel", "dense_sdpa"]


def _run_case(case: dict) -> dict:
    import torch
    import torch.nn.functional as F

    import seqwin.attention.sliding_window.cpu_band as cpu_band
    from seqwin.attention import sliding_window_attention
    from seqwin.attention.reference import sliding_window_mask

    torch.set_num_threads(case["threads"])
    n, w, method = case["n"], case["window"], case["method"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[case["dtype"]]
    b = max(1, case["tokens"] // n)
    lens = [n - (i * 7919) % (n // 4 + 1) for i in range(b)]
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, n, case["heads"], case["dim"], dtype=dtype) for _ in range(3))
    if method == "seqwin_band":
        cpu_band._MASKED_ROWS_SPANS = 0
    if method == "seqwin_bf16_kernel":
        cpu_band._HALF_IN_FP32 = cpu_band._HALF_IN_FP32_FOR_GRAD = False
    if method == "dense_sdpa":
        def attend(q, k, v):  # every batch has its own lengths, so its mask is part of the call
            mask = sliding_window_mask(b, n, n, (w, w), seq_lens=torch.tensor(lens))
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=mask)
            return out.transpose(1, 2)
    else:
        def attend(q, k, v):
            return sliding_window_attention(q, k, v, window=(w, w), seq_lens=lens)

    def step() -> float:
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        start = time.perf_counter()
        out = attend(qq, kk, vv)
        out.backward(torch.ones_like(out))
        return time.perf_counter() - start

    step()
    best = min(step() for _ in range(case["repeats"]))
    return {**case, "batch": b, "ms": best * 1e3}


def _table(rows: list[dict], info: dict) -> str:
    lines = [f"{info['cpu']}, torch {info['torch']}, {info['threads']} thread(s); batches of ~{info['tokens']} "
             f"frames, window +-{info['window']}, H={info['heads']}, D={info['dim']}, forward+backward "
             "(ms; ratio = method / seqwin)", "",
             "| dtype | N (rows) | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 2) + "|"]
    for dtype in info["dtypes"]:
        for n in info["lengths"]:
            cell = {r["method"]: r for r in rows if r["dtype"] == dtype and r["n"] == n}
            base = cell.get("seqwin", {}).get("ms")
            cells = []
            for m in METHODS:
                r = cell.get(m)
                if r is None or "ms" not in r:
                    cells.append("—" if r is None else r.get("skipped", "—"))
                else:
                    cells.append(f"{r['ms']:.2f}" + (f" ({r['ms'] / base:.2f}x)" if base and m != "seqwin" else ""))
            batch = next((r["batch"] for r in cell.values() if "batch" in r), "?")
            lines.append(f"| {dtype} | {n} ({batch}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], info: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(info["dtypes"]), figsize=(6 * len(info["dtypes"]), 4), squeeze=False)
    for ax, dtype in zip(axes[0], info["dtypes"], strict=True):
        for m in METHODS:
            pts = [(r["n"], r["ms"]) for r in rows if r["dtype"] == dtype and r["method"] == m and "ms" in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        ax.set(xscale="log", xlabel="row length N (frames)", ylabel="fwd+bwd ms per batch", title=dtype)
        ax.legend()
    fig.suptitle(f"window +-{info['window']}, ~{info['tokens']} frames per batch, {info['cpu']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_out/short_rows"))
    p.add_argument("--lengths", type=int, nargs="+", default=[48, 64, 96, 128, 192, 256, 384, 640])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--tokens", type=int, default=640, help="frames per batch (a 25 s CTC batch at 40 ms frames)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_run_case(json.loads(args.worker))))
        return

    import torch

    info = {"cpu": cpu_name(), "torch": torch.__version__, **{k: v for k, v in vars(args).items() if k != "out"}}
    info["out"] = str(args.out)
    rows = []
    for dtype in args.dtypes:
        for n in args.lengths:
            for method in METHODS:
                if method == "seqwin_bf16_kernel" and dtype != "bf16":
                    continue
                case = {"method": method, "dtype": dtype, "n": n, "window": args.window, "tokens": args.tokens,
                        "heads": args.heads, "dim": args.dim, "threads": args.threads, "repeats": args.repeats}
                r = run_case(__file__, ["--worker", json.dumps(case)], timeout=300)
                rows.append(r if "ms" in r else {**case, **r})
                print(f"{dtype} N={n} {method}: " + (f"{r['ms']:.2f} ms" if "ms" in r else str(r)), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    (args.out / "results.md").write_text(_table(rows, info))
    _plot(rows, info, args.out / "short_rows.png")
    print(f"wrote {args.out}/results.json, results.md, short_rows.png")


if __name__ == "__main__":
    main()
