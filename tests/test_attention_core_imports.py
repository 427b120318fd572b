"""The attention core (``seqwin.attention`` and ``seqwin.kernels``) imports and runs with torch alone.

Each check runs in a fresh interpreter whose import system refuses ``fairseq2`` and ``einops``, as on a GPU image
that has torch and Triton but neither of them; it then asserts that no module of either got imported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Put first on sys.meta_path: any import of these top-level packages (or their submodules) fails.
BLOCKER = textwrap.dedent("""
    import sys

    BLOCKED = ("fairseq2", "einops")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Blocker())

    def check_nothing_blocked_was_imported():
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
""")

CORE = textwrap.dedent("""
    import importlib.util

    import torch

    import seqwin.attention as attn
    import seqwin.kernels
    from seqwin.attention.reference import block_attention_mask, masked_attention_reference

    torch.manual_seed(0)
    b, n, h, d = 2, 24, 2, 8
    q, k, v = (torch.randn(b, n, h, d, requires_grad=True) for _ in range(3))
    seq_lens = [24, 17]

    for backend in ("cpu", "blocked", "reference"):
        out = attn.sliding_window_attention(q, k, v, window=(5, 0), seq_lens=seq_lens, backend=backend)
        want = attn.sliding_window_attention_reference(q, k, v, window=(5, 0), seq_lens=torch.tensor(seq_lens))
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    out.sum().backward()

    for backend in ("cpu", "blocked"):
        out = attn.pooled_attention(q, k, v, pool_size=4, causal=True, window=(3, 0), seq_lens=seq_lens,
                                    backend=backend)
        want = attn.pooled_attention_reference(q, k, v, pool_size=4, causal=True, window=(3, 0), seq_lens=seq_lens)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    pooled = attn.PooledKVCache(4, 3)
    assert pooled.step(q[:, :9].detach(), k[:, :9].detach(), v[:, :9].detach()).shape == (b, 9, h, d)

    router = attn.KMeansRouter(h, d, 3)
    for causal in (False, True):
        out, aux = attn.routing_attention(q, k, v, router, causal=causal)
        want = attn.routing_attention_reference(q, k, v, aux, causal=causal, num_clusters=3)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)

    out = attn.block_routing_attention(q, k, v, block_size=4, top_k=2)
    torch.testing.assert_close(out, attn.block_routing_attention_reference(q, k, v, block_size=4, top_k=2))
    out = attn.block_attention(q, k, v, block_size=6, shift=3)
    mask = block_attention_mask(b, n, 6, shift=3)
    torch.testing.assert_close(out, masked_attention_reference(q, k, v, mask), atol=1e-5, rtol=1e-5)

    cache = attn.SlidingWindowKVCache(5)
    ck, cv = cache.update(k[:, :10].detach(), v[:, :10].detach())
    assert ck.shape[1] == 10
    router.eval()
    step = attn.RoutingKVCache(router, 4).step(q[:, :1].detach(), k[:, :1].detach(), v[:, :1].detach())
    assert step.shape == (b, 1, h, d)

    spec = attn.AttentionSpec(kind="mixed", local_heads=1, routing_heads=1, window=(3, 0), causal=True)
    assert attn.expand_attention_specs(4, spec)[3] == spec
    assert seqwin.kernels.triton_available() in (True, False)
    if importlib.util.find_spec("triton") is not None:  # the kernel modules themselves (they need Triton)
        import seqwin.kernels.routing
        import seqwin.kernels.sliding_window
    check_nothing_blocked_was_imported()
    print("core ok")
""")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=300)


def test_core_runs_without_fairseq2():
    proc = _run(CORE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "core ok" in proc.stdout


def test_blocker_does_block_the_fairseq2_adapter():
    """The same interpreter set-up refuses the adapter package, so the check above really runs without fairseq2."""
    proc = _run("import seqwin.attention.fairseq2\n")
    assert proc.returncode != 0
    assert "fairseq2 is blocked in this test" in proc.stderr
