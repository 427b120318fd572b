"""bf16 vs float32 training: throughput and loss curves of each recipe's demo config, side by side in one run.

Each workload (the LM, wav2vec2 SSL, CTC from scratch, the codec without teachers) trains for ``--steps`` steps
twice from the same seed, with ``trainer.precision`` fp32 and bf16, each in its own ``seqwin train`` process.
Reported per workload: the training throughput (the recipe's own units per second, median over logged windows
after the first), the ratio bf16/fp32, and both loss curves with their largest relative gap. Writes
``precision_bench.json`` and ``precision_bench.png`` (loss curves) under ``--out``.

    python tools/bench_precision.py --data data --out bench_out/precision           # egs/mini stages 1-3 first
    python tools/bench_precision.py --data data --workloads lm asr --steps 40
    python tools/bench_precision.py --quick ...                                     # 2 steps each (smoke run)

bf16 is fast only where the CPU has bf16 instructions (AVX512-BF16 or AMX; ``native_bf16`` in the JSON): on an
AVX2-only CPU oneDNN emulates it, tens of times slower than float32 per matmul.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import cpu_name

ROOT = Path(__file__).resolve().parents[1]

# workload -> (seqwin train task, recipe, --set overrides given the data folder)
WORKLOADS = {
    "lm": ("lm", "recipes/lm/mini.yaml", lambda d: [f"data.dir={d}/text"]),
    "ssl": ("ssl", "recipes/wav2vec2/ssl/mini.yaml", lambda d: [f"data.manifest_dir={d}/mini/manifests"]),
    "asr": ("asr", "recipes/wav2vec2/asr/mini.yaml", lambda d: [f"data.manifest_dir={d}/mini/manifests"]),
    "codec": ("codec", "recipes/codec/mini.yaml", lambda d: [f"data.manifest_dir={d}/mini/manifests",
                                                              "model.variant=none", "teachers.transcripts=none",
                                                              "data.valid_utterances=0"]),
}


def train(workload: str, precision: str, args: argparse.Namespace) -> dict:
    task, recipe, data_sets = WORKLOADS[workload]
    out = args.out / "runs" / f"{workload}_{precision}"
    if out.exists():  # each case starts from scratch: a resumed run would time nothing
        subprocess.run(["rm", "-rf", str(out)], check=True)
    sets = [*data_sets(args.data), f"trainer.max_steps={args.steps}", f"trainer.precision={precision}",
            f"trainer.log_every={args.log_every}", f"trainer.checkpoint_every={args.steps}",
            "trainer.max_seconds=null", f"trainer.warmup_steps={min(args.steps - 1, 5)}", "trainer.valid_every=0"]
    cmd = [sys.executable, "-m", "seqwin.cli.main", "train", task, "--config", str(ROOT / recipe), str(out)]
    for kv in sets:
        cmd += ["--set", kv]
    start = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    rate_key = next(k for k in train_rows[0] if k.endswith("_per_s"))
    rates = [r[rate_key] for r in train_rows[1:]] or [train_rows[0][rate_key]]
    return {"unit": rate_key, "throughput": statistics.median(rates), "wall_s": wall,
            "steps": [r["step"] for r in train_rows], "loss": [r["loss"] for r in train_rows]}


def compare(fp32: dict, bf16: dict) -> dict:
    if "error" in fp32 or "error" in bf16:
        return {}
    gaps = [abs(b - a) / max(abs(a), 1e-12) for a, b in zip(fp32["loss"], bf16["loss"], strict=True)]
    return {"speed_ratio_bf16_over_fp32": bf16["throughput"] / fp32["throughput"],
            "max_rel_loss_gap": max(gaps), "final_loss_fp32": fp32["loss"][-1], "final_loss_bf16": bf16["loss"][-1]}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [w for w in results if all("loss" in results[w][p] for p in ("fp32", "bf16"))]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for precision, style in (("fp32", "-"), ("bf16", "--")):
            run = results[name][precision]
            ax.plot(run["steps"], run["loss"], style, label=f"{precision} ({run['throughput']:.3g} {run['unit']})")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data"), help="egs/mini's data folder (mini/, text/)")
    p.add_argument("--out", type=Path, default=Path("bench_out/precision"))
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true", help="2 steps per run, logged every step")
    args = p.parse_args()
    if args.quick:
        args.steps, args.log_every = 2, 1
    args.data = args.data.resolve()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from seqwin.cpu_bf16 import cpu_has_bf16_instructions

    report = {"machine": {"cpu": cpu_name(), "threads": args.threads, "native_bf16": cpu_has_bf16_instructions()},
              "steps": args.steps, "seed": 0, "workloads": {}}
    for workload in args.workloads:
        runs = {precision: train(workload, precision, args) for precision in ("fp32", "bf16")}
        report["workloads"][workload] = {**runs, **compare(runs["fp32"], runs["bf16"])}
        row = report["workloads"][workload]
        if "speed_ratio_bf16_over_fp32" in row:
            print(f"{workload:6s} fp32 {runs['fp32']['throughput']:10.4g} {runs['fp32']['unit']:16s} "
                  f"bf16/fp32 speed {row['speed_ratio_bf16_over_fp32']:.3f}  max loss gap "
                  f"{100 * row['max_rel_loss_gap']:.2f} %  final loss {row['final_loss_fp32']:.4f} / "
                  f"{row['final_loss_bf16']:.4f}", flush=True)
        else:
            print(f"{workload:6s} failed: {runs['fp32'].get('error') or runs['bf16'].get('error')}", flush=True)
    (args.out / "precision_bench.json").write_text(json.dumps(report, indent=1))
    plot(report["workloads"], args.out / "precision_bench.png")
    print(f"wrote {args.out / 'precision_bench.json'} and precision_bench.png")


if __name__ == "__main__":
    main()
