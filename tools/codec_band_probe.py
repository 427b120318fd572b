"""Which frequency band of a codec's reconstructions does a recognizer fail on?

    python tools/codec_band_probe.py [--checkpoint CODEC] --data data/mini/manifests/test.tsv [--utterances 25] -o OUT

Reconstructs the first ``--utterances`` utterances of a manifest (with its ``.wrd``) and writes ``OUT/band_probe.json``:

- the level of each band of the reconstruction relative to the original's, in dB, over speech frames and over
  near-silent ones (frames 30 dB or more below the utterance's loudest): a muffled or noisy codec shows here;
- pocketsphinx's WER on the originals, on the reconstructions, and on *band swaps*: the reconstruction with one band
  taken from the original, the original with that band taken from the reconstruction, and the reconstruction with
  only the short-time magnitude of that band taken from the original (its own phase kept). A band whose swap moves
  the WER most is where the recognizer loses the reconstruction; the magnitude swap says whether the magnitude or
  the phase is wrong there, and the level rows whether the band is merely too quiet (a level change alone is cheap
  for pocketsphinx, which normalizes cepstral means).

Without ``--checkpoint`` it scores the originals degraded on purpose instead (1-4 kHz 6 and 10 dB quieter, low-passed
at 4 kHz, white noise at 20 dB SNR): how much a muffled band, a lost band or noise costs the recognizer by itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqwin.data.manifest import read_labels, read_manifest  # noqa: E402
from seqwin.models.codec import checkpoint as codec_checkpoint  # noqa: E402
from seqwin.recipes.codec.metrics import PocketSphinx, normalize_words, word_error_rate  # noqa: E402

EDGES_HZ = (0, 500, 1000, 2000, 4000, 6000, 8000)
SWAPS_HZ = ((0, 1000), (1000, 2000), (2000, 4000), (1000, 4000), (4000, 8000))
SILENCE_DB = -30.0
N_FFT = 512
SAMPLE_RATE = 16000  # the bundled pocketsphinx model's rate


def in_band(freqs, lo: float, hi: float, top: float):
    """``lo <= f < hi``, and ``f == hi`` too when ``hi`` is the top of the spectrum (so the last band keeps Nyquist)."""
    return (freqs >= lo) & ((freqs < hi) | (freqs == hi) & (hi >= top))


def stft(wave: np.ndarray) -> torch.Tensor:
    """The probe's one short-time transform: 512 / hop 128 (32 / 8 ms at 16 kHz, about a recognizer's front end)."""
    return torch.stft(torch.from_numpy(wave), N_FFT, N_FFT // 4, window=torch.hann_window(N_FFT),
                      return_complex=True)


def istft(spec: torch.Tensor, length: int) -> np.ndarray:
    """The inverse of :func:`stft`, ``length`` samples long."""
    return torch.istft(spec, N_FFT, N_FFT // 4, window=torch.hann_window(N_FFT), length=length).numpy()


def swap_band(into: np.ndarray, source: np.ndarray, lo: float, hi: float, sample_rate: int) -> np.ndarray:
    """``into`` with its ``[lo, hi)`` Hz band replaced by ``source``'s (whole-utterance FFT, equal lengths)."""
    a, b = np.fft.rfft(into), np.fft.rfft(source)
    freqs = np.fft.rfftfreq(len(into), 1 / sample_rate)
    band = in_band(freqs, lo, hi, sample_rate / 2)
    a[band] = b[band]
    return np.fft.irfft(a, len(into)).astype(np.float32)


def swap_magnitude(into: np.ndarray, source: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``into`` with the short-time magnitude of its ``[lo, hi]`` Hz band (both edge bins) taken from ``source``,
    keeping ``into``'s phase."""
    spec = [stft(w) for w in (into, source)]
    freqs = torch.fft.rfftfreq(N_FFT, 1 / SAMPLE_RATE)
    band = ((freqs >= lo) & (freqs <= hi))[:, None]
    mixed = torch.where(band, spec[1].abs() * torch.exp(1j * spec[0].angle()), spec[0])
    return istft(mixed, len(into))


def band_levels(pairs: list[tuple[np.ndarray, np.ndarray]], sample_rate: int) -> dict[str, list[float]]:
    """Energy of each band of the reconstructions over the originals', in dB, on speech and on near-silent frames
    (chosen on the original)."""
    freqs = np.fft.rfftfreq(N_FFT, 1 / sample_rate)
    sums = np.zeros((2, 2, len(EDGES_HZ) - 1))  # (speech | silence, original | reconstruction, band)
    for orig, recon in pairs:
        powers = [stft(w).abs().pow(2).numpy() for w in (orig, recon)]
        frame_energy = powers[0].sum(0)
        speech = frame_energy > frame_energy.max() * 10 ** (SILENCE_DB / 10)
        for b, (lo, hi) in enumerate(zip(EDGES_HZ[:-1], EDGES_HZ[1:], strict=True)):
            rows = in_band(freqs, lo, hi, EDGES_HZ[-1])
            for k, power in enumerate(powers):
                sums[0, k, b] += power[rows][:, speech].sum()
                sums[1, k, b] += power[rows][:, ~speech].sum()
    def db(kind: int) -> list[float | None]:  # None: no such frames (or no energy) in that band
        return [round(float(10 * np.log10(r / o)), 2) if o > 0 and r > 0 else None for o, r in sums[kind].T]

    return {"speech_db": db(0), "silence_db": db(1)}


def degradations(wave: np.ndarray, sample_rate: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """What a recognizer's errors on the originals should be compared with: a muffled band, a lost band, noise."""
    power = float(np.mean(wave**2))
    return {
        "1-4 kHz -6 dB": swap_band(wave, wave * 10 ** (-6 / 20), 1000, 4000, sample_rate),
        "1-4 kHz -10 dB": swap_band(wave, wave * 10 ** (-10 / 20), 1000, 4000, sample_rate),
        "low-pass 4 kHz": swap_band(wave, np.zeros_like(wave), 4000, sample_rate / 2, sample_rate),
        "white noise 20 dB SNR": (wave + rng.standard_normal(len(wave)) * np.sqrt(power / 100)).astype(np.float32),
    }


def read_utterances(tsv: Path, count: int) -> tuple[list[np.ndarray], list[str]]:
    root, entries = read_manifest(tsv)
    refs = [normalize_words(t) for t in read_labels(tsv.with_suffix(".wrd"), len(entries))][:count]
    waves = []
    for entry in entries[:count]:
        wave, rate = sf.read(root / entry.rel_path, dtype="float32")
        if rate != SAMPLE_RATE or wave.ndim != 1:
            raise SystemExit(f"codec_band_probe: {root / entry.rel_path}: expected mono {SAMPLE_RATE} Hz audio "
                             f"(got {rate} Hz, {wave.ndim} dims)")
        waves.append(wave)
    return waves, refs


def probe_codec(checkpoint: Path, originals: list[np.ndarray], wer: Callable[[list[np.ndarray]], float]) -> dict:
    """Band levels and band-swap WERs of the codec's reconstructions of ``originals``."""
    model = codec_checkpoint.load(checkpoint).model.eval()
    if model.cfg.sample_rate != SAMPLE_RATE:
        raise SystemExit(f"codec_band_probe: pocketsphinx's bundled model needs a {SAMPLE_RATE} Hz codec, "
                         f"{checkpoint} is {model.cfg.sample_rate} Hz")
    pairs = []
    for wave in originals:
        with torch.no_grad():
            codes, _ = model.encode(torch.from_numpy(wave)[None])
            pairs.append((wave, model.decode(codes)[0, : len(wave)].numpy().astype(np.float32)))
    result = {"bands_hz": list(EDGES_HZ), **band_levels(pairs, SAMPLE_RATE),
              "wer_reconstructed": wer([r for _, r in pairs]), "swaps": []}
    for lo, hi in SWAPS_HZ:
        result["swaps"].append({
            "band_hz": [lo, hi],
            "reconstruction_with_original_band": wer([swap_band(r, o, lo, hi, SAMPLE_RATE) for o, r in pairs]),
            "original_with_reconstructed_band": wer([swap_band(o, r, lo, hi, SAMPLE_RATE) for o, r in pairs]),
            "reconstruction_with_original_magnitude": wer([swap_magnitude(r, o, lo, hi) for o, r in pairs]),
        })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="a codec.pt or training checkpoint; without one only the "
                        "originals and their degradations are scored")
    parser.add_argument("--data", type=Path, required=True, help="a .tsv manifest with its .wrd transcripts")
    parser.add_argument("--utterances", type=int, default=25)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    wrd = args.data.with_suffix(".wrd")
    if not args.data.is_file() or not wrd.is_file():
        parser.error(f"{args.data} and its transcripts {wrd} must both exist")
    originals, refs = read_utterances(args.data, args.utterances)
    recognizer = PocketSphinx(SAMPLE_RATE)

    def wer(waves: list[np.ndarray]) -> float:
        return round(word_error_rate(refs, [recognizer(w) for w in waves]), 4)

    result: dict = {"checkpoint": None if args.checkpoint is None else str(args.checkpoint), "data": str(args.data),
                    "utterances": len(originals), "wer_original": wer(originals)}
    if args.checkpoint is None:
        rng = np.random.default_rng(0)
        degraded = [degradations(w, SAMPLE_RATE, rng) for w in originals]
        result["wer_degraded_original"] = {name: wer([d[name] for d in degraded]) for name in degraded[0]}
    else:
        result.update(probe_codec(args.checkpoint, originals, wer))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "band_probe.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    print(f"wrote {args.out / 'band_probe.json'}")


if __name__ == "__main__":
    main()
