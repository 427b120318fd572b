"""Non-overlapping block attention and its shifted variant: the 1-D form of Swin windows.

Tokens attend to every token of their own block; blocks start at ``-shift + m * block_size``. Alternating layers
with ``shift=0`` and ``shift=block_size // 2`` lets information cross block borders, as Swin does in 2-D. Each
block is an independent short sequence, so we fold blocks into the batch and run the fused SDPA kernel once, with
a key-padding mask for the partial blocks at the ends: O(N * block_size) time and memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def block_attention(
    q: Tensor, k: Tensor, v: Tensor, *, block_size: int, shift: int = 0,
    seq_lens: Tensor | Sequence[int] | None = None, scale: float | None = None,
) -> Tensor:
    """Self-attention within blocks; layout ``(batch, seq, heads, head_dim)``, k/v may have fewer heads."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if q.shape[1] != k.shape[1]:
        raise ValueError("block attention is self-attention: q and k need the same length")
    b, n, h, _ = q.shape
    hk = k.shape[2]
    if h % hk:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hk})")
    shift %= block_size
    nb = -(-(n + shift) // block_size)
    back = nb * block_size - n - shift
    lens = torch.full((b,), n) if seq_lens is None else torch.as_tensor(seq_lens).long().cpu()

    def to_blocks(x: Tensor) -> Tensor:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, shift, back))
        return x.unflatten(1, (nb, block_size)).transpose(2, 3).flatten(0, 1)  # (b * nb, h, block_size, d)

    pos = torch.arange(nb * block_size) - shift
    valid = (pos >= 0)[None] & (pos[None] < lens[:, None])  # (b, nb * block_size)
    key_mask = valid.reshape(b * nb, 1, 1, block_size).to(q.device)
    qb, kb, vb = to_blocks(q), to_blocks(k), to_blocks(v)
    if hk != h:
        kb, vb = kb.repeat_interleave(h // hk, 1), vb.repeat_interleave(h // hk, 1)
    # Blocks with no valid key at all (pure padding) would give NaN rows; let them see their own keys and zero
    # their outputs afterwards, which also keeps their gradients at zero.
    has_key = key_mask.any(-1, keepdim=True)
    out = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=key_mask | ~has_key, scale=scale)
    out = out.unflatten(0, (b, nb)).transpose(2, 3).flatten(1, 2)[:, shift : shift + n]  # (b, nb * block_size, h, d)
    return out * valid[:, shift : shift + n, None, None].to(out.device, out.dtype)
