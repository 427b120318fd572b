"""Audio inputs of the inference commands (``seqwin tokenize``, ``seqwin transcribe``): collecting them from files,
folders and manifests, and reading long files a block at a time.

- a ``.tsv`` manifest (fairseq layout) contributes its entries, ids = relative paths without the audio extension;
- a folder is searched recursively for :data:`AUDIO_SUFFIXES`, ids = paths relative to the folder;
- an audio file contributes itself, id = its stem.

Two inputs with the same id are an error. :class:`AudioReader` applies the policy of :mod:`seqwin.data.audio`
(wrong rate refused, multi-channel averaged, empty / truncated / non-finite audio an :class:`AudioError`) while
decoding only the samples asked for, so memory does not grow with the file's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from seqwin.data.audio import AudioError, _sf_message, probe_audio
from seqwin.data.errors import DataError
from seqwin.data.manifest import read_manifest
from seqwin.errors import UserError

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".mp3", ".opus")


@dataclass
class AudioInput:
    id: str
    path: Path


def strip_audio_suffix(rel: str) -> str:
    path = Path(rel)
    return str(path.with_suffix("")) if path.suffix.lower() in AUDIO_SUFFIXES else str(path)


def collect_inputs(inputs: list[Path]) -> list[AudioInput]:
    """Expand manifests, folders and files into (id, path) pairs; ids must be unique."""
    found: list[AudioInput] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not files:
                raise UserError(f"{item}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
            found += [AudioInput(strip_audio_suffix(str(p.relative_to(item))), p) for p in files]
        elif item.suffix == ".tsv":
            try:
                root, entries = read_manifest(item)
            except DataError as exc:
                raise UserError(str(exc)) from None
            found += [AudioInput(strip_audio_suffix(e.rel_path), root / e.rel_path) for e in entries]
        elif item.is_file():
            found.append(AudioInput(item.stem, item))
        else:
            raise UserError(f"{item}: no such file or folder")
    seen: dict[str, Path] = {}
    for inp in found:
        if inp.id in seen:
            raise UserError(f"two inputs map to the same id {inp.id!r}: {seen[inp.id]} and {inp.path} "
                            "(process them in separate runs)")
        seen[inp.id] = inp.path
    return found


class AudioReader:
    """Random access to one audio file as mono float32, a block at a time.

    Opening checks the header (:func:`probe_audio` without a full decode); :meth:`read` raises
    :class:`AudioError` for truncated or non-finite audio in the block it decodes."""

    def __init__(self, path: Path, sample_rate: int) -> None:
        self.path = Path(path)
        info = probe_audio(self.path, sample_rate=sample_rate, verify=False)
        self.num_samples, self.channels = info.num_frames, info.channels
        self._file = sf.SoundFile(str(self.path))

    def read(self, start: int, stop: int) -> np.ndarray:
        stop = min(stop, self.num_samples)
        try:
            self._file.seek(start)
            data = self._file.read(stop - start, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(self.path, "corrupt audio", f"decoding failed near sample {start}: "
                                                         f"{_sf_message(exc)}") from None
        if len(data) != stop - start:
            raise AudioError(self.path, "corrupt audio", f"truncated: header says {self.num_samples} samples, "
                                                         f"decoding stopped at {start + len(data)}")
        mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
        if not np.isfinite(mono).all():
            bad = start + int(np.argwhere(~np.isfinite(mono))[0, 0])
            raise AudioError(self.path, "non-finite samples", f"NaN or inf at sample {bad}")
        return np.ascontiguousarray(mono)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
