"""SEANet convolutional encoder/decoder (EnCodec / SpeechTokenizer lineage), causal or non-causal.

Shapes: waveform ``(batch, 1, samples)`` <-> features ``(batch, channels, frames)`` with
``frames = samples / hop`` (callers pad ``samples`` to a multiple of ``hop``). Convolutions are weight-normalized
(no batch statistics, so every output position depends only on its receptive field -- what makes chunked
encoding exact). A causal conv pads on the left only; a non-causal one pads both sides.

Memory layout: for inference (:meth:`SEANetEncoder.set_channels_last`, which ``Codec.fold_for_inference``
calls; the decoder has the same) the encoder keeps its few-channel, high-rate stages channels-last,
``(batch, time, channels)``, and runs their convolutions as oneDNN's NHWC conv2d; it switches to
``(batch, channels, time)`` once the width reaches :data:`CHANNELS_LAST_BELOW`. Measured on a 2-core Zen 4 CPU
in bf16 (batch 16 x 5 s, each conv alone): 64->128 k4/s2 at 16 kHz 173 -> 106 ms, 128->64 k3 at 8 kHz
121 -> 77 ms, 128->256 k8/s4 280 -> 208 ms, 256->512 k10/s5 274 -> 218 ms; but 512->1024 k16/s8 158 -> 203 ms
and 2048->1024 k7 at 50 Hz 275 -> 366 ms, where the channels-first kernels are the faster ones. The layout
changes no result beyond float rounding. Training stays channels-first: the demo codec's forward + backward was
no faster channels-last (1-4 % slower, within this machine's noise).

bf16 on CPU: each distinct convolution configuration (kind, shape, layout) is checked once per process against
float32 on the CPU that runs it, and one that CPU computes wrongly runs in float32 (:mod:`seqwin.cpu_bf16`:
torch 2.9.1's AMX bf16 convolutions are wrong for some few-channel shapes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from seqwin.cpu_bf16 import bf16_is_sound, runs_in_bf16_on_cpu

# Encoder stages narrower than this run channels-last at inference (see the module docstring for the numbers).
CHANNELS_LAST_BELOW = 512


class SConv1d(nn.Module):
    """Conv1d whose output length is ``ceil(len / stride)`` for lengths that are multiples of ``stride``.

    With ``channels_last`` set (:meth:`SEANetEncoder.set_channels_last`) it takes and returns ``(B, T, C)``
    instead of ``(B, C, T)``: same weights, same result."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 causal: bool = False) -> None:
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(cin, cout, kernel, stride=stride, dilation=dilation))
        self.padding_total = (kernel - 1) * dilation + 1 - stride
        self.causal = causal
        self.stride = stride
        self.channels_last = False
        # samples of left/right context each output needs, in this layer's input resolution
        self.context = (self.padding_total, 0) if causal else (self.padding_total - self.padding_total // 2,
                                                               self.padding_total // 2)

    def forward(self, x: Tensor) -> Tensor:
        return _checked_conv(self, x)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        dilation = self.conv.dilation[0]
        left, right = self.context
        # The symmetric part is the convolution's own zero padding: F.pad would write a padded copy of x (and of
        # its gradient) at every layer (2-6 % of the demo codec's training step on a 2-core Zen 3).
        both = min(left, right)
        if not self.channels_last:
            if left != right:
                x = F.pad(x, (left - both, right - both))
            return F.conv1d(x, weight, bias, stride=self.stride, padding=both, dilation=dilation)
        if left != right:
            x = F.pad(x, (0, 0, left - both, right - both))
        # (B, T, C) viewed as an NHWC image of height 1; the weight as (C_out, C_in, 1, k) in the same format
        weight = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x.transpose(1, 2).unsqueeze(2), weight, bias, stride=(1, self.stride), padding=(0, both),
                     dilation=(1, dilation))
        # a one-channel input makes both formats the same and conv2d answers channels-first: make it (B, T, C)
        return y.squeeze(2).transpose(1, 2).contiguous()

    def _bf16_sound(self, weight: Tensor) -> bool:
        cout, cin, kernel = weight.shape
        time = 8 * self.stride + sum(self.context)  # 8 outputs: on CPUs without bf16 instructions it is slow
        key = ("conv1d", cin, cout, kernel, self.stride, self.conv.dilation[0], self.context, self.channels_last)
        x_shape = (1, time, cin) if self.channels_last else (1, cin, time)
        return bf16_is_sound(key, [x_shape, tuple(weight.shape), (cout,)], self._conv)


class SConvTranspose1d(nn.Module):
    """ConvTranspose1d that upsamples by exactly ``stride``; a causal one trims the surplus on the right."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, causal: bool = False) -> None:
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(cin, cout, kernel, stride=stride))
        self.stride = stride
        total = kernel - stride
        self.trim = (0, total) if causal else (total - total // 2, total // 2)
        self.channels_last = False  # as SConv1d's

    def forward(self, x: Tensor) -> Tensor:
        return _checked_conv(self, x)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        left, right = self.trim
        if not self.channels_last:
            y = F.conv_transpose1d(x, weight, bias, stride=self.stride)
            return y[..., left: y.shape[-1] - right]
        weight = weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        y = F.conv_transpose2d(x.transpose(1, 2).unsqueeze(2), weight, bias, stride=(1, self.stride))
        y = y.squeeze(2).transpose(1, 2)  # (B, T, C)
        return y[:, left: y.shape[1] - right].contiguous()

    def _bf16_sound(self, weight: Tensor) -> bool:
        cin, cout, kernel = weight.shape
        key = ("conv_transpose1d", cin, cout, kernel, self.stride, self.trim, self.channels_last)
        x_shape = (1, 8, cin) if self.channels_last else (1, cin, 8)
        return bf16_is_sound(key, [x_shape, tuple(weight.shape), (cout,)], self._conv)


def _checked_conv(layer: SConv1d | SConvTranspose1d, x: Tensor) -> Tensor:
    """``layer``'s convolution, in float32 where bf16 would run a configuration this CPU gets wrong
    (:mod:`seqwin.cpu_bf16`)."""
    weight, bias = layer.conv.weight, layer.conv.bias
    if runs_in_bf16_on_cpu(x, weight) and not layer._bf16_sound(weight):
        with torch.autocast("cpu", enabled=False):
            return layer._conv(x.float(), weight.float(), bias.float())
    return layer._conv(x, weight, bias)


class ResidualUnit(nn.Module):
    """ELU -> dilated conv -> ELU -> 1x1 conv, plus the identity (SEANet's ``true_skip``)."""

    def __init__(self, dim: int, kernel: int, dilation: int, causal: bool) -> None:
        super().__init__()
        hidden = dim // 2  # SEANet's compress=2
        self.dim = dim
        self.channels_last = False
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

    def set_channels_last(self, below: int = CHANNELS_LAST_BELOW) -> None:
        """Run the layers whose input is narrower than ``below`` channels-last (``below=0``: none, as built)."""
        _set_channels_last(self.layers, below)

    def forward(self, wav: Tensor, valid: Tensor | None = None) -> Tensor:
        """``wav (B, 1, T)``; ``valid``: per-row valid samples (multiples of the hop), ``None`` when no row is
        padded. Returns ``(B, C, F)`` (a transposed view where the last stage ran channels-last)."""
        return _run_masked(self.layers, wav, valid, channels_last=False)


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
        return _run_masked(self.layers, features, valid, channels_last=False)

    def set_channels_last(self, below: int = CHANNELS_LAST_BELOW) -> None:
        """As :meth:`SEANetEncoder.set_channels_last`. Measured alone (fp32, batch 16 x 5 s): transposed conv
        128->64 s2 796 -> 321 ms, residual convs 20-35 % faster, transposed 256->128 s4 853 -> 948 ms."""
        _set_channels_last(self.layers, below)


def _set_channels_last(layers: nn.Sequential, below: int) -> None:
    for layer in layers:
        if isinstance(layer, (SConv1d, SConvTranspose1d)):
            layer.channels_last = layer.conv.in_channels < below
        elif isinstance(layer, ResidualUnit):  # the whole unit in one layout: its block does not transpose
            layer.channels_last = layer.dim < below
            for conv in layer.block:
                if isinstance(conv, SConv1d):
                    conv.channels_last = layer.channels_last


def _run_masked(layers: nn.Sequential, x: Tensor, valid: Tensor | None, *, channels_last: bool) -> Tensor:
    """Run ``layers`` re-zeroing each row's padding after every conv block, so a padded row sees exactly the zeros
    a lone file gets from the convolutions' own padding: batched outputs equal one-file outputs.

    ``x`` starts in the layout ``channels_last`` says; it is transposed where a layer wants the other one (ELUs
    take either), and comes back in the same layout it started in."""
    start = channels_last
    for layer in layers:
        wants = getattr(layer, "channels_last", channels_last)
        if wants != channels_last:
            x = x.transpose(1, 2).contiguous()
            channels_last = wants
        x = layer(x)
        if valid is None:
            continue
        if isinstance(layer, SConv1d):
            valid = valid // layer.stride
        elif isinstance(layer, SConvTranspose1d):
            valid = valid * layer.stride
        if isinstance(layer, (SConv1d, SConvTranspose1d, ResidualUnit)):
            _zero_tails(x, valid, time_dim=1 if channels_last else 2)
    return x if channels_last == start else x.transpose(1, 2)


def _zero_tails(x: Tensor, valid: Tensor, time_dim: int) -> None:
    """Zero each row's frames from ``valid[row]`` on, in place: batches are sorted by length, so this touches
    little more than the padding (a mask multiply would read and write the whole activation, every layer)."""
    size = x.shape[time_dim]
    for row, keep in enumerate(valid.tolist()):
        if keep < size:
            x[row].narrow(time_dim - 1, keep, size - keep).zero_()


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
