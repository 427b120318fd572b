"""Teachers for a codec run, built from the recipe config, with their features cached per utterance on disk.

:meth:`TeacherFeatures.prepare` computes every missing feature once before training (logged: how many were
computed vs found in the cache); :meth:`TeacherFeatures.batch` then cuts the features of a batch's crops, on the
codec's frame grid, from the cache.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from seqwin.data.audio import read_audio
from seqwin.data.manifest import CharDictionary
from seqwin.errors import UserError
from seqwin.models.codec.fusion import TeacherBatch, align_tokens_to_frames, stretch_to_frames
from seqwin.models.codec.teachers import (
    CtcTranscriber,
    FeatureCache,
    HashedNgramTextEncoder,
    SemanticTeacher,
    TextEncoder,
    load_wav2vec2_teacher,
)
from seqwin.models.codec.text_encoder import LMTextEncoder
from seqwin.recipes.codec.config import CodecRecipeConfig
from seqwin.recipes.codec.data import SegmentBatch, Utterance

log = logging.getLogger(__name__)


def load_teacher_model(path: Path) -> tuple[nn.Module, list[str] | None]:
    """A wav2vec2 model and its CTC letters (``None`` if the file has none) from a codec teacher file
    (:func:`~seqwin.models.codec.teachers.save_wav2vec2_teacher`) or anything the wav2vec2 recipes' loader reads:
    a seqwin ``model.pt`` / run directory, a fairseq2 or a fairseq (v1) wav2vec 2.0 checkpoint."""
    path = Path(path)
    try:
        return load_wav2vec2_teacher(path)[0], None
    except ValueError as exc:
        first = str(exc)
    try:
        from seqwin.models.wav2vec2 import checkpoint as wav2vec2_checkpoint
    except ImportError:  # a tree without the wav2vec2 models reads codec teacher files only
        raise UserError(first) from None
    loaded = wav2vec2_checkpoint.load(path)
    return loaded.model.eval(), loaded.dictionary


def load_text_encoder(lm_path: Path | None, dim: int, seed: int) -> TextEncoder:
    """A trained LM (a ``seqwin train lm`` directory or its ``model.pt``, loaded on the CPU like the other
    teachers) as text encoder, or the hashed n-gram encoder when ``lm_path`` is None."""
    if lm_path is None:
        return HashedNgramTextEncoder(dim, seed=seed)
    from seqwin.models.lm import checkpoint as lm_checkpoint

    try:
        loaded = lm_checkpoint.load(lm_path)
        return LMTextEncoder(loaded.model, loaded.tokenizer, dim, seed=seed)
    except (UserError, ValueError) as exc:  # not a run directory, no checkpoint, a speech-code LM
        where = "" if str(lm_path) in str(exc) else f"{lm_path}: "
        raise UserError(f"teachers.text_encoder: {where}{exc}") from None


class TeacherFeatures:
    def __init__(self, cfg: CodecRecipeConfig, cache_root: Path) -> None:
        t, dim = cfg.teachers, cfg.model.teacher_dim
        self.hop, self.sample_rate = cfg.model.hop_length, cfg.model.sample_rate
        self.semantic = None
        self.semantic_cache = None
        if t.semantic_checkpoint is not None:
            self.semantic = SemanticTeacher(load_teacher_model(t.semantic_checkpoint)[0],
                                            normalize_input=t.semantic_normalize_input)
            if self.semantic.dim != dim:
                raise UserError(f"teachers.semantic_checkpoint: the model's dim is {self.semantic.dim}, "
                                f"model.teacher_dim is {dim}; set model.teacher_dim={self.semantic.dim}")
            self.semantic_cache = FeatureCache(cache_root, self.semantic.name)
        self.text_encoder: TextEncoder | None = None  # any TextEncoder plugs in here
        self.transcriber = None
        self.context_cache = None
        if t.transcripts != "none":
            self.text_encoder = load_text_encoder(t.text_encoder, dim, t.text_encoder_seed)
            key = self.text_encoder.name
            if t.transcripts == "asr":
                asr_model, symbols = load_teacher_model(t.asr_checkpoint)
                if t.asr_dictionary is not None or symbols is None:
                    dict_path = t.asr_dictionary or cfg.data.manifest_dir / "dict.ltr.txt"
                    if not Path(dict_path).is_file():
                        raise UserError(f"teachers.asr_dictionary: {dict_path} does not exist")
                    symbols = CharDictionary.load(Path(dict_path)).symbols
                self.transcriber = CtcTranscriber(asr_model, tuple(symbols),
                                                  normalize_input=t.semantic_normalize_input)
                key = f"{self.transcriber.name}-{key}"
            self.context_cache = FeatureCache(cache_root, key)

    # -- per utterance ---------------------------------------------------------------------------------------

    def _audio(self, utt: Utterance) -> Tensor:
        return torch.from_numpy(read_audio(utt.path, sample_rate=self.sample_rate))

    def semantic_features(self, utt: Utterance) -> Tensor | None:
        if self.semantic is None:
            return None
        return self.semantic_cache.get(utt.key, lambda: self.semantic(self._audio(utt)))

    def context_tokens(self, utt: Utterance) -> Tensor | None:
        if self.text_encoder is None:
            return None
        if self.transcriber is not None:
            return self.context_cache.get(utt.key, lambda: self.text_encoder.encode(
                self.transcriber(self._audio(utt)).split()))
        if utt.text is None:
            raise UserError(f"{utt.path}: no transcript (teachers.transcripts: data needs the split's .wrd)")
        return self.context_cache.get(f"{utt.key}:{utt.text}", lambda: self.text_encoder.encode(utt.text.split()))

    def prepare(self, utterances: list[Utterance]) -> None:
        if self.semantic is None and self.text_encoder is None:
            return
        start = time.monotonic()
        for i, utt in enumerate(utterances):
            self.semantic_features(utt)
            self.context_tokens(utt)
            if (i + 1) % 200 == 0:
                log.info("teacher features: %d/%d utterances (%.0f s)", i + 1, len(utterances),
                         time.monotonic() - start)
        caches = [c for c in (self.semantic_cache, self.context_cache) if c is not None]
        log.info("teacher features for %d utterances ready in %.1f s: %d computed, %d from the cache (%s)",
                 len(utterances), time.monotonic() - start, sum(c.misses for c in caches),
                 sum(c.hits for c in caches), ", ".join(str(c.directory) for c in caches))

    # -- per batch -------------------------------------------------------------------------------------------

    def batch(self, batch: SegmentBatch, frames: int) -> TeacherBatch | None:
        """Teacher features of each crop, ``frames`` frames long (zero past a crop's end)."""
        if self.semantic is None and self.text_encoder is None:
            return None
        out = TeacherBatch()
        sem, sem_global, ctx, ctx_global, present = [], [], [], [], []
        for utt, start in zip(batch.utterances, batch.starts, strict=True):
            utt_frames = -(-utt.num_samples // self.hop)
            first = start // self.hop
            feats = self.semantic_features(utt)
            if feats is not None:
                sem.append(_crop(stretch_to_frames(feats, utt_frames), first, frames))
                sem_global.append(feats.mean(0))
            tokens = self.context_tokens(utt)
            if tokens is not None:
                present.append(tokens.shape[0] > 0)
                if tokens.shape[0] == 0:
                    tokens = tokens.new_zeros(1, tokens.shape[1])
                ctx.append(_crop(align_tokens_to_frames(tokens, utt_frames), first, frames))
                ctx_global.append(tokens.mean(0))
        if sem:
            out.semantic, out.semantic_global = torch.stack(sem), torch.stack(sem_global)
        if ctx:
            out.context, out.context_global = torch.stack(ctx), torch.stack(ctx_global)
            out.context_present = torch.tensor(present)
        return out


def _crop(feats: Tensor, first: int, frames: int) -> Tensor:
    piece = feats[first: first + frames]
    if piece.shape[0] < frames:
        piece = torch.cat((piece, piece.new_zeros(frames - piece.shape[0], piece.shape[1])))
    return piece


def teacher_batch_to(tb: TeacherBatch | None, device: torch.device) -> TeacherBatch | None:
    if tb is None:
        return None
    moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in vars(tb).items()}
    return TeacherBatch(**moved)
