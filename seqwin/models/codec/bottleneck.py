"""Sequence models between the SEANet convolutions and the latent: the paper's BiLSTM, or sliding-window attention.

Both take and return ``(batch, frames, dim)`` with ``seq_lens`` (valid frames per row). The attention bottleneck
uses :func:`seqwin.attention.sliding_window_attention` with a bounded ``(left, right)`` window, so its receptive
field is finite: ``right = 0`` makes the whole codec causal and chunked encoding exact (see ``Codec.encode_chunked``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from seqwin.attention import sliding_window_attention


class LSTMBottleneck(nn.Module):
    """2-layer bidirectional LSTM (SpeechTokenizer); output width is ``2 * dim``. Padding is packed away so the
    backward direction of each row starts at its own last valid frame."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers=num_layers, batch_first=True, bidirectional=True)
        self.out_dim = 2 * dim

    def forward(self, x: Tensor, seq_lens: Tensor) -> Tensor:
        frames = x.shape[1]
        if bool((seq_lens == frames).all()):
            return self.lstm(x)[0]
        packed = nn.utils.rnn.pack_padded_sequence(x, seq_lens.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=frames)[0]


class _AttentionBlock(nn.Module):
    """Pre-norm transformer block: sliding-window self-attention with rotary positions, then a GELU MLP."""

    def __init__(self, dim: int, heads: int, window: tuple[int, int], ffn_mult: int, dropout_p: float) -> None:
        super().__init__()
        self.heads, self.window, self.dropout_p = heads, window, dropout_p
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(), nn.Linear(ffn_mult * dim, dim))

    def forward(self, x: Tensor, seq_lens: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        batch, frames, dim = x.shape
        head_dim = dim // self.heads
        q, k, v = self.qkv(self.norm1(x)).view(batch, frames, 3, self.heads, head_dim).unbind(2)
        q, k = _rotate(q, rope), _rotate(k, rope)
        attn = sliding_window_attention(q, k, v, window=self.window, seq_lens=seq_lens,
                                        dropout_p=self.dropout_p if self.training else 0.0)
        x = x + self.proj(attn.reshape(batch, frames, dim))
        return x + self.mlp(self.norm2(x))


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
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest), dim=-1)


class AttentionBottleneck(nn.Module):
    """Sliding-window transformer; output width is ``dim``. Padded frames are never attended to."""

    def __init__(self, dim: int, num_layers: int, heads: int, window: tuple[int, int], ffn_mult: int,
                 dropout_p: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_AttentionBlock(dim, heads, window, ffn_mult, dropout_p)
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.head_dim = dim // heads
        self.window = window
        self.out_dim = dim

    def forward(self, x: Tensor, seq_lens: Tensor) -> Tensor:
        rope = _rope(x.shape[1], self.head_dim, x.device)
        for block in self.blocks:
            x = block(x, seq_lens, rope)
        return self.norm(x)

    def frame_context(self) -> tuple[int, int]:
        """Frames of (left, right) context one output depends on, through all layers."""
        return self.window[0] * len(self.blocks), self.window[1] * len(self.blocks)

