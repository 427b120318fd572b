"""A callable benchmark case for routing attention (the lead's tools/bench_attention.py owns the
CLI/reporting).

``bench_routing()`` times forward and forward+backward of :func:`routing_attention` (and, optionally, dense
SDPA on the same tensors) and reports the best of ``repeats`` runs in milliseconds, plus the dropped fraction.
Machines of one kind differ a lot and are shared: compare numbers only within one call.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from seqwin.attention.routing import routing_attention
from seqwin.attention.routing_kmeans import KMeansRouter


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def bench_routing(
    *,
    seq_len: int = 8192,
    num_heads: int = 4,
    head_dim: int = 64,
    num_clusters: int = 64,
    batch: int = 1,
    causal: bool = False,
    window: int | None = None,
    dtype: torch.dtype = torch.float32,
    repeats: int = 3,
    dense: bool = False,
    train: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Time routing attention at one shape. The router is initialized first; with ``train=False`` it is in
    eval mode (fixed centroids), with ``train=True`` every call also runs the EMA update (O(n·c·d))."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, seq_len, num_heads, head_dim)
    q, k, v = (torch.randn(shape, generator=g).to(dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, generator=g).to(dtype)
    router = KMeansRouter(num_heads, head_dim, num_clusters)
    routing_attention(q.detach(), k.detach(), v.detach(), router)  # initialize from data
    router.train(train)
    kw = dict(causal=causal, window=window)
    aux: dict[str, Any] = {}

    def fwd():
        with torch.no_grad():
            aux.update(routing_attention(q, k, v, router, **kw)[1])

    def fwd_bwd():
        out, _ = routing_attention(q, k, v, router, **kw)
        out.backward(grad)

    fwd(), fwd_bwd()  # warm-up
    result: dict[str, Any] = {
        "shape": shape,
        "num_clusters": num_clusters,
        "causal": causal,
        "window": window,
        "dtype": str(dtype),
        "router_training": train,
        "fwd_ms": _best(fwd, repeats),
        "fwd_bwd_ms": _best(fwd_bwd, repeats),
        "dropped_fraction": aux["dropped_fraction"],
        "threads": torch.get_num_threads(),
    }
    if dense:
        qt, kt, vt = (x.detach().transpose(1, 2).requires_grad_() for x in (q, k, v))
        gt = grad.transpose(1, 2)

        def dense_fwd_bwd():
            F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal).backward(gt)

        result["dense_fwd_bwd_ms"] = _best(dense_fwd_bwd, max(1, repeats // 2))
        result["speedup_vs_dense"] = result["dense_fwd_bwd_ms"] / result["fwd_bwd_ms"]
    return result
