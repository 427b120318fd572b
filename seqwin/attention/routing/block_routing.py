"""Block routing attention (BiFormer's bi-level routing, 1-D): route between blocks, then attend tokens.

The sequence is cut into blocks of ``block_size``. Each query block picks its ``top_k`` key blocks by the
similarity of pooled (mean over valid tokens) queries and keys, then its queries attend to the tokens of those
blocks plus their own block. Selection is discrete (no gradient); attention gets a real backward.

Causal (strict): candidate key blocks are earlier blocks only, the own block is causally masked, and the
routing query of block ``i`` is the pooled query of block ``i - 1`` — pooling block ``i`` itself would let a
token's key-block choice depend on later tokens of its block.

Cost: O((n/B)^2·d) routing + O(n·(top_k + 1)·B·d) attention. :func:`block_routing_select` is shared with the
dense reference, which applies the same selection as a mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from seqwin.attention.reference import masked_attention_reference


def _valid(seq_lens: Tensor | Sequence[int] | None, b: int, n: int, device: torch.device) -> Tensor:
    if seq_lens is None:
        return torch.ones(b, n, dtype=torch.bool, device=device)
    lens = torch.as_tensor(seq_lens, dtype=torch.long, device=device)
    return torch.arange(n, device=device)[None, :] < lens[:, None]


def _blocks(x: Tensor, block_size: int) -> Tensor:
    """(b, n, h, d) -> (b, h, num_blocks, block_size, d), zero-padded to whole blocks."""
    b, n, h, d = x.shape
    nb = -(-n // block_size)
    x = F.pad(x, (0, 0, 0, 0, 0, nb * block_size - n))
    return x.view(b, nb, block_size, h, d).permute(0, 3, 1, 2, 4)


def _expand_heads(x: Tensor, h: int) -> Tensor:
    return x.repeat_interleave(h // x.shape[2], dim=2) if x.shape[2] != h else x


@torch.no_grad()
def block_routing_select(
    q: Tensor,
    k: Tensor,
    *,
    block_size: int,
    top_k: int,
    causal: bool = False,
    seq_lens: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Selected key blocks ``(batch, heads, num_blocks, top_k)`` per query block, ``-1`` where fewer
    candidates exist. The own block is never in the list (it is always attended)."""
    b, n, h, d = q.shape
    valid = _valid(seq_lens, b, n, q.device)
    vb = _blocks(valid[:, :, None, None].float(), block_size)[..., 0]  # (b, 1, nb, bs)
    count = vb.sum(-1)  # (b, 1, nb)
    q_pool = (_blocks(q.float(), block_size) * vb[..., None]).sum(-2) / count.clamp_min(1)[..., None]
    k_pool = (_blocks(_expand_heads(k, h).float(), block_size) * vb[..., None]).sum(-2) / count.clamp_min(1)[
        ..., None
    ]
    nb = q_pool.shape[2]
    if causal:  # route block i by block i-1's queries: all strictly earlier tokens
        q_pool = torch.cat([q_pool[:, :, :1], q_pool[:, :, :-1]], dim=2)
    scores = q_pool @ k_pool.transpose(-1, -2)  # (b, h, nb, nb)
    i = torch.arange(nb, device=q.device)
    ok = (count > 0)[:, :, None, :] & (i[:, None] != i[None, :])
    if causal:
        ok = ok & (i[None, :] < i[:, None])
    top_k = min(top_k, max(nb - 1, 0))
    if top_k == 0:
        return torch.empty(b, h, nb, 0, dtype=torch.long, device=q.device)
    top, idx = scores.masked_fill(~ok, float("-inf")).topk(top_k, dim=-1)
    return idx.masked_fill(torch.isneginf(top), -1)


def block_routing_mask(
    selected: Tensor,
    seq_len: int,
    block_size: int,
    *,
    causal: bool = False,
    seq_lens: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """Dense ``(batch, heads, n, n)`` visibility from a selection: own block (causal inside if ``causal``)
    plus the selected blocks, valid tokens only."""
    b = selected.shape[0]
    device = selected.device
    pos = torch.arange(seq_len, device=device)
    blk = pos // block_size
    own = blk[:, None] == blk[None, :]
    if causal:
        own = own & (pos[None, :] <= pos[:, None])
    # chosen[b, h, qi_block, kj_block]
    nb = selected.shape[2]
    chosen = torch.zeros(*selected.shape[:3], nb + 1, dtype=torch.bool, device=device)
    chosen.scatter_(-1, selected.clamp(min=-1) % (nb + 1), True)  # -1 lands in the spare column nb
    chosen = chosen[..., :nb]
    mask = own | chosen[:, :, blk][:, :, :, blk]
    valid = _valid(seq_lens, b, seq_len, device)
    return mask & valid[:, None, :, None] & valid[:, None, None, :]


def block_routing_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    block_size: int,
    top_k: int,
    causal: bool = False,
    seq_lens: Tensor | Sequence[int] | None = None,
    scale: float | None = None,
) -> Tensor:
    """Block routing attention; layout ``(batch, seq, heads, head_dim)``, k/v may have fewer heads (GQA).
    Padded queries output zeros."""
    if block_size < 1 or top_k < 0:
        raise ValueError(f"need block_size >= 1 and top_k >= 0, got {block_size}, {top_k}")
    b, n, h, d = q.shape
    sel = block_routing_select(q, k, block_size=block_size, top_k=top_k, causal=causal, seq_lens=seq_lens)
    s = sel.shape[-1]
    valid = _valid(seq_lens, b, n, q.device)
    qb = _blocks(q, block_size)  # (b, h, nb, bs, d)
    kb, vb = _blocks(_expand_heads(k, h), block_size), _blocks(_expand_heads(v, h), block_size)
    nb = qb.shape[2]
    # Key set of block i: its own block, then its selected blocks (a missing selection reads block i, masked).
    own = torch.arange(nb, device=q.device).expand(b, h, nb)[..., None]
    blocks = torch.cat([own, torch.where(sel < 0, own, sel)], dim=-1)  # (b, h, nb, 1 + s)
    idx = blocks.reshape(b, h, nb * (1 + s))[..., None, None]

    def gather(x: Tensor) -> Tensor:
        x = x.gather(2, idx.expand(-1, -1, -1, block_size, x.shape[-1]))
        return x.view(b, h, nb, (1 + s) * block_size, x.shape[-1])

    ks, vs = gather(kb), gather(vb)
    vtok = _blocks(valid[:, :, None, None].float(), block_size)[:, 0, :, :, 0] > 0  # (b, nb, bs)
    key_ok = (
        vtok[:, None, :, :]
        .expand(b, h, nb, block_size)
        .gather(2, blocks.reshape(b, h, -1)[..., None].expand(-1, -1, -1, block_size))
        .view(b, h, nb, 1 + s, block_size)
    )
    key_ok = key_ok & torch.cat([torch.ones_like(own, dtype=torch.bool), sel >= 0], -1)[..., None]
    mask = key_ok.view(b, h, nb, 1, -1).expand(-1, -1, -1, block_size, -1).clone()
    if causal:
        t = torch.arange(block_size, device=q.device)
        mask[..., :block_size] &= t[None, :] <= t[:, None]
    empty = ~mask.any(-1, keepdim=True)
    mask |= empty  # padding rows only: let them see something finite, their outputs are zeroed below
    dv = v.shape[-1]
    # 4-D (b*h, nb, ...) so the fused kernels take it; backward through SDPA's own backward.
    out = F.scaled_dot_product_attention(
        qb.reshape(b * h, nb, block_size, d),
        ks.reshape(b * h, nb, -1, d),
        vs.reshape(b * h, nb, -1, dv),
        attn_mask=mask.view(b * h, nb, block_size, -1),
        scale=scale,
    )
    out = out.view(b, h, nb, block_size, dv).permute(0, 2, 3, 1, 4).reshape(b, nb * block_size, h, dv)[:, :n]
    return out.masked_fill(~valid[:, :, None, None], 0.0)


def block_routing_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    block_size: int,
    top_k: int,
    causal: bool = False,
    seq_lens: Tensor | Sequence[int] | None = None,
    scale: float | None = None,
) -> Tensor:
    """Dense reference: the same selection as a mask over a plain fp32 masked softmax."""
    sel = block_routing_select(q, k, block_size=block_size, top_k=top_k, causal=causal, seq_lens=seq_lens)
    mask = block_routing_mask(sel, q.shape[1], block_size, causal=causal, seq_lens=seq_lens)
    return masked_attention_reference(q, k, v, mask, scale=scale)
