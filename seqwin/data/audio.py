"""Reading and checking audio files with soundfile (libsndfile), with errors that name the file.

Policy, shared by ``seqwin prepare`` and the training loader:

- empty files, unreadable/corrupt/truncated files, zero-length audio and NaN/inf samples are errors
  (:class:`AudioError`; ``prepare librispeech`` counts them as skipped and lists them in ``issues.tsv``);
- a sample rate other than the expected one is **refused**, not resampled: manifests are also read by tools
  that do not resample (fairseq2's own recipes), so a silently resampled corpus would not be what it says.
  Convert such files first (e.g. ``sox in.flac -r 16000 out.flac``);
- multi-channel audio is kept and **downmixed** to mono (channel mean) when loaded; ``prepare`` logs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from seqwin.data.errors import DataError, where

# Reading in blocks keeps memory flat when verifying hour-long files.
_BLOCK_FRAMES = 1 << 18
_FLOAT_SUBTYPES = {"FLOAT", "DOUBLE", "VORBIS", "OPUS", "MPEG_LAYER_III"}


class AudioError(DataError):
    """An audio file that cannot be used; ``category`` is a short fixed label for summaries."""

    def __init__(self, path: Path | str, category: str, detail: str, line: int | None = None) -> None:
        super().__init__(f"{where(path, line)}: {category}: {detail}")
        self.path = str(path)
        self.category = category
        self.detail = detail


@dataclass(frozen=True)
class AudioInfo:
    num_frames: int
    sample_rate: int
    channels: int
    subtype: str


def probe_audio(path: Path, *, sample_rate: int | None = None, verify: bool = True) -> AudioInfo:
    """Check one audio file and return its header facts.

    With ``verify=True`` the whole file is decoded, which is the only way to find truncated files (a FLAC
    header keeps announcing the original length) and NaN/inf samples; with ``verify=False`` only the header
    is read, except for float encodings, which are always scanned for non-finite values.
    """
    result = read_header(path, sample_rate=sample_rate)
    if verify or result.subtype in _FLOAT_SUBTYPES:
        _scan(path, result)
    return result


def read_header(path: Path, *, sample_rate: int | None = None) -> AudioInfo:
    """The header facts of ``path`` without decoding any audio (about 0.1 ms per file).

    Raises :class:`AudioError` for a missing, empty or unreadable file, zero frames, or a sample rate other
    than ``sample_rate``; truncated files and NaN/inf samples need a full decode (:func:`probe_audio`).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AudioError(path, "missing file", "no such file") from None
    if size == 0:
        raise AudioError(path, "empty file", "0 bytes")
    try:
        # An open SoundFile has parsed the header; sf.info() also formats descriptions we do not use (~1.4x slower).
        with sf.SoundFile(str(path)) as f:
            result = AudioInfo(int(f.frames), int(f.samplerate), int(f.channels), str(f.subtype))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(path, "unreadable audio", _sf_message(exc)) from None
    if result.num_frames <= 0:
        raise AudioError(path, "zero-length audio", "0 samples")
    if sample_rate is not None and result.sample_rate != sample_rate:
        raise AudioError(
            path,
            "wrong sample rate",
            f"{result.sample_rate} Hz, expected {sample_rate} Hz (resample it first)",
        )
    return result


def _scan(path: Path, info: AudioInfo) -> None:
    num_read = 0
    try:
        for block in sf.blocks(str(path), blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
            if not np.isfinite(block).all():
                bad = num_read + int(np.argwhere(~np.isfinite(block))[0, 0])
                raise AudioError(path, "non-finite samples", f"NaN or inf at sample {bad}")
            num_read += len(block)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(
            path, "corrupt audio", f"decoding failed after {num_read} samples: {_sf_message(exc)}"
        ) from None
    if num_read != info.num_frames:
        raise AudioError(
            path, "corrupt audio", f"truncated: header says {info.num_frames} samples, decoded {num_read}"
        )


def read_audio(path: Path, *, sample_rate: int | None = None) -> np.ndarray:
    """Decode ``path`` to a mono float32 array in [-1, 1]; multi-channel audio is averaged to mono.

    Raises :class:`AudioError` naming ``path`` for the problems listed in the module docstring.
    """
    try:
        if path.stat().st_size == 0:
            raise AudioError(path, "empty file", "0 bytes")
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AudioError(path, "missing file", "no such file") from None
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(path, "unreadable audio", _sf_message(exc)) from None
    if sample_rate is not None and sr != sample_rate:
        raise AudioError(path, "wrong sample rate", f"{sr} Hz, expected {sample_rate} Hz")
    if len(data) == 0:
        raise AudioError(path, "zero-length audio", "0 samples")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AudioError(
            path, "non-finite samples", f"NaN or inf at sample {int(np.argwhere(~np.isfinite(mono))[0, 0])}"
        )
    return np.ascontiguousarray(mono)


def write_flac(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write mono 16-bit FLAC (what LibriSpeech ships); int16 input is written losslessly."""
    if samples.ndim != 1:
        raise ValueError(f"expected mono samples, got shape {samples.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), samples, sample_rate, format="FLAC", subtype="PCM_16")


def _sf_message(exc: Exception) -> str:
    # libsndfile messages repeat the path ("Error opening '/x.flac': ..."); keep the part after it.
    msg = str(exc).strip()
    if msg.startswith("Error opening"):
        msg = msg.split("': ", 1)[1].strip() if "': " in msg else ""
        return msg or "not a recognized audio format"
    return msg or f"libsndfile error {getattr(exc, 'code', '?')}"
