"""Masked unit prediction (HuBERT's first iteration) on the seqwin wav2vec 2.0 model, for the log-mel frontend.

Targets are discrete *units*: k-means clusters of MFCCs of the frontend's log-mel features (each encoder step's
``stack`` frames standardized together, then a DCT of every 10 ms frame's mel bins), fitted once on the training
set before training. The encoder sees the features with wav2vec 2.0's span masking, and a linear head predicts the
unit of every masked frame (cross-entropy). Unlike the contrastive task, whose targets are learned together with
the model, the targets are fixed from the first step -- they are computed from the frontend's raw features, before
its learned layer norm, and in float32 under autocast --, which is what makes a short CPU run learn something
(docs/design/wav2vec2-demo.md). The wav2vec 2.0 model itself is unchanged -- its quantizer and contrastive
projections are simply unused -- so the encoder loads into ``seqwin train asr`` like any SSL model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fairseq2.models.wav2vec2 import Wav2Vec2Masker, Wav2Vec2Model
from fairseq2.nn import BatchLayout
from torch import Tensor, nn
from torchaudio.functional import create_dct

NUM_CEPS = 13
"""MFCCs per 10 ms frame, as HuBERT's first iteration (without its deltas: the stacked frames carry the slope)."""


def mfcc_of_logmel(raw: Tensor, num_mel_bins: int) -> Tensor:
    """``(N, S, stack * num_mel_bins)`` raw log-mel features -> ``(N, S, stack * NUM_CEPS)`` float32 MFCCs. Each
    step is standardized first, as the frontend's layer norm does before its learned scale and shift (which would
    move the units as they train)."""
    n, s, width = raw.shape
    with torch.autocast(raw.device.type, enabled=False):
        feats = F.layer_norm(raw.float(), (width,))
        dct = create_dct(NUM_CEPS, num_mel_bins, norm="ortho").to(raw.device)
        mels = feats.reshape(n, s, width // num_mel_bins, num_mel_bins)
        return (mels @ dct).reshape(n, s, -1)


def fit_kmeans(points: Tensor, k: int, *, iterations: int = 30, seed: int = 0) -> Tensor:
    """``k`` centroids of ``(P, D)`` points: k-means++ seeding, then Lloyd iterations (a cluster that loses all
    its points keeps its centroid)."""
    if len(points) < k:
        raise ValueError(f"k-means needs at least {k} points, got {len(points)}")
    gen = torch.Generator().manual_seed(seed)
    points = points.float()
    centroids = points[torch.randint(len(points), (1,), generator=gen)]
    dist = torch.cdist(points, centroids).squeeze(1) ** 2
    for _ in range(1, k):
        pick = torch.multinomial(dist.clamp_min(0) + 1e-12, 1, generator=gen)
        centroids = torch.cat([centroids, points[pick]])
        dist = torch.minimum(dist, ((points - points[pick]) ** 2).sum(1))
    for _ in range(iterations):
        assign = torch.cdist(points, centroids).argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centroids)
    return centroids


@dataclass
class UnitOutput:
    loss: Tensor
    """Summed cross-entropy over the masked frames (float32)."""
    num_targets: int
    correct: Tensor
    """How many masked frames got their unit as the top prediction (0-dim)."""


class UnitPredictionModel(nn.Module):
    """A wav2vec 2.0 model trained to predict the units of its masked frames: ``head`` maps each encoder output
    to ``num_units`` logits; ``centroids`` (``num_units, stack * NUM_CEPS``) define the units."""

    def __init__(self, wav2vec2: Wav2Vec2Model, model_dim: int, num_mel_bins: int, centroids: Tensor) -> None:
        super().__init__()
        self.wav2vec2, self.num_mel_bins = wav2vec2, num_mel_bins
        self.head = nn.Linear(model_dim, len(centroids))
        self.register_buffer("centroids", centroids.float().clone())
        # what only the contrastive task trains: frozen, so no optimizer or data-parallel wrapper waits for it
        for unused in (wav2vec2.quantizer, wav2vec2.final_proj, wav2vec2.final_target_proj):
            unused.requires_grad_(False)

    def units(self, raw: Tensor) -> Tensor:
        """``(N, S, F)`` raw log-mel features -> ``(N, S)`` unit ids (the nearest centroid of each step's MFCCs)."""
        with torch.no_grad():
            mfcc = mfcc_of_logmel(raw, self.num_mel_bins)
            return torch.cdist(mfcc, self.centroids[None].expand(len(mfcc), -1, -1)).argmin(-1)

    def forward(self, seqs: Tensor, seqs_layout: BatchLayout) -> UnitOutput:
        model = self.wav2vec2
        frontend = model.encoder_frontend
        feats, layout, raw = frontend.extract_features(seqs, seqs_layout)
        targets = self.units(raw)
        hidden, temporal_mask = frontend.process_features(feats, layout, model.masker)
        hidden = model.encoder(hidden, layout)
        masked = Wav2Vec2Masker.extract_masked_elements(hidden, temporal_mask)
        wanted = Wav2Vec2Masker.extract_masked_elements(targets[..., None], temporal_mask)
        logits = self.head(masked).float().flatten(0, 1)
        wanted = wanted.flatten()
        loss = F.cross_entropy(logits, wanted, reduction="sum")
        return UnitOutput(loss, len(wanted), (logits.argmax(-1) == wanted).sum())
