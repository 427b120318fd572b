"""The listening report of ``seqwin eval codec``: spectrogram PNGs and an ``index.html`` with audio players."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import soundfile as sf


def write_wav(path: Path, wave: np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16")


def _safe(utt_id: str) -> str:
    return utt_id.replace("/", "__")


def spectrogram_png(path: Path, original: np.ndarray, recon: np.ndarray, sample_rate: int, title: str) -> None:
    """Original and reconstruction as log-magnitude spectrograms, side by side, on one colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def db(wave: np.ndarray) -> np.ndarray:
        n_fft, hop = 512, 128
        padded = np.pad(wave, (0, max(0, n_fft - len(wave))))
        frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop] * np.hanning(n_fft)
        return 20 * np.log10(np.abs(np.fft.rfft(frames, axis=-1)).T + 1e-5)

    specs = [db(original), db(recon)]
    top = max(s.max() for s in specs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.2), sharey=True)
    extent = (0, len(original) / sample_rate, 0, sample_rate / 2000)
    for ax, spec, name in zip(axes, specs, ("original", "reconstructed"), strict=True):
        ax.imshow(spec, origin="lower", aspect="auto", extent=extent, vmin=top - 80, vmax=top, cmap="magma")
        ax.set_title(name)
        ax.set_xlabel("seconds")
    axes[0].set_ylabel("kHz")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _fmt(value: float | None, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(value, fmt)


def write_report(out_dir: Path, summary: dict, items: list[tuple[dict, np.ndarray, np.ndarray]],
                 sample_rate: int) -> Path:
    rows = []
    for record, original, recon in items:
        name = _safe(record["id"])
        write_wav(out_dir / "audio" / f"{name}.orig.wav", original, sample_rate)
        write_wav(out_dir / "audio" / f"{name}.recon.wav", recon, sample_rate)
        spectrogram_png(out_dir / "spectrograms" / f"{name}.png", original, recon, sample_rate, record["id"])
        asr = ""
        if "asr_original" in record:
            asr = (f"<p>reference: {html.escape(record.get('reference', '-'))}<br>"
                   f"ASR original: {html.escape(record['asr_original'])}<br>"
                   f"ASR reconstructed: {html.escape(record['asr_reconstructed'])}</p>")
        rows.append(
            f"<section><h3>{html.escape(record['id'])} ({record['seconds']:.1f} s)</h3>"
            f"<p>PESQ {_fmt(record['pesq'], '.2f')} &middot; STOI {_fmt(record['stoi'])} &middot; "
            f"SI-SNR {record['si_snr']:.1f} dB &middot; mel distance {record['mel_distance']:.3f}</p>"
            f"<div class=pair><figure><figcaption>original</figcaption>"
            f"<audio controls preload=none src='audio/{name}.orig.wav'></audio></figure>"
            f"<figure><figcaption>reconstructed</figcaption>"
            f"<audio controls preload=none src='audio/{name}.recon.wav'></audio></figure></div>"
            f"<img src='spectrograms/{name}.png' alt='spectrograms of {html.escape(record['id'])}'>{asr}</section>")
    s = summary
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in [
        ("checkpoint", s["checkpoint"]), ("utterances", f"{s['utterances']} ({s['audio_seconds']:.1f} s)"),
        ("bitrate", f"{s['bitrate_bps']:.0f} bps ({s['num_quantizers']} quantizers)"),
        ("PESQ (wb)", _fmt(s["pesq"], ".2f")), ("STOI", _fmt(s["stoi"])),
        ("mel distance", _fmt(s["mel_distance"])), ("SI-SNR", _fmt(s["si_snr"], ".2f") + " dB"),
        ("WER original / reconstructed", f"{_fmt(s.get('wer_original'))} / {_fmt(s.get('wer_reconstructed'))}"),
        ("WER reconstructed vs original", _fmt(s.get("wer_reconstructed_vs_original"))),
        ("codebook usage", " ".join(f"{u:.2f}" for u in s["codebook_usage"])),
        ("codebook perplexity", " ".join(f"{p:.0f}" for p in s["codebook_perplexity"])),
        ("codec real-time factor", _fmt(s["codec_rtf"])),
    ])
    page = f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>seqwin codec evaluation</title>
<style>body{{font-family:sans-serif;max-width:1250px;margin:auto;padding:1em}} th{{text-align:left;padding-right:1em}}
.pair{{display:flex;gap:2em}} figure{{margin:0}} img{{max-width:100%}} section{{border-top:1px solid #ccc}}</style>
</head><body><h1>Codec evaluation</h1><table>{table}</table>
<p>Metrics per utterance are in <a href='metrics.json'>metrics.json</a>.</p>{''.join(rows)}</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page)
    return path
