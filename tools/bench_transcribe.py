"""``seqwin transcribe`` on long audio: peak memory and real-time factor for files of 1, 10 and 60 minutes.

    .venv/bin/python tools/bench_transcribe.py [--minutes 1 10 60] [--threads 1] [--out bench_out/transcribe.json]
        [--checkpoint CKPT] [--corpus DIR] [--whole-max-minutes 10] [--stream-max-minutes 10]

Audio: the utterances under ``--corpus`` (e.g. data/mini/LibriSpeech: 16 kHz files, searched recursively)
concatenated, in name order and repeated, up to each length; without it, speech-like synthetic audio (harmonic
tones at a syllable-rate envelope, plus noise). Model: ``--checkpoint`` (e.g. exp/wav2vec2/asr/model.pt), else a
randomly initialised ``tiny`` CTC preset with a 32-letter vocabulary: speed and memory do not depend on the weights.

Modes: ``chunked`` (the default ``--chunk-seconds 30``: memory should not grow with the length), ``whole``
(``--chunk-seconds 0``: one forward pass over the file, up to ``--whole-max-minutes``) and ``stream`` (the file's
PCM through :meth:`Transcriber.stream`, as from stdin, partials every second; up to ``--stream-max-minutes``).
Every case runs in a fresh process (tools/bench_common.py); ``peak_rss_mb`` is its peak resident memory and
``added_rss_mb`` the peak minus the resident memory once the model is loaded, i.e. what transcribing the file
added. ``rtf`` = wall seconds / audio seconds, model loading excluded. Writes ``--out`` (JSON) and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import reset_peak_rss, run_case, status_kb  # noqa: E402

SR = 16000
LETTERS = ["<s>", "<pad>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVKJXQZ", "'"]


def speechlike(start: int, count: int, seed: int = 0) -> np.ndarray:
    """Samples ``[start, start + count)`` of an endless speech-like signal (harmonics of a gliding 110-160 Hz
    pitch, 4 Hz syllable envelope, a little noise)."""
    t = (start + np.arange(count)) / SR
    f0 = 135 + 25 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR + 2 * np.pi * 135 * start / SR
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    noise = np.random.default_rng(seed + start).standard_normal(count)
    return (0.15 * wave * env + 0.01 * noise).astype(np.float32)


def write_audio(path: Path, minutes: float, corpus: Path | None) -> None:
    total = int(minutes * 60 * SR)
    sources = sorted(p for p in corpus.rglob("*") if p.suffix in (".flac", ".wav")) if corpus else []
    with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16", format="FLAC") as out:
        written, k = 0, 0
        while written < total:
            if sources:
                block = sf.read(str(sources[k % len(sources)]), dtype="float32", always_2d=True)[0].mean(axis=1)
                k += 1
            else:
                block = speechlike(written, min(SR * 10, total - written))
            block = block[: total - written]
            out.write(block)
            written += len(block)


def make_model(path: Path) -> None:
    import torch

    from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
    from seqwin.models.wav2vec2.config import asr_presets
    from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_asr_model

    torch.manual_seed(0)
    cfg = asr_presets()["tiny"]
    wav2vec2_checkpoint.save(path, create_seqwin_wav2vec2_asr_model(cfg), cfg, dictionary=LETTERS)


def worker(spec: dict) -> dict:
    """One case in this process: load the model, transcribe one file, report time and memory."""
    import torch

    from seqwin.data.inputs import AudioInput
    from seqwin.recipes.wav2vec2.transcribe import TranscribeOptions, Transcriber, load_asr

    torch.set_num_threads(spec["threads"])
    args = argparse.Namespace(checkpoint=spec["checkpoint"], heads=None, dict=None, window=None)
    loaded, symbols = load_asr(args)
    chunk = 0.0 if spec["mode"] == "whole" else 30.0
    tr = Transcriber(loaded, symbols, TranscribeOptions(chunk_seconds=chunk))
    if spec["mode"] == "stream":  # the file's PCM as stdin would deliver it, from a raw file (not held in memory)
        raw = Path(spec["audio"]).with_suffix(".raw")
        with sf.SoundFile(spec["audio"]) as f, open(raw, "wb") as out:
            for block in f.blocks(blocksize=SR * 10, dtype="int16"):
                out.write(block.astype("<i2").tobytes())
    base_kb = reset_peak_rss()
    start = time.perf_counter()
    if spec["mode"] == "stream":
        with open(raw, "rb") as pcm:
            transcript, facts = tr.stream(pcm, lambda t, text: None)
        raw.unlink()
    else:
        transcript, _ = tr.file(AudioInput("bench", Path(spec["audio"])))
        facts = {}
    wall = time.perf_counter() - start
    peak_kb = status_kb("VmHWM")
    return {"minutes": spec["minutes"], "mode": spec["mode"], "chunk_seconds": chunk, "wall_s": round(wall, 2),
            "rtf": round(wall / transcript.duration, 4), "peak_rss_mb": round(peak_kb / 1024, 1),
            "added_rss_mb": round((peak_kb - base_kb) / 1024, 1), "words": len(transcript.words), **facts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint", type=Path, help="a CTC checkpoint (default: random tiny preset)")
    parser.add_argument("--corpus", type=Path, help="folder of 16 kHz utterances to concatenate (default: synthetic)")
    parser.add_argument("--whole-max-minutes", type=float, default=10.0)
    parser.add_argument("--stream-max-minutes", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per case")
    parser.add_argument("--out", type=Path, default=Path("bench_out/transcribe.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    results: dict = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
                     "audio": str(args.corpus) if args.corpus else "synthetic speech-like",
                     "checkpoint": str(args.checkpoint) if args.checkpoint else "random tiny preset", "cases": []}
    with tempfile.TemporaryDirectory(prefix="bench-transcribe-") as tmp:
        checkpoint = args.checkpoint or Path(tmp) / "model.pt"
        if args.checkpoint is None:
            make_model(checkpoint)
        for minutes in args.minutes:
            audio = Path(tmp) / f"{minutes:g}min.flac"
            write_audio(audio, minutes, args.corpus)
            modes = ["chunked"] + ["whole"] * (minutes <= args.whole_max_minutes) \
                + ["stream"] * (minutes <= args.stream_max_minutes)
            for mode in modes:
                spec = {"minutes": minutes, "mode": mode, "audio": str(audio), "checkpoint": str(checkpoint),
                        "threads": args.threads}
                case = run_case(__file__, ["--worker", json.dumps(spec)], args.timeout)
                results["cases"].append(case if "skipped" not in case else {**spec, **case})
                print(json.dumps(results["cases"][-1]), flush=True)
            audio.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
