"""Codec quality over training: STOI, PESQ, pocketsphinx WER and mel distance of each validation, for one or more
``seqwin train codec`` runs side by side.

    python tools/codec_curves.py RUN [RUN ...] [--labels A B ...] [--title T] -o OUT_DIR

Reads each run's ``metrics.jsonl`` (the ``valid`` rows: ``seqwin train codec`` scores STOI and PESQ at every
validation, and pocketsphinx's WER with ``data.valid_asr: true``) and writes ``OUT_DIR/codec_curves.json`` and
``OUT_DIR/codec_curves.png`` (metric vs step, and vs training minutes). Minutes count from the run's first logged
training step, so they include the validations themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqwin.training.metrics import read_metrics  # noqa: E402

METRICS = ("stoi", "pesq", "wer_recon", "mel_distance")
TITLES = {"stoi": "STOI (higher is better)", "pesq": "PESQ wide band", "wer_recon": "pocketsphinx WER",
          "mel_distance": "log-mel distance"}


def run_curves(run: Path) -> dict:
    """The valid rows of ``run`` as columns: ``step``, ``minutes`` and every metric in :data:`METRICS` (None where
    a validation did not score it), plus the WER on the original audio when the recognizer ran."""
    train, valid = read_metrics(run, "train"), read_metrics(run, "valid")
    if not valid:
        raise SystemExit(f"codec_curves: {run}: no validation rows in metrics.jsonl (set trainer.valid_every)")
    start = train[0]["time"] if train else valid[0]["time"]
    curves: dict = {"run": str(run), "step": [r["step"] for r in valid],
                    "minutes": [round((r["time"] - start) / 60, 2) for r in valid]}
    for name in METRICS:
        curves[name] = [r.get(name) for r in valid]
    originals = [r["wer_original"] for r in valid if "wer_original" in r]
    curves["wer_original"] = originals[-1] if originals else None
    return curves


def plot(curves: list[dict], labels: list[str], title: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(METRICS), figsize=(4.2 * len(METRICS), 7), squeeze=False)
    for row, x_key in enumerate(("step", "minutes")):
        for col, name in enumerate(METRICS):
            ax = axes[row][col]
            for curve, label in zip(curves, labels, strict=True):
                points = [(x, y) for x, y in zip(curve[x_key], curve[name], strict=True) if y is not None]
                if points:
                    line, = ax.plot(*zip(*points, strict=True), "o-", ms=3, label=label)
                    if name == "wer_recon" and curve["wer_original"] is not None:
                        ax.axhline(curve["wer_original"], ls="--", color=line.get_color(), lw=1,
                                   label=f"{label}: original audio")
            ax.set(title=TITLES[name], xlabel="step" if x_key == "step" else "training minutes")
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="seqwin train codec output directories")
    parser.add_argument("--labels", nargs="+", help="one per run (default: the run directory names)")
    parser.add_argument("--title", default="codec validation metrics over training")
    parser.add_argument("-o", "--out", type=Path, required=True, help="folder for codec_curves.json/.png")
    args = parser.parse_args(argv)
    labels = args.labels or [run.name for run in args.runs]
    if len(labels) != len(args.runs):
        parser.error(f"--labels: {len(labels)} labels for {len(args.runs)} runs")
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            parser.error(f"{run}: no metrics.jsonl (not a seqwin train codec output directory)")
    curves = [run_curves(run) for run in args.runs]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "codec_curves.json").write_text(json.dumps(
        {"title": args.title, "runs": [{"label": lb, **c} for lb, c in zip(labels, curves, strict=True)]},
        indent=1))
    plot(curves, labels, args.title, args.out / "codec_curves.png")
    print(f"wrote {args.out / 'codec_curves.json'} and {args.out / 'codec_curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
