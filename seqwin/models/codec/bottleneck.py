"""Sequence models between the SEANet convolutions and the latent: the paper's BiLSTM, or sliding-window attention.

Both take and return ``(batch, frames, dim)`` with ``seq_lens`` (valid frames per row). The attention bottleneck
uses :func:`seqwin.attention.sliding_window_attention` with a bounded ``(left, right)`` window, so its receptive
field is finite: ``right = 0`` makes the whole codec causal and chunked encoding exact (see ``Codec.encode_chunked``).

Why the attention blocks normalise ``x - windowed_mean(x)`` and have no final LayerNorm: a SEANet output is mostly a
per-channel offset that is constant over time, with small per-frame variation. A LayerNorm of it is a unit-scale,
nearly time-constant vector; a linear layer trained by Adam on such an input moves its output along that constant
direction by about ``lr * fan_in`` per step, so within ~50 steps the latent became a large constant, the RVQ saw
one point and every level collapsed (eval perplexity 1-3 per level; measured on the mini corpus, also with
zero-initialised branches, branch biases frozen at zero, attention on the encoder side only, and 10x lower
bottleneck LR). Removing the windowed time-mean before each pre-norm leaves the blocks only the per-frame variation;
the residual stream keeps the offset and the output is the stream itself, at the SEANet's own scale. 200 steps on
mini: eval perplexity 410...200 per level, SI-SNR -8.7 dB, vs 1.5...1.4 and -39 dB without the centring.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from seqwin.attention import sliding_window_attention


class LSTMBottleneck(nn.Module):
    """2-layer bidirectional LSTM (SpeechTokenizer); output width is ``2 * dim``. Padding is packed away so the
    backward direction of each row starts at its own last valid frame.

    :meth:`split_directions` (inference): padded batches run each layer's two directions as separate LSTMs on the
    padded tensor, the backward one on rows reversed within their own lengths. Padding then only ever follows a
    row's valid frames, so their outputs are the packed ones. CPU LSTMs on packed sequences leave oneDNN for a
    per-step kernel: profiling ``seqwin tokenize --bf16`` of the paper model on 318 s of 3-7 s files (2-core CPU),
    the BiLSTM took 5.4 s packed and 5.0 s split (0.013 s per audio second on equal-length batches)."""

    includes_input = False

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers=num_layers, batch_first=True, bidirectional=True)
        self.out_dim = 2 * dim
        # per layer: (forward, backward) one-direction LSTMs sharing self.lstm's parameters; a plain list, so
        # they are neither submodules nor in the state dict
        self._directions: list[tuple[nn.LSTM, nn.LSTM]] | None = None

    def split_directions(self) -> None:
        """Build the one-direction LSTMs (after any dtype change: they share the parameter tensors)."""
        lstm = self.lstm
        self._directions = []
        for layer in range(lstm.num_layers):
            pair = []
            for suffix in ("", "_reverse"):
                one = nn.LSTM(lstm.input_size if layer == 0 else 2 * lstm.hidden_size, lstm.hidden_size,
                              batch_first=True, device="meta")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    setattr(one, f"{name}_l0", getattr(lstm, f"{name}_l{layer}{suffix}"))
                pair.append(one.eval())
            self._directions.append((pair[0], pair[1]))

    def forward(self, x: Tensor, seq_lens: Tensor) -> Tensor:
        frames = x.shape[1]
        if bool((seq_lens == frames).all()):
            return self.lstm(x)[0]
        if self._directions is not None:
            return self._split_forward(x, seq_lens)
        packed = nn.utils.rnn.pack_padded_sequence(x, seq_lens.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=frames)[0]

    def _split_forward(self, x: Tensor, seq_lens: Tensor) -> Tensor:
        frames = x.shape[1]
        t = torch.arange(frames, device=x.device)[None]
        lens = seq_lens.to(x.device)[:, None]
        # frame t of row b <-> frame len_b - 1 - t within the row; padding stays where it is (an involution)
        order = torch.where(t < lens, lens - 1 - t, t)

        def flip(h: Tensor) -> Tensor:
            return h.gather(1, order[..., None].expand_as(h))

        for forward, backward in self._directions:
            x = torch.cat([forward(x)[0], flip(backward(flip(x))[0])], dim=-1)
        return x * (t < lens)[..., None].to(x.dtype)  # zeros past each row's end, as pad_packed_sequence gives


def windowed_mean(x: Tensor, mask: Tensor, window: tuple[int, int]) -> Tensor:
    """Mean of ``x (B, F, C)`` over frames ``t - left .. t + right`` that are valid (``mask (B, F)``), per frame.

    Pooling (not a cumulative sum) so every frame's mean is summed in the same order wherever the file starts: a
    chunk's codes must equal the whole file's bit for bit.
    """
    left, right = window
    size = left + right + 1
    valid = mask.to(x.dtype)[:, None]  # (B, 1, F)
    summed = F.avg_pool1d(F.pad(x.transpose(1, 2) * valid, (left, right)), size, stride=1)
    counted = F.avg_pool1d(F.pad(valid, (left, right)), size, stride=1)
    return (summed / counted.clamp_min(1.0 / size)).transpose(1, 2)


class _AttentionBlock(nn.Module):
    """Pre-norm transformer block: sliding-window self-attention with rotary positions, then a GELU MLP; each
    branch sees the LayerNorm of its input minus the input's windowed time-mean (see the module docstring)."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int], ffn_mult: int, dropout_p: float) -> None:
        super().__init__()
        self.heads, self.window, self.dropout_p = heads, window, dropout_p
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))

    def forward(self, x: Tensor, seq_lens: Tensor, mask: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        batch, frames, dim = x.shape
        head_dim = dim // self.heads
        h = self.norm1(x - windowed_mean(x, mask, self.window))
        q, k, v = self.qkv(h).view(batch, frames, 3, self.heads, head_dim).unbind(2)
        q, k = _rotate(q, rope), _rotate(k, rope)
        attn = sliding_window_attention(q, k, v, window=self.window, seq_lens=seq_lens,
                                        dropout_p=self.dropout_p if self.training else 0.0)
        x = x + self.proj(attn.reshape(batch, frames, dim))
        return x + self.mlp(self.norm2(x - windowed_mean(x, mask, self.window)))


def _rope(frames: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    # Rotary positions are relative: a frame's output depends on distances only, not on where a chunk starts,
    # which keeps chunked encoding identical to whole-file encoding.
    half = head_dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device, dtype=torch.float32) / half)
    angles = torch.arange(frames, device=device, dtype=torch.float32)[:, None] * freqs[None]
    return angles.cos()[None, :, None], angles.sin()[None, :, None]


def _rotate(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    cos, sin = rope
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half: 2 * half], x[..., 2 * half:]
    # back to x's dtype: under bf16 autocast the float32 table would promote q and k but not v
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest), dim=-1).to(x.dtype)


class AttentionBottleneck(nn.Module):
    """Sliding-window transformer; returns its residual stream (input included), width ``dim``. Padded frames are
    never attended to and never enter a windowed mean."""

    includes_input = True

    def __init__(self, dim: int, num_layers: int, heads: int, window: tuple[int, int], ffn_mult: int,
                 dropout_p: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_AttentionBlock(dim, heads, window, ffn_mult, dropout_p)
                                    for _ in range(num_layers))
        self.head_dim = dim // heads
        self.window = window
        self.out_dim = dim

    def forward(self, x: Tensor, seq_lens: Tensor) -> Tensor:
        # The stream stays float32 under bf16 autocast: centring subtracts a large offset, and in bf16 (8 bits of
        # mantissa) that cancellation would leave mostly rounding error of the offset.
        x = x.float()
        rope = _rope(x.shape[1], self.head_dim, x.device)
        mask = torch.arange(x.shape[1], device=x.device)[None] < seq_lens.to(x.device)[:, None]
        for block in self.blocks:
            x = block(x, seq_lens, mask, rope)
        return x

    def frame_context(self) -> tuple[int, int]:
        """Frames of (left, right) context one output depends on, through all layers: per block, the attention's
        keys are centred over their own window (2 windows) and the MLP's input over one more (3 windows)."""
        return 3 * self.window[0] * len(self.blocks), 3 * self.window[1] * len(self.blocks)

