"""SEANet convolutional encoder/decoder (EnCodec / SpeechTokenizer lineage), causal or non-causal.

Shapes: waveform ``(batch, 1, samples)`` <-> features ``(batch, channels, frames)`` with
``frames = samples / hop`` (callers pad ``samples`` to a multiple of ``hop``). Convolutions are weight-normalized
(no batch statistics, so every output position depends only on its receptive field -- what makes chunked
encoding exact). A causal conv pads on the left only; a non-causal one pads both sides.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm


class SConv1d(nn.Module):
    """Conv1d whose output length is ``ceil(len / stride)`` for lengths that are multiples of ``stride``."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 causal: bool = False) -> None:
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation))
        self.padding_total = (kernel - 1) * dilation + 1 - stride
        self.causal = causal
        self.stride = stride
        # samples of left/right context each output needs, in this layer's input resolution
        self.context = (self.padding_total, 0) if causal else (self.padding_total - self.padding_total // 2,
                                                               self.padding_total // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, self.context))


class SConvTranspose1d(nn.Module):
    """ConvTranspose1d that upsamples by exactly ``stride``; a causal one trims the surplus on the right."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, causal: bool = False) -> None:
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(cin, cout, kernel, stride=stride))
        self.stride = stride
        total = kernel - stride
        self.trim = (0, total) if causal else (total - total // 2, total // 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        left, right = self.trim
        return y[..., left: y.shape[-1] - right]


class ResidualUnit(nn.Module):
    """ELU -> dilated conv -> ELU -> 1x1 conv, plus the identity (SEANet's ``true_skip``)."""

    def __init__(self, dim: int, kernel: int, dilation: int, causal: bool) -> None:
        super().__init__()
        hidden = dim // 2  # SEANet's compress=2
        self.block = nn.Sequential(
            nn.ELU(), SConv1d(dim, hidden, kernel, dilation=dilation, causal=causal),
            nn.ELU(), SConv1d(hidden, dim, 1, causal=causal),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _residual_stack(dim: int, kernel: int, layers: int, dilation_base: int, causal: bool) -> list[nn.Module]:
    return [ResidualUnit(dim, kernel, dilation_base**j, causal) for j in range(layers)]


class SEANetEncoder(nn.Module):
    """``(B, 1, T) -> (B, channels * 2**len(strides), T / hop)``; the bottleneck model and the projection to the
    latent follow in :class:`~seqwin.models.codec.model.Codec`."""

    def __init__(self, channels: int, strides: tuple[int, ...], kernel: int, residual_kernel: int,
                 residual_layers: int, dilation_base: int, causal: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [SConv1d(1, channels, kernel, causal=causal)]
        width = channels
        for stride in strides:
            layers += _residual_stack(width, residual_kernel, residual_layers, dilation_base, causal)
            layers += [nn.ELU(), SConv1d(width, width * 2, 2 * stride, stride=stride, causal=causal)]
            width *= 2
        self.layers = nn.Sequential(*layers)
        self.out_channels = width

    def forward(self, wav: Tensor, valid: Tensor | None = None) -> Tensor:
        """``valid``: per-row valid samples (multiples of the hop); ``None`` when no row is padded."""
        return _run_masked(self.layers, wav, valid)


class SEANetDecoder(nn.Module):
    """``(B, channels * 2**len(strides), frames) -> (B, 1, frames * hop)``, mirroring the encoder."""

    def __init__(self, channels: int, strides: tuple[int, ...], kernel: int, residual_kernel: int,
                 residual_layers: int, dilation_base: int, causal: bool) -> None:
        super().__init__()
        width = channels * 2 ** len(strides)
        layers: list[nn.Module] = []
        for stride in reversed(strides):
            layers += [nn.ELU(), SConvTranspose1d(width, width // 2, 2 * stride, stride, causal=causal)]
            width //= 2
            layers += _residual_stack(width, residual_kernel, residual_layers, dilation_base, causal)
        layers += [nn.ELU(), SConv1d(width, 1, kernel, causal=causal)]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor, valid: Tensor | None = None) -> Tensor:
        """``valid``: per-row valid frames; ``None`` when no row is padded."""
        return _run_masked(self.layers, features, valid)


def _run_masked(layers: nn.Sequential, x: Tensor, valid: Tensor | None) -> Tensor:
    """Run ``layers`` re-zeroing each row's padding after every conv block, so a padded row sees exactly the zeros
    a lone file gets from the convolutions' own padding: batched outputs equal one-file outputs."""
    if valid is None:
        return layers(x)
    for layer in layers:
        x = layer(x)
        if isinstance(layer, SConv1d):
            valid = valid // layer.stride
        elif isinstance(layer, SConvTranspose1d):
            valid = valid * layer.stride
        if isinstance(layer, (SConv1d, SConvTranspose1d, ResidualUnit)):
            x = x * (torch.arange(x.shape[-1], device=x.device)[None] < valid[:, None])[:, None].to(x.dtype)
    return x


def receptive_context(module: nn.Module) -> tuple[int, int]:
    """(left, right) input samples an encoder output frame depends on beyond its own hop, summed over convs.

    Walks the convolutions in order, scaling each one's context by the downsampling before it.
    """
    left = right = 0
    scale = 1
    for sub in module.modules():
        if isinstance(sub, SConv1d):
            left += sub.context[0] * scale
            right += sub.context[1] * scale
            scale *= sub.stride
    return left, right
