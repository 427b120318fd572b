"""AttentionSpec config, MixedSDPA vs the references, inside real fairseq2 layers, aux losses, decoding."""

from __future__ import annotations

import pytest
import torch
import yaml
from fairseq2.models.transformer import (
    AttentionBiasCache,
    StandardFeedForwardNetwork,
    StandardMultiheadAttention,
    StandardTransformerEncoder,
    StandardTransformerEncoderLayer,
)
from fairseq2.nn import BatchLayout, IncrementalStateBag, StandardLayerNorm
from fairseq2.utils.structured import StandardValueConverter

from seqwin.attention import AttentionSpec, LayerAttentionConfig, expand_attention_specs
from seqwin.attention.fairseq2 import MixedSDPA, collect_aux_losses
from seqwin.attention.reference import sliding_window_attention_reference
from seqwin.attention.routing import routing_attention, routing_attention_reference

MIXED = AttentionSpec(
    kind="mixed", local_heads=2, window=(5, 0), routing_heads=2, num_clusters=3, routing_window=6, causal=True
)


def test_spec_yaml_round_trip_and_expansion():
    conv = StandardValueConverter()
    cfg = LayerAttentionConfig(
        default=AttentionSpec(kind="local", window=(256, 0), causal=True),
        top=MIXED,
        num_top_layers=2,
        overrides={0: AttentionSpec(kind="full", causal=True)},
        head_windows={1: [(3, 0), (7, 0), (1, 0), (15, 0)]},
    )
    text = yaml.safe_dump(conv.unstructure(cfg))
    back = conv.structure(yaml.safe_load(text), LayerAttentionConfig)
    assert back == cfg and back.top.window == (5, 0)
    layers = back.expand(5, 4)
    assert [la.spec.kind for la in layers] == ["full", "local", "local", "mixed", "mixed"]
    assert layers[1].head_windows == [(3, 0), (7, 0), (1, 0), (15, 0)] and layers[2].head_windows is None
    specs = expand_attention_specs(3, MIXED, overrides={-1: AttentionSpec(kind="routing", num_clusters=8)})
    assert [s.kind for s in specs] == ["mixed", "mixed", "routing"]
    assert MIXED.head_split(4) == (2, 0, 2) and AttentionSpec(kind="routing").head_split(6) == (0, 0, 6)
    for bad in (
        dict(kind="mixed", routing_heads=0),
        dict(kind="local", window=(4, 2), causal=True),
        dict(kind="nope"),
    ):
        with pytest.raises(ValueError):
            AttentionSpec(**bad)
    with pytest.raises(ValueError):
        MIXED.head_split(6)


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_heads_match_references(causal):
    torch.manual_seed(0)
    spec = AttentionSpec(
        kind="mixed",
        local_heads=2,
        window=(4, 0) if causal else (3, 2),
        routing_heads=2,
        num_clusters=3,
        routing_window=5,
        group_size=6,
        causal=causal,
    )
    sdpa = MixedSDPA(spec, num_heads=4, head_dim=8)
    b, n, lens = 2, 21, [21, 13]
    q, k, v = (torch.randn(b, n, 4, 8, requires_grad=True) for _ in range(3))
    layout = BatchLayout.of(q, seq_lens=lens)
    sdpa(q, layout, k, layout, v, AttentionBiasCache())  # initializes the router (training mode)
    sdpa.eval()
    out, weights = sdpa(q, layout, k, layout, v, AttentionBiasCache())
    assert weights is None and out.shape == (b, n, 4, 8) and sdpa.aux_loss is None
    local = sliding_window_attention_reference(
        q[:, :, :2], k[:, :, :2], v[:, :, :2], window=spec.window, seq_lens=torch.tensor(lens)
    )
    _, aux = routing_attention(
        q[:, :, 2:],
        k[:, :, 2:],
        v[:, :, 2:],
        sdpa.router,
        causal=causal,
        seq_lens=lens,
        window=5,
        group_size=6,
    )
    routed = routing_attention_reference(
        q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], aux, causal=causal, num_clusters=3
    )
    valid = torch.arange(n)[None, :] < torch.tensor(lens)[:, None]
    torch.testing.assert_close(out[:, :, :2][valid], local[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, :, 2:][valid], routed[valid], atol=1e-5, rtol=1e-5)


def _encoder(specs, dim=32, heads=4, kv_heads=2):
    layers = []
    for spec in specs:
        mha = StandardMultiheadAttention(
            dim, heads, MixedSDPA(spec, heads, dim // heads), num_key_value_heads=kv_heads
        )
        layers.append(
            StandardTransformerEncoderLayer(
                mha,
                StandardLayerNorm(dim, bias=True),
                StandardFeedForwardNetwork(dim, 64, bias=True),
                StandardLayerNorm(dim, bias=True),
            )
        )
    return StandardTransformerEncoder(layers)


def test_encoder_layers_train_with_aux_loss_and_ignore_padding():
    torch.manual_seed(0)
    routing_top = AttentionSpec(
        kind="mixed",
        local_heads=2,
        window=(4, 4),
        routing_heads=2,
        num_clusters=4,
        group_size=5,
        commitment=0.1,
    )
    specs = expand_attention_specs(
        3, AttentionSpec(kind="local", window=(4, 4)), top=routing_top, num_top_layers=2
    )
    enc = _encoder(specs).train()
    x = torch.randn(3, 19, 32)
    layout = BatchLayout.of(x, seq_lens=[19, 12, 7])
    out = enc(x, layout)
    aux = collect_aux_losses(enc)
    assert aux is not None and aux.requires_grad and aux.item() > 0
    assert collect_aux_losses(enc) is None  # cleared: never added twice
    (out.pow(2).mean() + aux).backward()
    for layer in enc.layers:
        assert torch.isfinite(layer.self_attn.q_proj.weight.grad).all()
        assert layer.self_attn.q_proj.weight.grad.abs().sum() > 0
    routers = [layer.self_attn.sdpa.router for layer in enc.layers]
    assert routers[0] is None and all(r is not None and r.initialized for r in routers[1:])

    # With a fixed group_size a sequence's output does not depend on its batch's padding.
    enc.eval()
    out = enc(x, layout)
    for row, length in enumerate([19, 12, 7]):
        alone = enc(x[row : row + 1, :length], BatchLayout.of(x[row : row + 1, :length]))
        torch.testing.assert_close(out[row, :length], alone[0], atol=1e-5, rtol=1e-5)


def test_incremental_decoding_in_fairseq2_mha_equals_full_forward():
    torch.manual_seed(0)
    dim, n = 32, 26
    mha = StandardMultiheadAttention(dim, 4, MixedSDPA(MIXED, 4, 8), num_key_value_heads=2)
    x = torch.randn(2, n, dim)
    layout = BatchLayout.of(x)
    mha.train()(x, layout, x, layout, x, AttentionBiasCache())  # initialize the router
    mha.eval()
    full = mha(x, layout, x, layout, x, AttentionBiasCache())
    bag = IncrementalStateBag(max_num_steps=n + 1)
    outs = []
    for start, stop in [(0, 7), *[(i, i + 1) for i in range(7, n)]]:
        step = x[:, start:stop]
        step_layout = BatchLayout.of(step)
        outs.append(mha(step, step_layout, step, step_layout, step, AttentionBiasCache(), state_bag=bag))
        bag.increment_step_nr(stop - start)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)
