"""Helpers shared by the fused-kernel paths: additive masks and exact merging of partial attentions."""

from __future__ import annotations

import torch
from torch import Tensor


def additive(mask: Tensor) -> Tensor:
    """Boolean visibility -> additive float mask (0 where visible, -inf elsewhere), as the fused kernel wants."""
    return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))


def merge(o1: Tensor, l1: Tensor, o2: Tensor, l2: Tensor) -> tuple[Tensor, Tensor]:
    """Merge two partial attentions over disjoint key sets: fp32 outputs ``(..., D)`` weighted by their
    log-sum-exps ``(...)``. Rows empty in both parts (lse -inf) stay zero with lse -inf."""
    m = torch.maximum(l1, l2).nan_to_num(neginf=0.0, posinf=0.0)
    w1, w2 = torch.exp(l1 - m), torch.exp(l2 - m)
    total = w1 + w2
    out = (o1 * w1[..., None] + o2 * w2[..., None]) / total.clamp_min(1e-30)[..., None]
    return out, m + torch.log(total)
