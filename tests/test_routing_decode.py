"""Step-by-step decoding of causal routing heads equals the full causal forward."""

from __future__ import annotations

import pytest
import torch

from seqwin.attention.routing import KMeansRouter, RoutingKVCache, routing_attention


def _setup(b, n, h, hk, d, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, heads, d, generator=g) for heads in (h, hk, hk))
    torch.manual_seed(seed)
    router = KMeansRouter(h, d, c)
    router(torch.cat([q, k.repeat_interleave(h // hk, dim=2)], dim=1))  # initialize from data
    return q, k, v, router.eval()


@pytest.mark.parametrize("window", [1, 3, 8, 64])
@pytest.mark.parametrize("hk", [4, 2])
def test_cache_decoding_equals_full_forward(window, hk):
    b, n, h, d, c = 2, 45, 4, 8, 5
    q, k, v, router = _setup(b, n, h, hk, d, c)
    full, _ = routing_attention(q, k, v, router, causal=True, window=window)
    cache = RoutingKVCache(router, window)
    steps = [cache.step(q[:, i : i + 1], k[:, i : i + 1], v[:, i : i + 1]) for i in range(n)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-6, rtol=1e-5)
    assert cache.num_steps == n
    assert cache.size_bytes() == 2 * b * h * c * window * d * 4  # fixed, whatever the length


def test_cache_shared_qk_and_multi_token_calls():
    b, n, h, d, c = 1, 30, 2, 8, 4
    q, _, v, router = _setup(b, n, h, h, d, c)
    full, _ = routing_attention(q, q, v, router, causal=True, shared_qk=True, window=4)
    cache = RoutingKVCache(router, 4, shared_qk=True)
    out = torch.cat(
        [cache.step(q[:, :10], q[:, :10], v[:, :10]), cache.step(q[:, 10:], q[:, 10:], v[:, 10:])], 1
    )
    torch.testing.assert_close(out, full, atol=2e-6, rtol=1e-5)


def test_cache_needs_a_bounded_window():
    with pytest.raises(ValueError):
        RoutingKVCache(KMeansRouter(2, 8, 4), 0)
