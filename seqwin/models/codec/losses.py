"""FuseCodec losses and their weights (spec: waveform L1 x500, multi-scale log-mel L1, feature matching x2, LSGAN
adversarial x1, commitment x10, distillation x120; the mel weight, which the paper leaves open, is
SpeechTokenizer/HiFi-GAN's 45).

All losses are means, so their scale does not depend on batch size, segment length or the number of
discriminators: the adversarial and feature-matching terms average over sub-discriminators (and layers).
Signs: every term is >= 0 and smaller is better for the party that minimises it -- the generator minimises
``(1 - D(fake))**2``, the discriminator ``(1 - D(real))**2 + D(fake)**2``; the teacher terms
``-log sigmoid(cos)`` fall as the projected RVQ level 1 turns toward the teacher.

Every loss computes in float32, also when the model runs under bf16 autocast (``trainer.precision: bf16``): a log-mel
of a bf16 filterbank product, or a bf16 cosine, would round the very differences the loss measures.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchaudio.transforms import MelSpectrogram

_Fn = TypeVar("_Fn", bound=Callable[..., Tensor])


def _float32(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(v) for v in value)
    return value


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (list, tuple)):
        return next((t for t in map(_first_tensor, value) if t is not None), None)
    return None


def in_float32(fn: _Fn) -> _Fn:
    """``fn`` with autocast off and its floating-point tensor arguments (also inside lists) cast to float32."""

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Tensor:
        tensor = _first_tensor(args)
        device = tensor.device.type if tensor is not None else "cpu"
        with torch.autocast(device, enabled=False):
            return fn(*_float32(args))

    return wrapper  # type: ignore[return-value]


@dataclass
class LossWeights:
    waveform: float = 500.0
    mel: float = 45.0
    feature_matching: float = 2.0
    adversarial: float = 1.0
    commitment: float = 10.0
    distill: float = 120.0
    """Weight of the teacher term: distillation (distill variant) or alignment (context_align variant)."""
    mel_start: float | None = None
    """The mel weight at step 0, rising linearly to ``mel`` at step ``mel_ramp_steps``; None: ``mel`` from the
    start. A high mel weight from step 0 can let the phase go before the waveform term has set it (a run whose
    SI-SNR collapsed to -45 dB); starting low avoids that, but delays what the mel term buys in intelligibility
    (measured in docs/design/codec-demo.md, "The loss balance")."""
    mel_ramp_steps: int = 0

    def validate(self) -> None:
        for name in TERMS:
            if (value := getattr(self, name)) < 0:
                raise ValueError(f"{name} weight must be >= 0, got {value}")
        if self.mel_start is not None and (self.mel_start < 0 or self.mel_ramp_steps < 1):
            raise ValueError(f"mel_start needs mel_start >= 0 and mel_ramp_steps >= 1, got {self.mel_start} and "
                             f"{self.mel_ramp_steps}")

    def at_step(self, step: int) -> LossWeights:
        """The weights to use at training step ``step`` (only the mel weight changes over steps)."""
        if self.mel_start is None or step >= self.mel_ramp_steps:
            return self
        return replace(self, mel=self.mel_start + (self.mel - self.mel_start) * step / self.mel_ramp_steps)


TERMS = ("waveform", "mel", "feature_matching", "adversarial", "commitment", "distill")
"""The :class:`LossWeights` fields that weigh a generator term (the others schedule them)."""


class MultiScaleMelLoss(nn.Module):
    """Mean over scales of the L1 distance between log-mel spectrograms (``log(max(mel, 1e-5))``).

    A scale gets ``min(n_mels, n_fft // 8)`` mel bands: a short window has few FFT bins, and a mel filter narrower
    than a bin would be empty (DAC's scales keep about n_fft / 6 bands for the same reason). The short windows are
    what time onsets and bursts; the long ones resolve the harmonics."""

    def __init__(self, sample_rate: int, ffts: tuple[int, ...] = (512, 1024, 2048), n_mels: int = 64) -> None:
        super().__init__()
        self.mels = nn.ModuleList(
            MelSpectrogram(sample_rate, n_fft=n, hop_length=n // 4, n_mels=min(n_mels, n // 8), power=1.0,
                           center=True, f_min=0.0, f_max=sample_rate / 2, norm="slaney", mel_scale="slaney")
            for n in ffts
        )

    def log_mels(self, wav: Tensor) -> list[Tensor]:
        return [torch.log(mel(wav).clamp_min(1e-5)) for mel in self.mels]

    @in_float32
    def forward(self, recon: Tensor, target: Tensor) -> Tensor:
        losses = [F.l1_loss(r, t) for r, t in zip(self.log_mels(recon), self.log_mels(target), strict=True)]
        return torch.stack(losses).mean()


@in_float32
def waveform_l1(recon: Tensor, target: Tensor) -> Tensor:
    return F.l1_loss(recon, target)


@in_float32
def discriminator_loss(real_logits: list[Tensor], fake_logits: list[Tensor]) -> Tensor:
    """LSGAN: mean over sub-discriminators of ``mean((1 - D(real))^2) + mean(D(fake)^2)``."""
    terms = [((1 - r) ** 2).mean() + (f**2).mean() for r, f in zip(real_logits, fake_logits, strict=True)]
    return torch.stack(terms).mean()


@in_float32
def generator_adversarial_loss(fake_logits: list[Tensor]) -> Tensor:
    """LSGAN: mean over sub-discriminators of ``mean((1 - D(fake))^2)``."""
    return torch.stack([((1 - f) ** 2).mean() for f in fake_logits]).mean()


@in_float32
def feature_matching_loss(real_feats: list[list[Tensor]], fake_feats: list[list[Tensor]]) -> Tensor:
    """Mean over sub-discriminators and layers of ``mean(|f_real - f_fake|)``; real features are constants."""
    terms = [F.l1_loss(f, r.detach()) for rs, fs in zip(real_feats, fake_feats, strict=True)
             for r, f in zip(rs, fs, strict=True)]
    return torch.stack(terms).mean()


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


@in_float32
def distill_loss(pred: Tensor, mask: Tensor, teachers: list[tuple[Tensor, Tensor | None]]) -> Tensor:
    """FuseCodec-Distill, per frame: ``-log sigmoid(mean_k cos(pred_t, teacher_k,t))`` -- the paper's
    ``1/2 [cos(Q', S) + cos(Q', C)]`` with both teachers -- averaged over valid frames (``mask (B, T)``).

    ``teachers``: ``(features (B, T, D), present (B,) bool or None)`` per teacher; a row averages over the teachers
    present for it, and rows with none are left out.
    """
    if not teachers:
        raise ValueError("distill_loss needs at least one teacher")
    cos_sum = pred.new_zeros(pred.shape[:2])
    count = pred.new_zeros(pred.shape[0], 1)
    for feats, present in teachers:
        weight = pred.new_ones(pred.shape[0], 1) if present is None else present.to(pred.dtype)[:, None]
        cos_sum = cos_sum + weight * F.cosine_similarity(pred, feats.to(pred.dtype), dim=-1)
        count = count + weight
    frame_mask = mask.to(pred.dtype) * (count > 0).to(pred.dtype)
    return _masked_mean(-F.logsigmoid(cos_sum / count.clamp_min(1)), frame_mask)


@in_float32
def context_align_loss(pred: Tensor, mask: Tensor, aligned_context: Tensor, present: Tensor | None = None) -> Tensor:
    """FuseCodec-ContextAlign: ``-log sigmoid(cos(pred_t, C*_t))`` with ``C*`` the dynamic-window-aligned text
    tokens, averaged over valid frames of the rows that have a transcript (``present (B,)``)."""
    cos = F.cosine_similarity(pred, aligned_context.to(pred.dtype), dim=-1)
    frame_mask = mask.to(pred.dtype)
    if present is not None:
        frame_mask = frame_mask * present.to(pred.dtype)[:, None]
    return _masked_mean(-F.logsigmoid(cos), frame_mask)


def generator_total(terms: dict[str, Tensor], weights: LossWeights) -> Tensor:
    """Weighted sum of the generator terms present in ``terms`` (keys from :data:`TERMS`)."""
    unknown = set(terms) - set(TERMS)
    if unknown:
        raise KeyError(f"unknown loss terms {sorted(unknown)}")
    return sum(getattr(weights, name) * value for name, value in terms.items())
