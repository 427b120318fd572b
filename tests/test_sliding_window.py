"""Every sliding-window fast path against the dense reference: values and gradients, FlashAttention-test style."""

from __future__ import annotations

import pytest
import torch

import seqwin.attention.sliding_window.attention as dispatcher
import seqwin.attention.sliding_window.cpu_band as cpu_band
from seqwin.attention import sliding_window_attention
from seqwin.attention.reference import sliding_window_attention_reference, sliding_window_mask

WINDOWS = [(0, 0), (1, 0), (3, 5), (64, 0), (128, 128), (-1, 0), (0, -1), (-1, -1)]
LENGTHS = [1, 7, 129, 1000]
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}
# The CPU backend attends to short rows whole (cpu_rows.MaskedRows) and bands long ones; each case runs both.
CPU_PATHS = {"cpu-band": 0, "cpu-rows": 1 << 30}
BACKENDS = [*CPU_PATHS, "blocked"]


@pytest.fixture
def use(monkeypatch):
    """``use(backend)``: the public backend name, with the CPU path forced for ``cpu-band`` / ``cpu-rows``."""

    def force(backend: str) -> str:
        if backend not in CPU_PATHS:
            return backend
        monkeypatch.setattr(cpu_band, "_MASKED_ROWS_SPANS", CPU_PATHS[backend])
        return "cpu"

    return force


def _inputs(b, nq, nk, h, hk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, heads, d, generator=g).to(dtype).requires_grad_()
            for n, heads in ((nq, h), (nk, hk), (nk, hk))]


def _compare(q, k, v, backend, **kw):
    out = sliding_window_attention(q, k, v, backend=backend, **kw)
    ref_kw = dict(kw)
    for key in ("seq_lens", "k_seq_lens"):
        if ref_kw.get(key) is not None:
            ref_kw[key] = torch.tensor(ref_kw[key])
    ref = sliding_window_attention_reference(q, k, v, **ref_kw)
    assert out.dtype == q.dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    tol = TOL[q.dtype]
    for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *got), (ref, *want), strict=True):
        err = (a.float() - b.float()).abs().max().item()
        scale = b.float().abs().max().item()
        assert err <= tol * (1 + scale), f"{name}: max error {err:.2e} (ref scale {scale:.2e})"


def _compare_forward(q, k, v, backend, **kw):
    out = sliding_window_attention(q, k, v, backend=backend, **kw)
    ref = sliding_window_attention_reference(q, k, v, **{key: torch.tensor(val) if key.endswith("seq_lens") else val
                                                         for key, val in kw.items()})
    err = (out.float() - ref.float()).abs().max().item()
    assert out.dtype == q.dtype and err <= TOL[q.dtype] * (1 + ref.float().abs().max().item()), err


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_grid_with_padding(window, n, dtype, backend, use):
    q, k, v = _inputs(2, n, n, 4, 4, 16, dtype)
    lens = [n, max(1, (2 * n) // 3)]
    _compare(q, k, v, use(backend), window=window, seq_lens=lens)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [(5, 0), (40, 7), (-1, 0)], ids=str)
def test_gqa_sinks_dilation(window, backend, use):
    q, k, v = _inputs(3, 301, 301, 8, 2, 32, torch.float32, seed=1)
    _compare(q, k, v, use(backend), window=window, seq_lens=[301, 77, 0], num_sinks=3, dilation=2)


@pytest.mark.parametrize(("half_in_fp32", "for_grad"), [(False, False), (False, True), (True, True)],
                         ids=["bf16-kernel", "bf16-forward-fp32-grad", "fp32-kernel"])
@pytest.mark.parametrize("path", list(CPU_PATHS))
@pytest.mark.parametrize("window", [(3, 5), (64, 0), (-1, 0)], ids=str)
def test_bf16_in_either_kernel_precision(window, path, half_in_fp32, for_grad, use, monkeypatch):
    """bf16 inputs run the fused kernel in bf16 (forward-only calls on CPUs with AMX) or in float32 (training
    everywhere, and CPUs without AMX): the CPU and the call pick one, and each must match the reference, forward
    and gradients, on whichever CPU runs the tests."""
    monkeypatch.setattr(cpu_band, "_HALF_IN_FP32", half_in_fp32)
    monkeypatch.setattr(cpu_band, "_HALF_IN_FP32_FOR_GRAD", for_grad)
    q, k, v = _inputs(2, 129, 129, 4, 2, 16, torch.bfloat16, seed=5)
    _compare(q, k, v, use(path), window=window, seq_lens=[129, 50], num_sinks=1)
    with torch.no_grad():  # a forward-only call: the bf16 kernel itself where half_in_fp32 is off
        _compare_forward(q, k, v, use(path), window=window, seq_lens=[129, 50], num_sinks=1)


@pytest.mark.parametrize("window", [(64, 0), (20, 9)], ids=str)
def test_backward_in_bounded_span_groups(window, monkeypatch):
    """Long sequences run the fused backward over groups of chunks (memory flat in N); a tiny budget forces
    groups of one or two chunks here, with padding and sinks, and gradients must not change."""
    monkeypatch.setattr(cpu_band, "_MASKED_ROWS_SPANS", 0)
    monkeypatch.setattr(cpu_band, "_BWD_SPAN_BUDGET", 1)
    q, k, v = _inputs(2, 700, 700, 4, 2, 16, torch.float32, seed=3)
    _compare(q, k, v, "cpu", window=window, seq_lens=[700, 451], num_sinks=2)
    monkeypatch.setattr(cpu_band, "_BWD_SPAN_BUDGET", 2 * 2 * 256 * 16)
    _compare(q, k, v, "cpu", window=window, seq_lens=[700, 451])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nq", [1, 5, 64])
def test_bottom_right_alignment(nq, backend, use):
    # Decoding / chunked prefill: fewer queries than keys, queries are the last positions.
    q, k, v = _inputs(2, nq, 200, 4, 4, 16, torch.float32, seed=2)
    _compare(q, k, v, use(backend), window=(50, 0), k_seq_lens=[200, 200], num_sinks=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_head_windows(backend, use):
    q, k, v = _inputs(2, 150, 150, 4, 2, 16, torch.float32, seed=3)
    windows = [(4, 0), (16, 16), (4, 0), (-1, 0)]
    _compare(q, k, v, use(backend), window=windows, seq_lens=[150, 99])


# (nq, nk, window, num_sinks, kv heads, v dim): every query sees every key, so "auto" runs PyTorch's fused SDPA.
WHOLE_ROWS = [
    (1, 9, (8, 0), 0, 4, 16),  # a decoding step against a ring of 8 keys
    (1, 12, (8, 0), 3, 2, 16),  # ... after 3 sinks, grouped-query
    (5, 9, (8, 4), 0, 4, 16),  # a chunk of 5 queries
    (37, 37, (-1, -1), 0, 1, 16),  # full attention, one key/value head
    (9, 4, (3, 8), 0, 4, 16),  # more queries than keys: the first ones reach forward to the last key
]


@pytest.fixture
def dense_calls(monkeypatch):
    calls = []
    real = dispatcher._dense
    monkeypatch.setattr(dispatcher, "_dense", lambda *args: calls.append(1) or real(*args))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", WHOLE_ROWS, ids=str)
def test_rows_that_see_every_key_take_fused_sdpa(case, dtype, dense_calls):
    nq, nk, window, sinks, hk, dv = case
    q, k, _ = _inputs(2, nq, nk, 4, hk, 16, dtype, seed=4)
    v = torch.randn(2, nk, hk, dv, generator=torch.Generator().manual_seed(5)).to(dtype).requires_grad_()
    _compare(q, k, v, "auto", window=window, num_sinks=sinks)
    assert dense_calls == [1]


@pytest.mark.parametrize("kw", [
    {"window": (7, 0)},  # one key short: the first key falls out of the window
    {"window": (8, 0), "k_seq_lens": [9, 6]},  # padded keys
    {"window": (8, 0), "dilation": 2},
    {"window": (5, 0), "num_sinks": 2},  # the sinks and the window leave key 2 out
], ids=["short-window", "padding", "dilation", "sinks-short"])
def test_rows_that_miss_a_key_keep_the_window(kw, dense_calls):
    q, k, v = _inputs(2, 1, 9, 4, 4, 16, torch.float32, seed=6)
    _compare(q, k, v, "auto", **kw)
    assert dense_calls == []


@pytest.mark.parametrize(("half_in_fp32", "for_grad", "grad", "want"), [
    (False, True, True, torch.float32),  # AMX, training: float32, as the band path
    (False, True, False, torch.bfloat16),  # AMX, forward only: the bf16 kernel
    (True, True, False, torch.float32),  # no AMX: always float32
    (False, False, True, torch.bfloat16),
])
def test_dense_path_follows_the_cpu_precision_rule(half_in_fp32, for_grad, grad, want, monkeypatch):
    monkeypatch.setattr(cpu_band, "_HALF_IN_FP32", half_in_fp32)
    monkeypatch.setattr(cpu_band, "_HALF_IN_FP32_FOR_GRAD", for_grad)
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *args, **kw: seen.append(q.dtype) or sdpa(q, *args, **kw))
    q, k, v = _inputs(2, 1, 9, 4, 4, 16, torch.bfloat16, seed=9)
    with torch.set_grad_enabled(grad):
        out = sliding_window_attention(q, k, v, window=(8, 0))
    assert seen == [want] and out.dtype == torch.bfloat16


def test_dense_path_only_where_its_fused_kernels_apply(dense_calls):
    """A chunk one key short on the right keeps the window; so does a v of another head dim (SDPA would build
    the N x N scores); per-head windows take the dense path for the heads that see every key only."""
    q, k, v = _inputs(2, 5, 9, 4, 4, 16, torch.float32, seed=7)
    _compare(q, k, v, "auto", window=(8, 3))
    v24 = torch.randn(2, 9, 4, 24, generator=torch.Generator().manual_seed(8)).requires_grad_()
    _compare(q, k, v24, "auto", window=(-1, -1))
    assert dense_calls == []
    _compare(q, k, v, "auto", window=[(8, 4), (2, 0), (8, 4), (-1, -1)])
    assert dense_calls == [1, 1]  # (8, 4) and (-1, -1); (2, 0) keeps the window


def test_different_value_dim():
    q, k, _ = _inputs(1, 50, 50, 2, 2, 16, torch.float32)
    v = torch.randn(1, 50, 2, 24, requires_grad=True)
    _compare(q, k, v, "cpu", window=(8, 0))


def test_fp16_forward():
    q, k, v = (x.detach().half() for x in _inputs(1, 100, 100, 2, 2, 16, torch.float32))
    out = sliding_window_attention(q, k, v, window=(10, 0))
    ref = sliding_window_attention_reference(q, k, v, window=(10, 0))
    assert out.dtype == torch.float16
    assert (out.float() - ref.float()).abs().max() < 5e-3


def test_semantics_by_hand():
    # (left=1, right=0) over 4 tokens: each sees itself and its predecessor; key 3 of row 1 is padding.
    mask = sliding_window_mask(2, 4, 4, (1, 0), seq_lens=torch.tensor([4, 3]))[:, 0]
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0], expected)
    assert torch.equal(mask[1, :3, :3], expected[:3, :3]) and not mask[1, 3].any() and not mask[1, :, 3].any()
    # Sinks: key 0 visible to everyone (causally), dilation 2 keeps even distances only.
    mask = sliding_window_mask(1, 6, 6, (4, 0), num_sinks=1, dilation=2)[0, 0]
    assert mask[5].tolist() == [True, True, False, True, False, True]


def test_no_visible_key_gives_zeros_not_nan():
    q, k, v = _inputs(1, 4, 10, 2, 2, 8, torch.float32)
    # Queries at key positions 6..9 with a window (0, 0) but keys beyond position 3 are padding.
    out = sliding_window_attention(q, k, v, window=(0, 0), k_seq_lens=[4])
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


@pytest.mark.parametrize("bad", [
    dict(window=(-2, 0)), dict(window=(1, 0), dilation=0), dict(window=(1, 0), num_sinks=-1),
    dict(window=(1, 0), seq_lens=[5]), dict(window=(1, 0), backend="nope"), dict(window="wide"),
])
def test_bad_arguments(bad):
    q, k, v = _inputs(2, 4, 4, 2, 2, 8, torch.float32)
    with pytest.raises(ValueError):
        sliding_window_attention(q, k, v, **bad)


def test_dropout_is_training_only_and_changes_output():
    q, k, v = (x.detach() for x in _inputs(1, 64, 64, 2, 2, 16, torch.float32))
    a = sliding_window_attention(q, k, v, window=(8, 0), dropout_p=0.5)
    b = sliding_window_attention(q, k, v, window=(8, 0))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError):
        sliding_window_attention(q, k, v, window=(8, 0), dropout_p=0.5, backend="cpu")


@pytest.mark.parametrize("shift", [0, 3, 8])
@pytest.mark.parametrize("n", [1, 16, 37])
def test_block_and_shifted_block(n, shift):
    from seqwin.attention.reference import block_attention_mask, masked_attention_reference
    from seqwin.attention.swin import block_attention

    q, k, v = _inputs(2, n, n, 4, 2, 16, torch.float32, seed=4)
    lens = [n, max(1, n - 5)]
    out = block_attention(q, k, v, block_size=16, shift=shift, seq_lens=lens)
    mask = block_attention_mask(2, n, 16, shift=shift, seq_lens=torch.tensor(lens))
    ref = masked_attention_reference(q, k, v, mask)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad),
                    strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
