"""``seqwin transcribe``: text (and word times) for audio files, folders, manifests or a live PCM stream.

Files are encoded ``--chunk-seconds`` at a time with the context :mod:`seqwin.recipes.wav2vec2.chunked` computes from
the model, so memory does not grow with a file's length and, for windowed models, the logits (hence the text) are
those of a whole-file forward pass; dense or routing models get ``--context-seconds`` per side (approximate).

``-`` reads raw 16 kHz mono signed 16-bit little-endian PCM from stdin and prints a partial hypothesis to stderr
whenever ``--step-seconds`` more audio has final logits. The partial text lags the audio by the model's right
context. A model that normalises over the whole utterance (the log-mel frontend, the Base conv frontend's group norm,
``--normalize``) uses the statistics of the audio received so far for partials; its final text re-encodes the stream
(spooled to a temporary file) with whole-stream statistics, so it equals the whole-file text.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
import torch
import yaml

from seqwin.data.audio import AudioError
from seqwin.data.errors import DataError
from seqwin.data.inputs import AudioInput, AudioReader, collect_inputs
from seqwin.errors import UserError
from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
from seqwin.models.wav2vec2.checkpoint import ASR_FAMILY, LoadedModel
from seqwin.recipes.wav2vec2.chunked import (
    SAMPLE_RATE,
    ChunkEncoder,
    ReceptiveField,
    StreamEncoder,
    encode_file,
    receptive_field,
)
from seqwin.recipes.wav2vec2.transcript import BeamStream, GreedyStream, Transcript

log = logging.getLogger("seqwin.transcribe")
FORMATS = ("txt", "json", "srt")


@dataclass
class TranscribeOptions:
    chunk_seconds: float = 30.0
    """Audio per encoder call (0: whole files at once)."""
    context_seconds: float = 5.0
    """Context per side for models without a bounded receptive field (dense / routing attention)."""
    step_seconds: float = 1.0
    """Streaming: new final audio between partial hypotheses."""
    normalize: bool = False
    strict: bool = False

    def validate(self) -> None:
        for name in ("chunk_seconds", "context_seconds"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.step_seconds <= 0:
            raise UserError(f"--step-seconds must be > 0, got {self.step_seconds}")


@dataclass
class Summary:
    files: int = 0
    seconds: float = 0.0
    wall: float = 0.0
    downmixed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        rtf = self.wall / self.seconds if self.seconds else 0.0
        out = f"{self.files} file(s), {self.seconds:.1f} s of audio in {self.wall:.1f} s (RTF {rtf:.3f})"
        if self.downmixed:
            out += f"; {self.downmixed} multi-channel file(s) averaged to mono"
        if self.skipped:
            out += f"; {len(self.skipped)} skipped, e.g. {self.skipped[0][0]}: {self.skipped[0][1]}"
        return out


class Transcriber:
    """One loaded CTC model, its receptive field and a decoder factory; transcribes files and streams."""

    def __init__(self, loaded: LoadedModel, symbols: list[str], options: TranscribeOptions, *,
                 device: torch.device | str = "cpu", beam: object | None = None) -> None:
        """``beam``: a :func:`~seqwin.recipes.wav2vec2.beam.lexicon_decoder` (reset for every input), else greedy."""
        self.options, self.symbols, self.beam = options, symbols, beam
        self.rf: ReceptiveField = receptive_field(loaded.config, normalize=options.normalize)
        frame_s = self.rf.stride / SAMPLE_RATE
        self.encoder = ChunkEncoder(loaded.model.to(device), self.rf, device=device,
                                    context_frames=round(options.context_seconds / frame_s))
        self.chunk_frames = max(1, round(options.chunk_seconds / frame_s)) if options.chunk_seconds > 0 else 0
        self.step_frames = max(1, round(options.step_seconds / frame_s))

    @property
    def frame_seconds(self) -> float:
        return self.rf.stride / SAMPLE_RATE

    def decoder(self) -> GreedyStream | BeamStream:
        if self.beam is None:
            return GreedyStream(self.symbols, self.frame_seconds)
        return BeamStream(self.beam, self.symbols, self.frame_seconds)

    def latency_seconds(self) -> float:
        """Right context of a stream's partial hypotheses (for unbounded models: the stated context)."""
        return self.rf.latency_seconds(self.encoder.right)

    def decode(self, read: Callable[[int, int], np.ndarray], num_samples: int) -> tuple[str, list]:
        """Text and words of an utterance; ValueError if it is shorter than one encoder frame."""
        self.encoder.check_length(num_samples)
        decoder = self.decoder()
        for logits in encode_file(self.encoder, read, num_samples, self.chunk_frames):
            decoder.step(logits)
        return decoder.finish()

    def file(self, inp: AudioInput) -> tuple[Transcript, int]:
        """The transcript of one file and its channel count; :class:`AudioError` for unusable audio."""
        with AudioReader(inp.path, SAMPLE_RATE) as reader:
            try:
                self.encoder.check_length(reader.num_samples)
            except ValueError as exc:
                raise AudioError(inp.path, "too short", str(exc)) from None
            text, words = self.decode(reader.read, reader.num_samples)
            return Transcript(inp.id, str(inp.path), reader.num_samples / SAMPLE_RATE, text, words), reader.channels

    def stream(self, source: BinaryIO, on_partial: Callable[[float, str], None]) -> tuple[Transcript, dict]:
        """Transcribe raw PCM from ``source`` as it arrives; returns the final transcript and latency facts."""
        stream = StreamEncoder(self.encoder, self.step_frames)
        decoder = self.decoder()
        lags: list[float] = []
        block = max(3200, 2 * round(self.options.step_seconds * SAMPLE_RATE))  # bytes per read: <= one step
        with ExitStack() as stack:
            spool = stack.enter_context(tempfile.TemporaryFile()) if self.rf.levels else None
            carry = b""
            for data in _chunks(source, block):
                if spool is not None:
                    spool.write(data)
                data = carry + data
                carry = data[len(data) - len(data) % 2:]
                logits = stream.feed(np.frombuffer(data[: len(data) - len(carry)], "<i2").astype(np.float32) / 32768)
                if logits is not None:
                    decoder.step(logits)
                    lags.append(stream.received / SAMPLE_RATE - stream.final_seconds())
                    on_partial(stream.final_seconds(), decoder.partial())
            if carry:
                log.warning("stdin: ignored a trailing odd byte (input must be 16-bit samples)")
            if stream.received == 0:
                raise UserError("stdin: no audio (expected raw 16 kHz mono signed 16-bit little-endian PCM)")
            try:
                self.encoder.check_length(stream.received)
            except ValueError as exc:
                raise UserError(f"stdin: too short: {exc}") from None
            if spool is None:
                if (logits := stream.finish()) is not None:
                    decoder.step(logits)
                text, words = decoder.finish()
            else:  # whole-stream statistics: re-encode the spooled stream as a file
                text, words = self.decode(_spool_reader(spool), stream.received)
        facts = {"right_context_s": round(self.latency_seconds(), 3), "updates": len(lags),
                 "lag_mean_s": round(float(np.mean(lags)), 3) if lags else None,
                 "lag_max_s": round(max(lags), 3) if lags else None,
                 "partials_use_running_statistics": bool(self.rf.levels)}
        return Transcript("stdin", "-", stream.received / SAMPLE_RATE, text, words), facts


def _chunks(source: BinaryIO, size: int) -> Iterator[bytes]:
    read = getattr(source, "read1", source.read)  # read1: whatever has arrived, without waiting for `size`
    while data := read(size):
        yield data


def _spool_reader(spool: IO[bytes]) -> Callable[[int, int], np.ndarray]:
    def read(start: int, stop: int) -> np.ndarray:
        spool.seek(2 * start)
        return np.frombuffer(spool.read(2 * (stop - start)), "<i2").astype(np.float32) / 32768

    return read


# ---- the command ---------------------------------------------------------------------------------------------


def trained_with_normalize(checkpoint: Path) -> bool:
    """Whether the recipe run a checkpoint comes from set ``data.normalize`` (its ``config.yaml``)."""
    for folder in (checkpoint, checkpoint.parent, checkpoint.parent.parent):
        if (folder / "config.yaml").is_file() and (folder / "model.yaml").is_file():
            data = yaml.safe_load((folder / "config.yaml").read_text()) or {}
            return bool((data.get("data") or {}).get("normalize"))
    return False


def load_asr(args) -> tuple[LoadedModel, list[str]]:
    from seqwin.data.manifest import CharDictionary
    from seqwin.recipes.wav2vec2.evaluate import apply_window

    loaded = wav2vec2_checkpoint.load(Path(args.checkpoint), heads=args.heads)
    if loaded.family != ASR_FAMILY:
        raise UserError(f"--checkpoint {args.checkpoint}: a pretrained (SSL) model has no CTC head; fine-tune it "
                        "with `seqwin train asr` first")
    symbols = loaded.dictionary
    if args.dict is not None or symbols is None:
        if args.dict is None:
            raise UserError(f"--checkpoint {args.checkpoint} carries no vocabulary: give --dict dict.ltr.txt")
        try:
            symbols = list(CharDictionary.load(Path(args.dict)).symbols)
        except DataError as exc:
            raise UserError(f"--dict: {exc}") from None
    if len(symbols) != loaded.config.model.target_vocab_size:
        raise UserError(f"vocabulary has {len(symbols)} symbols, the model's CTC head "
                        f"{loaded.config.model.target_vocab_size}")
    apply_window(loaded, args.window)
    return loaded, symbols


def run(args) -> int:
    options = TranscribeOptions(args.chunk_seconds, args.context_seconds, args.step_seconds, args.normalize,
                                args.strict)
    options.validate()
    streaming = [str(i) for i in args.inputs] == ["-"]
    if "-" in map(str, args.inputs) and not streaming:
        raise UserError("'-' (stdin) cannot be combined with other inputs")
    inputs = [] if streaming else collect_inputs([Path(i) for i in args.inputs])
    if not streaming and not inputs:
        raise UserError("no audio found in the inputs")
    if args.format == "srt" and args.out is None and len(inputs) > 1:
        raise UserError("--format srt with several inputs needs -o DIR (one .srt per input)")
    if args.out is not None and args.format != "srt" and Path(args.out).is_dir():
        raise UserError(f"-o {args.out}: is a directory (txt/json write one file)")
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded, symbols = load_asr(args)
    if not options.normalize and (loaded.normalize or trained_with_normalize(Path(args.checkpoint))):
        log.info("the model was trained on normalized waveforms: normalising each input's waveform")
        options.normalize = True
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    with ExitStack() as stack:
        beam = None
        if args.lm is not None:
            from seqwin.recipes.wav2vec2.beam import lexicon_decoder

            lm_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="seqwin-lm-")))
            beam = lexicon_decoder(symbols, Path(args.lm), lm_dir, order=args.lm_order, beam_size=args.beam_size,
                                   lm_weight=args.lm_weight, word_score=args.word_score)
        tr = Transcriber(loaded, symbols, options, device=device, beam=beam)
        log.info("%s", tr.rf.describe())
        if not tr.rf.exact:
            log.warning("chunks approximate the whole-file logits: %s; each chunk sees %.1f s of context per side "
                        "(--context-seconds; --chunk-seconds 0 encodes whole files exactly)",
                        "; ".join(tr.rf.unbounded), options.context_seconds)
        out = _Output(args.format, args.out, stack)
        kind = GreedyStream if beam is None else BeamStream
        extra = {"decoding": kind.decoding, "word_times": kind.timing, "exact": tr.rf.exact}
        if streaming:
            log.info("streaming: partial text lags the audio by %.3f s of right context (+ up to %.1f s per step)",
                     tr.latency_seconds(), options.step_seconds)
            transcript, facts = tr.stream(sys.stdin.buffer, lambda t, text: print(f"[{t:8.2f} s] {text}",
                                                                                  file=sys.stderr, flush=True))
            out.write(transcript, {**extra, "streaming": facts})
            log.info("streaming: %d updates; partial text lagged the audio by %s s on average, %s s at most "
                     "(right context %.3f s)", facts["updates"], facts["lag_mean_s"], facts["lag_max_s"],
                     facts["right_context_s"])
            return 0
        summary = transcribe_files(tr, inputs, out, extra)
    print(summary.line(), file=sys.stderr)
    if not summary.files:
        raise UserError("no input could be transcribed")
    return 0


def transcribe_files(tr: Transcriber, inputs: list[AudioInput], out: _Output, extra: dict) -> Summary:
    from tqdm import tqdm

    summary = Summary()
    start = time.monotonic()
    for inp in tqdm(inputs, unit="file", disable=None, file=sys.stderr, dynamic_ncols=True):
        try:
            transcript, channels = tr.file(inp)
        except AudioError as exc:
            if tr.options.strict:
                raise UserError(str(exc)) from None
            summary.skipped.append((str(inp.path), f"{exc.category}: {exc.detail}"))
            log.warning("skipped %s", exc)
            continue
        summary.files += 1
        summary.seconds += transcript.duration
        summary.downmixed += channels > 1
        out.write(transcript, extra)
    summary.wall = time.monotonic() - start
    return summary


class _Output:
    """txt: ``id<TAB>text`` lines; json: one JSON object per line; srt: ``OUT/<id>.srt`` (stdout for one input)."""

    def __init__(self, fmt: str, out: Path | None, stack: ExitStack) -> None:
        self.fmt, self.dir = fmt, Path(out) if out is not None and fmt == "srt" else None
        self.file: IO[str] = sys.stdout
        if out is not None and fmt != "srt":
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            self.file = stack.enter_context(open(out, "w", encoding="utf-8"))

    def write(self, t: Transcript, extra: dict) -> None:
        from tqdm import tqdm

        if self.fmt == "srt" and self.dir is not None:
            path = self.dir / f"{t.id}.srt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(t.srt(), encoding="utf-8")
            return
        text = {"txt": f"{t.id}\t{t.text}", "json": t.json_line(extra), "srt": t.srt().rstrip("\n")}[self.fmt]
        tqdm.write(text, file=self.file)  # keeps a progress bar on the terminal intact
        self.file.flush()
