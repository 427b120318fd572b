"""wav2vec 2.0 CTC training-step benchmark: dense vs sliding-window vs routing encoders, by utterance length.

One case = one (shape, attention, length) training step -- forward, CTC loss, backward, AdamW update -- on one
utterance of random audio, in its own subprocess so its peak memory (process high-water mark above the level
after model creation on CPU, the allocator's peak on CUDA) is its own. Reports the best of ``--repeats`` steps
after a warm-up step: wall seconds and, on CPU, the process's CPU seconds (on a machine shared with other jobs
the CPU time of a ``--threads 1`` run is the stable number; wall time there measures the neighbours too).
Writes ``results.json``, ``results.md`` (README table) and ``wav2vec2.png``.

    python tools/bench_wav2vec2.py --out bench_w2v                       # tiny + base, 10/30/60/120 s, CPU
    python tools/bench_wav2vec2.py --shapes tiny --lengths 10 60 --out /tmp/b   # a subset
    python tools/bench_wav2vec2.py --device cuda --out bench_w2v_gpu

Shapes are the shipped presets: ``tiny`` (log-mel 40 ms frames, 6 x 256, window +-32 frames) and ``base``
(paper Base: conv frontend 20 ms frames, 12 x 768, window +-128 frames, as recipes/wav2vec2/*/base_*.yaml).
Routing heads use balanced groups of ``2 * window + 1`` tokens (the same keys per query as the window) and 16
clusters. Dropout and LayerDrop are off so every kind does the same work apart from attention.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_common import reset_peak_rss, run_case, status_kb

KINDS = ["dense", "sliding", "routing"]
WINDOWS = {"tiny": 32, "base": 128}


def _build(shape: str, kind: str):
    from seqwin.attention import AttentionSpec, LayerAttentionConfig
    from seqwin.models.wav2vec2.config import asr_presets
    from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_asr_model

    cfg = asr_presets()["tiny" if shape == "tiny" else "base_10h"]
    enc = cfg.model.encoder_config
    enc.dropout_p = enc.attn_dropout_p = enc.ffn_inner_dropout_p = enc.layer_drop_p = 0.0
    enc.max_seq_len = 1 << 16
    cfg.model.final_dropout_p = 0.0
    w = WINDOWS[shape]
    spec = {"dense": AttentionSpec(kind="full"), "sliding": AttentionSpec(kind="local", window=(w, w)),
            "routing": AttentionSpec(kind="routing", num_clusters=16, group_size=2 * w + 1)}[kind]
    cfg.attention = LayerAttentionConfig(default=spec)
    return create_seqwin_wav2vec2_asr_model(cfg)


def _run_case(case: dict) -> dict:
    import torch
    from fairseq2.nn import BatchLayout

    device = torch.device(case["device"])
    torch.manual_seed(0)
    model = _build(case["shape"], case["kind"]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    samples = int(case["seconds"] * 16000)
    wav = torch.randn(1, samples, device=device)
    layout = BatchLayout.of(wav, seq_lens=[samples])
    chars = max(1, int(case["seconds"] * 12))  # ~12 letters per second of speech
    targets = torch.randint(4, 30, (1, chars), device=device)
    target_layout = BatchLayout.of(targets, seq_lens=[chars])

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        loss = model(wav, layout, targets, target_layout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()

    step()  # warm-up: allocator, optimizer state
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss() * 1024
    times, cpu = [], []
    for _ in range(case["repeats"]):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else status_kb("VmHWM") * 1024
    frames = model.encoder_frontend.feature_extractor(wav, layout)[1].seq_lens[0]
    return {"step_s": min(times), "cpu_s": min(cpu), "peak_mb": (peak - base) / 2**20, "frames": int(frames),
            "threads": torch.get_num_threads()}


def _table(results: list[dict], metric: str) -> str:
    unit = "step s" if metric == "step_s" else "CPU s"
    lines = ["| shape | audio | frames | " + " | ".join(f"{k} {unit} / peak MB" for k in KINDS) +
             " | sliding speed-up | sliding MB per s |", "|" + "---|" * (5 + len(KINDS))]
    keyed = {(r["shape"], r["seconds"], r["kind"]): r for r in results}
    for shape in dict.fromkeys(r["shape"] for r in results):
        for seconds in sorted({r["seconds"] for r in results if r["shape"] == shape}):
            cells, frames = [], "-"
            for kind in KINDS:
                r = keyed.get((shape, seconds, kind))
                if r is None or "skipped" in r:
                    cells.append(r["skipped"] if r else "-")
                else:
                    cells.append(f"{r[metric]:.2f} / {r['peak_mb']:.0f}")
                    frames = r["frames"]
            dense, sliding = keyed.get((shape, seconds, "dense")), keyed.get((shape, seconds, "sliding"))
            ok = dense and sliding and metric in dense and metric in sliding
            speed = f"{dense[metric] / sliding[metric]:.2f}x" if ok else "-"
            per_s = f"{sliding['peak_mb'] / seconds:.1f}" if sliding and "peak_mb" in sliding else "-"
            lines.append(f"| {shape} | {seconds} s | {frames} | " + " | ".join(cells) + f" | {speed} | {per_s} |")
    return "\n".join(lines)


def _plot(results: list[dict], png: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in results))
    fig, axes = plt.subplots(len(shapes), 2, figsize=(11, 3.8 * len(shapes)), squeeze=False)
    for row, shape in zip(axes, shapes, strict=True):
        for kind in KINDS:
            pts = sorted((r["seconds"], r) for r in results
                         if r["shape"] == shape and r["kind"] == kind and metric in r)
            if pts:
                row[0].plot([s for s, _ in pts], [r[metric] for _, r in pts], "o-", label=kind)
                row[1].plot([s for s, _ in pts], [r["peak_mb"] for _, r in pts], "o-", label=kind)
        row[0].set(title=f"{shape}: training step", xlabel="utterance (s)",
                   ylabel="wall seconds" if metric == "step_s" else "CPU seconds")
        row[1].set(title=f"{shape}: peak memory above the model", xlabel="utterance (s)", ylabel="MB")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_w2v"))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--shapes", nargs="+", default=["tiny", "base"], choices=list(WINDOWS))
    p.add_argument("--kinds", nargs="+", default=KINDS, choices=KINDS)
    p.add_argument("--lengths", type=float, nargs="+", default=[10, 30, 60, 120], help="seconds of audio")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900, help="per case; a slower case is reported as skipped")
    p.add_argument("--threads", type=int, help="torch threads per case (default: torch's choice)")
    p.add_argument("--metric", choices=["step_s", "cpu_s"], default="step_s",
                   help="what the table and plot compare: wall seconds or CPU seconds per step")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(_run_case(json.loads(args.worker))))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    worker_flags = ["--threads", str(args.threads)] if args.threads else []
    for shape in args.shapes:
        for seconds in args.lengths:
            for kind in args.kinds:
                case = {"shape": shape, "kind": kind, "seconds": seconds, "device": args.device,
                        "repeats": args.repeats}
                result = {**case, **run_case(__file__, ["--worker", json.dumps(case), *worker_flags], args.timeout)}
                results.append(result)
                print(json.dumps(result), flush=True)
                (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(_table(results, args.metric) + "\n")
    _plot(results, args.out / "wav2vec2.png", args.metric)
    print(_table(results, args.metric))


if __name__ == "__main__":
    main()
