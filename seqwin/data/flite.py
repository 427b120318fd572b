"""Speech synthesis with the ``flite`` command (Debian package ``flite``; ``bash tools/setup.sh`` installs it).

Only flite's built-in 16 kHz English voices are offered (:data:`SPEAKERS`): ``kal16`` (US male, diphone),
``awb`` (Scottish male), ``rms`` (US male) and ``slt`` (US female), the last three CMU ARCTIC clustergen voices.
``kal`` is the same speaker as ``kal16`` at 8 kHz, and ``awb_time`` speaks only the time of day.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from seqwin.data.errors import DataError

SAMPLE_RATE = 16000
# LibriSpeech speaker id of each voice: fixed, so an id means the same voice whichever voices a run selects.
SPEAKERS = {"kal16": 101, "awb": 102, "rms": 103, "slt": 104}
INSTALL_HINT = "install the Debian package 'flite' (apt-get install flite, or: bash tools/setup.sh --system-only)"


def find_flite() -> str:
    """Path of the ``flite`` binary, or a :class:`DataError` naming the package that provides it."""
    path = shutil.which("flite")
    if path is None:
        raise DataError(f"flite not found on PATH: {INSTALL_HINT}")
    return path


def check_voices(flite: str, voices: list[str]) -> None:
    """Fail unless every voice is one of :data:`SPEAKERS` and built into this flite.

    flite itself falls back to its default voice, without an error, when asked for one it lacks."""
    unknown = [v for v in voices if v not in SPEAKERS]
    if unknown:
        raise DataError(f"unknown voice(s) {', '.join(unknown)}; choose from {', '.join(SPEAKERS)}")
    proc = subprocess.run([flite, "-lv"], capture_output=True, text=True, check=False)
    available = proc.stdout.split(":", 1)[-1].split()
    missing = [v for v in voices if v not in available]
    if proc.returncode != 0 or missing:
        listed = proc.stdout.strip() or proc.stderr.strip()
        raise DataError(f"{flite} lacks voice(s) {', '.join(missing) or '?'} (flite -lv: {listed}); {INSTALL_HINT}")


def synthesize(flite: str, voice: str, text: str, wav: Path) -> np.ndarray:
    """``text`` spoken by ``voice`` as int16 samples at 16 kHz (``wav`` is a scratch file)."""
    proc = subprocess.run([flite, "-voice", voice, "-t", text, "-o", str(wav)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0 or not wav.is_file():
        raise DataError(f"flite -voice {voice} failed on {text!r}: {proc.stderr.strip() or proc.returncode}")
    samples, rate = sf.read(str(wav), dtype="int16")
    wav.unlink()
    if rate != SAMPLE_RATE:
        raise DataError(f"flite voice {voice} produced {rate} Hz audio, expected {SAMPLE_RATE} Hz")
    return np.asarray(samples, dtype=np.int16)
