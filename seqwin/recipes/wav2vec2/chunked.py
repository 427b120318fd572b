"""Chunked and streaming CTC inference for wav2vec2 models whose logits equal whole-file ones.

**Receptive field** (:func:`receptive_field`, from the model config alone). Encoder frame ``t`` sees samples
``[t * stride, t * stride + width)``: the conv stack's product of strides and receptive field (320 / 400 samples
for the paper's), or log-mel 25 ms windows every 10 ms stacked ``stack`` at a time (640 / 880 for the tiny
preset). After that, output frame ``t`` depends on encoder frames ``[t - left, t + right]``, where ``left`` and
``right`` add up the conv position encoder (kernel K padded by K // 2 with the last frame dropped for even K:
K // 2 frames left, K - 1 - K // 2 right; per layer for a stacked one) and every attention layer's window (per-head
windows: the largest side). Layer norms, feed-forward blocks and the CTC head are per frame. A dense, routing or
mixed layer, a ``-1`` window side, a conformer or relative-position encoder makes a side unbounded.

**Exact chunks.** Frames ``[a, b)`` are encoded from frames ``[a - left, b + right)`` clipped to the file, i.e.
from samples ``[(a - left) * stride, (b + right - 1) * stride + width)``; the clipped sides are the file's own
edges, so every frame of ``[a, b)`` sees exactly what it sees in a whole-file forward pass.

**Whole-utterance statistics** break locality: the log-mel frontend normalises every mel bin over the utterance;
the paper's conv frontend (Base, no ``feature_extractor_layer_norm_convs``) group-normalises its first layer's
channels over time; models trained with ``data.normalize`` expect zero-mean unit-variance waveforms. These are
gathered first, one streaming pass per level in that order (float64 sums), then applied to every chunk, so chunked
logits equal whole-file ones up to float rounding. A stream gathers them as audio arrives (running statistics).

**Unbounded sides** are given ``context`` frames instead: chunking then approximates the whole-file logits, the
closer the longer the context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from fairseq2.nn import BatchLayout
from torch import Tensor, nn

from seqwin.errors import UserError
from seqwin.models.wav2vec2.frontend import HOP, WIN

SAMPLE_RATE = 16000
Stats = dict[str, tuple[Tensor, Tensor]]
"""Per level name: (mean, variance) per channel, float32."""
Reader = Callable[[int, int], np.ndarray]
"""``read(start, stop)``: mono float32 samples ``[start, stop)`` of one utterance."""


@dataclass(frozen=True)
class StatLevel:
    """A statistic normalised over the whole utterance; its positions are every ``hop`` samples, ``width`` wide."""

    name: str
    """``waveform``, ``log-mel`` or ``conv group norm``."""
    hop: int
    width: int

    def positions(self, num_samples: int) -> int:
        return max(0, (num_samples - self.width) // self.hop + 1)


@dataclass(frozen=True)
class ReceptiveField:
    stride: int
    """Samples per encoder frame."""
    width: int
    """Samples one encoder frame's features see."""
    left: int | None
    """Encoder frames of left context an output frame depends on (``None``: unbounded)."""
    right: int | None
    unbounded: tuple[str, ...]
    """What makes a side unbounded, e.g. ``layer 0: full``."""
    levels: tuple[StatLevel, ...]

    @property
    def exact(self) -> bool:
        return self.left is not None and self.right is not None

    def frames(self, num_samples: int) -> int:
        """Encoder frames of ``num_samples`` of audio: those whose ``width`` samples lie inside it."""
        return max(0, (num_samples - self.width) // self.stride + 1)

    def latency_seconds(self, right: int | None = None) -> float:
        """Audio that must follow a moment before the logits up to it are final: the right context plus the
        frontend's look-ahead past a frame's own hop."""
        right = self.right if right is None else right
        if right is None:
            raise ValueError("unbounded right context")
        return (right * self.stride + self.width - self.stride) / SAMPLE_RATE

    def describe(self) -> str:
        ms = 1000 * self.stride / SAMPLE_RATE
        sides = f"left {self.left}, right {self.right} frames of {ms:g} ms" if self.exact else \
            "unbounded (" + "; ".join(self.unbounded) + ")"
        stats = f"; whole-utterance statistics: {', '.join(s.name for s in self.levels)}" if self.levels else ""
        return f"receptive field {sides}, frontend {self.width} samples every {self.stride}{stats}"


def receptive_field(config, *, normalize: bool = False) -> ReceptiveField:
    """The receptive field of a seqwin wav2vec2 (CTC or SSL) config; ``normalize``: per-utterance waveform
    normalisation, as recipes with ``data.normalize`` train."""
    enc = config.model.encoder_config
    if enc.use_fbank:
        raise UserError("models with fairseq2's fbank frontend (use_fbank) are not supported here")
    levels = [StatLevel("waveform", 1, 1)] if normalize else []
    if config.frontend.kind == "logmel":
        stride, width = HOP * config.frontend.stack, HOP * (config.frontend.stack - 1) + WIN
        levels.append(StatLevel("log-mel", HOP, WIN))
    else:
        descs = enc.feature_extractor_layer_descs
        stride, width = 1, 1
        for _, kernel, step in descs:
            width += (kernel - 1) * stride
            stride *= step
        if not enc.feature_extractor_layer_norm_convs:  # fairseq2 then group-norms the first layer over time
            levels.append(StatLevel("conv group norm", descs[0][2], descs[0][1]))
    left: int | None = 0
    right: int | None = 0
    unbounded: list[str] = []
    if enc.use_conformer or enc.pos_encoder_type == "relative":
        left = right = None
        unbounded.append("conformer / relative-position encoder")
    elif enc.pos_encoder_type == "conv":
        if enc.pos_encoder_depth == 1:
            k = enc.pos_conv_kernel_size
            left, right = k // 2, k - 1 - k // 2
        else:  # a stack of convs with padding="same" (torch puts the odd pad on the right)
            k = max(3, enc.pos_conv_kernel_size // enc.pos_encoder_depth)
            left, right = (k - 1) // 2 * enc.pos_encoder_depth, (k - 1 - (k - 1) // 2) * enc.pos_encoder_depth
    for i, layer in enumerate(config.attention.expand(enc.num_encoder_layers, enc.num_encoder_attn_heads)):
        windows = (layer.head_windows or [layer.spec.window]) if layer.spec.kind == "local" else [(-1, -1)]
        lefts, rights = [w[0] for w in windows], [w[1] for w in windows]
        if -1 in lefts or -1 in rights:
            unbounded.append(f"layer {i}: {layer.describe()}")
        left = None if left is None or -1 in lefts else left + max(lefts)
        right = None if right is None or -1 in rights else right + max(rights)
    return ReceptiveField(stride, width, left, right, tuple(unbounded), tuple(levels))


class Moments:
    """Per-channel mean and (biased) variance of values seen so far, accumulated in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.sum: Tensor | None = None
        self.sumsq: Tensor | None = None

    def add(self, values: Tensor) -> None:
        """``values``: (positions, channels)."""
        v = values.double()
        if self.sum is None:
            self.sum, self.sumsq = v.sum(0), (v * v).sum(0)
        else:
            self.sum += v.sum(0)
            self.sumsq += (v * v).sum(0)
        self.count += values.shape[0]

    def result(self) -> tuple[Tensor, Tensor]:
        if self.sum is None or not self.count:
            raise ValueError("no values")
        mean = self.sum / self.count
        var = (self.sumsq / self.count - mean * mean).clamp_min(0.0)
        return mean.float(), var.float()


class ChunkEncoder:
    """CTC logits of a window of an utterance's samples, with given whole-utterance statistics."""

    def __init__(self, model: nn.Module, rf: ReceptiveField, *, context_frames: int,
                 device: torch.device | str = "cpu") -> None:
        self.model, self.rf, self.device = model.eval(), rf, torch.device(device)
        self.left = rf.left if rf.left is not None else context_frames
        self.right = rf.right if rf.right is not None else context_frames
        self.extractor = model.encoder_frontend.feature_extractor
        self.log_mel = any(level.name == "log-mel" for level in rf.levels)
        self.group_norm = any(level.name == "conv group norm" for level in rf.levels)

    def values(self, level: StatLevel, wave: Tensor, stats: Stats) -> Tensor:
        """The (positions, channels) values ``level`` normalises, from samples ``wave`` (1, n)."""
        if level.name == "waveform":
            return wave[0, :, None]
        wave = self._normalized(wave, stats)
        if level.name == "log-mel":
            return self._log_mel(wave)[0]
        first = self.extractor.layers[0]
        return first.conv(wave.unsqueeze(1))[0].T

    def logits(self, samples: np.ndarray, stats: Stats) -> Tensor:
        """(frames, vocabulary) float32 CPU logits of ``rf.frames(len(samples))`` frames."""
        wave = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device)[None]
        frontend = self.model.encoder_frontend
        with torch.inference_mode():
            feats = self._features(wave, stats)
            layout = BatchLayout.of(feats)
            seqs, _ = frontend.process_features(frontend.post_extract_layer_norm(feats), layout)
            logits = self.model.final_proj(self.model.encoder(seqs, layout))
        return logits[0].float().cpu()

    def _normalized(self, wave: Tensor, stats: Stats) -> Tensor:
        if not self.rf.levels or self.rf.levels[0].name != "waveform":
            return wave
        mean, var = (t.to(wave.device) for t in stats["waveform"])
        return (wave - mean) / torch.sqrt(var + 1e-5)  # F.layer_norm(wave, wave.shape), as the data pipeline does

    def _log_mel(self, wave: Tensor) -> Tensor:
        # exactly LogMelFeatureExtractor's filterbanks: (1, S) -> (1, mel frames, bins)
        return self.extractor.mel(wave.float()).clamp_min(1e-10).log().transpose(1, 2)

    def _features(self, wave: Tensor, stats: Stats) -> Tensor:
        wave = self._normalized(wave, stats)
        if self.log_mel:
            mean, var = (t.to(wave.device) for t in stats["log-mel"])
            feats = (self._log_mel(wave) - mean) / (var + 1e-5).sqrt()
            stack, bins = self.extractor.stack, self.extractor.num_mel_bins
            steps = feats.shape[1] // stack
            return feats[:, : steps * stack].reshape(1, steps, stack * bins).to(wave.dtype)
        x = wave.unsqueeze(1)  # (1, 1, S)
        for i, layer in enumerate(self.extractor.layers):
            if i == 0 and self.group_norm:
                x = self._group_normed(layer, x, stats["conv group norm"])
            else:
                x = layer(x)
        return x.transpose(1, 2)

    def _group_normed(self, layer: nn.Module, x: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        """The first conv layer with its GroupNorm (one group per channel) using the whole utterance's moments."""
        y = layer.conv(x)
        norm = layer.group_norm
        mean, var = (t.to(y.device)[:, None] for t in stats)
        y32 = (y.float() - mean) / torch.sqrt(var + norm.eps)
        y32 = y32 * norm.weight.float()[:, None] + norm.bias.float()[:, None]
        return layer.activation(y32.type_as(y))

    def check_length(self, num_samples: int) -> None:
        if self.rf.frames(num_samples) < 1:
            raise ValueError(f"{num_samples} samples, the model needs at least {self.rf.width}")


def file_stats(enc: ChunkEncoder, read: Reader, num_samples: int, block_samples: int) -> Stats:
    """Whole-utterance statistics, one pass over the file per level, ``block_samples`` at a time."""
    stats: Stats = {}
    for level in enc.rf.levels:
        moments = Moments()
        count, per_block = level.positions(num_samples), max(1, block_samples // level.hop)
        for p0 in range(0, count, per_block):
            p1 = min(count, p0 + per_block)
            wave = torch.from_numpy(read(p0 * level.hop, (p1 - 1) * level.hop + level.width)).to(enc.device)
            with torch.inference_mode():
                moments.add(enc.values(level, wave[None], stats))
        stats[level.name] = moments.result()
    return stats


def encode_file(enc: ChunkEncoder, read: Reader, num_samples: int, chunk_frames: int) -> Iterator[Tensor]:
    """The utterance's logits, ``chunk_frames`` frames at a time (0: all at once), in order."""
    enc.check_length(num_samples)
    rf = enc.rf
    total = rf.frames(num_samples)
    chunk = chunk_frames if chunk_frames > 0 else total
    stats = file_stats(enc, read, num_samples, (chunk + enc.left + enc.right) * rf.stride)
    for a in range(0, total, chunk):
        b = min(total, a + chunk)
        s, e = max(0, a - enc.left), min(total, b + enc.right)
        stop = num_samples if e == total else (e - 1) * rf.stride + rf.width
        logits = enc.logits(read(s * rf.stride, stop), stats)
        if logits.shape[0] != e - s:  # the frame arithmetic above is what makes chunks exact: never guess
            raise RuntimeError(f"expected {e - s} frames from samples [{s * rf.stride}, {stop}), got {logits.shape[0]}")
        yield logits[a - s: b - s]


class StreamEncoder:
    """Logits of an utterance that arrives a block of samples at a time.

    A frame's logits are emitted once ``right`` frames after it are complete (for unbounded models: ``context``
    frames, an approximation), at least ``step_frames`` at a time. Memory holds only the samples the next chunk and
    the running statistics still need."""

    def __init__(self, enc: ChunkEncoder, step_frames: int) -> None:
        self.enc, self.step = enc, max(1, step_frames)
        self.buffer = np.zeros(0, dtype=np.float32)
        self.buffer_start = 0
        self.received = 0
        self.emitted = 0
        self.moments = {level.name: Moments() for level in enc.rf.levels}
        self.next_position = {level.name: 0 for level in enc.rf.levels}

    def feed(self, samples: np.ndarray) -> Tensor | None:
        """Add samples; returns the logits of the frames that became final, if at least ``step_frames``."""
        self.buffer = np.concatenate([self.buffer, samples.astype(np.float32, copy=False)])
        self.received += len(samples)
        self._update_stats()
        available = self.enc.rf.frames(self.received)
        ready = available - self.enc.right
        if ready - self.emitted < self.step:
            return None
        return self._emit(ready, available, (available - 1) * self.enc.rf.stride + self.enc.rf.width)

    def finish(self) -> Tensor | None:
        """Logits of the remaining frames: the end of the stream is the file's edge, so no right context is needed."""
        total = self.enc.rf.frames(self.received)
        return self._emit(total, total, self.received) if total > self.emitted else None

    def final_seconds(self) -> float:
        """Audio time up to which the emitted logits are final."""
        return self.emitted * self.enc.rf.stride / SAMPLE_RATE

    def stats(self) -> Stats:
        return {name: m.result() for name, m in self.moments.items() if m.count}

    def _samples(self, start: int, stop: int) -> np.ndarray:
        return self.buffer[start - self.buffer_start: stop - self.buffer_start]

    def _update_stats(self) -> None:
        for level in self.enc.rf.levels:
            first, count = self.next_position[level.name], level.positions(self.received)
            if count > first:
                wave = torch.from_numpy(self._samples(first * level.hop, (count - 1) * level.hop + level.width))
                with torch.inference_mode():
                    self.moments[level.name].add(self.enc.values(level, wave.to(self.enc.device)[None], self.stats()))
                self.next_position[level.name] = count

    def _emit(self, b: int, e: int, stop: int) -> Tensor:
        rf, a = self.enc.rf, self.emitted
        s = max(0, a - self.enc.left)
        logits = self.enc.logits(self._samples(s * rf.stride, stop), self.stats())
        if logits.shape[0] != e - s:
            raise RuntimeError(f"expected {e - s} frames, got {logits.shape[0]}")
        self.emitted = b
        keep = min([max(0, b - self.enc.left) * rf.stride]
                   + [self.next_position[lv.name] * lv.hop for lv in rf.levels])
        self.buffer, self.buffer_start = self.buffer[keep - self.buffer_start:], keep
        return logits[a - s: b - s]
