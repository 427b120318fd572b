"""Time/channel masking that works on batches of any lengths (short prompts included).

fairseq2's ``StandardWav2Vec2Masker`` draws the same number of spans for every row from the *shortest* row and
raises when that row cannot hold ``min_num_spans`` spans or is not longer than a span -- a 0.6 s prompt at 40 ms
frames (15 frames) already fails the tiny preset's SSL masking. This masker keeps fairseq2's parameters (the
``temporal_mask_embed`` weight, so state dicts load either way) and semantics, but draws spans per row:
``max(min_num_spans, floor(p * (len - 1) / span + u))`` spans (``u`` uniform: the expected count is exact), each
``min(span, len - 1)`` long, capped so every row keeps an unmasked frame. With ``equal_counts`` (pretraining:
the contrastive loss gathers the same number of masked frames per row) rows are then cut down to the least
masked row's count by unmasking random frames, as fairseq2 does. Channel spans are drawn the same way (one
set per row, shared by its frames), so a narrow model never fails its configured channel masking either.
"""

from __future__ import annotations

import torch
from fairseq2.models.wav2vec2 import Wav2Vec2Masker
from fairseq2.nn import BatchLayout
from torch import Tensor, nn


def row_span_mask(lens: Tensor, width: int, span_len: int, prob: float, min_spans: int,
                  generator: torch.Generator | None = None) -> Tensor:
    """(N, width) bool: random spans inside each row's first ``lens[i]`` positions (see the module docstring)."""
    device = lens.device
    lens = lens.to(torch.int64)
    span = torch.clamp(lens - 1, min=1).clamp(max=span_len)  # (N)
    expected = prob * (lens - 1).clamp(min=0).float() / span.float()
    count = torch.floor(expected + torch.rand(lens.shape, device=device, generator=generator)).long()
    room = torch.clamp((lens - 1) // span, min=0)  # spans that fit without covering the whole row
    count = torch.minimum(torch.clamp(count, min=min_spans), room)
    max_count = int(count.max()) if len(count) else 0
    mask = torch.zeros(len(lens), width + span_len, dtype=torch.bool, device=device)
    if max_count == 0:
        return mask[:, :width]
    # (N, M) span starts in [0, len - span]; spans beyond a row's count are parked in the slack columns.
    starts = (torch.rand(len(lens), max_count, device=device, generator=generator)
              * (lens - span + 1).clamp(min=1)[:, None].float()).long()
    starts = torch.where(torch.arange(max_count, device=device)[None, :] < count[:, None], starts, width)
    offsets = torch.arange(span_len, device=device)
    cols = starts[:, :, None] + offsets[None, None, :]  # (N, M, L)
    cols = torch.where(offsets[None, None, :] < span[:, None, None], cols, width)
    mask.scatter_(1, cols.flatten(1), True)
    return mask[:, :width]


def equalize(mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Unmask random positions so every row has as many masked positions as the least masked row."""
    counts = mask.sum(1)
    keep = int(counts.min()) if len(counts) else 0
    if bool((counts == keep).all()):
        return mask
    scores = (torch.rand(mask.shape, device=mask.device, generator=generator) + 1e-3) * mask
    top = scores.topk(keep, dim=1).indices
    return torch.zeros_like(mask).scatter_(1, top, True)


class SeqwinMasker(Wav2Vec2Masker):
    def __init__(self, model_dim: int, temporal_span_len: int, max_temporal_mask_prob: float,
                 min_num_temporal_mask_spans: int, spatial_span_len: int, max_spatial_mask_prob: float,
                 min_num_spatial_mask_spans: int, *, equal_counts: bool) -> None:
        super().__init__()
        if not 0.0 < max_temporal_mask_prob < 1.0:
            raise ValueError(f"max_temporal_mask_prob must be in (0, 1), got {max_temporal_mask_prob}")
        self.temporal_mask_embed = nn.Parameter(torch.empty(model_dim))
        nn.init.uniform_(self.temporal_mask_embed)
        self.temporal_span_len, self.max_temporal_mask_prob = temporal_span_len, max_temporal_mask_prob
        self.min_num_temporal_mask_spans = min_num_temporal_mask_spans
        self.spatial_span_len, self.max_spatial_mask_prob = spatial_span_len, max_spatial_mask_prob
        self.min_num_spatial_mask_spans = min_num_spatial_mask_spans
        self.equal_counts = equal_counts

    def forward(self, seqs: Tensor, seqs_layout: BatchLayout) -> tuple[Tensor, Tensor]:
        if seqs_layout.packed:
            raise ValueError("`seqs` must not be a packed batch.")
        batch, seq_len, model_dim = seqs.shape
        lens = seqs_layout.seq_lens_pt if seqs_layout.padded else torch.full((batch,), seq_len, device=seqs.device)
        temporal = row_span_mask(lens.to(seqs.device), seq_len, self.temporal_span_len, self.max_temporal_mask_prob,
                                 self.min_num_temporal_mask_spans)
        if self.equal_counts:
            temporal = equalize(temporal)
        seqs = torch.where(temporal.unsqueeze(-1), self.temporal_mask_embed.type_as(seqs), seqs)
        if self.max_spatial_mask_prob > 0.0:
            # (N, M): the same channels of every frame of a row
            dims = torch.full((batch,), model_dim, device=seqs.device)
            spatial = row_span_mask(dims, model_dim, self.spatial_span_len, self.max_spatial_mask_prob,
                                    self.min_num_spatial_mask_spans)
            seqs = seqs.masked_fill(spatial.unsqueeze(1), 0.0)
        return seqs, temporal

    def extra_repr(self) -> str:
        return (f"temporal_span_len={self.temporal_span_len}, max_temporal_mask_prob={self.max_temporal_mask_prob}, "
                f"min_num_temporal_mask_spans={self.min_num_temporal_mask_spans}, "
                f"spatial_span_len={self.spatial_span_len}, max_spatial_mask_prob={self.max_spatial_mask_prob}, "
                f"equal_counts={self.equal_counts}")
