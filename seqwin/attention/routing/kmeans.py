"""Online spherical k-means for routing attention (Routing Transformer, Roy et al. 2021).

Each head owns ``num_clusters`` centroids on the unit sphere. Vectors are L2-normalized and assigned to the
centroid of highest cosine similarity. Centroids never receive gradients: in training mode they follow an
exponential moving average of the (normalized) vectors assigned to them, as in VQ-VAE's EMA codebooks; the
direction of the EMA sum is the spherical mean, so the centroid is just the normalized EMA sum. A centroid
whose EMA count decays below ``dead_fraction`` of the mean count is re-seeded with the worst-served vector of
the batch. The commitment loss ``commitment * mean ||x_hat - c(x)||^2`` pulls vectors toward their centroids;
it is returned for the training loop to add (the centroids are buffers, so it only moves the projections).

After the first call (which initializes the centroids from data) a forward never reads a device value on the
host: routing, the EMA update and the re-seeding are fixed-shape tensor code, so the GPU never waits for the
CPU and the call can be captured in a CUDA graph. Only under ``torch.distributed`` does re-seeding ask the
host whether any centroid died (then rank 0's choice is broadcast).

Under ``torch.distributed`` the per-step sums and counts are all-reduced before the EMA, and data-dependent
choices (initialization, re-seeding) are broadcast from rank 0, so every rank keeps identical centroids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@dataclass
class RouterOutput:
    ids: list[Tensor]  # one (batch, heads, seq) long tensor per routed input; padding gets id == num_clusters
    loss: Tensor  # scalar commitment loss (already weighted by ``commitment``)


class KMeansRouter(nn.Module):
    """Per-head online spherical k-means; see the module docstring.

    ``forward(*xs, valid=None)`` routes one or more ``(batch, seq, heads, head_dim)`` tensors (e.g. queries
    and keys) with the same centroids and returns a :class:`RouterOutput`. All routed vectors feed one EMA
    update per call, and only in training mode.
    """

    centroids: Tensor
    ema_sum: Tensor
    ema_count: Tensor
    initialized: Tensor

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        num_clusters: int,
        decay: float = 0.999,
        commitment: float = 1e-4,
        *,
        dead_fraction: float = 0.01,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if num_clusters < 1 or num_heads < 1 or head_dim < 1:
            raise ValueError("num_heads, head_dim and num_clusters must be >= 1")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.num_heads, self.head_dim, self.num_clusters = num_heads, head_dim, num_clusters
        self.decay, self.commitment, self.dead_fraction = decay, commitment, dead_fraction
        h, c, d = num_heads, num_clusters, head_dim
        # fp32 buffers whatever the model dtype: EMA updates of 1e-3 vanish in bf16.
        self.register_buffer("centroids", torch.zeros(h, c, d, device=device))
        self.register_buffer("ema_sum", torch.zeros(h, c, d, device=device))
        self.register_buffer("ema_count", torch.zeros(h, c, device=device))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool, device=device))
        self._ready = False  # host copy of `initialized` once True: reading the buffer every call would sync

    def _is_initialized(self) -> bool:
        if not self._ready:
            self._ready = bool(self.initialized)
        return self._ready

    def _load_from_state_dict(self, *args, **kwargs):  # a loaded state may be uninitialized: ask the buffer again
        self._ready = False
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):  # keep the EMA state fp32 under model.to(bfloat16)
        super()._apply(fn, recurse)
        for name in ("centroids", "ema_sum", "ema_count"):
            buf = getattr(self, name)
            if buf.is_floating_point() and buf.dtype != torch.float32:
                setattr(self, name, buf.float())
        return self

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, head_dim={self.head_dim}, num_clusters={self.num_clusters}, "
            f"decay={self.decay}, commitment={self.commitment}"
        )

    @torch.no_grad()
    def assign(self, x: Tensor) -> Tensor:
        """Cluster ids ``(batch, heads, seq)`` of ``x`` ``(batch, seq, heads, head_dim)``; no state change."""
        if not self._is_initialized():
            raise RuntimeError("KMeansRouter is not initialized: run a forward on data first")
        return torch.einsum("bnhd,hcd->bhnc", F.normalize(x.float(), dim=-1), self.centroids).argmax(-1)

    def forward(self, *xs: Tensor, valid: Tensor | None = None) -> RouterOutput:
        b, n, h, d = xs[0].shape
        if h != self.num_heads or d != self.head_dim:
            raise ValueError(
                f"router expects (batch, seq, {self.num_heads}, {self.head_dim}), got {tuple(xs[0].shape)}"
            )
        c = self.num_clusters
        if valid is None:
            valid = torch.ones(b, n, dtype=torch.bool, device=xs[0].device)
        valid_t = valid[:, None, :]  # (b, 1, n): padding is never routed and never counted
        normed = [F.normalize(x.float(), dim=-1).transpose(1, 2) for x in xs]  # (b, h, n, d)
        if not self._is_initialized():
            self._initialize(normed, valid_t)

        ids, loss, best = [], normed[0].new_zeros(()), []
        num_valid = valid.sum().clamp_min(1) * h
        # A copy: autograd keeps it for the loss's backward while the EMA below updates the buffer in place.
        centroids = self.centroids.clone()
        for x in normed:
            sims = torch.einsum("bhnd,hcd->bhnc", x, centroids)
            top, idx = sims.max(-1)
            ids.append(idx.masked_fill(~valid_t, c))
            best.append(top.detach())
            # ||x_hat - c||^2 = 2 - 2 cos for unit vectors; the gradient reaches x through the normalization.
            loss = loss + ((2.0 - 2.0 * top) * valid_t).sum() / num_valid
        loss = self.commitment * loss / len(normed)
        if self.training:
            self._update(normed, ids, best, valid_t)
        return RouterOutput(ids=ids, loss=loss)

    @torch.no_grad()
    def _initialize(self, normed: list[Tensor], valid_t: Tensor) -> None:
        """Centroids := random distinct valid vectors of this batch (with replacement when too few)."""
        h, c = self.num_heads, self.num_clusters
        x = torch.cat([t.transpose(0, 1).reshape(h, -1, self.head_dim) for t in normed], dim=1)  # (h, m, d)
        ok = torch.cat([valid_t.expand(-1, h, -1).transpose(0, 1).reshape(h, -1)] * len(normed), dim=1)
        for head in range(h):
            pool = x[head][ok[head]]
            if pool.shape[0] == 0:
                pool = F.normalize(torch.randn(c, self.head_dim, device=x.device), dim=-1)
            pick = torch.randperm(pool.shape[0], device=x.device)[:c]
            if pick.numel() < c:
                pick = torch.cat([pick, torch.randint(pool.shape[0], (c - pick.numel(),), device=x.device)])
            self.centroids[head] = pool[pick]
        # Start the EMA as if each centroid had already seen a fair share of one batch.
        share = ok.sum(1, keepdim=True).float().clamp_min(1.0) / c
        self.ema_count.copy_(share.expand(h, c))
        self.ema_sum.copy_(self.centroids * share[..., None])
        self.initialized.fill_(True)
        self._ready = True
        self._broadcast()

    @torch.no_grad()
    def _update(self, normed: list[Tensor], ids: list[Tensor], best: list[Tensor], valid_t: Tensor) -> None:
        c = self.num_clusters
        sums, counts = 0.0, 0.0
        for x, idx in zip(normed, ids, strict=True):
            # One-hot matmul: MKL-fast, where index_add_/scatter_add_ crawl on CPU. Padding lands in column c.
            onehot = x.new_zeros(*idx.shape, c + 1).scatter_(-1, idx[..., None], 1.0)[..., :c]  # (b, h, n, c)
            sums = sums + torch.einsum("bhnc,bhnd->hcd", onehot, x)
            counts = counts + onehot.sum((0, 2))
        if _distributed():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.centroids.copy_(F.normalize(self.ema_sum, dim=-1))
        self._reseed_dead(normed, best, valid_t)

    @torch.no_grad()
    def _reseed_dead(self, normed: list[Tensor], best: list[Tensor], valid_t: Tensor) -> None:
        """Move each dead centroid onto one of the vectors its head serves worst (the i-th dead centroid of a head
        onto the head's i-th worst valid vector), in fixed-shape tensor code: no host sync, whether or not any
        centroid is dead."""
        mean = self.ema_count.mean(-1, keepdim=True)  # (h, 1)
        dead = self.ema_count < self.dead_fraction * mean  # identical on all ranks: counts are all-reduced
        if normed[0].numel():
            self._move_dead(dead, mean, normed, best, valid_t)
        # Every rank takes this branch together (dead is the same everywhere); rank 0's new centroids win.
        if _distributed() and bool(dead.any()):
            self._broadcast()

    def _move_dead(self, dead: Tensor, mean: Tensor, normed: list[Tensor], best: list[Tensor], valid_t: Tensor) -> None:
        b, h, n, d = normed[0].shape
        c, per_input = self.num_clusters, b * n
        k = min(c, per_input * len(normed))
        ok = valid_t.expand(b, h, n)
        # Cosine to the nearest centroid of every vector of every input, (h, inputs * b * n); padding never wins.
        sim = torch.cat([s.masked_fill(~ok, float("inf")).transpose(0, 1).reshape(h, per_input) for s in best], 1)
        worst = sim.topk(k, dim=1, largest=False).indices  # (h, k): the worst-served vectors first
        rank = dead.long().cumsum(1) - 1  # (h, c): which of its head's dead centroids this one is
        num_ok = ok.sum((0, 2)) * len(normed)  # valid vectors per head
        take = dead & (rank < k) & (rank < num_ok[:, None])
        flat = worst.gather(1, rank.clamp(0, k - 1))  # (h, c) index into the inputs laid end to end
        which, at = flat // per_input, flat % per_input
        heads = torch.arange(h, device=flat.device)[:, None].expand(h, c)
        new = self.centroids.new_zeros(h, c, d)
        for i, x in enumerate(normed):
            new = torch.where((which == i)[..., None], x[at // n, heads, at % n], new)
        self.centroids.copy_(torch.where(take[..., None], new, self.centroids))
        self.ema_sum.copy_(torch.where(take[..., None], new * mean[..., None], self.ema_sum))
        self.ema_count.copy_(torch.where(take, mean.expand(h, c), self.ema_count))

    def _broadcast(self) -> None:
        if _distributed():
            for buf in (self.centroids, self.ema_sum, self.ema_count):
                dist.broadcast(buf, src=0)
