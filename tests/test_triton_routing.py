"""Triton routing attention against the dense routing reference: outputs and gradients of q, k and v.

The routing decisions (cluster ids, group size, window) come from ``routing_attention``'s ``aux`` on the CPU path,
and ``routing_attention_reference`` applies them as a dense mask; the Triton path must match it, and the CPU
path's own output too. Without a GPU the kernels run in the Triton CPU interpreter with 16-wide blocks, so lengths
37/50 and groups of 7/13/16/20 put segments across block edges. See ``triton_interp`` for how the interpreter is
set up (in-process when run alone, a subprocess inside a full suite).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from host_sync import HostSyncGuard
from triton_interp import DEVICE, ON_GPU, rerun_in_interpreter, runs_here

triton = pytest.importorskip("triton")
import seqwin.kernels.routing as _routing_module  # noqa: E402
from seqwin.kernels._sw_launch import Geometry, _block_table  # noqa: E402
from seqwin.kernels.sliding_window import triton_sliding_window_attention_varlen  # noqa: E402

import seqwin.attention.routing.attention as _dispatch_module  # noqa: E402
from seqwin.attention.routing import KMeansRouter, routing_attention, routing_attention_reference  # noqa: E402

RUN_HERE = runs_here()
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.skipif(RUN_HERE, reason="the kernel tests run in this process")
def test_interpreter_subprocess():
    rerun_in_interpreter(__file__)


@pytest.fixture(scope="module")
def rt() -> ModuleType:
    if not RUN_HERE:
        pytest.skip("Triton was imported before TRITON_INTERPRET could be set: run by test_interpreter_subprocess")
    return _routing_module


def _inputs(b, nq, nk, h, hk, d, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_()  # noqa: E731
    return make(b, nq, h, d), make(b, nk, hk, d), make(b, nk, hk, dv)


def _router(h, d, c, q, k):
    torch.manual_seed(0)
    router = KMeansRouter(h, d, c).to(DEVICE)
    router(torch.cat([q, k.repeat_interleave(h // k.shape[2], dim=2)], dim=1).detach())  # initialize from data
    return router.eval()


def _assert_close(got, want, dtype, what):
    assert got.shape == want.shape and torch.isfinite(got).all(), what
    err = (got.float() - want.float()).abs().max().item()
    scale = max(want.float().abs().max().item(), 1.0)
    assert err <= TOL[dtype] * scale, f"{what}: max abs error {err:.3g} (scale {scale:.3g})"


def _check(rt, b, n, h, hk, d, c, *, causal, dv=None, nq=None, dtype=torch.float32, seed=0, **kw):
    """Route with ``routing_attention`` (CPU path), then compare the Triton path with the dense reference."""
    nq = nq or n
    q, k, v = _inputs(b, nq, n, h, hk, d, dv or d, dtype, seed)
    if kw.get("shared_qk"):
        k = q.detach().clone().requires_grad_()
    router = _router(h, d, c, q.float(), k.float())
    cpu_out, aux = routing_attention(q, k, v, router, causal=causal, **kw)
    out = rt.triton_routing_attention(q, k, v, aux["q_ids"], aux["k_ids"], causal=causal, num_clusters=c,
                                      window=aux["window"], group_size=aux["group_size"])
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = routing_attention_reference(q32, k32, v32, aux, causal=causal, num_clusters=c)
    ref_grads = torch.autograd.grad(ref, (q32, k32, v32), grad.float())
    assert out.dtype == dtype
    _assert_close(out, ref, dtype, "out")
    _assert_close(out, cpu_out, dtype, "out vs CPU path")
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        _assert_close(got, want, dtype, name)
    return out, grads


@pytest.mark.parametrize(("b", "n", "h", "hk", "c", "kw"), [
    (2, 37, 2, 1, 3, {"seq_lens": [37, 20]}),  # GQA, padding, default group ceil(37/3) = 13
    (2, 37, 2, 2, 4, {"seq_lens": [37, 0], "group_size": 16, "shared_qk": True}),  # an all-padding row
    (1, 50, 2, 1, 5, {"group_size": 20}),
], ids=["gqa-pad", "shared-empty-row", "group20"])
def test_non_causal(rt, b, n, h, hk, c, kw):
    _check(rt, b, n, h, hk, 16, c, causal=False, **kw)


@pytest.mark.parametrize(("b", "n", "h", "hk", "c", "kw"), [
    (2, 37, 2, 1, 3, {"seq_lens": [37, 20]}),  # unbounded look-back within the cluster
    (2, 37, 2, 2, 3, {"seq_lens": [37, 0], "window": 1}),  # each token sees only itself
    (1, 50, 2, 1, 2, {"window": 5}),  # windows cross 16-wide blocks inside big clusters
    (1, 37, 2, 1, 3, {"window": 7, "shared_qk": True}),
], ids=["gqa-pad", "window1-empty-row", "window5", "shared-window7"])
def test_causal(rt, b, n, h, hk, c, kw):
    if kw.get("shared_qk"):
        hk = h
    _check(rt, b, n, h, hk, 16, c, causal=True, **kw)


def test_causal_decoding_and_value_dim(rt):
    """q_len < k_len: the queries are the last tokens (bottom-right aligned in each cluster); v's head dim
    differs from q's."""
    _check(rt, 2, 40, 2, 1, 16, 3, causal=True, nq=21, dv=24, window=6)


@pytest.mark.parametrize("causal", [False, True])
def test_bf16(rt, causal):
    _check(rt, 2, 37, 2, 1, 16, 3, causal=causal, dtype=torch.bfloat16, seq_lens=[37, 25],
           **({"window": 9} if causal else {}))


def test_strict_causality(rt):
    """Changing tokens from position t on (which may also change their clusters) leaves outputs before t
    unchanged, and no gradient of those outputs reaches a token at or after t."""
    b, n, h, hk, d, c, t = 1, 45, 2, 1, 16, 3, 23
    q, k, v = _inputs(b, n, n, h, hk, d, d, torch.float32)
    router = _router(h, d, c, q, k)

    def run(q, k, v):
        _, aux = routing_attention(q.detach(), k.detach(), v.detach(), router, causal=True, window=8)
        return rt.triton_routing_attention(q, k, v, aux["q_ids"], aux["k_ids"], causal=True, num_clusters=c,
                                           window=8)

    out = run(q, k, v)
    grads = torch.autograd.grad(out[:, :t].sum(), (q, k, v))
    for name, grad in zip("qkv", grads, strict=True):
        assert (grad[:, t:] == 0).all(), f"gradient reaches future {name}"
    g = torch.Generator().manual_seed(9)
    later = [x.detach().clone() for x in (q, k, v)]
    for x in later:
        x[:, t:] = 3 * torch.randn(x[:, t:].shape, generator=g).to(DEVICE)
    torch.testing.assert_close(run(*later)[:, :t], out[:, :t].detach(), atol=1e-6, rtol=1e-5)


def test_packed_grid_matches_plain_grid(rt):
    """The block-table launch equals the (blocks x sequences) launch on skewed lengths, with sinks, a bounded
    window and empty sequences on either side."""
    lq, lk = [5, 37, 0, 20, 3], [9, 30, 4, 33, 0]
    cu_q, cu_k = (torch.tensor([0, *x]).cumsum(0).to(DEVICE) for x in (lq, lk))
    q, k, v = (x[0].detach().requires_grad_() for x in _inputs(1, sum(lq), sum(lk), 2, 1, 16, 16, torch.float32))
    outs = []
    for packed in (False, True):
        out = triton_sliding_window_attention_varlen(q, k, v, cu_q, cu_k, (6, 1), num_sinks=2, packed_grid=packed)
        outs.append((out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out))))
    for name, a, b in zip(("out", "dq", "dk", "dv"), *outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize(("lens", "block", "heads"), [([0, 5, 16, 17, 0, 40], 16, 3), ([0, 0], 16, 2), ([1], 32, 1)])
def test_block_table_covers_every_block_once(lens, block, heads):
    """Each (sequence * heads + head, block) pair appears exactly once; spare programs point past the end of the
    last sequence (no-ops). Plain torch: no kernel runs."""
    cu = torch.tensor([0, *lens]).cumsum(0).to(torch.int32)
    geo = Geometry(cu, cu, len(lens), max(lens), max(lens), 0, 0, 0, 1, 1.0, True, True)
    table = _block_table(geo, "q", block, heads, int(cu[-1])).tolist()
    want = {(blk, s * heads + h) for s, n in enumerate(lens) for h in range(heads) for blk in range(-(-n // block))}
    real = [tuple(row) for row in table if tuple(row) in want]
    assert sorted(real) == sorted(want) and len(real) == len(want)
    last = len(lens) * heads - 1
    for blk, bh in table:
        assert (blk, bh) in want or (bh == last and blk * block >= lens[-1])


def test_rejects_bad_arguments(rt):
    q, k, v = _inputs(1, 8, 8, 2, 1, 16, 16, torch.float32)
    ids = torch.zeros(1, 2, 8, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="q_ids"):
        rt.triton_routing_attention(q, k, v, ids[:, :1], ids, causal=False, num_clusters=2)
    with pytest.raises(ValueError, match="window"):
        rt.triton_routing_attention(q, k, v, ids, ids, causal=True, num_clusters=2, window=0)
    with pytest.raises(ValueError, match="q_len <= k_len"):
        rt.triton_routing_attention(q, k[:, :4], v[:, :4], ids, ids[..., :4], causal=True, num_clusters=2)


@pytest.mark.parametrize("causal", [False, True])
def test_no_host_round_trip(rt, monkeypatch, causal):
    """``routing_attention`` on the Triton path, training router included, forward and backward: no op that
    would make the host wait for a GPU value (``HostSyncGuard``), once the router is initialized."""
    monkeypatch.setattr(_dispatch_module, "_triton_path", lambda q: True)
    q, k, v = _inputs(2, 37, 37, 2, 1, 16, 16, torch.float32)
    router = KMeansRouter(2, 16, 3).to(DEVICE).train()
    kw = {"causal": causal, "seq_lens": [37, 20], **({"window": 5} if causal else {})}
    routing_attention(q.detach(), k.detach(), v.detach(), router, **kw)  # initializes the centroids
    with HostSyncGuard():
        out, aux = routing_attention(q, k, v, router, **kw)
        (out.sum() + aux["loss"]).backward()
    assert float(aux["dropped_fraction"]) == 0.0 and q.grad is not None and torch.isfinite(q.grad).all()


def test_kernels_compile_for_h100(rt):
    """The packed-grid kernels that routing launches compile for sm_90 (frontend, lowering, ptxas) without a GPU;
    a fresh process because the kernels here are interpreted."""
    if ON_GPU:
        pytest.skip("the GPU tests compile the kernels for real")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("Triton's NVIDIA backend (ptxas) is not installed")
    env = {key: val for key, val in os.environ.items() if key != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "seqwin.kernels.aot_check", "--arch", "90", "--routing", "--quick"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("sm_90") == 3, proc.stdout  # forward, dq, dk/dv


# ---- GPU only: realistic shapes with the compiled kernels and production block sizes ----

GPU_GRID = [
    (d, dtype, causal, kw)
    for d in (64, 128)
    for dtype in (torch.bfloat16, torch.float16)
    for causal, kw in [
        (False, {}),
        (False, {"seq_lens": [1000, 517], "group_size": 100}),
        (True, {}),
        (True, {"seq_lens": [1000, 517], "window": 128}),
    ]
]


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize(("d", "dtype", "causal", "kw"), GPU_GRID)
def test_gpu_grid(rt, d, dtype, causal, kw):
    _check(rt, 2, 1000, 8, 2, d, 16, causal=causal, dtype=dtype, **kw)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
def test_gpu_fp32_many_clusters():
    """fp32 and more (batch, head, cluster) segments than a CUDA grid axis could hold (65535)."""
    _check(_routing_module, 4, 2048, 16, 16, 64, 1100, causal=True, window=64)


@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
@pytest.mark.parametrize("causal", [False, True])
def test_gpu_no_sync_and_cuda_graph(causal):
    """On the GPU: a training call (router EMA and re-seeding included) runs under
    ``torch.cuda.set_sync_debug_mode("error")``, and a captured training step (forward, gradients, the router's
    update) replayed from one router state gives what an eager step from that state gives."""
    b, n, h, hk, d, c = 2, 1000, 8, 2, 64, 16
    q, k, v = _inputs(b, n, n, h, hk, d, d, torch.bfloat16)
    lens = torch.tensor([1000, 517], device=DEVICE)
    kw = {"causal": causal, "seq_lens": lens, **({"window": 128} if causal else {})}
    router = KMeansRouter(h, d, c).to(DEVICE).train()
    routing_attention(q, k, v, router, **kw)[0].sum().backward()  # initialize, compile
    with torch.no_grad():
        router.ema_count[0, :2] = 0.0  # two dead centroids: re-seeding has work to do
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, aux = routing_attention(q, k, v, router, **kw)
        out.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    grad = torch.randn_like(out)

    def step():
        out, aux = routing_attention(q, k, v, router, **kw)
        return (out, aux["loss"], *torch.autograd.grad(out, (q, k, v), grad))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm up on a side stream, as graph capture asks
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    start = {key: val.clone() for key, val in router.state_dict().items()}
    graph.replay()
    torch.cuda.synchronize()
    replayed = [x.clone() for x in captured]
    after_replay = {key: val.clone() for key, val in router.state_dict().items()}
    for key, val in start.items():  # back to the same state, then one eager step
        router.state_dict()[key].copy_(val)
    eager = step()
    for name, got, want in zip(("out", "loss", "dq", "dk", "dv"), replayed, eager, strict=True):
        torch.testing.assert_close(got, want, msg=name)
    for key, val in router.state_dict().items():
        torch.testing.assert_close(after_replay[key], val, msg=key)
