"""The three FuseCodec variants' trainable parts and their frame-level teacher targets.

- ``fusion``: :class:`TeacherFusion` mixes the latent ``Z (B, T, D)`` with the global semantic and contextual
  vectors by cross-attention (queries: frames; keys/values: the two teacher vectors projected to ``D``), projects
  the result and adds it to ``Z`` before quantization. Modality dropout drops each branch with probability ``p``
  in training; a dropped branch is masked out of the keys, and with both dropped (or no teacher at all, as in
  ``seqwin tokenize``) the fusion adds nothing.
- ``distill`` and ``context_align``: :class:`TeacherProjection` maps RVQ level 1 to the teacher dimension; the
  losses are in :mod:`seqwin.models.codec.losses`. :func:`align_tokens_to_frames` is ContextAlign's dynamic
  window and :func:`stretch_to_frames` puts per-token or per-teacher-frame features on the codec's frame grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class TeacherBatch:
    """Teacher features for one batch, already on the codec's frame grid. Any part may be ``None``."""

    semantic: Tensor | None = None  # (B, T, Dt) per-frame semantic features
    semantic_global: Tensor | None = None  # (B, Dt)
    context: Tensor | None = None  # (B, T, Dt) per-frame contextual features (tokens aligned to frames)
    context_global: Tensor | None = None  # (B, Dt)
    context_present: Tensor | None = None  # (B,) bool: False for rows whose transcript has no word


class TeacherFusion(nn.Module):
    def __init__(self, latent_dim: int, teacher_dim: int, heads: int, modality_dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.modality_dropout = modality_dropout
        self.semantic_in = nn.Linear(teacher_dim, latent_dim)
        self.context_in = nn.Linear(teacher_dim, latent_dim)
        self.q = nn.Linear(latent_dim, latent_dim)
        self.kv = nn.Linear(latent_dim, 2 * latent_dim)
        self.out = nn.Linear(latent_dim, latent_dim)

    def forward(self, z: Tensor, teachers: TeacherBatch | None) -> Tensor:
        batch, frames, dim = z.shape
        keys, present = [], []
        t = teachers or TeacherBatch()
        for vec, given, proj in ((t.semantic_global, None, self.semantic_in),
                                 (t.context_global, t.context_present, self.context_in)):
            if vec is None:
                keys.append(z.new_zeros(batch, dim))
                present.append(torch.zeros(batch, dtype=torch.bool, device=z.device))
                continue
            keys.append(proj(vec.to(z.dtype)))
            keep = torch.ones(batch, dtype=torch.bool, device=z.device) if given is None else given.to(z.device)
            if self.training and self.modality_dropout > 0:
                keep = keep & (torch.rand(batch, device=z.device) >= self.modality_dropout)
            present.append(keep)
        mem = torch.stack(keys, dim=1)  # (B, 2, D): the two global teacher tokens
        mask = torch.stack(present, dim=1)  # (B, 2)
        head_dim = dim // self.heads
        q = self.q(z).view(batch, frames, self.heads, head_dim).transpose(1, 2)
        k, v = self.kv(mem).view(batch, 2, 2, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / head_dim**0.5  # (B, H, T, 2)
        scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
        # a row with both branches dropped has no key: softmax would be NaN, the fusion contributes zero instead
        weights = torch.nan_to_num(scores.softmax(-1), nan=0.0)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, frames, dim)
        return z + self.out(mixed) * mask.any(1)[:, None, None]


class TeacherProjection(nn.Module):
    """Linear map from RVQ level 1 (latent dim) to the teacher dimension (the paper's 1024 -> 768)."""

    def __init__(self, latent_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(latent_dim, teacher_dim)

    def forward(self, first_level: Tensor) -> Tensor:
        return self.proj(first_level)


def stretch_to_frames(features: Tensor, frames: int) -> Tensor:
    """Linearly resample ``(N, D)`` features (teacher frames or tokens) to ``(frames, D)``."""
    if features.shape[0] == frames:
        return features
    if features.shape[0] == 1:
        return features.expand(frames, -1)
    return F.interpolate(features.T[None], size=frames, mode="linear", align_corners=True)[0].T


def align_tokens_to_frames(tokens: Tensor, frames: int) -> Tensor:
    """ContextAlign's dynamic window: with ``n`` tokens and ``T`` frames, ``w = floor(T / n)``; token ``i`` covers
    frames ``[i*w, (i+1)*w)`` and the last token also the remaining ``T - n*w`` frames. With more tokens than
    frames (``w = 0``) frame ``t`` averages the tokens ``[floor(t*n/T), floor((t+1)*n/T))``."""
    n = tokens.shape[0]
    if n == 0:
        raise ValueError("no text tokens to align")
    window = frames // n
    if window >= 1:
        index = torch.clamp(torch.arange(frames, device=tokens.device) // window, max=n - 1)
        return tokens[index]
    edges = (torch.arange(frames + 1, device=tokens.device) * n) // frames
    sums = torch.cat((tokens.new_zeros(1, tokens.shape[1]), tokens.cumsum(0)))
    return (sums[edges[1:]] - sums[edges[:-1]]) / (edges[1:] - edges[:-1]).clamp_min(1)[:, None].to(tokens.dtype)
