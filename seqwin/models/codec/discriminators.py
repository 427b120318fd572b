"""Discriminators: multi-period (MPD, HiFi-GAN), multi-scale (MSD, MelGAN) and multi-scale STFT (MS-STFT, EnCodec).

Each sub-discriminator returns ``(logits, feature_maps)``; :class:`Discriminators` runs them all on a waveform
``(B, T)`` and returns two lists of equal length. Widths are configurable so a demo-size model trains on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

_SLOPE = 0.2


def _conv_stack(convs: nn.ModuleList, post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The body every sub-discriminator shares: leaky-ReLU conv layers, then a linear output layer; returns the
    flattened logits and every layer's output (for the feature-matching loss)."""
    feats = []
    for conv in convs:
        x = F.leaky_relu(conv(x), _SLOPE)
        feats.append(x)
    x = post(x)
    feats.append(x)
    return x.flatten(1), feats


@dataclass
class DiscriminatorConfig:
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    mpd_channels: int = 32
    """Width of the first MPD layer (HiFi-GAN: 32, growing x4 per layer up to ``max_channels``)."""
    msd_scales: int = 3
    msd_channels: int = 16
    stft_ffts: tuple[int, ...] = (2048, 1024, 512, 256, 128)
    stft_channels: int = 32
    max_channels: int = 1024

    def validate(self) -> None:
        if not self.periods and self.msd_scales < 1 and not self.stft_ffts:
            raise ValueError("at least one discriminator (periods, msd_scales, stft_ffts) is needed")
        if min(self.mpd_channels, self.msd_channels, self.stft_channels, self.max_channels) < 1:
            raise ValueError("discriminator channel counts must be positive")


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, channels: int, max_channels: int) -> None:
        super().__init__()
        self.period = period
        widths = [1] + [min(channels * 4**i, max_channels) for i in range(4)]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(cin, cout, (5, 1), (3, 1), padding=(2, 0)))
            for cin, cout in zip(widths[:-1], widths[1:], strict=True)
        )
        self.convs.append(weight_norm(nn.Conv2d(widths[-1], widths[-1], (5, 1), 1, padding=(2, 0))))
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        batch, samples = wav.shape
        x = F.pad(wav, (0, (-samples) % self.period), mode="reflect" if samples > self.period else "constant")
        x = x.view(batch, 1, -1, self.period)
        return _conv_stack(self.convs, self.post, x)


class ScaleDiscriminator(nn.Module):
    def __init__(self, channels: int, max_channels: int) -> None:
        super().__init__()
        c = channels
        spec = [(1, c, 15, 1, 1), (c, 4 * c, 41, 4, 4), (4 * c, 16 * c, 41, 4, 16), (16 * c, 64 * c, 41, 4, 64),
                (64 * c, 64 * c, 41, 4, 256), (64 * c, 64 * c, 5, 1, 1)]
        self.convs = nn.ModuleList()
        for cin, cout, k, s, g in spec:
            cin, cout = min(cin, max_channels), min(cout, max_channels)
            groups = max(1, min(g, cin // 4 if cin >= 4 else 1))
            while cin % groups or cout % groups:
                groups -= 1
            self.convs.append(weight_norm(nn.Conv1d(cin, cout, k, s, padding=k // 2, groups=groups)))
        self.post = weight_norm(nn.Conv1d(min(64 * c, max_channels), 1, 3, 1, padding=1))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = wav[:, None]
        return _conv_stack(self.convs, self.post, x)


class STFTDiscriminator(nn.Module):
    """EnCodec's: 2-D convs over the complex STFT (real and imaginary parts as two input channels)."""

    def __init__(self, n_fft: int, channels: int, max_channels: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        c = channels
        layers = [weight_norm(nn.Conv2d(2, c, (3, 9), padding=(1, 4)))]
        for dilation in (1, 2, 4):
            layers.append(weight_norm(nn.Conv2d(c, min(c, max_channels), (3, 9), stride=(1, 2),
                                                dilation=(dilation, 1), padding=(dilation, 4))))
        layers.append(weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(layers)
        self.post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, wav: Tensor) -> tuple[Tensor, list[Tensor]]:
        spec = torch.stft(wav, self.n_fft, self.hop, window=self.window, return_complex=True, normalized=True)
        x = torch.stack((spec.real, spec.imag), dim=1).transpose(2, 3)  # (B, 2, time, freq)
        return _conv_stack(self.convs, self.post, x)


class Discriminators(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        cfg.validate()
        self.mpd = nn.ModuleList(PeriodDiscriminator(p, cfg.mpd_channels, cfg.max_channels) for p in cfg.periods)
        self.msd = nn.ModuleList(ScaleDiscriminator(cfg.msd_channels, cfg.max_channels)
                                 for _ in range(cfg.msd_scales))
        self.stft = nn.ModuleList(STFTDiscriminator(n, cfg.stft_channels, cfg.max_channels) for n in cfg.stft_ffts)

    def forward(self, wav: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        logits, feats = [], []
        for d in self.mpd:
            out, f = d(wav)
            logits.append(out)
            feats.append(f)
        x = wav
        for i, d in enumerate(self.msd):
            if i:  # MelGAN: each scale sees the waveform average-pooled once more
                x = F.avg_pool1d(x[:, None], 4, 2, padding=2)[:, 0]
            out, f = d(x)
            logits.append(out)
            feats.append(f)
        for d in self.stft:
            out, f = d(wav)
            logits.append(out)
            feats.append(f)
        return logits, feats


def create_discriminators(cfg: DiscriminatorConfig) -> Discriminators:
    return Discriminators(cfg)
