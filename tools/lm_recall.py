"""Associative recall at a distance: where a sliding window cannot see, which attention still finds the answer?

Each training sequence is filler tokens with ``--pairs`` key/value pairs written into it, each key written once
and read again later as ``k v``: at the read, the model must predict ``v`` from the key's earlier write, ``d``
tokens back. A write is one token naming both key and value (``keys x values`` extra ids; the slot after it stays
filler), so a read is one content lookup. ``--no-fused`` writes ``k v`` instead, which needs a two-step induction
circuit (previous-token head, then match) that tiny models at CPU step counts do not form even with full
attention. Only the reads are scored (the rest is random), so chance is 1 / ``--values``. A local
window of ``W`` tokens can answer when ``d < W`` and nothing beyond; the distances here reach ``N / W`` windows.

The same tiny causal LM (``seqwin.models.lm``) is trained once per attention layout, from the same seed and data:

    full      every head sees the whole past
    local     every head a sliding window of W tokens (the left side; causal)
    routing   every head a routing head (online k-means clusters, the Routing Transformer's content attention)
    mixed     half local heads, half routing heads in every layer
    pooled    half local heads, half pooled heads (the means of W-token blocks of the past) in every layer

A curriculum widens the largest distance trained on from ``W`` to ``N`` over the first ``--ramp`` of the steps
(an induction circuit forms first where a window sees both ends). Reported per layout: read accuracy on held-out
sequences in distance bins of whole windows, and the time of one training step (forward + backward) at
``--cost-len`` tokens relative to full attention. Writes ``lm_recall.json`` and ``lm_recall.png`` under ``--out``.

    python tools/lm_recall.py --out bench_out/lm_recall     # defaults: N 256, W 16, 8 heads, 4000 steps (~2 h)
    python tools/lm_recall.py --layouts local mixed --steps 200 --out /tmp/recall   # a quick look
    python tools/lm_recall.py --merge A/lm_recall.json B/lm_recall.json --out AB  # layouts trained in parallel
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ("full", "local", "routing", "mixed", "pooled")


class RecallTask:
    """Token ids: ``[0, filler)`` filler, then ``keys`` keys, then ``values`` values."""

    def __init__(self, seq_len: int, pairs: int, keys: int, values: int, filler: int, fused: bool = False) -> None:
        if keys < pairs:
            raise ValueError(f"keys ({keys}) must be >= pairs ({pairs}): a key is written once per sequence")
        if 4 * pairs > seq_len:
            raise ValueError(f"{pairs} pairs need {4 * pairs} of the {seq_len} positions")
        self.seq_len, self.pairs, self.keys, self.values, self.filler = seq_len, pairs, keys, values, filler
        self.fused = fused
        self.vocab_size = filler + keys + values + (keys * values if fused else 0)

    def sample(self, gen: torch.Generator, batch: int, max_distance: int) -> tuple[Tensor, Tensor]:
        """``tokens`` (b, n + 1) and ``distance`` (b, n): at each read position (the key's second occurrence) the
        distance back to its write, whose next token is the target; 0 elsewhere. Pairs that find no free slots
        after a few tries are left out (the generator never overlaps two pairs), so a row may hold fewer."""
        n = self.seq_len
        max_distance = max(2, min(max_distance, n - 2))
        tokens = torch.randint(0, self.filler, (batch, n + 1), generator=gen)
        distance = torch.zeros(batch, n, dtype=torch.long)
        for row in range(batch):
            free = torch.ones(n + 1, dtype=torch.bool)
            keys = self.filler + torch.randperm(self.keys, generator=gen)[: self.pairs]
            values = self.filler + self.keys + torch.randint(0, self.values, (self.pairs,), generator=gen)
            for key, value in zip(keys.tolist(), values.tolist(), strict=True):
                for _ in range(8):
                    d = int(torch.randint(2, max_distance + 1, (1,), generator=gen))
                    write = int(torch.randint(0, n - d, (1,), generator=gen))  # read + 1 = write + d + 1 <= n
                    read = write + d
                    if free[[write, write + 1, read, read + 1]].all():
                        free[[write, write + 1, read, read + 1]] = False
                        tokens[row, read], tokens[row, read + 1] = key, value
                        if self.fused:  # one token says both; write + 1 stays filler
                            tokens[row, write] = self.filler + self.keys + self.values + (
                                (key - self.filler) * self.values + value - self.filler - self.keys)
                        else:
                            tokens[row, write], tokens[row, write + 1] = key, value
                        distance[row, read] = d
                        break
        return tokens, distance


def attention_spec(layout: str, window: int, heads: int, clusters: int, shared_qk: bool = False):
    """Every layer's causal :class:`~seqwin.attention.AttentionSpec` for ``layout``."""
    from seqwin.attention import AttentionSpec

    local = {"window": (window - 1, 0)}
    routing = {"num_clusters": clusters, "decay": 0.99, "shared_qk": shared_qk}
    half = heads // 2
    spec = {
        "full": {"kind": "full"},
        "local": {"kind": "local", **local},
        "routing": {"kind": "routing", **routing},
        "mixed": {"kind": "mixed", "local_heads": half, "routing_heads": heads - half, **local, **routing},
        "pooled": {"kind": "mixed", "local_heads": half, "pooled_heads": heads - half, **local, "pool_size": window},
    }[layout]
    return AttentionSpec(causal=True, **spec)


def build_model(layout: str, task: RecallTask, args: argparse.Namespace) -> torch.nn.Module:
    from seqwin.attention import LayerAttentionConfig
    from seqwin.models.lm.config import LMConfig
    from seqwin.models.lm.factory import create_lm_model

    spec = attention_spec(layout, args.window, args.heads, args.clusters, args.shared_qk)
    return create_lm_model(LMConfig(
        vocab_size=task.vocab_size, model_dim=args.dim, num_layers=args.layers, num_heads=args.heads,
        ffn_inner_dim=4 * args.dim, max_seq_len=max(args.seq_len, args.cost_len) + 1,
        attention=LayerAttentionConfig(default=spec)))


def read_loss(model: torch.nn.Module, tokens: Tensor, distance: Tensor) -> tuple[Tensor, Tensor]:
    """Cross entropy over the read positions (+ routing commitment), and whether each read was right."""
    from fairseq2.nn import BatchLayout

    from seqwin.attention.fairseq2.mixed_sdpa import collect_aux_losses

    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    reads = distance > 0
    logits = model(inputs, BatchLayout.of(inputs))[reads].float()
    loss = F.cross_entropy(logits, targets[reads])
    aux = collect_aux_losses(model)
    return (loss if aux is None else loss + aux), logits.argmax(-1) == targets[reads]


def train(layout: str, task: RecallTask, args: argparse.Namespace) -> tuple[torch.nn.Module, list[dict]]:
    torch.manual_seed(args.seed)
    model = build_model(layout, task, args)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(args.seed)
    warmup, ramp_steps, log, start = max(1, args.steps // 50), max(1, int(args.ramp * args.steps)), [], time.monotonic()
    for step in range(1, args.steps + 1):
        lr_scale = min(1.0, step / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))
        for group in opt.param_groups:
            group["lr"] = args.lr * lr_scale
        reach = min(args.seq_len - 2, args.window + (args.seq_len - args.window) * min(1.0, step / ramp_steps))
        tokens, distance = task.sample(gen, args.batch, int(reach))
        model.train()
        loss, right = read_loss(model, tokens, distance)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.log_every == 0 or step == args.steps:
            row = {"step": step, "loss": loss.item(), "accuracy": right.float().mean().item(),
                   "max_distance": int(reach), "seconds": time.monotonic() - start}
            log.append(row)
            print(f"  {layout:8s} step {step}/{args.steps} loss {row['loss']:.3f} read accuracy "
                  f"{row['accuracy']:.2f} (distances <= {row['max_distance']}) {row['seconds']:.0f} s", flush=True)
    return model, log


def distance_bins(window: int, seq_len: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` distance bins: inside the window, then each doubling of whole windows up to the length."""
    bins, lo = [(2, window)], window
    while lo < seq_len:
        hi = min(2 * lo, seq_len)
        bins.append((lo, hi))
        lo = hi
    return bins


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: RecallTask, args: argparse.Namespace) -> list[dict]:
    model.eval()
    gen = torch.Generator().manual_seed(10_000 + args.seed)  # held out: never a training batch
    hits: dict[tuple[int, int], list[int]] = {b: [0, 0] for b in distance_bins(args.window, args.seq_len)}
    for _ in range(args.eval_batches):
        tokens, distance = task.sample(gen, args.batch, args.seq_len)
        _, right = read_loss(model, tokens, distance)
        for d, ok in zip(distance[distance > 0].tolist(), right.tolist(), strict=True):
            b = next(b for b in hits if b[0] <= d < b[1] or (b[1] == args.seq_len and d == b[1]))
            hits[b][0] += int(ok)
            hits[b][1] += 1
    return [{"distance": list(b), "reads": n, "accuracy": ok / max(n, 1)} for b, (ok, n) in hits.items()]


def step_seconds(layout: str, task: RecallTask, args: argparse.Namespace) -> float:
    """Median time of a training step (forward + backward) on one sequence of ``--cost-len`` tokens."""
    model = build_model(layout, task, args)
    tokens = torch.randint(0, task.vocab_size, (1, args.cost_len + 1))
    distance = torch.zeros(1, args.cost_len, dtype=torch.long)
    distance[0, -1] = 1
    times = []
    for _ in range(4):
        start = time.perf_counter()
        loss, _ = read_loss(model, tokens, distance)
        loss.backward()
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[1]


SETTINGS = {  # the report's sections of settings: the arguments each one records
    "task": ("seq_len", "window", "pairs", "keys", "values", "filler", "fused"),
    "model": ("dim", "layers", "heads", "clusters", "shared_qk"),
    "training": ("steps", "batch", "lr", "ramp", "seed"),
}


def load_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {path}: not a readable lm_recall.json ({err})") from None
    if not isinstance(report, dict) or not isinstance(report.get("layouts"), dict):
        raise SystemExit(f"error: {path}: not an lm_recall.json (no 'layouts')")
    return report


def merge_reports(reports: list[dict], paths: list[Path]) -> dict:
    """One report with the layouts of several, which must agree on the task, the model and the training."""
    merged = {section: reports[0].get(section) for section in SETTINGS}
    merged["layouts"] = {}
    for report, path in zip(reports, paths, strict=True):
        for section in SETTINGS:
            if report.get(section) != merged[section]:
                raise SystemExit(f"error: {path}: its {section} settings differ from {paths[0]}'s: "
                                 f"{report.get(section)} vs {merged[section]}")
        for layout, row in report["layouts"].items():
            if layout in merged["layouts"]:
                raise SystemExit(f"error: {path}: layout {layout!r} is in two of the merged reports")
            merged["layouts"][layout] = row
    return merged


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = report["task"]["window"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for layout, row in report["layouts"].items():
        xs = [math.sqrt(max(b["distance"][0], 1) * b["distance"][1]) / window for b in row["accuracy_by_distance"]]
        cost = f", step x{row['step_time_vs_full']:.2f}" if "step_time_vs_full" in row else ""
        ax.plot(xs, [100 * b["accuracy"] for b in row["accuracy_by_distance"]], "o-", label=f"{layout}{cost}")
    ax.axhline(100 / report["task"]["values"], color="gray", ls=":", label="chance")
    ax.axvline(1.0, color="gray", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("distance from the write to the read (windows of W tokens)")
    ax.set_ylabel("read accuracy %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench_out/lm_recall"))
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--window", type=int, default=16, help="local window W (tokens, the query's own included)")
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--keys", type=int, default=64)
    p.add_argument("--values", type=int, default=16)
    p.add_argument("--filler", type=int, default=64)
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="write each pair as one token that names key and value (--no-fused: `k v`)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--clusters", type=int, default=8)
    p.add_argument("--shared-qk", action=argparse.BooleanOptionalAction, default=True,
                   help="routing heads use their queries as keys (shared QK; --no-shared-qk: separate keys)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ramp", type=float, default=0.3, help="fraction of the steps over which distances widen")
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--cost-len", type=int, default=8192,
                   help="sequence length of the step-time comparison (0: none, e.g. before a --merge)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                   help="combine the lm_recall.json of runs that trained different layouts with the same settings "
                        "(e.g. one process per core), timing every layout's step here, side by side")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_common import cpu_name

    if args.merge:
        report = merge_reports([load_report(path) for path in args.merge], args.merge)
        for section in SETTINGS:
            vars(args).update(report[section])
    else:
        report = {section: {k: getattr(args, k) for k in names} for section, names in SETTINGS.items()}
        report["layouts"] = {}
    report["machine"] = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "dtype": "float32"}
    task = RecallTask(args.seq_len, args.pairs, args.keys, args.values, args.filler, args.fused)
    args.out.mkdir(parents=True, exist_ok=True)
    for layout in [] if args.merge else args.layouts:
        model, log = train(layout, task, args)
        report["layouts"][layout] = {"accuracy_by_distance": evaluate(model, task, args), "train_log": log}
        accs = " ".join(f"{b['distance'][0]}-{b['distance'][1]}: {100 * b['accuracy']:.0f}%"
                        for b in report["layouts"][layout]["accuracy_by_distance"])
        print(f"{layout}: {accs}", flush=True)
    report["cost_len"] = args.cost_len
    for layout, row in report["layouts"].items():  # one after another in this process: comparable times
        row.pop("step_time_vs_full", None)
        row.pop("step_seconds_at_cost_len", None)
        if args.cost_len > 0:
            row["step_seconds_at_cost_len"] = step_seconds(layout, task, args)
    if "full" in report["layouts"] and args.cost_len > 0:
        full = report["layouts"]["full"]["step_seconds_at_cost_len"]
        for row in report["layouts"].values():
            row["step_time_vs_full"] = row["step_seconds_at_cost_len"] / full
    (args.out / "lm_recall.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.out / "lm_recall.png")
    print(f"wrote {args.out / 'lm_recall.json'} and lm_recall.png ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
