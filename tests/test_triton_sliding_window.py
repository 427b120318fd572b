"""Triton sliding-window kernels against the dense reference: outputs and gradients of q, k and v.

Without a GPU the kernels run in the Triton CPU interpreter (exact but slow), so the CPU grid keeps shapes tiny;
blocks are 16 wide there, so lengths 37 and 70 still cross several block boundaries and exercise the masked
head/tail and unmasked interior loops. With CUDA the same tests run the compiled kernels, plus a larger grid.

See ``triton_interp`` for how the interpreter is set up: in-process when this module runs alone, a fresh
interpreter-mode subprocess (``test_interpreter_subprocess``) inside a full suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from triton_interp import DEVICE, ON_GPU, rerun_in_interpreter, runs_here

triton = pytest.importorskip("triton")
import seqwin.kernels.sliding_window as _sw_module  # noqa: E402
import triton.language as tl  # noqa: E402
from seqwin.kernels._sw_common import _key_blocks, _query_blocks  # noqa: E402

from seqwin.attention.reference import sliding_window_attention_reference, sliding_window_mask  # noqa: E402

RUN_HERE = runs_here()


@pytest.mark.skipif(RUN_HERE, reason="the kernel tests run in this process")
def test_interpreter_subprocess():
    """Re-run this module in a fresh process with the interpreter on from the start."""
    rerun_in_interpreter(__file__)


@pytest.fixture(scope="module")
def sw() -> ModuleType:
    if not RUN_HERE:
        pytest.skip("Triton was imported before TRITON_INTERPRET could be set: run by test_interpreter_subprocess")
    return _sw_module


def _inputs(b, nq, nk, h, hk, d, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_()  # noqa: E731
    return make(b, nq, h, d), make(b, nk, hk, d), make(b, nk, hk, dv)


def _tol(dtype: torch.dtype) -> float:
    # Relative to the largest reference magnitude. 16-bit inputs: P and dS are rounded to 16 bits before their
    # matmuls (as in every flash kernel), so errors scale with the format's epsilon.
    return {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]


def _assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert got.shape == want.shape, what
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err = (got.float() - want.float()).abs().max().item()
    scale = max(want.float().abs().max().item(), 1.0)
    assert err <= _tol(dtype) * scale, f"{what}: max abs error {err:.3g} (scale {scale:.3g})"


def _check(sw, b, nq, nk, h, hk, d, window, *, dv=None, q_lens=None, k_lens=None, num_sinks=0, dilation=1,
           dtype=torch.float32, scale=None, seed=0):
    dv = dv or d
    q_lens = q_lens or [nq] * b
    k_lens = k_lens or [nk] * b
    q, k, v = _inputs(b, nq, nk, h, hk, d, dv, dtype, seed)
    out = sw.triton_sliding_window_attention(q, k, v, window, q_lens=q_lens, k_lens=k_lens, num_sinks=num_sinks,
                                             dilation=dilation, scale=scale)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    # Reference in fp32 on the same (already rounded) inputs.
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = sliding_window_attention_reference(
        q32, k32, v32, window=window, seq_lens=torch.tensor(q_lens), k_seq_lens=torch.tensor(k_lens),
        num_sinks=num_sinks, dilation=dilation, scale=scale)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), grad.float())
    assert out.dtype == dtype
    _assert_close(out, ref, dtype, "out")
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        _assert_close(got, want, dtype, name)
    return out, grads


# ---- block ranges: which (query block, key block) pairs the kernels visit, checked against the mask itself ----


@triton.jit
def _ranges_kernel(P, OUT, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_DIL: tl.constexpr):
    p = P + tl.program_id(0) * 8
    m0, off, q_len, k_len = tl.load(p), tl.load(p + 1), tl.load(p + 2), tl.load(p + 3)
    left, right, num_sinks, n0 = tl.load(p + 4), tl.load(p + 5), tl.load(p + 6), tl.load(p + 7)
    o = OUT + tl.program_id(0) * 9
    n_sink, lo, full_lo, full_hi, end = _key_blocks(m0, off, q_len, k_len, left, right, num_sinks,
                                                    BLOCK_M, BLOCK_N, USE_DIL)
    tl.store(o, n_sink)
    tl.store(o + 1, lo)
    tl.store(o + 2, full_lo)
    tl.store(o + 3, full_hi)
    tl.store(o + 4, end)
    lo, full_lo, full_hi, end = _query_blocks(n0, off, q_len, k_len, left, right, num_sinks,
                                              BLOCK_M, BLOCK_N, USE_DIL, False)
    tl.store(o + 5, lo)
    tl.store(o + 6, full_lo)
    tl.store(o + 7, full_hi)
    tl.store(o + 8, end)


def _range_configs(seed: int, count: int, dilation: int):
    """Random geometries that hit block edges: lengths and window sides near multiples of 16 and 32."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    sides = [-1, 0, 1, 2, 5, 14, 15, 16, 17, 31, 32, 33, 47, 64]
    for _ in range(count):
        nq, nk = (int(torch.randint(1, 80, (1,), generator=g)) for _ in range(2))
        ql, kl = pick([nq, nq, int(torch.randint(0, nq + 1, (1,), generator=g))]), pick(
            [nk, nk, int(torch.randint(0, nk + 1, (1,), generator=g))])
        yield nq, nk, ql, kl, (pick(sides), pick(sides)), pick([0, 0, 1, 3, 17, 40]), dilation


@pytest.mark.parametrize(("bm", "bn", "dilation"), [(16, 32, 1), (32, 16, 1), (16, 16, 1), (16, 16, 2)])
def test_block_ranges_are_exact(sw, bm, bn, dilation):
    """Window blocks [lo, end) plus sink blocks [0, n_sink) are exactly the blocks holding a visible pair (with
    dilation: a superset), never overlapping; the unmasked range is exactly the fully visible blocks (empty with
    dilation). Same for the query blocks each key block's dk/dv program visits."""
    rows, checks = [], []
    for nq, nk, ql, kl, window, sinks, dil in _range_configs(bm * 7 + bn + dilation, 80, dilation):
        vis = sliding_window_mask(1, nq, nk, window, seq_lens=torch.tensor([ql]), k_seq_lens=torch.tensor([kl]),
                                  num_sinks=sinks, dilation=dil)[0, 0]
        left, right = sw._window(window, 2 * (nq + nk) + 1024)
        mq, mk = -(-nq // bm), -(-nk // bn)
        padded = torch.zeros(mq * bm, mk * bn, dtype=torch.bool)
        padded[:nq, :nk] = vis
        blocks = padded.view(mq, bm, mk, bn)
        q_ok = (torch.arange(mq * bm) < ql).view(mq, bm)
        k_ok = (torch.arange(mk * bn) < kl).view(mk, bn)
        for m in range(max(mq, mk)):
            rows.append([min(m, mq - 1) * bm, nk - nq, ql, kl, left, right, sinks, min(m, mk - 1) * bn])
            checks.append((blocks, q_ok, k_ok, min(m, mq - 1), min(m, mk - 1), dil, (nq, nk, ql, kl, window, sinks)))
    params = torch.tensor(rows, dtype=torch.int32, device=DEVICE)
    out = torch.empty(len(rows), 9, dtype=torch.int32, device=DEVICE)
    _ranges_kernel[(len(rows),)](params, out, BLOCK_M=bm, BLOCK_N=bn, USE_DIL=dilation > 1)
    for (blocks, q_ok, k_ok, m, n, dil, cfg), r in zip(checks, out.tolist(), strict=True):
        n_sink, lo, full_lo, full_hi, end = r[:5]
        assert 0 <= n_sink and lo <= full_lo <= full_hi <= end and (lo >= end or lo >= n_sink), (cfg, m, r)
        need = {j for j in range(blocks.shape[2]) if blocks[m, :, j].any()}
        got = set(range(n_sink)) | set(range(lo, end))
        full = {j for j in range(lo, end) if k_ok[j].all() and blocks[m, q_ok[m], j].all()}
        assert need <= got and (dil > 1 or need == got), (cfg, m, r, sorted(need))
        assert set(range(full_lo, full_hi)) == (full if dil == 1 else set()), (cfg, m, r, sorted(full))
        lo, full_lo, full_hi, end = r[5:]
        assert lo <= full_lo <= full_hi <= end, (cfg, n, r)
        need = {i for i in range(blocks.shape[0]) if blocks[i, :, n].any()}
        full = {i for i in range(lo, end) if q_ok[i].all() and k_ok[n].all() and blocks[i, :, n].all()}
        assert need <= set(range(lo, end)) and (dil > 1 or need == set(range(lo, end))), (cfg, n, r, sorted(need))
        assert set(range(full_lo, full_hi)) == (full if dil == 1 else set()), (cfg, n, r, sorted(full))


# (b, nq, nk, h, hk, d, window, extra kwargs): lengths 1/7/37/70 across 16-wide blocks, every window shape.
CASES = [
    (1, 1, 1, 1, 1, 16, (0, 0), {}),
    (1, 7, 7, 2, 2, 16, (3, 5), {}),
    (2, 37, 37, 2, 2, 16, (0, 0), {}),
    (2, 37, 37, 2, 2, 16, (1, 0), {}),
    (2, 37, 37, 2, 2, 16, (3, 5), {}),
    (2, 37, 37, 2, 2, 16, (16, 0), {}),
    (2, 37, 37, 2, 2, 16, (-1, 0), {}),
    (2, 37, 37, 2, 2, 16, (0, -1), {}),
    (1, 37, 37, 2, 2, 16, (-1, -1), {}),
    (1, 70, 70, 2, 1, 16, (40, 0), {}),  # bounded window wide enough for unmasked interior blocks
    (1, 70, 70, 1, 1, 16, (20, 20), {}),
    # padding (incl. an empty row), GQA, unequal lengths both ways (bottom-right alignment)
    (2, 70, 70, 2, 1, 16, (16, 0), {"q_lens": [70, 33], "k_lens": [70, 33]}),
    (2, 37, 37, 2, 1, 16, (5, 0), {"q_lens": [37, 0], "k_lens": [37, 0]}),
    (2, 37, 50, 2, 1, 16, (5, 2), {"q_lens": [30, 12], "k_lens": [45, 20]}),
    (1, 20, 60, 2, 1, 16, (8, 0), {}),
    (1, 60, 20, 2, 1, 16, (8, 0), {}),  # early queries sit before key 0: they see nothing
    # sinks (inside and outside the window, more sinks than a block), dilation, both together
    (2, 70, 70, 2, 1, 16, (16, 0), {"num_sinks": 4, "q_lens": [70, 40], "k_lens": [70, 2]}),
    (1, 70, 70, 2, 1, 16, (5, 5), {"num_sinks": 20}),
    (1, 60, 20, 2, 1, 16, (8, 3), {"num_sinks": 3}),
    (1, 70, 70, 2, 1, 16, (9, 0), {"dilation": 2}),
    (1, 37, 37, 2, 1, 16, (-1, 0), {"dilation": 2}),
    (1, 70, 70, 2, 1, 16, (9, 4), {"dilation": 3, "num_sinks": 2}),
    # head dims that are not powers of two, value dim != key dim, explicit scale
    (1, 37, 37, 2, 1, 24, (7, 1), {"dv": 40}),
    (1, 37, 37, 1, 1, 40, (7, 1), {"dv": 16, "scale": 0.3}),
]


@pytest.mark.parametrize(("b", "nq", "nk", "h", "hk", "d", "window", "kw"), CASES,
                         ids=[f"{c[1]}x{c[2]}-w{c[6][0]}_{c[6][1]}-{'-'.join(c[7])}" for c in CASES])
def test_matches_reference_fp32(sw, b, nq, nk, h, hk, d, window, kw):
    _check(sw, b, nq, nk, h, hk, d, window, **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("window", "kw"), [
    ((7, 1), {"q_lens": [37, 20], "k_lens": [37, 20]}),
    ((-1, 0), {"num_sinks": 2}),
])
def test_matches_reference_16bit(sw, dtype, window, kw):
    _check(sw, 2, 37, 37, 2, 1, 16, window, dtype=dtype, **kw)


def test_padding_is_exactly_zero_and_finite(sw):
    """Padded queries and queries that see no key output exact zeros, and no gradient flows through padding,
    even when the incoming gradient at padded positions is nonzero."""
    out, (dq, dk, dv) = _check(sw, 2, 37, 40, 2, 1, 16, (4, 0), q_lens=[20, 37], k_lens=[25, 3])
    assert (out[0, 20:] == 0).all() and (dq[0, 20:] == 0).all()
    assert (dk[0, 25:] == 0).all() and (dv[0, 25:] == 0).all() and (dk[1, 3:] == 0).all()
    # row 1: query i sits at key i + 3 and sees keys i-1 .. i+3, all padding once i >= 7
    assert (out[1, 7:] == 0).all() and (dq[1, 7:] == 0).all()


def test_strided_inputs_and_gradient(sw):
    """(batch, heads, seq, dim) tensors viewed as (batch, seq, heads, dim) and a broadcast (stride 0) gradient."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, h, 37, 16, generator=g).to(DEVICE).transpose(1, 2).requires_grad_() for h in (2, 1, 1))
    out = sw.triton_sliding_window_attention(q, k, v, (6, 2), q_lens=[37], k_lens=[37])
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref = sliding_window_attention_reference(q, k, v, window=(6, 2))
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    _assert_close(out, ref, torch.float32, "out")
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        _assert_close(got, want, torch.float32, name)


def test_varlen_matches_per_sequence_reference(sw):
    lq, lk = [5, 37, 0, 20], [9, 30, 4, 33]
    h, hk, d = 2, 1, 16
    cu_q = torch.tensor([0, *lq]).cumsum(0).to(DEVICE)
    cu_k = torch.tensor([0, *lk]).cumsum(0).to(DEVICE)
    q, k, v = (x[0].detach().requires_grad_() for x in _inputs(1, sum(lq), sum(lk), h, hk, d, d, torch.float32))
    window, sinks = (6, 1), 2
    out = sw.triton_sliding_window_attention_varlen(q, k, v, cu_q, cu_k, window, num_sinks=sinks)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    refs = []
    for i in range(len(lq)):
        sq, sk = slice(int(cu_q[i]), int(cu_q[i + 1])), slice(int(cu_k[i]), int(cu_k[i + 1]))
        refs.append(sliding_window_attention_reference(q[None, sq], k[None, sk], v[None, sk], window=window,
                                                       num_sinks=sinks)[0])
    ref = torch.cat(refs)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad, allow_unused=True)
    _assert_close(out, ref, torch.float32, "out")
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        _assert_close(got, torch.zeros_like(got) if want is None else want, torch.float32, name)


def test_dispatcher_routes_to_triton(sw):
    from seqwin.attention import sliding_window_attention  # noqa: PLC0415

    q, k, v = _inputs(1, 37, 37, 2, 1, 16, 16, torch.float32)
    out = sliding_window_attention(q, k, v, window=(5, 0), seq_lens=[30], backend="triton")
    ref = sliding_window_attention_reference(q, k, v, window=(5, 0), seq_lens=torch.tensor([30]))
    _assert_close(out, ref, torch.float32, "out")


def test_triton_available_under_interpreter(sw):
    from seqwin.kernels import triton_available  # noqa: PLC0415

    assert triton_available()


def test_rejects_bad_arguments(sw):
    q, k, v = _inputs(1, 8, 8, 3, 2, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        sw.triton_sliding_window_attention(q, k, v, (2, 0), q_lens=[8], k_lens=[8])
    q, k, v = _inputs(1, 8, 8, 2, 1, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="window"):
        sw.triton_sliding_window_attention(q, k, v, (-2, 0), q_lens=[8], k_lens=[8])
    with pytest.raises(ValueError, match="lengths"):
        sw.triton_sliding_window_attention(q, k, v, (2, 0), q_lens=[9], k_lens=[8])


def test_kernels_compile_for_h100(sw):
    """Without a GPU, still compile every kernel for sm_90 (frontend, lowering, ptxas): the interpreter does not
    catch code that only fails to compile. Runs in a fresh process because the kernels here are interpreted."""
    if ON_GPU:
        pytest.skip("the GPU tests compile the kernels for real")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "seqwin.kernels.aot_check", "--arch", "90", "--quick"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("sm_90") == 4, proc.stdout  # forward, dq, sink tail, dk/dv


# ---- GPU only: realistic shapes with the compiled kernels and production block sizes ----

GPU_GRID = [
    (d, dtype, window, kw)
    for d in (32, 64, 128)
    for dtype in (torch.float16, torch.bfloat16)
    for window, kw in [
        ((256, 0), {}),
        ((-1, 0), {"q_lens": [1000, 517], "k_lens": [1000, 517]}),
        ((64, 64), {"num_sinks": 4}),
        ((-1, -1), {}),
        ((127, 0), {"dilation": 2}),
    ]
]


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize(("d", "dtype", "window", "kw"), GPU_GRID)
def test_gpu_grid(sw, d, dtype, window, kw):
    _check(sw, 2, 1000, 1000, 8, 2, d, window, dtype=dtype, **kw)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_fp32_long(sw, d):
    _check(sw, 1, 2048, 2048, 4, 4, d, (300, 0), num_sinks=1)
    _check(sw, 1, 777, 2049, 4, 1, d, (100, 10), q_lens=[700], k_lens=[2000])
