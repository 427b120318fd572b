"""Routing attention, block routing and WindowKV against their definitions, written out here independently.

The other tests compare each fast path with a reference that shares its decisions: routing's reference takes the
cluster ids from the implementation, block routing's reuses ``block_routing_select``, ``windowkv_reference`` reuses
``kept_counts``. A wrong id, a wrong top-k or a wrong budget count passes them all. Here the decisions are recomputed
from the documented rules -- nearest centroid by cosine, stable (cluster, position) groups, the most recent
``window`` keys of a cluster, brute-force top-k over pooled blocks, windows counted one by one against the budget --
and attention is the float64 softmax of ``test_attention_semantics``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from test_attention_semantics import attend

from seqwin.attention import (
    KMeansRouter,
    block_routing_attention,
    block_routing_attention_reference,
    routing_attention,
    routing_attention_reference,
)
from seqwin.attention.windowkv import WindowKVConfig, kept_counts, observation_scores, select_windows


def _inputs(b, n, h, hk, d, seed=0, nq=None):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, length, heads, d, generator=g).requires_grad_()
            for length, heads in ((nq or n, h), (n, hk), (n, hk))]


def _lens(lens, b, n):
    return [n] * b if lens is None else lens


def _check_attention(out, q, k, v, vis):
    """``out`` (and its q/k/v gradients) against float64 attention under visibility ``vis`` (b, h, nq, nk)."""
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    want = attend(*leaves, vis)
    err = (out.double() - want).abs().max().item()
    assert err < 1e-5, f"output differs from the definition by {err:.2e}"
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    for name, a, r in zip("qkv", torch.autograd.grad(out, (q, k, v), grad),
                          torch.autograd.grad(want, leaves, grad.double()), strict=True):
        err = (a.double() - r).abs().max().item()
        assert err < 1e-4 * (1 + r.abs().max().item()), f"d{name} differs from the definition by {err:.2e}"


# ---- routing attention ----


def _router(h, d, c, seed=0):
    """Centroids drawn from random vectors: distinct, so that every token has one nearest centroid."""
    torch.manual_seed(seed)
    router = KMeansRouter(h, d, c)
    router(torch.randn(1, 4 * c, h, d))
    return router.eval()


def nearest_centroid(x, router, lens):
    """(b, h, n) cluster ids: argmax of the cosine between each head's vector and that head's centroids;
    padding gets ``num_clusters``. ``x`` has one head per centroid set (kv heads already repeated)."""
    cos = torch.einsum("bnhd,hcd->bhnc", F.normalize(x.detach().double(), dim=-1),
                       F.normalize(router.centroids.double(), dim=-1))
    ids = cos.argmax(-1)
    pad = torch.arange(x.shape[1])[None, :] >= torch.tensor(lens)[:, None]
    return ids.masked_fill(pad[:, None, :], router.num_clusters)


def grouped_visibility(q_ids, k_ids, group, c):
    """Non-causal: sort each side stably by (cluster, position), cut into groups of ``group``; query group g sees
    key group g, valid tokens only."""
    b, h, n = q_ids.shape
    vis = torch.zeros(b, h, n, n, dtype=torch.bool)
    for bi in range(b):
        for head in range(h):
            qi, ki = q_ids[bi, head].tolist(), k_ids[bi, head].tolist()
            q_rank = {t: r for r, t in enumerate(sorted(range(n), key=lambda t: (qi[t], t)))}
            k_rank = {t: r for r, t in enumerate(sorted(range(n), key=lambda t: (ki[t], t)))}
            for i in range(n):
                for j in range(n):
                    vis[bi, head, i, j] = qi[i] < c and ki[j] < c and q_rank[i] // group == k_rank[j] // group
    return vis


def causal_visibility(tok_ids, nq, window, c):
    """Causal: query i is token t = i + n - nq; it sees the most recent ``window`` tokens of its own cluster at
    positions <= t (itself included)."""
    b, h, n = tok_ids.shape
    vis = torch.zeros(b, h, nq, n, dtype=torch.bool)
    for bi in range(b):
        for head in range(h):
            ids = tok_ids[bi, head].tolist()
            for i in range(nq):
                t = i + n - nq
                if ids[t] == c:
                    continue
                mates = [j for j in range(t + 1) if ids[j] == ids[t]]
                for j in mates[-window:] if window else mates:
                    vis[bi, head, i, j] = True
    return vis


ROUTING_CASES = [  # b, n, h, hk, d, clusters, seq_lens
    (1, 1, 2, 2, 8, 3, None),
    (2, 50, 4, 4, 8, 4, [50, 37]),
    (2, 33, 4, 2, 8, 5, [33, 20]),
]


@pytest.mark.parametrize("case", ROUTING_CASES)
@pytest.mark.parametrize("shared_qk", [False, True])
@pytest.mark.parametrize("group_size", [None, 7])
def test_non_causal_routing(case, shared_qk, group_size):
    b, n, h, hk, d, c, lens = case
    if shared_qk and hk != h:
        pytest.skip("shared_qk routes q and k with one projection")
    q, k, v = _inputs(b, n, h, hk, d, seed=n)
    if shared_qk:
        k = q.detach().clone().requires_grad_()
    k_per_head = k.repeat_interleave(h // hk, dim=2)  # query head i reads kv head i // (h // hk)
    router = _router(h, d, c)
    out, aux = routing_attention(q, k, v, router, seq_lens=lens, shared_qk=shared_qk, group_size=group_size)
    n_lens = _lens(lens, b, n)
    q_ids = nearest_centroid(q, router, n_lens)
    k_ids = q_ids if shared_qk else nearest_centroid(k_per_head, router, n_lens)
    assert torch.equal(aux["q_ids"], q_ids) and torch.equal(aux["k_ids"], k_ids)
    vis = grouped_visibility(q_ids, k_ids, group_size or math.ceil(n / c), c)
    _check_attention(out, q, k, v, vis)
    ref = routing_attention_reference(q, k, v, aux, causal=False, num_clusters=c)
    torch.testing.assert_close(ref.double(), attend(q.detach(), k.detach(), v.detach(), vis), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ROUTING_CASES)
@pytest.mark.parametrize("shared_qk", [False, True])
@pytest.mark.parametrize("window", [None, 1, 5])
def test_causal_routing(case, shared_qk, window):
    b, n, h, hk, d, c, lens = case
    if shared_qk and hk != h:
        pytest.skip("shared_qk routes q and k with one projection")
    q, k, v = _inputs(b, n, h, hk, d, seed=n + 1)
    if shared_qk:
        k = q.detach().clone().requires_grad_()
    k_per_head = k.repeat_interleave(h // hk, dim=2)
    router = _router(h, d, c)
    for chunk in (None, 4):
        out, aux = routing_attention(q, k, v, router, causal=True, seq_lens=lens, shared_qk=shared_qk,
                                     window=window, chunk=chunk)
        tok_ids = nearest_centroid(q if shared_qk else k_per_head, router, _lens(lens, b, n))  # by its own vector
        assert torch.equal(aux["k_ids"], tok_ids) and torch.equal(aux["q_ids"], tok_ids)
        _check_attention(out, q, k, v, causal_visibility(tok_ids, n, window, c))


@pytest.mark.parametrize("nq", [1, 6])
def test_causal_routing_decoding_rows(nq):
    """Fewer queries than keys: the queries are the last tokens, routed by their keys."""
    b, n, h, hk, d, c = 2, 30, 4, 2, 8, 4
    q, k, v = _inputs(b, n, h, hk, d, seed=3, nq=nq)
    k_per_head = k.repeat_interleave(h // hk, dim=2)
    router = _router(h, d, c)
    out, aux = routing_attention(q, k, v, router, causal=True, window=3)
    tok_ids = nearest_centroid(k_per_head, router, [n] * b)
    assert torch.equal(aux["k_ids"], tok_ids)
    _check_attention(out, q, k, v, causal_visibility(tok_ids, nq, 3, c))


# ---- block routing ----


def _mean(vectors):
    return torch.stack(vectors).detach().double().mean(0) if vectors else None


def block_visibility(q, k, block, top_k, causal, lens):
    """Brute force: pool each block's valid queries and keys (mean), score every candidate key block by the dot
    product with the routing query (causal: the previous block's pool; candidates strictly earlier), keep the
    ``top_k`` best; a query sees its own block (causally) and the kept blocks, valid keys only."""
    b, n, h, _ = q.shape
    group = h // k.shape[2]
    nb = -(-n // block)
    vis = torch.zeros(b, h, n, n, dtype=torch.bool)
    for bi in range(b):
        blocks = [[t for t in range(m * block, min(n, (m + 1) * block)) if t < lens[bi]] for m in range(nb)]
        for head in range(h):
            q_pool = [_mean([q[bi, t, head] for t in tokens]) for tokens in blocks]
            k_pool = [_mean([k[bi, t, head // group] for t in tokens]) for tokens in blocks]
            for i, tokens in enumerate(blocks):
                if not tokens:
                    continue
                router_q = q_pool[i - 1] if causal and i > 0 else q_pool[i]
                cands = [m for m in range(nb) if m != i and blocks[m] and (m < i or not causal)]
                best = sorted(cands, key=lambda m: -float(router_q @ k_pool[m]))[:top_k]
                for t in tokens:
                    for j in blocks[i] + [j for m in best for j in blocks[m]]:
                        vis[bi, head, t, j] = j // block != i or not causal or j <= t
    return vis


@pytest.mark.parametrize("case", [  # b, n, h, hk, block, top_k, seq_lens
    (1, 1, 2, 2, 4, 2, None),
    (2, 50, 4, 2, 8, 2, [50, 37]),
    (2, 30, 2, 1, 7, 10, [30, 1]),
    (1, 40, 2, 2, 5, 3, None),
    (1, 20, 2, 2, 5, 0, None),
])
@pytest.mark.parametrize("causal", [False, True])
def test_block_routing_selects_the_top_k_blocks(case, causal):
    b, n, h, hk, block, top_k, lens = case
    q, k, v = _inputs(b, n, h, hk, 8, seed=n)
    kw = dict(block_size=block, top_k=top_k, causal=causal, seq_lens=lens)
    vis = block_visibility(q, k, block, top_k, causal, _lens(lens, b, n))
    _check_attention(block_routing_attention(q, k, v, **kw), q, k, v, vis)
    ref = block_routing_attention_reference(q, k, v, **kw)
    torch.testing.assert_close(ref.double(), attend(q.detach(), k.detach(), v.detach(), vis), atol=1e-5, rtol=0)


# ---- WindowKV ----


def windowkv_kept(q_obs, k, window_size, budget):
    """Per (batch, kv head) kept positions. Score: attention mass each key gets from the observation queries
    (the last ones of the prompt, causal) summed over the query heads of its kv head. Windows of ``window_size``
    from position 0 while they end before the observation window; the rest is always kept; then the best windows,
    one by one, while the total stays within ceil(budget * n) tokens."""
    b, w, h, d = q_obs.shape
    n, hk = k.shape[1], k.shape[2]
    starts = []
    while (len(starts) + 1) * window_size <= n - w:
        starts.append(len(starts) * window_size)
    recent = list(range(len(starts) * window_size, n))
    limit = math.ceil(Fraction(str(budget)) * n)  # the fraction as written: 0.07 of 100 tokens is 7
    count = 0
    while count < len(starts) and len(recent) + (count + 1) * window_size <= limit:
        count += 1
    kept = []
    for bi in range(b):
        rows = []
        for g in range(hk):
            score = [0.0] * n
            for head in range(g * (h // hk), (g + 1) * (h // hk)):
                for i in range(w):
                    t = n - w + i
                    logits = [float(q_obs[bi, i, head].double() @ k[bi, j, g].double()) / math.sqrt(d)
                              for j in range(t + 1)]
                    top = max(logits)
                    total = sum(math.exp(x - top) for x in logits)
                    for j, x in enumerate(logits):
                        score[j] += math.exp(x - top) / total
            best = sorted(starts, key=lambda s: -sum(score[s : s + window_size]))[:count]
            rows.append([p for s in sorted(best) for p in range(s, s + window_size)] + recent)
        kept.append(rows)
    return kept


@pytest.mark.parametrize("n", [40, 77, 100])
@pytest.mark.parametrize("budget", [0.07, 0.12, 0.14, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("window_size,heads,kv_heads", [(4, 4, 4), (8, 4, 2), (1, 2, 1)])
def test_windowkv_keeps_the_best_windows_within_the_budget(n, budget, window_size, heads, kv_heads):
    obs = 8
    g = torch.Generator().manual_seed(n)
    q = torch.randn(2, obs, heads, 16, generator=g)
    k = torch.randn(2, n, kv_heads, 16, generator=g)
    cfg = WindowKVConfig(budget=budget, window_size=window_size, obs_window=obs)
    want = windowkv_kept(q, k, window_size, budget)
    assert select_windows(observation_scores(q, k), cfg).tolist() == want
    recent, windows = kept_counts(n, cfg)
    assert recent + windows * window_size == len(want[0][0])
