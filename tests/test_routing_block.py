"""Block routing (BiFormer-style) against its dense reference, which applies the same block selection."""

from __future__ import annotations

import pytest
import torch

from seqwin.attention.routing.block_routing import (
    block_routing_attention,
    block_routing_attention_reference,
    block_routing_select,
)

TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}
CASES = [  # b, n, h, hk, block_size, top_k, seq_lens
    (1, 1, 2, 2, 4, 2, None),
    (2, 50, 4, 2, 8, 2, [50, 37]),
    (1, 64, 2, 2, 16, 1, None),
    (2, 30, 2, 1, 7, 10, [30, 1]),
    (1, 20, 2, 2, 5, 0, None),
]


def _inputs(b, n, h, hk, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, heads, d, generator=g).to(dtype).requires_grad_() for heads in (h, hk, hk)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference(case, causal, dtype):
    b, n, h, hk, bs, top_k, lens = case
    q, k, v = _inputs(b, n, h, hk, dtype=dtype)
    kw = dict(block_size=bs, top_k=top_k, causal=causal, seq_lens=lens)
    out = block_routing_attention(q, k, v, **kw)
    ref = block_routing_attention_reference(q, k, v, **kw)
    assert out.dtype == dtype and torch.isfinite(out).all()
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for name, a, r in zip(("out", "dq", "dk", "dv"), (out, *got), (ref, *want), strict=True):
        err = (a.float() - r.float()).abs().max().item()
        assert err <= TOL[dtype] * (1 + r.float().abs().max().item()), f"{name}: {err:.2e}"
    if lens is not None:
        valid = torch.arange(n)[None, :] < torch.tensor(lens)[:, None]
        assert (out[~valid] == 0).all()


def test_selection_respects_causality_padding_and_own_block():
    q, k, _ = (x.detach() for x in _inputs(2, 40, 2, 2))
    sel = block_routing_select(q, k, block_size=8, top_k=3, causal=True, seq_lens=[40, 17])
    blocks = torch.arange(5)[:, None]
    picked = sel >= 0
    assert (sel[picked] < blocks.expand_as(sel[0, 0]).expand_as(sel)[picked]).all()  # strictly earlier blocks
    assert not (sel[1] >= 3).any()  # the second sequence has valid tokens in blocks 0..2 only
    sel = block_routing_select(q, k, block_size=8, top_k=4, causal=False)
    assert (sel != blocks).all() and (sel >= 0).all()  # own block never listed (always attended)


def test_causal_is_strict_under_future_perturbation():
    q, k, v = (x.detach() for x in _inputs(2, 45, 2, 2))
    cut = 21  # inside a block: the own block's later tokens must not matter either
    out = block_routing_attention(q, k, v, block_size=8, top_k=2, causal=True)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, cut:] = 10 * torch.randn(x[:, cut:].shape)
    out2 = block_routing_attention(q2, k2, v2, block_size=8, top_k=2, causal=True)
    torch.testing.assert_close(out[:, :cut], out2[:, :cut], atol=1e-6, rtol=1e-6)
