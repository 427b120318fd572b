"""Sliding-window attention against its definition, written out here as a loop over (query, key) pairs.

The other sliding-window tests compare the fast paths with ``sliding_window_attention_reference``, and both build
their masks with the same ``window_mask``: a mistake in that rule would pass every one of those comparisons. Here
visibility comes from the rule as documented -- window ``(left, right)`` inclusive around the query's key position,
bottom-right alignment when queries are fewer than keys, padding, sinks (right bound only), dilation, one kv head per
group of query heads -- and attention is a float64 softmax written in this file, so every backend, the reference
included, meets code it does not share. Windows one key short of the sequence, exactly covering it and beyond it
pin the CPU path's dense-row shortcut, which skips masks altogether. Attention dropout is checked for its keep rate,
its 1/(1-p) scaling and for never reaching a key outside the window.
"""

from __future__ import annotations

import math

import pytest
import torch

from seqwin.attention import sliding_window_attention

BACKENDS = ["cpu", "blocked", "reference"]


def visible(window, nq, nk, q_lens, k_lens, num_sinks=0, dilation=1) -> torch.Tensor:
    """(batch, nq, nk) bool: query i (at key position t = i + nk - nq) sees key j."""
    left, right = window
    rows = []
    for ql, kl in zip(q_lens, k_lens, strict=True):
        row = []
        for i in range(nq):
            t = i + nk - nq
            seen = []
            for j in range(nk):
                within_right = right < 0 or j <= t + right
                in_window = within_right and (left < 0 or j >= t - left) and (t - j) % dilation == 0
                is_sink = j < num_sinks and within_right
                seen.append(i < ql and j < kl and (in_window or is_sink))
            row.append(seen)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool).view(len(q_lens), nq, nk)


def attend(q, k, v, vis) -> torch.Tensor:
    """float64 softmax attention, (batch, seq, heads, dim) layout; ``vis`` is (batch, nq, nk) or per query head
    (batch, heads, nq, nk). Query head h reads kv head h // (heads / kv_heads); rows that see nothing give zeros."""
    h, hk = q.shape[2], k.shape[2]
    outs = []
    for head in range(h):
        kv = head // (h // hk)
        seen = vis[:, head] if vis.dim() == 4 else vis
        scores = torch.einsum("bid,bjd->bij", q[:, :, head].double(), k[:, :, kv].double()) / math.sqrt(q.shape[-1])
        some = seen.any(-1, keepdim=True)
        scores = scores.masked_fill(~seen, float("-inf")).masked_fill(~some, 0.0)
        outs.append((torch.softmax(scores, -1) * some) @ v[:, :, kv].double())
    return torch.stack(outs, dim=2)


def _inputs(b, nq, nk, h, hk, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, heads, d, generator=g).requires_grad_() for n, heads in ((nq, h), (nk, hk), (nk, hk))]


def _check(q, k, v, vis, backend, **kw):
    """Output and q/k/v gradients of ``backend`` against :func:`attend` on the same inputs in float64."""
    out = sliding_window_attention(q, k, v, backend=backend, **kw)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    want = attend(*leaves, vis)
    assert out.shape == want.shape
    err = (out.double() - want).abs().max().item()
    assert err < 1e-5, f"output differs from the definition by {err:.2e}"
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, (q, k, v), grad)
    ref = torch.autograd.grad(want, leaves, grad.double())
    for name, a, r in zip(("dq", "dk", "dv"), got, ref, strict=True):
        err = (a.double() - r).abs().max().item()
        assert err < 1e-4 * (1 + r.abs().max().item()), f"{name} differs from the definition by {err:.2e}"


def _around_the_sequence(nq, nk):
    """Windows at the edge of covering every key: one short on either side, exactly covering, one beyond."""
    full_left, full_right = nk - 1, nq - 1  # the farthest key any query can reach on each side
    return [(full_left - 1, 0), (full_left, 0), (full_left + 1, 0), (full_left, full_right - 1),
            (full_left - 1, full_right), (full_left, full_right), (-1, full_right - 1), (full_left - 1, -1),
            (-1, 0), (-1, -1)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("n", [2, 10, 70])
def test_windows_one_key_short_of_the_sequence(n, padded, backend):
    """(n-2, 0) at n=10 must not let key 0 reach query 9; (n-1, n-2) must hide the last key from query 0."""
    q, k, v = _inputs(2, n, n, 2, 2, seed=n)
    lens = [n, n - 1] if padded else [n, n]
    for window in _around_the_sequence(n, n):
        _check(q, k, v, visible(window, n, n, lens, lens), backend, window=window,
               seq_lens=lens if padded else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nq,nk", [(1, 10), (3, 10), (5, 70)])
def test_fewer_queries_than_keys_at_the_edge_of_the_sequence(nq, nk, backend):
    q, k, v = _inputs(2, nq, nk, 2, 1, seed=nq)
    for window in _around_the_sequence(nq, nk):
        _check(q, k, v, visible(window, nq, nk, [nq, nq], [nk, nk - 2]), backend, window=window,
               k_seq_lens=[nk, nk - 2])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [(0, 0), (1, 0), (0, 1), (3, 2), (6, -1), (20, 0)], ids=str)
@pytest.mark.parametrize("n", [1, 37, 200])  # 200: whole interior chunks on the CPU path
def test_windows_with_gqa_sinks_dilation_and_padding(n, window, backend):
    q, k, v = _inputs(3, n, n, 4, 2, seed=n)
    lens = [n, max(1, n // 2), 0]
    for sinks, dilation in ((0, 1), (2, 1), (0, 3), (1, 2)):
        vis = visible(window, n, n, lens, lens, num_sinks=sinks, dilation=dilation)
        _check(q, k, v, vis, backend, window=window, seq_lens=lens, num_sinks=sinks, dilation=dilation)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_head_windows(backend):
    n, windows = 40, [(2, 0), (-1, 0), (5, 5), (2, 0)]
    q, k, v = _inputs(2, n, n, 4, 2, seed=5)
    lens = [n, 23]
    vis = torch.stack([visible(w, n, n, lens, lens) for w in windows], dim=1)
    _check(q, k, v, vis, backend, window=windows, seq_lens=lens)


def test_hand_written_mask():
    """The rule itself, on cases small enough to read: a wrong rule above would fail here too."""
    causal_two = [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert visible((1, 0), 4, 4, [4], [4])[0].int().tolist() == causal_two
    assert visible((0, 1), 2, 4, [2], [3])[0].int().tolist() == [[0, 0, 1, 0], [0, 0, 0, 0]]  # key 3 is padding
    assert visible((1, 0), 5, 5, [5], [5], num_sinks=1, dilation=2)[0, 4].int().tolist() == [1, 0, 0, 0, 1]
    assert visible((4, 0), 5, 5, [5], [5], dilation=2)[0, 4].int().tolist() == [1, 0, 1, 0, 1]


# ---- attention dropout (the blocked path) ----


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_1_minus_p_scales_by_1_over_1_minus_p_and_stays_in_the_window(p):
    """With one-hot values (key j's value is e_j) the output row is the dropped-out probability row itself."""
    b, n, h, hk, window, sinks = 2, 64, 4, 2, (6, 1), 2
    q, k, _ = (x.detach() for x in _inputs(b, n, n, h, hk, seed=7))
    v = torch.eye(n).expand(b, hk, n, n).transpose(1, 2).contiguous()  # v[b, j, kv, :] = e_j
    lens = [n, 45]
    vis = visible(window, n, n, lens, lens, num_sinks=sinks)
    probs = attend(q, k, v, vis)  # (b, n, h, n): the undropped probabilities
    torch.manual_seed(0)
    out = sliding_window_attention(q, k, v, window=window, seq_lens=lens, num_sinks=sinks, dropout_p=p).double()
    inside = vis[:, :, None, :].expand_as(out)
    assert (out[~inside] == 0).all(), "dropout let a query see a key outside its window"
    kept = out[inside] != 0
    ratio = out[inside][kept] / probs[inside][kept]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 1 / (1 - p)), rtol=1e-5, atol=0)
    count = int(inside.sum())
    rate = kept.double().mean().item()
    assert abs(rate - (1 - p)) < 4.5 * math.sqrt(p * (1 - p) / count), f"kept {rate:.3f} of {count}, want {1 - p}"
