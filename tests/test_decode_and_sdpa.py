"""Ring-buffer decoding equals the full causal forward; the fairseq2 SDPA matches fairseq2's own attention."""

from __future__ import annotations

import pytest
import torch
from fairseq2.models.transformer import (
    AttentionBiasCache,
    CausalAttentionBias,
    IdentityBias,
    StandardFeedForwardNetwork,
    StandardMultiheadAttention,
    StandardTransformerEncoder,
    StandardTransformerEncoderLayer,
    TorchSDPA,
)
from fairseq2.nn import BatchLayout, IncrementalStateBag, StandardLayerNorm

from seqwin.attention import SlidingWindowKVCache, sliding_window_attention
from seqwin.attention.fairseq2 import SlidingWindowAttentionStateFactory, SlidingWindowSDPA


@pytest.mark.parametrize("left,sinks,dilation", [(0, 0, 1), (6, 0, 1), (6, 3, 1), (9, 2, 2), (100, 0, 1)])
def test_cache_decoding_equals_full_forward(left, sinks, dilation):
    torch.manual_seed(0)
    b, n, h, hk, d = 2, 57, 4, 2, 16
    q, k, v = torch.randn(b, n, h, d), torch.randn(b, n, hk, d), torch.randn(b, n, hk, d)
    kw = dict(window=(left, 0), num_sinks=sinks, dilation=dilation)
    full = sliding_window_attention(q, k, v, **kw)

    cache = SlidingWindowKVCache(left, num_sinks=sinks)
    outs, sizes, pos = [], [], 0
    # Chunked prefill, then single steps, then another chunk.
    for step in [13, *([1] * 30), 5, 1, 8]:
        ck, cv = cache.update(k[:, pos : pos + step], v[:, pos : pos + step])
        assert ck.shape[1] <= sinks + left + step  # never more than the window needs
        outs.append(sliding_window_attention(q[:, pos : pos + step], ck, cv, **kw))
        sizes.append(cache.size_bytes())
        pos += step
    assert pos == n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=2e-6, rtol=1e-5)
    if left + sinks < 20:
        assert sizes[-1] == sizes[-10]  # constant memory once the window is full


def test_cache_rejects_unbounded_lookback():
    with pytest.raises(ValueError):
        SlidingWindowKVCache(-1)


def _mha(sdpa, dim=32, heads=4, kv_heads=2, state_factory=None):
    return StandardMultiheadAttention(dim, heads, sdpa, num_key_value_heads=kv_heads, state_factory=state_factory)


def test_sdpa_in_encoder_matches_torch_sdpa_when_window_covers_sequence():
    torch.manual_seed(0)
    dim, n = 32, 23

    def encoder(sdpa_factory):
        torch.manual_seed(1)
        layers = [
            StandardTransformerEncoderLayer(
                _mha(sdpa_factory()), StandardLayerNorm(dim, bias=True),
                StandardFeedForwardNetwork(dim, 64, bias=True), StandardLayerNorm(dim, bias=True),
            )
            for _ in range(2)
        ]
        return StandardTransformerEncoder(layers).eval()

    ours = encoder(lambda: SlidingWindowSDPA((n, n)))
    theirs = encoder(lambda: TorchSDPA(IdentityBias()))
    x = torch.randn(3, n, dim)
    layout = BatchLayout.of(x, seq_lens=[23, 11, 5])
    a = ours(x, layout)
    b = theirs(x, layout)
    for row, length in enumerate([23, 11, 5]):  # padded positions are unspecified in fairseq2's output
        torch.testing.assert_close(a[row, :length], b[row, :length], atol=1e-5, rtol=1e-5)


def test_sdpa_packed_equals_padded():
    torch.manual_seed(0)
    sdpa = SlidingWindowSDPA((3, 2), num_sinks=1)
    lens = [7, 4, 9]
    q = torch.randn(sum(lens), 2, 8)
    packed = BatchLayout((sum(lens),), seq_lens=lens, packed=True)
    out_packed, _ = sdpa(q, packed, q, packed, q, AttentionBiasCache())
    begin = 0
    for n in lens:
        x = q[begin : begin + n][None]
        single, _ = sdpa(x, BatchLayout.of(x), x, BatchLayout.of(x), x, AttentionBiasCache())
        torch.testing.assert_close(out_packed[begin : begin + n], single[0])
        begin += n


@pytest.mark.parametrize("left", [4, 1000])
def test_incremental_decoding_in_fairseq2_mha(left):
    torch.manual_seed(0)
    dim, n = 32, 30
    mha = _mha(SlidingWindowSDPA((left, 0), num_sinks=2),
               state_factory=SlidingWindowAttentionStateFactory(left, num_sinks=2)).eval()
    x = torch.randn(2, n, dim)
    layout = BatchLayout.of(x)
    full = mha(x, layout, x, layout, x, AttentionBiasCache())
    if left >= n:  # a window wider than the sequence is plain causal attention
        ref = _mha(TorchSDPA(CausalAttentionBias())).eval()
        ref.load_state_dict(mha.state_dict())
        torch.testing.assert_close(full, ref(x, layout, x, layout, x, AttentionBiasCache()), atol=1e-5, rtol=1e-5)

    bag = IncrementalStateBag(max_num_steps=n + 1)
    outs = []
    prefill = 6
    for start, stop in [(0, prefill), *[(i, i + 1) for i in range(prefill, n)]]:
        step = x[:, start:stop]
        step_layout = BatchLayout.of(step)
        outs.append(mha(step, step_layout, step, step_layout, step, AttentionBiasCache(), state_bag=bag))
        bag.increment_step_nr(stop - start)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training():
    sdpa = SlidingWindowSDPA((4, 0), dropout_p=0.5)
    x = torch.randn(1, 20, 2, 8)
    layout = BatchLayout.of(x)
    sdpa.eval()
    a, _ = sdpa(x, layout, x, layout, x, AttentionBiasCache())
    b, _ = sdpa(x, layout, x, layout, x, AttentionBiasCache())
    assert torch.equal(a, b)
    sdpa.train()
    c, _ = sdpa(x, layout, x, layout, x, AttentionBiasCache())
    assert not torch.allclose(a, c)
