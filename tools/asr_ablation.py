"""What makes the CTC model generalize: SSL init vs scratch, English vs multilingual SSL, augmentation, extra voices.

Every variant fine-tunes the demo's CTC recipe (recipes/wav2vec2/asr/mini.yaml, same steps and schedule) and is
scored greedy on the mini test split, its pitch/tempo-shifted copies and a synthetic voice held out of training:

    scratch          CTC from random init
    ssl_en           CTC from wav2vec 2.0's contrastive SSL on the mini corpus
    ssl_units        CTC from masked unit prediction (SSL loss.kind units, HuBERT's first iteration) on the mini corpus
    ssl_multi        CTC from SSL on the mini corpus + the Asterisk prompts in es/fr/it/ru (unlabeled)
    ssl_units_multi  ssl_units with the SSL run (same steps) on the mini corpus + the prompts in es/fr/it/ru
    ssl_en_aug       ssl_en with mel-axis warping (freq_warp 0.1) and white noise (p 0.5, SNR 10-30 dB) in CTC
    ssl_en_voices    ssl_en with CTC on the mini corpus + the festival/flite voices' training split
    ssl_mix          CTC (as scratch) from a longer SSL run (2000 steps) on the mini corpus + the voices' audio
    mix_aug_5k       CTC from scratch on the mini corpus (3x) + the voices, augmented, 5000 steps
    ssl_mix_aug_5k   mix_aug_5k from the ssl_mix SSL model
    ssl_units_mix_aug_5k   mix_aug_5k from units SSL (2000 steps) on the mini corpus + the voices' audio
    ssl_units_mix8_aug_5k  ssl_units_mix_aug_5k with the mini split listed 8 times instead of 3
    ssl_units_mix8_5k      ssl_units_mix8_aug_5k without the augmentation
    ssl_units_mix8_warp_5k   ssl_units_mix8_5k with mel-axis warping only
    ssl_units_mix8_noise_5k  ssl_units_mix8_5k with white noise only
    scratch_10min    scratch with 10 minutes of the mini train split labeled (wav2vec 2.0's low-resource setting)
    ssl_mix_10min    ssl_mix with the same 10 labeled minutes
    ssl_mix_10min_frozen   ssl_mix_10min with the encoder frozen for the first 1000 steps (only the CTC head learns)
    ssl_mix_10min_lr1e-3   ssl_mix_10min at a quarter of the recipe's learning rate

Runs live under ``--out/runs`` (``ssl/<SSL run>/seed<S>``, ``ctc/<variant>/seed<S>``, ``eval/<variant>/seed<S>``);
one that finished (its model.pt or summary.json exists) is not run again, so an interrupted sweep resumes. Up to
``--jobs`` trainings run at once, each with cpu_count/jobs threads. Writes ``asr_ablation.json`` (per variant and
split: CER/WER of every seed, mean, min, max) and ``asr_ablation.png`` (mean CER, min-max bars) under ``--out``.

    seqwin prepare shifted data/mini data/mini_shifted                         # after egs/mini stages 1-3
    seqwin prepare multilingual data/multilingual
    seqwin prepare voices --mini data/mini --text data/text data/voices
    python tools/asr_ablation.py --data data --seeds 0 1 --all-seeds scratch ssl_en
    python tools/asr_ablation.py --variants scratch ssl_en --ctc-steps 20 --ssl-steps 10 ...   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench_common import cpu_name

from seqwin.data.manifest import read_labels, read_manifest, write_manifest
from seqwin.data.mini import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
SSL_RECIPE = "recipes/wav2vec2/ssl/mini.yaml"
CTC_RECIPE = "recipes/wav2vec2/asr/mini.yaml"
SHIFTS = ("pitch-3", "pitch+3", "tempo0.9", "tempo1.1")


@dataclass(frozen=True)
class Variant:
    ssl: str | None  # SSL run (a key of SSL_RUNS) or None for random init
    ctc_data: str = "mini"  # CTC training corpus ("mini", "voices", "voices_up3", "voices_up8")
    sets: tuple[str, ...] = ()  # extra --set overrides of the CTC recipe


# SSL run -> (corpus, extra --set overrides of the SSL recipe)
CONTRASTIVE, UNITS = ("loss.kind=contrastive",), ("loss.kind=units",)
SSL_LONG = ("trainer.max_steps=2000", "trainer.warmup_steps=200")
SSL_RUNS = {
    "en": ("mini", CONTRASTIVE),
    "en_units": ("mini", UNITS),
    "multi": ("multi", CONTRASTIVE),
    "multi_units": ("multi", UNITS),
    "mix": ("voices", CONTRASTIVE + SSL_LONG),
    "mix_units": ("voices", UNITS + SSL_LONG),
}
AUGMENT = ("model.config.frontend.freq_warp=0.1", "model.config.frontend.noise_p=0.5")
LONG = ("trainer.max_steps=5000", "trainer.warmup_steps=150")
VARIANTS = {
    "scratch": Variant(ssl=None),
    "ssl_en": Variant(ssl="en"),
    "ssl_units": Variant(ssl="en_units"),
    "ssl_multi": Variant(ssl="multi"),
    "ssl_units_multi": Variant(ssl="multi_units"),
    "ssl_en_aug": Variant(ssl="en", sets=AUGMENT),
    "ssl_en_voices": Variant(ssl="en", ctc_data="voices"),
    "ssl_mix": Variant(ssl="mix"),
    "mix_aug_5k": Variant(ssl=None, ctc_data="voices_up3", sets=AUGMENT + LONG),
    "ssl_mix_aug_5k": Variant(ssl="mix", ctc_data="voices_up3", sets=AUGMENT + LONG),
    "ssl_units_mix_aug_5k": Variant(ssl="mix_units", ctc_data="voices_up3", sets=AUGMENT + LONG),
    "ssl_units_mix8_aug_5k": Variant(ssl="mix_units", ctc_data="voices_up8", sets=AUGMENT + LONG),
    "ssl_units_mix8_5k": Variant(ssl="mix_units", ctc_data="voices_up8", sets=LONG),
    "ssl_units_mix8_warp_5k": Variant(ssl="mix_units", ctc_data="voices_up8", sets=AUGMENT[:1] + LONG),
    "ssl_units_mix8_noise_5k": Variant(ssl="mix_units", ctc_data="voices_up8", sets=AUGMENT[1:] + LONG),
    "scratch_10min": Variant(ssl=None, ctc_data="mini_10min"),
    "ssl_mix_10min": Variant(ssl="mix", ctc_data="mini_10min"),
    "ssl_mix_10min_frozen": Variant(ssl="mix", ctc_data="mini_10min", sets=("finetune.freeze_encoder_steps=1000",)),
    "ssl_mix_10min_lr1e-3": Variant(ssl="mix", ctc_data="mini_10min", sets=("trainer.lr=0.001",)),
}


def merged(out: Path, name: str, splits: dict[str, list[Path | str]]) -> Path:
    """A manifest folder joining several corpora (``seqwin prepare merge``; ``"A.tsv:3"`` lists A three times),
    made once."""
    folder = out / "data" / name
    if not (folder / "train.tsv").is_file():
        cmd = [sys.executable, "-m", "seqwin.cli.main", "prepare", "merge", str(folder)]
        for split, tsvs in splits.items():
            cmd += ["--split", split, *map(str, tsvs)]
        subprocess.run(cmd, check=True, cwd=ROOT)
    return folder


def labeled_subset(out: Path, mini: Path, minutes: float, seed: int = 0) -> Path:
    """Utterances of the mini train split, in a seeded random order, until ``minutes`` of audio, with the mini dev
    split and letter dictionary (so the CTC output layer is the full corpus's), made once."""
    folder = out / "data" / f"mini_{minutes:g}min"
    if not (folder / "train.tsv").is_file():
        root, entries = read_manifest(mini / "train.tsv")
        words = read_labels(mini / "train.wrd", len(entries))
        rows, samples = [], 0
        for i in random.Random(seed).sample(range(len(entries)), len(entries)):
            if samples >= minutes * 60 * SAMPLE_RATE:
                break
            rows.append((entries[i].rel_path, entries[i].num_samples, words[i]))
            samples += entries[i].num_samples
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("dev.tsv", "dev.wrd", "dev.ltr", "dict.ltr.txt"):
            shutil.copyfile(mini / name, folder / name)
        write_manifest(folder, "train", root, rows)  # last: train.tsv marks the folder complete
    return folder


def corpora(data: Path, out: Path) -> tuple[dict[str, Callable[[], Path]], dict[str, Callable[[], Path]]]:
    """Manifest folders: SSL corpora and CTC corpora by name, each made when a variant asks for it. Validation is
    always the mini dev split."""
    mini = data / "mini" / "manifests"
    dev = [mini / "dev.tsv"]
    multi, voices = data / "multilingual" / "manifests" / "train.tsv", data / "voices" / "manifests" / "train.tsv"
    def with_voices() -> Path:  # labeled: CTC reads it, and pretraining reads its .tsv
        return merged(out, "ctc_voices", {"train": [mini / "train.tsv", voices], "dev": dev})

    def mini_times(k: int) -> Callable[[], Path]:  # the voices + the mini split listed k times, for its weight
        return lambda: merged(out, f"ctc_voices_up{k}", {"train": [f"{mini / 'train.tsv'}:{k}", voices], "dev": dev})

    ssl = {"mini": lambda: mini,
           "multi": lambda: merged(out, "ssl_multi", {"train": [mini / "train.tsv", multi], "dev": dev}),
           "voices": with_voices}
    ctc = {"mini": lambda: mini,
           "voices": with_voices,
           "voices_up3": mini_times(3),
           "voices_up8": mini_times(8),
           "mini_10min": lambda: labeled_subset(out, mini, 10)}
    return ssl, ctc


def run(cmd: list[str], log: Path, threads: int) -> None:
    """One seqwin command, its output in ``log``; a failure stops the sweep with the log's last lines."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "seqwin.cli.main", *cmd], stdout=f, stderr=subprocess.STDOUT,
                            cwd=ROOT, env=env).returncode
    tail = "\n".join(log.read_text().splitlines()[-5:])
    if rc != 0:
        raise SystemExit(f"asr_ablation: `seqwin {' '.join(cmd)}` failed (rc {rc}), see {log}:\n{tail}")
    print(f"  done in {time.monotonic() - start:.0f} s: seqwin {' '.join(cmd[:2])} -> {cmd[-1]}", flush=True)


def train(task: str, recipe: str, out_dir: Path, sets: list[str], threads: int) -> None:
    if (out_dir / "model.pt").is_file():
        return
    cmd = [task, "--config", str(ROOT / recipe)]
    for kv in [*sets, "trainer.max_seconds=null"]:  # the step count alone ends a run, however busy the machine
        cmd += ["--set", kv]
    run(["train", *cmd, str(out_dir)], out_dir.parent / f"{out_dir.name}.log", threads)


def test_splits(data: Path) -> dict[str, Path]:
    shifted = data / "mini_shifted" / "manifests"
    return {"test": data / "mini" / "manifests" / "test.tsv",
            **{f"test_{s}": shifted / f"test_{s}.tsv" for s in SHIFTS},
            "heldout_voice": data / "voices" / "manifests" / "heldout_voice.tsv"}


def steps_override(steps: int) -> list[str]:
    """``--set``s for a run of ``steps`` steps (warm-up a tenth of them), or none to keep the recipe's schedule."""
    return [f"trainer.max_steps={steps}", f"trainer.warmup_steps={steps // 10}"] if steps else []


def seeds_of(variant: str, args: argparse.Namespace) -> list[int]:
    """Every seed for the variants in ``--all-seeds`` (all when not given), the first seed for the others."""
    return args.seeds if args.all_seeds is None or variant in args.all_seeds else args.seeds[:1]


def sweep(args: argparse.Namespace) -> dict:
    runs = args.out / "runs"
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    ssl_steps, ctc_steps = steps_override(args.ssl_steps), steps_override(args.ctc_steps)
    # the corpora the chosen variants read, merged here, before the parallel jobs could race to write them
    make_ssl, make_ctc = corpora(args.data, args.out)
    chosen = [VARIANTS[n] for n in args.variants]
    ssl_data = {c: make_ssl[c]() for c in dict.fromkeys(SSL_RUNS[v.ssl][0] for v in chosen if v.ssl)}
    ctc_data = {c: make_ctc[c]() for c in dict.fromkeys(v.ctc_data for v in chosen)}

    def ssl_job(name: str, seed: int) -> None:
        corpus, sets = SSL_RUNS[name]
        train("ssl", SSL_RECIPE, runs / "ssl" / name / f"seed{seed}",
              [f"data.manifest_dir={ssl_data[corpus]}", f"trainer.seed={seed}", *sets, *ssl_steps], threads)

    def ctc_job(name: str, seed: int) -> None:
        v = VARIANTS[name]
        init = [f"init.ssl_checkpoint={runs / 'ssl' / v.ssl / f'seed{seed}' / 'model.pt'}"] if v.ssl else []
        train("asr", CTC_RECIPE, runs / "ctc" / name / f"seed{seed}",
              [f"data.manifest_dir={ctc_data[v.ctc_data]}", f"trainer.seed={seed}", *init, *v.sets, *ctc_steps],
              threads)

    # seed-major order: an interrupted sweep has every variant's first seed before any second one
    jobs = [(n, s) for s in args.seeds for n in args.variants if s in seeds_of(n, args)]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda job: ssl_job(*job),
                      dict.fromkeys((VARIANTS[n].ssl, s) for n, s in jobs if VARIANTS[n].ssl)))
        list(pool.map(lambda job: ctc_job(*job), jobs))

    splits = test_splits(args.data)
    results: dict = {}
    for name in args.variants:
        for seed in seeds_of(name, args):
            eval_dir = runs / "eval" / name / f"seed{seed}"
            if not (eval_dir / "summary.json").is_file():
                run(["eval", "asr", "--checkpoint", str(runs / "ctc" / name / f"seed{seed}" / "model.pt"),
                     "--device", "cpu", "--data", *map(str, splits.values()), str(eval_dir)],
                    eval_dir.parent / f"seed{seed}.log", os.cpu_count() or 1)
            summary = json.loads((eval_dir / "summary.json").read_text())["splits"]
            for split in splits:
                row = results.setdefault(name, {}).setdefault(split, {"cer": [], "wer": []})
                row["cer"].append(summary[split]["cer"])
                row["wer"].append(summary[split]["wer"])
    for row in (r for variant in results.values() for r in variant.values()):
        for key in ("cer", "wer"):
            row[f"{key}_mean"] = statistics.fmean(row[key])
            row[f"{key}_min"], row[f"{key}_max"] = min(row[key]), max(row[key])
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(next(iter(results.values())))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(1.4 * len(splits) + 2, 3.6))
    for i, (name, rows) in enumerate(results.items()):
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(splits))]
        means = [rows[s]["cer_mean"] for s in splits]
        spread = [[m - rows[s]["cer_min"] for s, m in zip(splits, means, strict=True)],
                  [rows[s]["cer_max"] - m for s, m in zip(splits, means, strict=True)]]
        ax.bar(xs, means, width, yerr=spread, capsize=2, label=name)
    ax.set_xticks(range(len(splits)), splits, rotation=20, fontsize=8)
    ax.set_ylabel("CER % (greedy), mean over seeds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(results: dict) -> str:
    splits = list(next(iter(results.values())))
    lines = ["| variant | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for name, rows in results.items():
        cells = [f"{rows[s]['cer_mean']:.1f} ({rows[s]['cer_min']:.1f}-{rows[s]['cer_max']:.1f})" for s in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data"),
                   help="folder holding mini/, mini_shifted/, multilingual/ and voices/ (seqwin prepare ...)")
    p.add_argument("--out", type=Path, default=Path("bench_out/asr_ablation"))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--all-seeds", nargs="+", choices=list(VARIANTS), metavar="VARIANT",
                   help="only these variants run every seed, the others the first (default: all run every seed)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once (each gets cpu_count/jobs threads)")
    p.add_argument("--ssl-steps", type=int, default=0, help="override the SSL recipe's steps and warm-up (0: keep)")
    p.add_argument("--ctc-steps", type=int, default=0, help="override the CTC recipe's steps and warm-up (0: keep)")
    args = p.parse_args()
    args.data, args.out = args.data.resolve(), args.out.resolve()
    missing = [str(t) for t in test_splits(args.data).values() if not t.is_file()]
    if missing:
        raise SystemExit(f"asr_ablation: missing test manifests (see this script's help): {', '.join(missing)}")
    sys.path.insert(0, str(ROOT))
    import torch

    from seqwin.training.precision import resolve_precision

    start = time.monotonic()
    results = sweep(args)
    report = {"machine": {"cpu": cpu_name(), "jobs": args.jobs},
              "precision": resolve_precision("auto", torch.device("cpu")),
              "seeds": {n: seeds_of(n, args) for n in args.variants},
              "ssl_steps": args.ssl_steps or "recipe", "ctc_steps": args.ctc_steps or "recipe",
              "variants": {n: VARIANTS[n].__dict__ for n in args.variants},
              "ssl_runs": {k: SSL_RUNS[k] for k in dict.fromkeys(VARIANTS[n].ssl for n in args.variants) if k},
              "results": results,
              "seconds": time.monotonic() - start}
    (args.out / "asr_ablation.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(results, args.out / "asr_ablation.png")
    print(table(results))
    print(f"wrote {args.out / 'asr_ablation.json'} and asr_ablation.png")


if __name__ == "__main__":
    main()
