"""``seqwin tokenize`` / ``seqwin detokenize``: speech <-> codec codes, batched, for files, folders and manifests.

Output of ``seqwin tokenize INPUT... -o OUT``: the code files and their index (format ``seqwin-codes/1``, see
:mod:`seqwin.data.codes_index`). Utterance ids are the manifest's relative paths, or the paths relative to an
input folder, or the file stems, without the audio extension (``/`` kept, so ``codes/`` mirrors the input tree);
two inputs with the same id are an error.

Inputs and bad input:
- a ``.tsv`` manifest (fairseq layout), a folder (searched recursively for .flac/.wav/.ogg/.mp3/.opus) or an
  audio file; several may be given;
- a sample rate other than the codec's, an unreadable, empty or non-finite file is skipped, counted, listed
  under ``skipped`` and in the summary (``--strict``: stop with an error instead); resample first
  (``sox in.wav -r 16000 out.wav``);
- multi-channel audio is averaged to mono (counted in the summary);
- silence is encoded like any audio; an input shorter than one hop gives one frame;
- files longer than ``--chunk-seconds`` (default 60 s, which bounds memory) are encoded in chunks with
  :meth:`~seqwin.models.codec.Codec.encode_chunked`: exactly the whole-file codes for a causal codec or any codec
  whose receptive field is bounded (attention bottleneck); for a BiLSTM codec each chunk sees
  ``--chunk-context-seconds`` (default 1 s) of audio on each side and codes within about that distance of a
  chunk boundary can differ from a whole-file encoding;
- ``--bf16`` runs the encoder in bfloat16: codes can differ from float32 ones near code boundaries, and chunked
  codes match whole-file ones only nearly (bf16 rounding depends on the shapes); ``precision`` in the index.

Batches hold up to ``--batch-size`` files of similar length; padding is masked, so a file's codes do not depend
on its batch. Teachers are not consulted: a ``fusion``-variant codec encodes with both teacher branches absent
(what its modality dropout trains for); ``distill``/``context_align`` codecs use teachers only in training.

``seqwin detokenize CODES -o WAV_DIR`` reads an ``index.json`` (or its folder) or single ``.npy`` files, decodes
them in batches of similar length, and writes 16-bit ``WAV_DIR/<id>.wav``, trimmed to the original
``num_samples`` when the index has it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from seqwin.data.audio import AudioError, read_audio
from seqwin.data.codes_index import write_codes_index
from seqwin.data.inputs import AudioInput
from seqwin.errors import UserError
from seqwin.models.codec import Codec

log = logging.getLogger(__name__)


@dataclass
class TokenizeSummary:
    utterances: int = 0
    seconds: float = 0.0
    wall: float = 0.0
    downmixed: int = 0
    chunked: int = 0
    skipped: list[dict] = field(default_factory=list)

    def lines(self) -> list[str]:
        rtf = self.wall / self.seconds if self.seconds else 0.0
        out = [f"{self.utterances} utterance(s), {self.seconds:.1f} s of audio in {self.wall:.1f} s (RTF {rtf:.3f})"]
        if self.chunked:
            out.append(f"{self.chunked} long file(s) encoded in chunks")
        if self.downmixed:
            out.append(f"{self.downmixed} multi-channel file(s) averaged to mono")
        if self.skipped:
            out.append(f"{len(self.skipped)} input(s) skipped, e.g. {self.skipped[0]['source']}: "
                       f"{self.skipped[0]['reason']}")
        return out


def _header_frames(path: Path) -> int:
    try:
        return int(sf.info(str(path)).frames)
    except (sf.LibsndfileError, RuntimeError, OSError):
        return 0


def _read(inp: AudioInput, sample_rate: int, summary: TokenizeSummary, strict: bool) -> np.ndarray | None:
    try:
        wave = read_audio(inp.path, sample_rate=sample_rate)
        if sf.info(str(inp.path)).channels > 1:
            summary.downmixed += 1
        return wave
    except AudioError as exc:
        if strict:
            raise UserError(str(exc)) from None
        hint = f" (resample it first, e.g. sox IN -r {sample_rate} OUT)" if exc.category == "wrong sample rate" else ""
        summary.skipped.append({"source": str(inp.path), "reason": f"{exc.category}: {exc.detail}{hint}"})
        log.warning("skipped %s", exc)
        return None


def tokenize(model: Codec, inputs: list[AudioInput], out_dir: Path, *, checkpoint: str = "",
             num_quantizers: int | None = None, batch_size: int = 16, chunk_seconds: float = 60.0,
             chunk_context_seconds: float = 1.0, strict: bool = False, bf16: bool = False) -> TokenizeSummary:
    cfg = model.cfg
    n = cfg.quantizer.num_quantizers if num_quantizers is None else num_quantizers  # 0 is an error, not 'all'
    if not 1 <= n <= cfg.quantizer.num_quantizers:
        raise UserError(f"--num-quantizers must be in [1, {cfg.quantizer.num_quantizers}], got {n}")
    if chunk_seconds * cfg.sample_rate < cfg.hop_length:
        raise UserError(f"--chunk-seconds must be at least one hop ({cfg.hop_length / cfg.sample_rate:.3f} s)")
    summary = TokenizeSummary()
    start = time.monotonic()
    chunk = int(chunk_seconds * cfg.sample_rate)
    context = int(chunk_context_seconds * cfg.sample_rate)
    records = []

    def write(inp: AudioInput, wave: np.ndarray, codes: torch.Tensor) -> None:
        rel = Path("codes") / f"{inp.id}.npy"
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / rel, codes.to(torch.int16).numpy())
        records.append({"id": inp.id, "codes": str(rel), "source": str(inp.path), "num_samples": len(wave),
                        "num_frames": int(codes.shape[1])})
        summary.utterances += 1
        summary.seconds += len(wave) / cfg.sample_rate

    (out_dir / "codes").mkdir(parents=True, exist_ok=True)
    # Sorted by header length so batches hold similar lengths; audio is read one batch at a time (bounded
    # memory for any corpus size). Unreadable headers sort first and are reported when read.
    by_length = sorted(((inp, _header_frames(inp.path)) for inp in inputs), key=lambda item: item[1])
    short = [inp for inp, frames in by_length if frames <= chunk]
    for i in range(0, len(short), batch_size):
        group = [(inp, w) for inp in short[i: i + batch_size]
                 if (w := _read(inp, cfg.sample_rate, summary, strict)) is not None]
        if not group:
            continue
        lens = torch.tensor([len(w) for _, w in group])
        batch = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(w) for _, w in group], batch_first=True)
        codes, frame_lens = model.encode(batch, lens, n, bf16=bf16)
        for row, (inp, wave) in enumerate(group):
            write(inp, wave, codes[row, :, : int(frame_lens[row])])
    for inp in (inp for inp, frames in by_length if frames > chunk):
        wave = _read(inp, cfg.sample_rate, summary, strict)
        if wave is None:
            continue
        summary.chunked += 1
        write(inp, wave, model.encode_chunked(torch.from_numpy(wave), chunk, num_quantizers=n,
                                              context_samples=context, bf16=bf16))
    summary.wall = time.monotonic() - start
    records.sort(key=lambda r: r["id"])
    header = {"sample_rate": cfg.sample_rate, "hop_length": cfg.hop_length, "frame_rate": cfg.frame_rate,
              "num_quantizers": n, "codebook_size": cfg.quantizer.codebook_size, "checkpoint": checkpoint,
              "causal": cfg.causal, "precision": "bf16" if bf16 else "fp32"}
    write_codes_index(out_dir, header, records, summary.skipped)
    return summary


def detokenize(model: Codec, items: list[dict], out_dir: Path, *, index: dict | None = None,
               batch_size: int = 16) -> int:
    cfg = model.cfg
    if index is not None:
        for key, want in (("sample_rate", cfg.sample_rate), ("hop_length", cfg.hop_length),
                          ("codebook_size", cfg.quantizer.codebook_size)):
            if index.get(key) != want:
                raise UserError(f"codes index: {key} is {index.get(key)}, the checkpoint's codec has {want}")
    loaded = []
    for item in items:
        try:
            codes = np.load(item["path"])
        except (OSError, ValueError) as exc:
            raise UserError(f"{item['path']}: not a readable .npy code array ({exc})") from None
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise UserError(f"{item['path']}: expected an integer array (num_quantizers, frames), "
                            f"got {codes.dtype} {codes.shape}")
        if not 1 <= codes.shape[0] <= cfg.quantizer.num_quantizers:
            raise UserError(f"{item['path']}: {codes.shape[0]} quantizer levels, the codec has "
                            f"{cfg.quantizer.num_quantizers}")
        if codes.size and (codes.min() < 0 or codes.max() >= cfg.quantizer.codebook_size):
            raise UserError(f"{item['path']}: codes outside [0, {cfg.quantizer.codebook_size})")
        loaded.append((item, torch.from_numpy(codes.astype(np.int64))))
    levels = {codes.shape[0] for _, codes in loaded}
    if len(levels) > 1:
        raise UserError(f"code files have different numbers of quantizer levels: {sorted(levels)}")
    loaded.sort(key=lambda pair: pair[1].shape[1])
    for i in range(0, len(loaded), batch_size):  # similar lengths per batch; padding is masked in the decoder
        group = loaded[i: i + batch_size]
        frame_lens = torch.tensor([codes.shape[1] for _, codes in group])
        batch = torch.zeros(len(group), group[0][1].shape[0], int(frame_lens.max()), dtype=torch.long)
        for row, (_, codes) in enumerate(group):
            batch[row, :, : codes.shape[1]] = codes
        waves = model.decode(batch, frame_lens)
        for row, (item, codes) in enumerate(group):
            wave = waves[row, : codes.shape[1] * cfg.hop_length].numpy()
            if item.get("num_samples"):
                wave = wave[: item["num_samples"]]
            path = out_dir / f"{item['id']}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), np.clip(wave, -1.0, 1.0), cfg.sample_rate, subtype="PCM_16")
    return len(loaded)
