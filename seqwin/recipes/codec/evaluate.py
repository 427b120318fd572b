"""``seqwin eval codec``: reconstruct a test set through the codec and measure it.

Writes to ``-o OUT``: ``metrics.json`` (summary + one record per utterance), ``audio/<id>.orig.wav`` and
``audio/<id>.recon.wav`` plus ``spectrograms/<id>.png`` (original | reconstruction) for the first
``--report-utterances`` utterances, and ``index.html`` that shows them side by side with audio players.

Summary metrics: PESQ (wide band), STOI, log-mel distance (multi-scale, as the training loss), SI-SNR (dB), bitrate
(bits/s for the levels used), codebook usage and perplexity per quantizer, encode+decode real-time factor, and --
unless ``--no-asr`` -- pocketsphinx WER on the original and on the reconstructed audio against the reference
transcripts (manifest ``.wrd``) and, always available, the WER of the reconstruction's transcript against the
original's (how much the codec changes what the recognizer hears).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from seqwin.data.inputs import AudioInput, collect_inputs, strip_audio_suffix
from seqwin.data.manifest import read_labels, read_manifest
from seqwin.errors import UserError
from seqwin.models.codec import checkpoint as codec_checkpoint
from seqwin.models.codec import codebook_stats
from seqwin.models.codec.losses import MultiScaleMelLoss
from seqwin.recipes.codec.metrics import (
    PocketSphinx,
    mean_or_none,
    normalize_words,
    pesq_wb,
    stoi,
    word_error_rate,
)
from seqwin.recipes.codec.report import write_report
from seqwin.recipes.codec.tokenize import TokenizeSummary, _read
from seqwin.recipes.codec.train import si_snr

log = logging.getLogger(__name__)


def _references(data: list[Path]) -> dict[str, str]:
    """Utterance id -> reference words, from the ``.wrd`` next to each ``.tsv`` manifest given."""
    refs: dict[str, str] = {}
    for item in map(Path, data):
        wrd = item.with_suffix(".wrd")
        if item.suffix == ".tsv" and wrd.is_file():
            _, entries = read_manifest(item)
            for entry, text in zip(entries, read_labels(wrd, len(entries)), strict=True):
                refs[strip_audio_suffix(entry.rel_path)] = normalize_words(text)
    return refs


def evaluate_codec(checkpoint: Path, data: list[Path], out_dir: Path, *, num_quantizers: int | None = None,
                   max_utterances: int | None = None, asr: bool = True, asr_utterances: int | None = None,
                   report_utterances: int = 8) -> list[str]:
    model = codec_checkpoint.load(checkpoint).model
    cfg = model.cfg
    n = cfg.quantizer.num_quantizers if num_quantizers is None else num_quantizers  # 0 is an error, not 'all'
    if not 1 <= n <= cfg.quantizer.num_quantizers:
        raise UserError(f"--num-quantizers must be in [1, {cfg.quantizer.num_quantizers}], got {n}")
    inputs: list[AudioInput] = collect_inputs(data)[:max_utterances]
    refs = _references(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    mel = MultiScaleMelLoss(cfg.sample_rate)
    recognizer = PocketSphinx(cfg.sample_rate) if asr else None
    skipped = TokenizeSummary()
    records, all_codes, audio_seconds, codec_seconds = [], [], 0.0, 0.0
    report = []
    for inp in inputs:
        wave = _read(inp, cfg.sample_rate, skipped, strict=False)
        if wave is None:
            continue
        x = torch.from_numpy(wave)[None]
        start = time.monotonic()
        codes, frame_lens = model.encode(x, num_quantizers=n)
        recon = model.decode(codes)[0, : len(wave)]
        codec_seconds += time.monotonic() - start
        audio_seconds += len(wave) / cfg.sample_rate
        all_codes.append(codes[0])
        y = recon.numpy()
        record = {
            "id": inp.id, "source": str(inp.path), "seconds": len(wave) / cfg.sample_rate,
            "pesq": pesq_wb(wave, y, cfg.sample_rate), "stoi": stoi(wave, y, cfg.sample_rate),
            "mel_distance": float(mel(recon[None], x)), "si_snr": float(si_snr(recon[None], x)[0]),
        }
        if recognizer is not None and (asr_utterances is None or len(records) < asr_utterances):
            record["asr_original"] = recognizer(wave)
            record["asr_reconstructed"] = recognizer(y)
        if inp.id in refs:
            record["reference"] = refs[inp.id]
        records.append(record)
        if len(report) < report_utterances:
            report.append((record, wave, y))
    if not records:
        raise UserError("no utterance could be evaluated (see the skipped inputs above)")
    stats = codebook_stats(torch.cat(all_codes, dim=1), cfg.quantizer.codebook_size)
    summary = {
        "checkpoint": str(checkpoint), "utterances": len(records), "audio_seconds": round(audio_seconds, 2),
        "num_quantizers": n, "bitrate_bps": cfg.frame_rate * n * float(np.log2(cfg.quantizer.codebook_size)),
        "pesq": mean_or_none([r["pesq"] for r in records]), "stoi": mean_or_none([r["stoi"] for r in records]),
        "mel_distance": mean_or_none([r["mel_distance"] for r in records]),
        "si_snr": mean_or_none([r["si_snr"] for r in records]),
        "codebook_usage": stats["usage"], "codebook_perplexity": stats["perplexity"],
        "codec_rtf": codec_seconds / audio_seconds, "skipped": skipped.skipped,
    }
    if recognizer is not None:
        heard = [r for r in records if "asr_original" in r]
        summary["asr_utterances"] = len(heard)
        orig = [r["asr_original"] for r in heard]
        recon_hyps = [r["asr_reconstructed"] for r in heard]
        with_ref = [r for r in heard if "reference" in r]
        summary["wer_original"] = word_error_rate([r["reference"] for r in with_ref],
                                                  [r["asr_original"] for r in with_ref])
        summary["wer_reconstructed"] = word_error_rate([r["reference"] for r in with_ref],
                                                       [r["asr_reconstructed"] for r in with_ref])
        summary["wer_reconstructed_vs_original"] = word_error_rate(orig, recon_hyps)
    (out_dir / "metrics.json").write_text(json.dumps({"summary": summary, "utterances": records}, indent=1) + "\n")
    write_report(out_dir, summary, report, cfg.sample_rate)
    return summary_lines(summary, out_dir)


def summary_lines(s: dict, out_dir: Path) -> list[str]:
    def f(key: str, fmt: str = ".3f") -> str:
        return "n/a" if s.get(key) is None else format(s[key], fmt)

    lines = [f"{out_dir}: {s['utterances']} utterances, {s['audio_seconds']:.1f} s, {s['num_quantizers']} quantizers "
             f"({s['bitrate_bps']:.0f} bps)",
             f"  PESQ {f('pesq', '.2f')}  STOI {f('stoi')}  mel distance {f('mel_distance')}  "
             f"SI-SNR {f('si_snr', '.2f')} dB  codec RTF {f('codec_rtf')}",
             "  codebook usage " + " ".join(f"{u:.2f}" for u in s["codebook_usage"]),
             "  perplexity     " + " ".join(f"{p:.0f}" for p in s["codebook_perplexity"])]
    if "wer_original" in s:
        lines.append(f"  pocketsphinx WER ({s['asr_utterances']} utterances): original {f('wer_original')}, "
                     f"reconstructed {f('wer_reconstructed')}, "
                     f"reconstructed vs original {f('wer_reconstructed_vs_original')}")
    if s["skipped"]:
        lines.append(f"  {len(s['skipped'])} input(s) skipped (listed in metrics.json)")
    lines.append(f"  report: {out_dir / 'index.html'}")
    return lines

