"""Pluggable teachers for FuseCodec and their on-disk per-utterance feature cache.

- :class:`SemanticTeacher`: hidden states of any fairseq2 wav2vec2 model (a ``Wav2Vec2Model`` from
  self-supervised pretraining or a ``Wav2Vec2AsrModel``), averaged over its transformer layers; 50 Hz for the
  standard 320x conv feature extractor. :func:`load_wav2vec2_teacher` reads a teacher file (format below).
- Transcripts come from the data (``.wrd``) or from a CTC model (:class:`CtcTranscriber`, greedy decoding with the
  ``dict.ltr.txt`` letters); a :class:`TextEncoder` embeds them per word.
- :class:`HashedNgramTextEncoder`, the text encoder that needs no download: a word's vector is the normalised sum
  of fixed pseudo-random Gaussian vectors of the word and of its character 3-5-grams (fastText's subword hashing,
  untrained, seeded). It is lexical, not contextual like the paper's BERT: words that share spelling get similar
  vectors, context does not change them. Any object with ``name``, ``dim`` and ``encode(words)`` plugs in instead,
  e.g. :class:`~seqwin.models.codec.text_encoder.LMTextEncoder` (contextual: one of our trained LMs).
- :class:`FeatureCache`: ``<dir>/<teacher key>/<sha1 of the utterance key>.npy`` (float16); written atomically,
  reused on every later epoch and run. The teacher key includes a fingerprint of the model weights.

Teacher file (``load_wav2vec2_teacher``): a ``torch.save``d dict ``{"family": "wav2vec2" | "wav2vec2_asr",
"config": <fairseq2 config as plain values>, "model": <state dict>}``, loaded with ``weights_only=True``;
:func:`save_wav2vec2_teacher` writes it from a model and its fairseq2 config.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from seqwin.io.checkpoint_files import atomic_save, safe_load

_FAMILIES = ("wav2vec2", "wav2vec2_asr")


def fingerprint(module: nn.Module) -> str:
    """Short hash of a module's weights: names, shapes and values (so two checkpoints never share a cache)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class SemanticTeacher:
    def __init__(self, model: nn.Module, *, normalize_input: bool = False, device: str | torch.device = "cpu"):
        for attr in ("encoder_frontend", "encoder", "model_dim"):
            if not hasattr(model, attr):
                raise TypeError(f"semantic teacher must be a fairseq2 wav2vec2 model (missing .{attr})")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.dim = int(model.model_dim)
        self.normalize_input = normalize_input
        self.name = f"w2v2-{fingerprint(model)}{'-norm' if normalize_input else ''}"

    @torch.no_grad()
    def __call__(self, wav: Tensor) -> Tensor:
        """``wav (T,)`` -> layer-averaged hidden states ``(frames, dim)``."""
        from fairseq2.nn import BatchLayout

        x = wav.to(self.device, torch.float32)[None]
        if self.normalize_input:
            x = torch.nn.functional.layer_norm(x, x.shape[-1:])
        frontend = self.model.encoder_frontend
        seqs, layout, _ = frontend.extract_features(x, BatchLayout.of(x, seq_lens=[x.shape[1]]))
        seqs, _ = frontend.process_features(seqs, layout, None)
        return layer_average(self.model.encoder, seqs, layout)[0].float().cpu()


def layer_average(stack: nn.Module, seqs: Tensor, layout: object) -> Tensor:
    """Run a fairseq2 encoder or decoder layer stack and return its layers' outputs averaged (the paper's teacher
    features): a layer hook collects each output as it is computed."""
    layers: list[Tensor] = []

    def keep(index: int, output: Tensor, output_layout: object, num_layers: int) -> bool:
        layers.append(output)
        return True

    handle = stack.register_layer_hook(keep)
    try:
        stack(seqs, layout)
    finally:
        handle.remove()
    return torch.stack(layers).mean(0)


def save_wav2vec2_teacher(path: Path, model: nn.Module, config: object) -> None:
    """Write a teacher file for a fairseq2 ``Wav2Vec2Model``/``Wav2Vec2AsrModel`` and its config dataclass."""
    from fairseq2.models.wav2vec2 import Wav2Vec2Config
    from fairseq2.utils.structured import StandardValueConverter

    family = "wav2vec2" if isinstance(config, Wav2Vec2Config) else "wav2vec2_asr"
    state = {"family": family, "config": StandardValueConverter().unstructure(config), "model": model.state_dict()}
    atomic_save(state, path)


def load_wav2vec2_teacher(path: Path) -> tuple[nn.Module, object]:
    """Rebuild the fairseq2 model of a teacher file; raises ``ValueError`` naming the file when it is not one."""
    from fairseq2.models.wav2vec2 import Wav2Vec2Config, create_wav2vec2_model
    from fairseq2.models.wav2vec2.asr import Wav2Vec2AsrConfig, create_wav2vec2_asr_model
    from fairseq2.utils.structured import StandardValueConverter

    try:
        state = safe_load(path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such teacher file") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{path}: not a readable teacher file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("family") not in _FAMILIES or "model" not in state:
        raise ValueError(f"{path}: not a wav2vec2 teacher file (expected keys family={list(_FAMILIES)}, "
                         "config, model; write one with save_wav2vec2_teacher)")
    kls, create = ((Wav2Vec2Config, create_wav2vec2_model) if state["family"] == "wav2vec2"
                   else (Wav2Vec2AsrConfig, create_wav2vec2_asr_model))
    config = StandardValueConverter().structure(state["config"], kls)
    model = create(config)
    model.load_state_dict(state["model"])
    return model.eval(), config


class TextEncoder(Protocol):
    name: str
    dim: int

    def encode(self, words: list[str]) -> Tensor:
        """One ``(dim,)`` vector per word -> ``(len(words), dim)``."""
        ...


class HashedNgramTextEncoder:
    def __init__(self, dim: int = 768, ngrams: tuple[int, ...] = (3, 4, 5), seed: int = 0) -> None:
        self.dim, self.ngrams, self.seed = dim, tuple(ngrams), seed
        self.name = f"ngram{''.join(map(str, self.ngrams))}-d{dim}-s{seed}"
        self._word = lru_cache(maxsize=65536)(self._embed_word)

    def _vector(self, piece: str) -> Tensor:
        key = hashlib.blake2b(f"{self.seed}\x00{piece}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(key, "little") & ((1 << 63) - 1))
        return torch.randn(self.dim, generator=gen)

    def _embed_word(self, word: str) -> Tensor:
        marked = f"<{word.lower()}>"
        pieces = [marked] + [marked[i: i + n] for n in self.ngrams for i in range(len(marked) - n + 1)]
        vec = torch.stack([self._vector(p) for p in pieces]).sum(0)
        return vec / vec.norm().clamp_min(1e-6)

    def encode(self, words: list[str]) -> Tensor:
        if not words:
            return torch.zeros(0, self.dim)
        return torch.stack([self._word(w) for w in words])


class CtcTranscriber:
    """Greedy CTC transcripts from a fairseq2 ``Wav2Vec2AsrModel`` whose outputs are ``dictionary``'s letters."""

    def __init__(self, model: nn.Module, symbols: tuple[str, ...], *, blank: int = 0, word_boundary: str = "|",
                 normalize_input: bool = False) -> None:
        self.model, self.symbols, self.blank = model.eval(), symbols, blank
        self.word_boundary = word_boundary
        self.normalize_input = normalize_input
        self.name = f"ctc-{fingerprint(model)}"

    @torch.no_grad()
    def __call__(self, wav: Tensor) -> str:
        from fairseq2.nn import BatchLayout

        x = wav.float()[None]
        if self.normalize_input:
            x = torch.nn.functional.layer_norm(x, x.shape[-1:])
        logits, _ = self.model(x, BatchLayout.of(x, seq_lens=[x.shape[1]]))
        best = logits[0].argmax(-1)
        best = torch.unique_consecutive(best)
        letters = [self.symbols[i] for i in best.tolist() if i != self.blank and i < len(self.symbols)]
        text = "".join(" " if s == self.word_boundary else s for s in letters if not s.startswith("<"))
        return " ".join(text.split())


class FeatureCache:
    """Per-utterance teacher features on disk, keyed by (teacher key, utterance key)."""

    def __init__(self, directory: Path, teacher_key: str) -> None:
        self.directory = Path(directory) / teacher_key
        self.hits = self.misses = 0

    def path(self, utterance_key: str) -> Path:
        return self.directory / f"{hashlib.sha1(utterance_key.encode()).hexdigest()}.npy"

    def get(self, utterance_key: str, compute: Callable[[], Tensor]) -> Tensor:
        path = self.path(utterance_key)
        if path.exists():
            try:
                self.hits += 1
                return torch.from_numpy(np.load(path).astype(np.float32))
            except (ValueError, OSError):  # a torn file from a killed run: recompute it
                self.hits -= 1
        self.misses += 1
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, value.detach().cpu().numpy().astype(np.float16))
        os.replace(tmp, path)
        return value.detach().cpu().half().float()  # what a later cache hit returns
