"""Routing attention fast paths against the dense reference (same routing as a mask): values and gradients,
padding, grouped-query heads, no dropped tokens, strict causality."""

from __future__ import annotations

import pytest
import torch

from seqwin.attention.routing import KMeansRouter, routing_attention, routing_attention_reference, torch_chunked

TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _inputs(b, n, h, hk, d, dtype=torch.float32, seed=0, dv=None):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(b, n, heads, dim, generator=g).to(dtype).requires_grad_()
        for heads, dim in ((h, d), (hk, d), (hk, dv or d))
    ]


def _router(h, d, c, q, k=None, seed=0):
    torch.manual_seed(seed)
    router = KMeansRouter(h, d, c)
    x = q if k is None else torch.cat([q, k.repeat_interleave(h // k.shape[2], dim=2)], dim=1)
    router(x.detach())  # initialize from data
    return router.eval()


def _compare(q, k, v, router, **kw):
    out, aux = routing_attention(q, k, v, router, **kw)
    ref = routing_attention_reference(
        q, k, v, aux, causal=kw.get("causal", False), num_clusters=router.num_clusters
    )
    assert out.dtype == q.dtype and out.shape == ref.shape and torch.isfinite(out).all()
    assert aux["dropped_fraction"] == 0.0
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    tol = TOL[q.dtype]
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *got), (ref, *want), strict=True):
        err = (a.float() - b.float()).abs().max().item()
        assert err <= tol * (1 + b.float().abs().max().item()), f"{name}: max error {err:.2e}"
    return out, aux


CASES = [  # b, n, h, hk, d, clusters, seq_lens
    (1, 1, 2, 2, 8, 3, None),
    (2, 50, 4, 4, 16, 4, [50, 37]),
    (2, 64, 4, 2, 16, 8, None),
    (1, 129, 2, 1, 8, 5, [100]),
    (3, 33, 2, 2, 8, 16, [0, 33, 5]),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shared_qk", [False, True])
def test_non_causal_matches_reference(case, shared_qk):
    b, n, h, hk, d, c, lens = case
    if shared_qk and hk != h:
        pytest.skip("shared_qk routes q and k with one projection")
    q, k, v = _inputs(b, n, h, hk, d)
    if shared_qk:
        k = q.detach().clone().requires_grad_()
    router = _router(h, d, c, q, k)
    _compare(q, k, v, router, seq_lens=lens, shared_qk=shared_qk)
    _compare(q, k, v, router, seq_lens=lens, shared_qk=shared_qk, group_size=7)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("window", [None, 1, 5, 16, 40])
def test_causal_matches_reference(case, window):
    b, n, h, hk, d, c, lens = case
    q, k, v = _inputs(b, n, h, hk, d)
    router = _router(h, d, c, q, k)
    for chunk in (None, 4):  # small chunks make clusters span several chunks (delta > 0 pairs)
        _compare(q, k, v, router, causal=True, seq_lens=lens, window=window, chunk=chunk)


def test_causal_shared_qk_and_value_dim():
    q, _, v = _inputs(2, 40, 2, 2, 8, dv=12)
    k = q.detach().clone().requires_grad_()
    router = _router(2, 8, 3, q)
    _compare(q, k, v, router, causal=True, shared_qk=True, window=6, chunk=4)
    _compare(q, k, v, router, causal=False, shared_qk=True)


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16(causal):
    q, k, v = _inputs(2, 70, 4, 2, 16, dtype=torch.bfloat16)
    router = _router(4, 16, 6, q.float(), k.float())
    _compare(q, k, v, router, causal=causal, seq_lens=[70, 51], window=12 if causal else None)


@pytest.mark.parametrize("causal", [False, True])
def test_no_token_dropped_even_when_clusters_are_degenerate(causal):
    b, n, h, d, c = 2, 96, 2, 8, 8
    q, k, v = (x.detach() for x in _inputs(b, n, h, h, d))
    u = torch.nn.functional.normalize(torch.ones(d), dim=0)
    q, k = (q + 3 * u).requires_grad_(), (k + 3 * u).requires_grad_()  # everything points one way...
    router = _router(h, d, c, q, k)
    with torch.no_grad():  # ...one centroid sits there, seven far away: one huge cluster, seven tiny ones
        router.centroids.copy_(torch.nn.functional.normalize(-u + 0.5 * torch.randn(h, c, d), dim=-1))
        router.centroids[:, 0] = u
    v = torch.ones_like(v).requires_grad_()  # every visible key contributes 1: zero output == dropped
    out, aux = _compare(q, k, v, router, causal=causal, seq_lens=[96, 61], window=8)
    assert aux["dropped_fraction"] == 0.0
    valid = torch.arange(n)[None, :] < torch.tensor([96, 61])[:, None]
    assert torch.allclose(out[valid], torch.ones(()))
    assert (out[~valid] == 0).all()
    assert (aux["q_ids"].transpose(1, 2)[valid] == 0).float().mean() > 0.7  # really degenerate


@pytest.mark.parametrize("shared_qk", [False, True])
def test_causal_is_strict_under_future_perturbation(shared_qk):
    b, n, h, d, c, cut = 2, 80, 4, 8, 6, 37
    q, k, v = (x.detach() for x in _inputs(b, n, h, h, d))
    if shared_qk:
        k = q
    for train in (False, True):
        router = _router(h, d, c, q, k).train(train)
        state = {key: t.clone() for key, t in router.state_dict().items()}
        out, _ = routing_attention(q, k, v, router, causal=True, shared_qk=shared_qk, window=5, chunk=4)
        router.load_state_dict(state)  # the training-mode EMA moved the centroids; start the second run equal
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        g = torch.Generator().manual_seed(1)
        for x in (q2, k2, v2):
            x[:, cut:] = 10 * torch.randn(x[:, cut:].shape, generator=g)  # new routing for every later token
        if shared_qk:
            k2 = q2
        out2, _ = routing_attention(q2, k2, v2, router, causal=True, shared_qk=shared_qk, window=5, chunk=4)
        assert torch.equal(out[:, :cut], out2[:, :cut])
        assert not torch.equal(out[:, cut:], out2[:, cut:])


@pytest.mark.parametrize("causal", [False, True])
def test_portable_math_path_matches_reference(monkeypatch, causal):
    monkeypatch.setattr(torch_chunked, "FUSED_CPU", False)  # what non-CPU devices run
    q, k, v = _inputs(2, 45, 4, 2, 8)
    router = _router(4, 8, 4, q, k)
    _compare(q, k, v, router, causal=causal, seq_lens=[45, 30], window=6, chunk=4)


def test_decoding_rows_equal_full_forward():
    q, k, v = (x.detach() for x in _inputs(2, 30, 4, 2, 8))
    router = _router(4, 8, 5, q, k)
    full, _ = routing_attention(q, k, v, router, causal=True, window=4)
    for start in (0, 17, 29):
        part, _ = routing_attention(q[:, start:], k, v, router, causal=True, window=4)
        torch.testing.assert_close(part, full[:, start:], atol=2e-6, rtol=1e-5)


def test_rejects_bad_arguments():
    q, k, v = (x.detach() for x in _inputs(1, 10, 2, 2, 8))
    router = _router(2, 8, 3, q)
    with pytest.raises(ValueError):
        routing_attention(q, k, v, KMeansRouter(4, 8, 3))
    with pytest.raises(ValueError):
        routing_attention(q[:, :5], k, v, router)  # non-causal needs q_len == k_len
    with pytest.raises(ValueError):
        routing_attention(q, k, v, router, causal=True, window=0)


@pytest.mark.parametrize("lens", [[8, -1], [8, 9], [8], torch.tensor([8, 9]), torch.tensor([[8, 8]])], ids=str)
def test_bad_seq_lens_name_the_field(lens):
    q, k, v = _inputs(2, 8, 2, 2, 8)
    router = _router(2, 8, 3, q)
    with pytest.raises(ValueError, match=r"seq_lens must hold 2 lengths in \[0, 8\]"):
        routing_attention(q, k, v, router, seq_lens=lens)
