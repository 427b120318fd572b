"""LM data: token streams from ``seqwin prepare text`` splits or codec code files, packed into long sequences.

Text: ``DIR/{split}.txt`` is tokenized as one stream (documents stay in their order, newlines are tokens).
Codes (the speech LM): ``DIR/{split}/`` is the output of ``seqwin tokenize MANIFEST -o DIR/{split}`` (format
``seqwin-codes/1``, see :mod:`seqwin.data.codes_index`): ``index.json`` plus one ``(quantizers, frames)``
integer ``.npy`` per utterance. Utterances are flattened by :class:`CodeTokenizer` (the first ``codebooks``
levels) and joined with its end-of-utterance id. Unreadable or malformed code files are skipped, counted and
listed in ``OUT/issues.tsv``; an index whose codebook size differs from the tokenizer's is an error.

Token streams are cached in ``OUT/tokens/{split}.bin`` (raw int32, memory-mapped) keyed by the source file and
tokenizer, so resuming and evaluating do not tokenize again. Training sequences are ``seq_len + 1`` consecutive
tokens (inputs and shifted targets); each epoch starts at a different offset and visits the sequences in a different
order, both functions of (seed, epoch), so a resumed run sees exactly the data of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from seqwin.data.codes_index import read_codes_index
from seqwin.data.errors import DataError, IssueLog
from seqwin.models.lm.tokenizer import CodeTokenizer, Tokenizer

log = logging.getLogger(__name__)


def _signature(source: Path, tok_dir: Path) -> str:
    h = hashlib.sha256()
    st = source.stat()
    h.update(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    for name in sorted(os.listdir(tok_dir)) if tok_dir.is_dir() else []:
        if name.startswith("tokenizer."):
            h.update((tok_dir / name).read_bytes())
    return h.hexdigest()


def split_source(data_dir: Path, split: str, fmt: str) -> Path:
    """``DIR/{split}.txt`` (text) or ``DIR/{split}/index.json`` (codes)."""
    path = Path(data_dir) / (f"{split}.txt" if fmt == "text" else f"{split}/index.json")
    if not path.is_file():
        hint = "run `seqwin prepare text`" if fmt == "text" else f"run `seqwin tokenize ... -o {path.parent}`"
        raise DataError(f"{path}: no {split} split here ({hint})")
    return path


def _encode_text(source: Path, tokenizer: Tokenizer, sink) -> None:
    """Tokenize a text file in line-aligned chunks (constant memory; the same ids as encoding it whole, since
    both text tokenizers treat lines independently) and write int32 ids to ``sink``."""
    chunk: list[str] = []
    size = 0
    with source.open(encoding="utf-8", newline="\n") as f:
        try:
            for line in f:
                chunk.append(line)
                size += len(line)
                if size >= 1 << 22:
                    sink.write(_ids(tokenizer, "".join(chunk)))
                    chunk, size = [], 0
        except UnicodeDecodeError as exc:
            raise DataError(f"{source}: not valid UTF-8 ({exc.reason})") from None
    text = "".join(chunk)
    if text:
        sink.write(_ids(tokenizer, text))


def _ids(tokenizer: Tokenizer, text: str) -> bytes:
    ids = tokenizer.encode(text)
    # A chunk ends with "\n", which encodes as a trailing newline id; the next chunk starts the next line.
    return np.asarray(ids, dtype=np.int32).tobytes()


def load_tokens(data_dir: Path, split: str, fmt: str, tokenizer: Tokenizer, out_dir: Path) -> np.ndarray:
    """The ``split`` token stream (int32, memory-mapped), from the cache when source and tokenizer are unchanged."""
    source = split_source(data_dir, split, fmt)
    cache, meta = out_dir / "tokens" / f"{split}.bin", out_dir / "tokens" / f"{split}.json"
    sig = _signature(source, out_dir)
    if cache.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
            if info.get("signature") == sig and cache.stat().st_size == 4 * info["tokens"]:
                return np.memmap(cache, dtype=np.int32, mode="r", shape=(info["tokens"],))
        except (ValueError, KeyError, OSError) as exc:  # a damaged cache is rebuilt
            log.warning("%s: unreadable token cache (%s); tokenizing again", cache, exc)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp.{os.getpid()}")  # under torchrun every rank builds it
    with tmp.open("wb") as sink:
        if fmt == "text":
            _encode_text(source, tokenizer, sink)
        else:
            assert isinstance(tokenizer, CodeTokenizer)
            issues = IssueLog()
            sink.write(code_stream(source, tokenizer, issues).tobytes())
            if issues.issues:
                for line in issues.summary_lines():
                    log.warning("%s: %s", source, line)
                issues.write_tsv(out_dir / "issues.tsv")
    count = tmp.stat().st_size // 4
    if count < 2:
        tmp.unlink()
        raise DataError(f"{source}: fewer than 2 tokens after tokenization")
    os.replace(tmp, cache)
    meta.write_text(json.dumps({"signature": sig, "source": str(source), "tokens": count}) + "\n")
    log.info("%s: %d tokens (cached in %s)", source, count, cache)
    return np.memmap(cache, dtype=np.int32, mode="r", shape=(count,))


def code_stream(index_path: Path, tokenizer: CodeTokenizer, issues: IssueLog) -> np.ndarray:
    """All utterances of a ``seqwin-codes/1`` index as one stream, each followed by end-of-utterance."""
    index, items = read_codes_index(index_path)
    assert index is not None
    size, levels = index.get("codebook_size"), index.get("num_quantizers")
    if size != tokenizer.codebook_size:
        raise DataError(f"{index_path}: codebook_size is {size}, the LM's tokenizer.codebook_size is "
                        f"{tokenizer.codebook_size}")
    if not isinstance(levels, int) or levels < tokenizer.codebooks:
        raise DataError(f"{index_path}: num_quantizers is {levels}, fewer than tokenizer.codebooks "
                        f"({tokenizer.codebooks})")
    parts = []
    for item in items:
        try:
            ids = tokenizer.encode_codes(np.load(item["path"], allow_pickle=False))
        except (OSError, ValueError) as exc:
            issues.skip("bad code file", item["path"], f"{item['id']}: {exc}")
            continue
        if ids.size == 0:
            issues.skip("empty utterance", item["path"], item["id"])
            continue
        parts.append(ids)
        parts.append(np.asarray([tokenizer.eos_idx]))
    if not parts:
        raise DataError(f"{index_path}: no usable utterance")
    return np.concatenate(parts).astype(np.int32)


class PackedBatches:
    """``(batch, seq_len + 1)`` LongTensor batches over a token stream; ``batches(epoch, skip)``."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if tokens.size < seq_len + 1:
            raise DataError(f"the training split has {tokens.size} tokens, fewer than data.seq_len + 1 "
                            f"({seq_len + 1}); lower data.seq_len")
        self.tokens = tokens  # may be a memory map: batches gather only their own rows
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size

    def num_sequences(self, offset: int) -> int:
        return (self.tokens.size - offset - 1) // self.seq_len

    def check_fits(self) -> None:
        """Fail now, naming the key, if some epoch could not fill one batch on every rank."""
        from seqwin.training.checks import check_batches_per_step

        worst = self.num_sequences(min(self.seq_len, self.tokens.size - self.seq_len) - 1)  # largest offset
        check_batches_per_step(worst, self.batch_size, self.world_size, "data.batch_size",
                               f"sequences of data.seq_len ({self.seq_len}) tokens",
                               "lower data.batch_size or data.seq_len")

    def __call__(self, epoch: int, skip: int) -> Iterator[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        # A new offset each epoch so sequence boundaries move; at most seq_len - 1, keeping one full sequence.
        offset = int(torch.randint(min(self.seq_len, self.tokens.size - self.seq_len), (1,), generator=g))
        n = self.num_sequences(offset)
        order = torch.randperm(n, generator=g)[self.rank :: self.world_size]
        num_batches = len(order) // self.batch_size
        if num_batches == 0:
            raise DataError(f"{n} sequences of {self.seq_len} tokens cannot fill one batch of "
                            f"{self.batch_size} (x {self.world_size} ranks); lower data.batch_size")
        span = np.arange(self.seq_len + 1)
        for b in range(skip, num_batches):
            starts = offset + order[b * self.batch_size : (b + 1) * self.batch_size].numpy() * self.seq_len
            yield torch.from_numpy(self.tokens[starts[:, None] + span].astype(np.int64))


def eval_windows(num_tokens: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """``(begin, end, scored)``: inputs ``tokens[begin:end]``, targets ``tokens[begin+1:end+1]`` of which the
    last ``scored`` are counted. Every token but the first is scored exactly once, with at least
    ``context - stride`` tokens of history once that much precedes it."""
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in [1, context], got stride={stride}, context={context}")
    first = 1
    while first < num_tokens:
        last = min(first + stride, num_tokens)  # targets [first, last)
        begin = max(0, last - 1 - context)
        yield begin, last - 1, last - first
        first = last
