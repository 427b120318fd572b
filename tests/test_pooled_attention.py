"""Pooled-global attention: its definition written out as a loop, fast paths (values and gradients), causality,
padding, the decoding cache, the spec vocabulary, and pooled heads inside an LM and a wav2vec2 encoder.

The definition here shares no code with ``seqwin.attention.pooled``: block means are summed token by token in
float64, and visibility is spelled per (query, block) pair from the rule -- a bidirectional query sees every block
holding a valid key, a causal query at key position t sees block b iff the block ends before t's own block starts
(``(b + 1) * P <= (t // P) * P``), plus the raw keys of its window when one is given.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from fairseq2.models.transformer.attention_bias import AttentionBiasCache
from fairseq2.nn import BatchLayout
from fairseq2.utils.structured import StandardValueConverter
from lm_helpers import tiny_lm
from test_wav2vec2_models import SAMPLES, small

from seqwin.attention import (
    AttentionSpec,
    LayerAttentionConfig,
    PooledKVCache,
    pooled_attention,
    pooled_attention_reference,
)
from seqwin.attention.fairseq2 import MixedSDPA, attention_layers
from seqwin.attention.reference import sliding_window_attention_reference
from seqwin.models.lm import Decoder, decoding_session
from seqwin.models.wav2vec2.config import asr_presets
from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_asr_model

pytestmark = pytest.mark.usefixtures("one_thread")

BACKENDS = ["cpu", "blocked", "reference"]


def definition(q, k, v, pool_size, causal, window, q_lens, k_lens):
    """float64 loop over (query, key) and (query, block) pairs; (batch, seq, heads, dim) layout."""
    b, nq, h, d = q.shape
    nk, hk = k.shape[1], k.shape[2]
    nb = -(-nk // pool_size)
    out = torch.zeros(b, nq, h, v.shape[-1], dtype=torch.float64)
    for r in range(b):
        blocks = []  # (key, value) per block with a valid key, or None
        for blk in range(nb):
            members = [j for j in range(blk * pool_size, min(nk, (blk + 1) * pool_size)) if j < k_lens[r]]
            blocks.append(None if not members else (
                sum(k[r, j].double() for j in members) / len(members),
                sum(v[r, j].double() for j in members) / len(members)))
        for i in range(min(nq, q_lens[r])):
            t = i + nk - nq
            keys = []  # (key, value) of every visible raw key and block, (hk, d) each
            if window is not None:
                left, right = window
                keys += [(k[r, j].double(), v[r, j].double()) for j in range(k_lens[r])
                         if (left < 0 or j >= t - left) and (right < 0 or j <= t + right)]
            for blk, kv in enumerate(blocks):
                ends_before_own_block = (blk + 1) * pool_size <= (t // pool_size) * pool_size
                if kv is not None and (not causal or ends_before_own_block):
                    keys.append(kv)
            if not keys:
                continue
            for head in range(h):
                kv_head = head // (h // hk)
                scores = torch.stack([q[r, i, head].double() @ kk[kv_head] for kk, _ in keys]) / math.sqrt(d)
                probs = torch.softmax(scores, 0)
                out[r, i, head] = sum(p * vv[kv_head] for p, (_, vv) in zip(probs, keys, strict=True))
    return out


def _qkv(b, nq, nk, h, hk, d=8, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, heads, d, generator=g).to(dtype).requires_grad_(grad)
            for n, heads in ((nq, h), (nk, hk), (nk, hk))]


CASES = [  # (causal, window, pool_size, nq, nk, q_lens, k_lens)
    (False, None, 4, 13, 13, [13, 6], [13, 6]),
    (True, None, 4, 13, 13, [13, 9], [13, 9]),
    (True, (3, 0), 5, 17, 17, [17, 11], [17, 11]),
    (False, (2, 3), 3, 11, 11, [11, 1], [11, 1]),
    (True, (4, 0), 4, 5, 14, [5, 5], [14, 12]),  # fewer queries than keys: bottom-right alignment
    (False, None, 7, 9, 9, [9, 0], [9, 0]),  # an empty row; one block longer than some rows
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_every_backend_meets_the_definition(backend, case):
    causal, window, pool, nq, nk, q_lens, k_lens = case
    q, k, v = _qkv(2, nq, nk, 4, 2)
    got = pooled_attention(q, k, v, pool_size=pool, causal=causal, window=window, seq_lens=q_lens,
                           k_seq_lens=k_lens, backend=backend)
    want = definition(q, k, v, pool, causal, window, q_lens, k_lens)
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cpu", "blocked"])
@pytest.mark.parametrize("causal,window", [(True, None), (True, (6, 0)), (False, (5, 4)), (False, None)])
def test_values_and_gradients_match_the_reference(backend, dtype, causal, window):
    q, k, v = _qkv(2, 45, 45, 4, 2, d=16, dtype=dtype, grad=True)  # odd length: a partial last block
    lens = [45, 29]
    kw = dict(pool_size=8, causal=causal, window=window, seq_lens=lens)
    out = pooled_attention(q, k, v, backend=backend, **kw)
    ref = pooled_attention_reference(q, k, v, **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(out.float(), ref.float(), **tol)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.float(), want.float(), **tol)
    assert (out[1, 29:] == 0).all() and (grads[0][1, 29:] == 0).all()  # padded queries: zero output and gradient
    assert (grads[1][1, 29:] == 0).all() and (grads[2][1, 29:] == 0).all()  # padded keys: no gradient


@pytest.mark.parametrize("backend", ["cpu", "blocked"])
@pytest.mark.parametrize("window", [None, (3, 0)])
def test_causal_outputs_never_depend_on_later_tokens(backend, window):
    p, n, t = 4, 24, 9  # t sits inside block 2 = positions 8..11
    q, k, v = _qkv(1, n, n, 2, 2)
    base = pooled_attention(q, k, v, pool_size=p, causal=True, window=window, backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[:, t] += 3.0
    v2[:, t] -= 3.0
    moved = pooled_attention(q, k2, v2, pool_size=p, causal=True, window=window, backend=backend)
    changed = (moved - base).abs().amax(dim=(0, 2, 3)) > 1e-6
    # window heads see t from t on; its block (8..11) only once that block is complete, i.e. from position 12 on
    first = t if window is not None else 12
    assert not changed[:first].any() and changed[first:].all()


def test_padding_does_not_leak_and_empty_blocks_are_not_attended():
    q, k, v = _qkv(2, 14, 14, 2, 2)
    k[1, 9:], v[1, 9:] = 1e4, -1e4  # garbage past row 1's length
    for causal, window in ((False, None), (True, (2, 0)), (False, (3, 3))):
        kw = dict(pool_size=4, causal=causal, window=window)
        batched = pooled_attention(q, k, v, seq_lens=[14, 9], **kw)
        alone = pooled_attention(q[1:, :9], k[1:, :9], v[1:, :9], **kw)
        torch.testing.assert_close(batched[1, :9], alone[0], atol=1e-6, rtol=1e-5)
        assert torch.isfinite(batched).all() and (batched[1, 9:] == 0).all()
    # A row of 8 tokens in blocks of 4 has two blocks; bidirectional queries share one output (one softmax over
    # the same two block means); a third, empty block would add a score-0 key and change it.
    q1 = torch.ones(1, 8, 1, 8)
    out = pooled_attention(q1, k[1:, :12, :1], v[1:, :12, :1], pool_size=4, seq_lens=[8], k_seq_lens=[8])
    means_k, means_v = k[1, :8, 0].view(2, 4, 8).mean(1), v[1, :8, 0].view(2, 4, 8).mean(1)
    want = torch.softmax(means_k @ q1[0, 0, 0] / math.sqrt(8), 0) @ means_v
    torch.testing.assert_close(out[0, 3, 0], want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("window_left", [None, 5])
def test_decoding_cache_equals_the_full_forward(window_left):
    q, k, v = _qkv(2, 41, 41, 4, 2)
    window = None if window_left is None else (window_left, 0)
    full = pooled_attention(q, k, v, pool_size=6, causal=True, window=window)
    cache = PooledKVCache(6, window_left)
    cache.ingest(k[:, :7], v[:, :7])  # a prompt, attended by its own full forward
    pieces = [(7, 8), (8, 21), *[(i, i + 1) for i in range(21, 41)]]  # one token, a chunk across blocks, steps
    steps = torch.cat([cache.step(q[:, a:b], k[:, a:b], v[:, a:b]) for a, b in pieces], dim=1)
    torch.testing.assert_close(steps, full[:, 7:], atol=2e-6, rtol=1e-5)
    assert cache.blocks_k.shape[1] == 41 // 6  # one mean per finished block: P times fewer keys than tokens


def test_spec_vocabulary_and_errors():
    spec = AttentionSpec(kind="mixed", local_heads=2, pooled_heads=1, routing_heads=1, window=(7, 0), pool_size=16)
    assert spec.head_split(4) == (2, 1, 1) and AttentionSpec(kind="pooled").head_split(3) == (0, 3, 0)
    assert spec.describe() == "mixed(2x(7,0)+1xpooled(16)+1xrouting)"
    assert AttentionSpec(kind="pooled", pool_size=8).describe() == "pooled(8)"
    cfg = LayerAttentionConfig(default=AttentionSpec(kind="local", window=(7, 0)),
                               top=AttentionSpec(kind="mixed", local_heads=2, pooled_heads=2, window=(7, 0)),
                               num_top_layers=1)
    assert cfg.describe(3, 4) == "2 x local(7,0) + 1 x mixed(2x(7,0)+2xpooled(32))"
    cfg.check_clusters_fit(4, "a tiny sequence")  # no routing heads: clusters do not matter
    conv = StandardValueConverter()
    back = conv.structure(yaml.safe_load(yaml.safe_dump(conv.unstructure(cfg))), LayerAttentionConfig)
    assert back == cfg
    for bad, needle in ((dict(kind="mixed", local_heads=2), "pooled_heads \\+ routing_heads >= 1"),
                        (dict(kind="pooled", pool_size=0), "pool_size must be >= 1"),
                        (dict(kind="mixed", local_heads=2, pooled_heads=-1, routing_heads=2), "no negative")):
        with pytest.raises(ValueError, match=needle):
            AttentionSpec(**bad)
    with pytest.raises(ValueError, match=r"^local_heads \(2\) \+ pooled_heads \(1\) must equal the layer's 4 heads$"):
        AttentionSpec(kind="mixed", local_heads=2, pooled_heads=1).head_split(4)
    with pytest.raises(ValueError, match="right == 0"):
        pooled_attention(*_qkv(1, 4, 4, 1, 1), pool_size=2, causal=True, window=(2, 1))


@pytest.mark.parametrize("causal", [False, True])
def test_mixed_sdpa_runs_each_head_group_on_its_own_attention(causal):
    window = (4, 0) if causal else (3, 2)
    spec = AttentionSpec(kind="mixed", local_heads=2, pooled_heads=4, window=window, pool_size=5, causal=causal)
    sdpa = MixedSDPA(spec, num_heads=6, head_dim=8)
    q, k, v = _qkv(2, 23, 23, 6, 3)  # grouped-query: the groups own key/value heads [0, 1) and [1, 3)
    lens = [23, 14]
    layout = BatchLayout.of(q, seq_lens=lens)
    out, _ = sdpa(q, layout, k, layout, v, AttentionBiasCache())
    local = sliding_window_attention_reference(q[:, :, :2], k[:, :, :1], v[:, :, :1], window=window,
                                               seq_lens=torch.tensor(lens))
    torch.testing.assert_close(out[:, :, :2], local, atol=2e-6, rtol=1e-5)
    pooled = definition(q[:, :, 2:], k[:, :, 1:], v[:, :, 1:], 5, causal, window, lens, lens)
    torch.testing.assert_close(out[:, :, 2:].double(), pooled, atol=2e-6, rtol=1e-5)


POOLED = AttentionSpec(kind="pooled", pool_size=4)
LOCAL_POOLED = AttentionSpec(kind="mixed", local_heads=2, pooled_heads=2, window=(5, 0), pool_size=4)
ALL_GROUPS = AttentionSpec(kind="mixed", local_heads=2, pooled_heads=1, routing_heads=1, window=(5, 0),
                           pool_size=8, num_clusters=3, routing_window=5)
LM_LAYOUTS = {
    "pooled_top": LayerAttentionConfig(default=AttentionSpec(kind="local", window=(5, 0)), top=POOLED,
                                       num_top_layers=1),
    "local_pooled": LayerAttentionConfig(default=LOCAL_POOLED),
    "local_pooled_routing": LayerAttentionConfig(default=LOCAL_POOLED, overrides={1: ALL_GROUPS}),
}


@pytest.mark.parametrize("layout", list(LM_LAYOUTS))
def test_lm_step_by_step_decoding_equals_the_full_forward(layout):
    # one query head per key/value head where a group of one head needs it
    model = tiny_lm(LM_LAYOUTS[layout], num_kv_heads=4 if layout == "local_pooled_routing" else 2)
    assert {kind for kind, _ in attention_layers(model)} & {"pooled", "mixed"}
    x = torch.randint(0, 41, (2, 45))
    with torch.no_grad():
        full = model(x, BatchLayout.of(x))
    with decoding_session(model):
        dec = Decoder(model, x.shape[1], capacity_increment=1)
        pieces = [(0, 6), *[(i, i + 1) for i in range(6, 30)], (30, 45)]  # prefill, steps, a chunk
        inc = torch.cat([dec.forward(x[:, a:b]) for a, b in pieces], dim=1)
    torch.testing.assert_close(inc, full, atol=2e-5, rtol=1e-4)


def test_lm_pooled_cache_grows_by_one_key_per_block():
    model = tiny_lm(LayerAttentionConfig(default=LOCAL_POOLED))  # 3 layers, 2 kv heads of 8 dims, fp32
    x = torch.randint(0, 41, (1, 40))
    with decoding_session(model):
        dec = Decoder(model, 40, capacity_increment=1)
        sizes = []
        for i in range(40):
            dec.forward(x[:, i : i + 1])
            sizes.append(dec.cache_bytes())
    # one pooled kv head per layer: a new key and value of 8 fp32 each when a block of 4 completes
    per_block = 3 * 2 * 8 * 4
    assert sizes[39] - sizes[35] == per_block and sizes[38] == sizes[36]


def test_wav2vec2_encoder_with_local_and_pooled_heads_ignores_padding():
    torch.manual_seed(0)
    cfg = small(asr_presets()["tiny"])
    cfg.attention = LayerAttentionConfig(default=AttentionSpec(kind="mixed", local_heads=2, pooled_heads=2,
                                                               window=(2, 2), pool_size=3))
    cfg.model.encoder_config.feature_extractor_layer_norm_convs = True  # per-frame conv norms: padding-blind
    model = create_seqwin_wav2vec2_asr_model(cfg).eval()
    assert all(isinstance(layer.self_attn.sdpa, MixedSDPA) for layer in model.encoder.layers)
    wav = torch.randn(2, SAMPLES, generator=torch.Generator().manual_seed(0))
    n = SAMPLES * 3 // 5
    with torch.no_grad():
        batched, layout = model(wav, BatchLayout.of(wav, seq_lens=[SAMPLES, n]))
        single, _ = model(wav[1:, :n], BatchLayout.of(wav[1:, :n]))
    m = layout.seq_lens[1]
    torch.testing.assert_close(batched[1, :m], single[0, :m], atol=2e-5, rtol=1e-4)
