"""WindowKV: window scoring/selection against a loop reference, budgets, layer-group sharing, and in a model."""

from __future__ import annotations

import pytest
import torch
from fairseq2.models.transformer.multihead_attention import AttentionState
from fairseq2.nn import BatchLayout

from seqwin.attention.routing_sdpa import AttentionSpec, LayerAttentionConfig
from seqwin.attention.windowkv import (
    WindowKVConfig,
    kept_counts,
    observation_scores,
    select_windows,
    windowkv_reference,
)
from seqwin.models.lm import Decoder, LMConfig, create_lm_model, decoding_session
from seqwin.models.lm.decoding import attention_layers


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add synchronization, which stalls badly on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("n", [40, 77, 130])
@pytest.mark.parametrize("budget", [0.12, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2)])
def test_selection_matches_reference(n, budget, heads, kv_heads):
    torch.manual_seed(n)
    cfg = WindowKVConfig(budget=budget, window_size=4, obs_window=8)
    q = torch.randn(2, 8, heads, 16)
    k = torch.randn(2, n, kv_heads, 16)
    positions = select_windows(observation_scores(q, k), cfg)
    assert positions.tolist() == windowkv_reference(q, k, cfg)


def test_scores_are_attention_mass():
    q, k = torch.randn(1, 5, 6, 8), torch.randn(1, 30, 3, 8)
    scores = observation_scores(q, k)
    # each of the 5 observation queries spreads mass 1 per query head; 2 query heads per key head
    torch.testing.assert_close(scores.sum(-1), torch.full((1, 3), 10.0))
    assert torch.all(scores[..., :25] > 0)


def test_budget_and_structure():
    cfg = WindowKVConfig(budget=0.25, window_size=8, obs_window=32)
    recent, windows = kept_counts(1000, cfg)
    assert recent == 32 + (1000 - 32) % 8 and recent + 8 * windows <= 250 < recent + 8 * (windows + 1)
    positions = select_windows(torch.rand(1, 2, 1000), cfg)[0, 0]
    assert positions.tolist() == sorted(set(positions.tolist()))
    assert positions[-recent:].tolist() == list(range(1000 - recent, 1000))  # observation window always kept
    starts = positions[:-recent].view(-1, 8)
    assert torch.all(starts[:, 0] % 8 == 0) and torch.all(starts.diff(dim=1) == 1)  # whole, aligned windows
    assert kept_counts(100, WindowKVConfig(budget=1.0, window_size=8, obs_window=32)) == (36, 8)  # keeps all


def test_selection_follows_the_attention():
    d, n = 16, 96
    k = torch.randn(1, n, 1, d) * 0.1
    q = torch.zeros(1, 8, 1, d)
    q[..., 0] = 10.0
    k[0, 40:48, 0, 0] = 3.0  # window 5 of size 8 is what the observation queries look at
    positions = select_windows(observation_scores(q, k), WindowKVConfig(budget=0.2, window_size=8, obs_window=8))
    assert set(range(40, 48)) <= set(positions[0, 0].tolist())


def _model(num_layers=4, kinds=("full", "full", "local", "full")):
    torch.manual_seed(0)
    overrides = {i: AttentionSpec(kind="local", window=(15, 0)) for i, k in enumerate(kinds) if k == "local"}
    cfg = LMConfig(vocab_size=37, model_dim=32, num_layers=num_layers, num_heads=4, num_kv_heads=2,
                   ffn_inner_dim=64, max_seq_len=1024,
                   attention=LayerAttentionConfig(default=AttentionSpec(kind="full"), overrides=overrides))
    return create_lm_model(cfg).eval()


def test_full_budget_equals_full_forward_and_small_budget_compresses():
    model = _model()
    x = torch.randint(0, 37, (2, 200))
    with torch.no_grad():
        full = model(x, BatchLayout.of(x))
    results = {}
    with decoding_session(model):
        for budget in (1.0, 0.25):
            dec = Decoder(model, 200, WindowKVConfig(budget=budget, window_size=8, obs_window=16, share_layers=2))
            prefill = dec.forward(x[:, :160])
            bytes_after_prefill = dec.cache_bytes()
            rest = dec.forward(x[:, 160:])
            results[budget] = (torch.cat([prefill, rest], 1), dec.kept, bytes_after_prefill)
    torch.testing.assert_close(results[1.0][0], full, atol=2e-5, rtol=1e-4)
    logits, kept, size = results[0.25]
    assert kept == 40 and size < results[1.0][2]
    torch.testing.assert_close(logits[:, :160], full[:, :160], atol=2e-5, rtol=1e-4)  # prefill is exact
    assert not torch.allclose(logits[:, 160:], full[:, 160:], atol=1e-3)  # the continuation sees fewer keys


def test_layer_groups_share_the_selection():
    model = _model(kinds=("full", "full", "full", "full"))
    x = torch.randint(0, 37, (1, 120))
    cfg = WindowKVConfig(budget=0.3, window_size=4, obs_window=8, share_layers=2)
    full_layers = [attn for kind, attn in attention_layers(model)]
    with decoding_session(model):
        plain = Decoder(model, 120)
        plain.forward(x)
        keys = [plain.bag.maybe_get_state(a, AttentionState).get()[0] for a in full_layers]
        dec = Decoder(model, 120, cfg)
        dec.forward(x)
        kept = [dec.bag.maybe_get_state(a, AttentionState).get()[0] for a in full_layers]

    def positions(full_k, kept_k):  # where each kept key came from, per kv head
        return [[int((full_k[0, :, h] == kept_k[0, i, h]).all(-1).nonzero()) for i in range(kept_k.shape[1])]
                for h in range(full_k.shape[2])]

    pos = [positions(f, c) for f, c in zip(keys, kept, strict=True)]
    assert pos[0] == pos[1] and pos[2] == pos[3]
    assert all(p == sorted(p) for layer in pos for p in layer)
