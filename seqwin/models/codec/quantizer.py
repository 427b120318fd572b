"""Residual vector quantizer: ``vector_quantize_pytorch.ResidualVQ`` with EMA codebooks, k-means initialisation,
dead-code replacement and a commitment loss, plus code-level helpers (decode a prefix of levels, usage stats).

Codes are ``(batch, num_quantizers, frames)`` int64 in memory; padded frames (``mask`` False) neither update the
codebooks nor count in the commitment loss, and get code ``-1`` in :meth:`ResidualQuantizer.forward`'s output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from loguru import logger
from torch import Tensor, nn
from vector_quantize_pytorch import ResidualVQ

from seqwin.models.codec.config import QuantizerConfig

# The library warns through loguru on every k-means init that sees fewer vectors than codes (normal with small
# batches: duplicates are sampled and dead-code replacement spreads them later); keep it out of our logs.
logger.disable("vector_quantize_pytorch")


@dataclass
class QuantizerOutput:
    quantized: Tensor  # (B, T, D) sum of all levels, straight-through to the input
    codes: Tensor  # (B, Q, T) int64; -1 on padded frames and on levels dropped by quantizer dropout
    commitment: Tensor  # () mean commitment MSE over the levels that ran (unweighted)
    first_level: Tensor  # (B, T, D) level-1 quantized vectors, straight-through to the input (for distillation)


class ResidualQuantizer(nn.Module):
    def __init__(self, dim: int, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rvq = ResidualVQ(
            dim=dim,
            num_quantizers=cfg.num_quantizers,
            codebook_size=cfg.codebook_size,
            decay=cfg.decay,
            kmeans_init=cfg.kmeans_init,
            kmeans_iters=cfg.kmeans_iters,
            threshold_ema_dead_code=cfg.threshold_ema_dead_code,
            commitment_weight=1.0,  # the codec loss applies its own weight (LossWeights.commitment)
            quantize_dropout=cfg.quantizer_dropout,
            rotation_trick=cfg.rotation_trick,
            # None: all-reduce the EMA codebook statistics (and k-means init / dead-code samples) across ranks
            # when torch.distributed is up at construction. fairseq2's DDP does not broadcast buffers, so
            # without it every rank's codebooks would drift apart on its own shard of the data.
            sync_codebook=None,
        )

    @property
    def num_quantizers(self) -> int:
        return self.cfg.num_quantizers

    def forward(self, z: Tensor, mask: Tensor) -> QuantizerOutput:
        """``z (B, T, D)``, ``mask (B, T)`` True on valid frames."""
        quantized, indices, losses = self.rvq(z, mask=mask)
        codes = indices.transpose(1, 2).masked_fill(~mask[:, None], -1)
        # quantizer dropout leaves the dropped levels' losses at 0: average over the levels that ran
        levels_run = (codes >= 0).any(dim=2).any(dim=0).sum().clamp_min(1)
        commitment = losses.sum() / levels_run if self.training else z.new_zeros(())
        first = self.lookup(codes[:, :1].clamp_min(0))
        first_level = z + (first - z).detach()
        return QuantizerOutput(quantized, codes, commitment, first_level)

    @torch.no_grad()
    def encode(self, z: Tensor, mask: Tensor, num_quantizers: int | None = None) -> Tensor:
        """Codes ``(B, n, T)`` of the first ``n`` levels (residual coding is sequential, so a prefix of the full
        code stack is exactly what an ``n``-level quantizer would produce); -1 on padded frames."""
        n = self._check_levels(num_quantizers)
        books = self.rvq.codebooks  # (Q, K, D)
        b, t, d = z.shape
        residual = z.reshape(b * t, d)
        codes = []
        # The library's nearest-code search (Euclidean, no sampling in eval), done directly on the codebooks:
        # the per-layer forward adds masking, gumbel and bookkeeping passes that dominate CPU tokenization.
        # argmin_k |r - c_k|^2 = argmin_k (|c_k|^2 - 2 r.c_k) (|r|^2 is the same for every code): one addmm.
        # Its float rounding differs from the library's, so a near-tie (distances equal to rounding, or a
        # duplicated code) can resolve to the other code; encode() is self-consistent (batching, chunking).
        for book in books[:n]:
            index = torch.addmm(book.pow(2).sum(-1), residual, book.T, alpha=-2).argmin(-1)
            residual = residual - book[index]
            codes.append(index.view(b, t))
        return torch.stack(codes, dim=1).masked_fill(~mask[:, None], -1)

    def lookup(self, codes: Tensor) -> Tensor:
        """Sum of the code vectors of ``codes (B, n, T)`` (any ``n`` <= num_quantizers) -> ``(B, T, D)``."""
        self._check_levels(codes.shape[1])
        books = self.rvq.codebooks  # (Q, K, D)
        out = books.new_zeros(codes.shape[0], codes.shape[2], books.shape[-1])
        for level in range(codes.shape[1]):
            out = out + books[level][codes[:, level]]
        return out

    def _check_levels(self, n: int | None) -> int:
        n = self.num_quantizers if n is None else n
        if not 1 <= n <= self.num_quantizers:
            raise ValueError(f"num_quantizers must be in [1, {self.num_quantizers}], got {n}")
        return n


def codebook_stats(codes: Tensor, codebook_size: int) -> dict[str, list[float]]:
    """Per-level usage (fraction of codes seen at least once) and perplexity (exp of the code entropy, in codes)
    of ``codes (B, Q, T)`` or ``(Q, N)``; negative codes (padding, dropped levels) are ignored."""
    flat = codes if codes.dim() == 2 else codes.transpose(0, 1).reshape(codes.shape[1], -1)
    usage, perplexity = [], []
    for level in flat:
        valid = level[level >= 0]
        if valid.numel() == 0:
            usage.append(0.0)
            perplexity.append(0.0)
            continue
        counts = torch.bincount(valid, minlength=codebook_size).double()
        probs = counts / counts.sum()
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
        usage.append(float((counts > 0).sum()) / codebook_size)
        perplexity.append(float(math.exp(float(entropy))))
    return {"usage": usage, "perplexity": perplexity}
