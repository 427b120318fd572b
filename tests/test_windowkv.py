"""WindowKV: window scoring/selection against a loop reference, budgets, layer-group sharing, and in a model."""

from __future__ import annotations

import pytest
import torch
from fairseq2.models.transformer.multihead_attention import AttentionState
from fairseq2.nn import BatchLayout
from lm_helpers import layer_kinds, tiny_lm

from seqwin.attention.fairseq2 import attention_layers
from seqwin.attention.windowkv import (
    WindowKVConfig,
    kept_counts,
    observation_scores,
    select_windows,
    windowkv_reference,
)
from seqwin.errors import UserError
from seqwin.models.lm import Decoder, decoding_session
from seqwin.recipes.lm.kv_budget import parse_kv_budget, windowkv_config

pytestmark = pytest.mark.usefixtures("one_thread")


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


def _model(kinds=("full", "full", "local", "full")):
    return tiny_lm(layer_kinds(kinds), vocab_size=37, num_layers=len(kinds), max_seq_len=1024)


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
    assert kept == [40, 40] and size < results[1.0][2]  # full layers 0, 1 | 3: two groups of share_layers 2
    torch.testing.assert_close(logits[:, :160], full[:, :160], atol=2e-5, rtol=1e-4)  # prefill is exact
    assert not torch.allclose(logits[:, 160:], full[:, 160:], atol=1e-3)  # the continuation sees fewer keys


def _kept_positions(model, x, cfg):
    """Per full layer and kv head, the prompt position each kept key came from (keys matched against the
    uncompressed cache), after a WindowKV prefill of ``x``."""
    full_layers = [attn for kind, attn in attention_layers(model) if kind == "full"]
    with decoding_session(model):
        plain = Decoder(model, x.shape[1])
        plain.forward(x)
        keys = [plain.bag.maybe_get_state(a, AttentionState).get()[0] for a in full_layers]
        dec = Decoder(model, x.shape[1], cfg)
        dec.forward(x)
        kept = [dec.bag.maybe_get_state(a, AttentionState).get()[0] for a in full_layers]

    def positions(full_k, kept_k):
        return [[int((full_k[0, :, h] == kept_k[0, i, h]).all(-1).nonzero()) for i in range(kept_k.shape[1])]
                for h in range(full_k.shape[2])]

    return [positions(f, c) for f, c in zip(keys, kept, strict=True)], dec.kept


@pytest.mark.parametrize("budget", [0.3, [0.5, 0.25]])
def test_layer_groups_share_the_selection(budget):
    model = _model(kinds=("full", "full", "full", "full"))
    x = torch.randint(0, 37, (1, 120))
    pos, _ = _kept_positions(model, x, WindowKVConfig(budget=budget, window_size=4, obs_window=8, share_layers=2))
    assert pos[0] == pos[1] and pos[2] == pos[3]
    assert all(p == sorted(p) for layer in pos for p in layer)


# ---- per-group budgets ----

N, OBS, WIN = 160, 16, 8  # prompt length, observation window, window size: 16 recent tokens, 18 candidate windows


@pytest.mark.parametrize("share_layers,budget,per_layer", [
    (2, [0.5, 0.25], [80, 80, 40, 40]),  # ceil(b * 160) = 80 | 40 = 16 recent + 8 | 3 windows of 8
    (1, [0.5, 0.12, 0.25, 1.0], [80, 16, 40, 160]),  # 0.12: 20 tokens, room for the recent 16 but no window
    (3, [1.0, 0.25], [160, 160, 160, 40]),  # a group at 1.0 stays whole, next to a compressed one
    (2, 0.25, [40, 40, 40, 40]),  # one budget for every group
])
def test_per_group_budgets_keep_exact_counts(share_layers, budget, per_layer):
    model = _model(kinds=("full", "full", "local", "full", "full"))  # groups count full layers only
    x = torch.randint(0, 37, (2, N + 24))
    cfg = WindowKVConfig(budget=budget, window_size=WIN, obs_window=OBS, share_layers=share_layers)
    full_layers = [attn for kind, attn in attention_layers(model) if kind == "full"]
    with decoding_session(model):
        dec = Decoder(model, x.shape[1], cfg)
        dec.forward(x[:, :N])
        lengths = [dec.bag.maybe_get_state(a, AttentionState).get()[0].shape[1] for a in full_layers]
        assert lengths == per_layer
        assert dec.kept == per_layer[::share_layers]
        chunk = dec.forward(x[:, N:])  # several queries over caches of different lengths: one mask per layer
        steps = Decoder(model, x.shape[1], cfg)
        steps.forward(x[:, :N])
        one_by_one = torch.cat([steps.forward(x[:, i : i + 1]) for i in range(N, x.shape[1])], dim=1)
    torch.testing.assert_close(chunk, one_by_one, atol=2e-5, rtol=1e-4)


def test_group_at_full_budget_keeps_its_cache_and_others_differ():
    model = _model(kinds=("full", "full", "full", "full"))
    x = torch.randint(0, 37, (1, 120))
    pos, kept = _kept_positions(model, x, WindowKVConfig(budget=[1.0, 0.25], window_size=4, obs_window=8,
                                                        share_layers=2))
    assert kept == [120, 28]  # ceil(0.25 * 120) = 30: the 8 recent tokens + 5 windows of 4
    assert pos[0] == pos[1] == [list(range(120))] * 2  # both kv heads, every key, in order
    assert pos[2] == pos[3] and len(pos[2][0]) == 28


@pytest.mark.parametrize("n", [40, 77, 130])
def test_budget_one_keeps_every_position(n):
    cfg = WindowKVConfig(budget=[0.5, 1.0], window_size=8, obs_window=16)
    positions = select_windows(torch.rand(2, 3, n), cfg, budget=1.0)
    assert positions.tolist() == [[list(range(n))] * 3] * 2


@pytest.mark.parametrize("budget,share_layers,needle", [
    ([], 2, "at least one"),
    ([0.5, 0.0], 2, r"must be in \(0, 1\], got 0.0"),
    (1.5, 2, r"must be in \(0, 1\], got 1.5"),
    ([0.5, 0.25, 0.12], 2, "3 budgets given, but 4 full-attention layers in groups of 2 make 2 groups"),
    ([0.5, 0.25], 4, "2 budgets given, but 4 full-attention layers in groups of 4 make 1 group$"),
    (0.5, 0, "share_layers must be >= 1"),
])
def test_bad_budgets_are_rejected(budget, share_layers, needle):
    model = _model(kinds=("full", "full", "full", "full"))
    with decoding_session(model), pytest.raises(ValueError, match=needle):
        Decoder(model, 64, WindowKVConfig(budget=budget, share_layers=share_layers))


def test_kv_budget_option_parsing():
    assert parse_kv_budget("0.5") == 0.5
    assert parse_kv_budget("0.75, 0.5,0.25") == [0.75, 0.5, 0.25]
    for text, needle in [("0.5,abc", "expected a fraction"), ("", "expected a fraction"), ("0.5,,0.25", "expected"),
                         ("0", r"\(0, 1\], got 0 "), ("0.5,1.5", "got 1.5"), ("nan", "got nan"),
                         ("-0.25", "got -0.25")]:
        with pytest.raises(UserError, match=f"^--kv-budget: .*{needle}"):
            parse_kv_budget(text)
    with pytest.raises(UserError, match="^--windowkv-budget: "):
        parse_kv_budget("x", option="--windowkv-budget")
    cfg = windowkv_config([0.75, 0.5], num_full_layers=3, share_layers=2)
    assert cfg.group_budgets(3) == [0.75, 0.5] and cfg.compresses
    with pytest.raises(UserError, match=r"^--kv-budget: 2 budgets given, but 3 full-attention layers in groups of 1 "
                                        "make 3 groups; .*--share-layers"):
        windowkv_config([0.75, 0.5], num_full_layers=3, share_layers=1)
    for name in ("window_size", "obs_window", "share_layers"):
        with pytest.raises(UserError, match=f"^--{name.replace('_', '-')} must be >= 1, got 0"):
            windowkv_config(0.5, num_full_layers=3, **{name: 0})
