"""Learning curves (PNG) and the final table of a wav2vec2 run (egs/mini, egs/librispeech).

    python -m seqwin.recipes.wav2vec2.report --ssl EXP/ssl --asr EXP/asr --eval EXP/eval_test [...] \
        [--timings EXP/timings.tsv] [--png EXP/curves.png]

Every number printed is read from the run's files: ``metrics.jsonl`` of each recipe, ``summary.json`` of each
evaluation, and the stage wall times ``run.sh`` appends to ``timings.tsv`` (``stage<TAB>seconds``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seqwin.training.metrics import read_metrics


def plot_curves(ssl_dir: Path | None, asr_dir: Path | None, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if ssl_dir is not None:
        train = read_metrics(ssl_dir, "train")
        axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        task = _ssl_task(train)
        axes[0].plot([r["step"] for r in train], [r[task] for r in train], label=f"train {task}")
        valid = read_metrics(ssl_dir, "valid")
        axes[0].plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="dev loss")
    axes[0].set(title="wav2vec 2.0 SSL", xlabel="step", ylabel="loss per masked frame")
    if asr_dir is not None:
        train = read_metrics(asr_dir, "train")
        axes[1].plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
        valid = read_metrics(asr_dir, "valid")
        axes[1].plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="dev")
        axes[2].plot([r["step"] for r in valid], [r["cer"] for r in valid], "o-", label="dev CER")
        axes[2].plot([r["step"] for r in valid], [r["wer"] for r in valid], "s-", label="dev WER")
    axes[1].set(title="CTC fine-tuning", xlabel="step", ylabel="CTC loss per character")
    axes[2].set(title="greedy decoding, dev", xlabel="step", ylabel="%", ylim=(0, 105))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _ssl_task(rows: list[dict]) -> str:
    """The SSL run's task loss: ``contrastive`` (wav2vec 2.0) or ``units_ce`` (masked unit prediction)."""
    return "units_ce" if rows and "units_ce" in rows[0] else "contrastive"


def _first_last(rows: list[dict], key: str) -> tuple[float, float] | None:
    values = [r[key] for r in rows if key in r]
    return (values[0], values[-1]) if values else None


def table(ssl_dir: Path | None, asr_dir: Path | None, evals: list[Path], timings: Path | None) -> str:
    lines = []
    if ssl_dir is not None:
        train = read_metrics(ssl_dir, "train")
        task = _ssl_task(train)
        if fl := _first_last(train, task):
            loss = _first_last(train, "loss")
            lines.append(f"SSL  steps {train[-1]['step']}: train loss {loss[0]:.3f} -> {loss[1]:.3f} "
                         f"({task} {fl[0]:.3f} -> {fl[1]:.3f}, masked-frame accuracy {train[0]['accuracy']:.3f} -> "
                         f"{train[-1]['accuracy']:.3f})")
        valid = read_metrics(ssl_dir, "valid")
        if fl := _first_last(valid, "loss"):
            lines.append(f"SSL  dev loss {fl[0]:.3f} -> {fl[1]:.3f}, masked-frame accuracy {valid[-1]['accuracy']:.3f}")
    if asr_dir is not None:
        train = read_metrics(asr_dir, "train")
        if fl := _first_last(train, "loss"):
            lines.append(f"CTC  steps {train[-1]['step']}: train loss {fl[0]:.3f} -> {fl[1]:.3f}")
        valid = read_metrics(asr_dir, "valid")
        if valid:
            lines.append("CTC  dev CER by step: " + ", ".join(f"{r['step']}: {r['cer']:.1f}%" for r in valid))
    lines.append("")
    lines.append(f"{'evaluation':<20} {'split':<10} {'utts':>5} {'WER %':>7} {'CER %':>7}  {'decoding':<22} attention")
    for path in evals:
        summary = json.loads((path / "summary.json").read_text())
        for split, s in summary["splits"].items():
            lines.append(f"{path.name:<20} {split:<10} {s['num_utts']:>5} {s['wer']:>7.2f} {s['cer']:>7.2f}  "
                         f"{summary.get('decoding', 'greedy'):<22} {summary['attention']}")
    if timings is not None and timings.is_file():
        lines.append("")
        rows = [line.split("\t") for line in timings.read_text().splitlines() if "\t" in line]
        lines.append("wall time: " + ", ".join(f"{name} {float(sec):.0f} s" for name, sec in rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ssl", type=Path)
    parser.add_argument("--asr", type=Path)
    parser.add_argument("--eval", type=Path, nargs="*", default=[])
    parser.add_argument("--timings", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args(argv)
    missing = [p for p in args.eval if not (p / "summary.json").is_file()]
    if missing:
        print(f"report: error: no summary.json in {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    if args.png is not None:
        plot_curves(args.ssl, args.asr, args.png)
        print(f"learning curves: {args.png}")
    print(table(args.ssl, args.asr, args.eval, args.timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
