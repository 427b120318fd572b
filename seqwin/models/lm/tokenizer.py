"""Tokenizers for the language models: SentencePiece, bytes, and speech codes.

All map a document to a list of ids and back, and describe themselves in ``tokenizer.json`` next to the model so a
trained LM directory is self-contained (``save``/:func:`load_tokenizer`).

- ``sentencepiece``: a unigram/BPE model trained by :func:`train_sentencepiece`. SentencePiece treats text as
  one sentence per line, so lines are encoded separately and joined by an extra newline id (``vocab - 1``) that
  lies outside the SentencePiece vocabulary: newlines survive a round trip and no text can spell that id.
- ``byte``: UTF-8 bytes 0-255, plus 256 = end of document; exact, no training.
- ``codes``: codec codes ``(codebooks, frames)`` flattened frame by frame (``q * codebook_size + code``), plus an
  end-of-utterance id; :meth:`CodeTokenizer.decode` returns the ``(codebooks, frames)`` array again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from seqwin.errors import UserError

TOKENIZER_JSON = "tokenizer.json"
SPM_MODEL = "tokenizer.model"


class TextTokenizer(Protocol):
    kind: str
    vocab_size: int
    eos_idx: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: Path) -> None: ...


class ByteTokenizer:
    kind = "byte"
    vocab_size = 257
    eos_idx = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        _write_json(directory, {"kind": self.kind})


class SentencePieceTokenizer:
    kind = "sentencepiece"
    eos_idx = None

    def __init__(self, proto: bytes, where: str) -> None:
        """``proto``: the serialized SentencePiece model (the bytes of ``tokenizer.model``); ``where`` names its
        source in errors."""
        import sentencepiece as spm

        self.proto = bytes(proto)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        except (OSError, RuntimeError) as exc:
            raise UserError(f"{where}: not a SentencePiece model ({exc})") from None
        self.newline_idx = self.sp.get_piece_size()
        self.vocab_size = self.newline_idx + 1

    @classmethod
    def from_file(cls, path: Path) -> SentencePieceTokenizer:
        try:
            return cls(Path(path).read_bytes(), str(path))
        except OSError as exc:
            raise UserError(f"{path}: not a SentencePiece model ({exc.strerror})") from None

    def encode(self, text: str) -> list[int]:
        lines = text.split("\n")
        out: list[int] = []
        for i, ids in enumerate(self.sp.encode(lines)):
            if i:
                out.append(self.newline_idx)
            out.extend(ids)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        lines: list[list[int]] = [[]]
        for i in ids:
            i = int(i)
            if i == self.newline_idx:
                lines.append([])
            elif 0 <= i < self.newline_idx:
                lines[-1].append(i)
        return "\n".join(self.sp.decode(lines))

    def save(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / SPM_MODEL).write_bytes(self.proto)
        _write_json(directory, {"kind": self.kind, "model": SPM_MODEL})


class CodeTokenizer:
    kind = "codes"

    def __init__(self, codebooks: int, codebook_size: int) -> None:
        if codebooks < 1 or codebook_size < 2:
            raise ValueError(f"need codebooks >= 1 and codebook_size >= 2, got {codebooks}, {codebook_size}")
        self.codebooks, self.codebook_size = codebooks, codebook_size
        self.eos_idx = codebooks * codebook_size
        self.vocab_size = self.eos_idx + 1

    def encode_codes(self, codes: np.ndarray) -> np.ndarray:
        """``(quantizers, frames)`` or ``(frames,)`` int codes -> flat ids of the first ``codebooks`` levels."""
        codes = np.asarray(codes)
        if codes.ndim == 1:
            codes = codes[None]
        if codes.ndim != 2 or codes.shape[0] < self.codebooks:
            raise ValueError(f"expected (quantizers >= {self.codebooks}, frames) codes, got shape {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        codes = codes[: self.codebooks].astype(np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{codes.min()}, {codes.max()}]")
        offsets = (np.arange(self.codebooks) * self.codebook_size)[:, None]
        return (codes + offsets).T.reshape(-1)  # frame-major: f0q0 f0q1 ... f1q0 ...

    def decode_codes(self, ids: Sequence[int]) -> np.ndarray:
        """Flat ids -> ``(codebooks, frames)``; stops at end-of-utterance, drops an incomplete last frame and
        realigns when a generated id sits at the wrong level (its level is implied by its value)."""
        frames: list[list[int]] = []
        frame: list[int] = []
        for i in ids:
            i = int(i)
            if i == self.eos_idx:
                break
            level, code = divmod(i, self.codebook_size)
            if level != len(frame):  # out of step: restart the frame at this id's level if it is level 0
                frame = []
                if level != 0:
                    continue
            frame.append(code)
            if len(frame) == self.codebooks:
                frames.append(frame)
                frame = []
        return np.asarray(frames, dtype=np.int64).reshape(-1, self.codebooks).T

    def save(self, directory: Path) -> None:
        _write_json(directory, {"kind": self.kind, "codebooks": self.codebooks, "codebook_size": self.codebook_size})


Tokenizer = ByteTokenizer | SentencePieceTokenizer | CodeTokenizer


def _write_json(directory: Path, data: dict) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / TOKENIZER_JSON).write_text(json.dumps(data, indent=1) + "\n")


def load_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer described by ``directory/tokenizer.json``."""
    path = Path(directory) / TOKENIZER_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no tokenizer here (train one with `seqwin train tokenizer` or `seqwin train lm`)")\
            from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    kind = data.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        return SentencePieceTokenizer.from_file(Path(directory) / data.get("model", SPM_MODEL))
    if kind == "codes":
        return CodeTokenizer(int(data["codebooks"]), int(data["codebook_size"]))
    raise UserError(f"{path}: unknown tokenizer kind {kind!r}")


def tokenizer_state(tok: Tokenizer) -> dict[str, Any]:
    """Everything that rebuilds ``tok`` as plain values (what an LM model file carries; see
    :func:`tokenizer_from_state`)."""
    if isinstance(tok, SentencePieceTokenizer):
        return {"kind": tok.kind, "proto": tok.proto}
    if isinstance(tok, CodeTokenizer):
        return {"kind": tok.kind, "codebooks": tok.codebooks, "codebook_size": tok.codebook_size}
    return {"kind": tok.kind}


def tokenizer_from_state(state: Any, where: str) -> Tokenizer:
    kind = state.get("kind") if isinstance(state, dict) else None
    try:
        if kind == "byte":
            return ByteTokenizer()
        if kind == "sentencepiece":
            return SentencePieceTokenizer(state["proto"], where)
        if kind == "codes":
            return CodeTokenizer(int(state["codebooks"]), int(state["codebook_size"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{where}: incomplete {kind} tokenizer ({type(exc).__name__}: {exc})") from None
    raise UserError(f"{where}: unknown tokenizer kind {kind!r}")


def train_sentencepiece(
    texts: Sequence[Path], out_dir: Path, *, vocab_size: int, model_type: str = "unigram",
    max_sentences: int = 1_000_000, num_threads: int = 2, seed: int = 0,
) -> SentencePieceTokenizer:
    """Train a SentencePiece model on the lines of ``texts``; writes ``out_dir/tokenizer.{model,vocab,json}``."""
    import sentencepiece as spm

    for path in texts:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such text file")
    if vocab_size < 8:
        raise UserError(f"vocab_size must be >= 8, got {vocab_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / ".tokenizer.tmp"
    spm.set_random_generator_seed(seed)  # input sampling: same text, same model
    try:
        spm.SentencePieceTrainer.train(
            input=[str(p) for p in texts], model_prefix=str(prefix), vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            input_sentence_size=max_sentences, shuffle_input_sentence=True, num_threads=num_threads,
            minloglevel=2, hard_vocab_limit=False,
            # lossless: keep whitespace as written, unseen characters as UTF-8 byte pieces
            normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
        )
    except (RuntimeError, OSError) as exc:  # e.g. a vocabulary larger than the text supports
        raise UserError(f"SentencePiece training failed: {exc}") from None
    for ext in ("model", "vocab"):  # publish only complete files
        Path(f"{prefix}.{ext}").replace(out_dir / f"tokenizer.{ext}")
    tok = SentencePieceTokenizer.from_file(out_dir / SPM_MODEL)
    tok.save(out_dir)
    return tok
