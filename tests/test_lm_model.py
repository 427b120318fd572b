"""The seqwin LM: per-layer attention, incremental decoding == full forward, constant-memory caches, sampling."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from fairseq2.nn import BatchLayout
from lm_helpers import tiny_lm, tiny_lm_config

from seqwin.attention import AttentionSpec, LayerAttentionConfig
from seqwin.attention.fairseq2 import StatefulMixedSDPA, attention_layers, collect_aux_losses
from seqwin.models.lm import (
    Decoder,
    LMConfig,
    SamplingConfig,
    count_parameters,
    create_lm_model,
    decoding_session,
    generate,
)
from seqwin.models.lm.decoding import sample_next
from seqwin.training import ConfigError, load_config

pytestmark = pytest.mark.usefixtures("one_thread")

LOCAL = AttentionSpec(kind="local", window=(7, 0))
MIXED = AttentionSpec(kind="mixed", local_heads=2, routing_heads=2, window=(7, 0), num_clusters=3, routing_window=5)
LAYOUTS = {
    "full": LayerAttentionConfig(default=AttentionSpec(kind="full")),
    "local": LayerAttentionConfig(default=LOCAL),
    "mixed_top": LayerAttentionConfig(default=LOCAL, top=MIXED, num_top_layers=2),
    "routing": LayerAttentionConfig(default=AttentionSpec(kind="routing", num_clusters=4, routing_window=6)),
    "routing_unbounded": LayerAttentionConfig(default=AttentionSpec(kind="routing", num_clusters=4)),
    "mixed_shared_qk": LayerAttentionConfig(default=replace(MIXED, shared_qk=True)),
    "full_local_routing": LayerAttentionConfig(default=AttentionSpec(kind="full"),
                                               overrides={1: LOCAL, 2: MIXED}),
}


def _model(layout: str, *, kv_heads: int | None = 2, seed: int = 0, **kw):
    return tiny_lm(LAYOUTS[layout], num_kv_heads=kv_heads, seed=seed, **kw)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_incremental_decoding_equals_full_forward(layout):
    model = _model(layout)
    x = torch.randint(0, 41, (2, 61))
    with torch.no_grad():
        full = model(x, BatchLayout.of(x))
    with decoding_session(model):
        dec = Decoder(model, x.shape[1])
        # chunked prefill, single steps, then a chunk again (teacher forcing)
        pieces = [(0, 17), *[(i, i + 1) for i in range(17, 50)], (50, 61)]
        inc = torch.cat([dec.forward(x[:, a:b]) for a, b in pieces], dim=1)
    torch.testing.assert_close(inc, full, atol=2e-5, rtol=1e-4)


def test_bounded_layers_decode_in_constant_memory():
    sizes = {}
    for layout in ("full", "local", "mixed_top", "routing"):
        model = _model(layout)
        x = torch.randint(0, 41, (1, 80))
        with decoding_session(model):
            dec = Decoder(model, 80, capacity_increment=1)
            trace = []
            for i in range(80):
                dec.forward(x[:, i : i + 1])
                trace.append(dec.cache_bytes())
        sizes[layout] = trace
    assert sizes["full"][-1] > 1.9 * sizes["full"][40]  # grows with the sequence
    for layout in ("local", "mixed_top", "routing"):
        assert sizes[layout][-1] == sizes[layout][20], layout  # ring buffers: flat
    assert sizes["local"][-1] < sizes["full"][-1]


def test_shared_qk_routing_heads_take_their_queries_as_keys():
    from seqwin.attention.fairseq2 import MixedSDPA
    from seqwin.attention.routing import routing_attention

    torch.manual_seed(0)
    sdpa = MixedSDPA(replace(MIXED, causal=True, shared_qk=True), num_heads=4, head_dim=8).eval()
    q, k, v = torch.randn(3, 2, 30, 4, 8).unbind(0)
    layout = BatchLayout.of(q)
    out, _ = sdpa(q, layout, k, layout, v, None)
    moved, _ = sdpa(q, layout, k + torch.randn_like(k), layout, v, None)
    torch.testing.assert_close(moved[:, :, 2:], out[:, :, 2:])  # the routing heads ignore k
    assert not torch.allclose(moved[:, :, :2], out[:, :, :2])  # the local heads do not
    qr = q[:, :, 2:]
    expected, _ = routing_attention(qr, qr, v[:, :, 2:], sdpa.router, causal=True, shared_qk=True, window=5)
    torch.testing.assert_close(out[:, :, 2:], expected)


def test_decoding_session_restores_the_model():
    model = _model("mixed_top")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with decoding_session(model):
        assert any(isinstance(attn.sdpa, StatefulMixedSDPA) for _, attn in attention_layers(model))
    assert not any(isinstance(attn.sdpa, StatefulMixedSDPA) for _, attn in attention_layers(model))
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_routing_aux_loss_and_centroids_are_trained_and_saved():
    model = _model("mixed_top")
    key = next(k for k in model.state_dict() if k.endswith("router.centroids"))
    start = model.state_dict()[key].clone()
    model.train()
    x = torch.randint(0, 41, (2, 40))
    loss = model(x[:, :-1], BatchLayout.of(x[:, :-1]), x[:, 1:], reduction="mean")
    aux = collect_aux_losses(model)
    assert aux is not None and aux.requires_grad and 0 < aux.item() < 1e-2
    (loss + aux).backward()
    assert not torch.equal(model.state_dict()[key], start)  # EMA moved them (training forward)
    clone = create_lm_model(tiny_lm_config(LAYOUTS["mixed_top"]))
    clone.load_state_dict(model.state_dict())
    model.eval()
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x, BatchLayout.of(x)), model(x, BatchLayout.of(x)))


def test_tied_embeddings():
    tied = _model("local")
    untied = _model("local", tied_embeddings=False)
    assert tied.final_proj.weight is tied.decoder_frontend.embed.weight
    assert count_parameters(untied) == count_parameters(tied) + 41 * 32


@pytest.mark.parametrize("yaml_text,needle", [
    ("model: {attention: {default: {kind: local, window: [8, 8]}}}", "right == 0"),
    ("model: {attention: {default: {kind: local, window: [-1, 0]}}}", "bounded left side"),
    ("model: {num_heads: 4, attention: {default: {kind: mixed, local_heads: 1, routing_heads: 2, window: [4, 0]}}}",
     "must equal the layer's 4 heads"),
    ("model: {num_heads: 4, num_kv_heads: 3}", "num_kv_heads"),
    ("model: {attention: {default: {kind: sparse}}}", "kind"),
])
def test_bad_configs_name_the_problem(tmp_path, yaml_text, needle):
    from seqwin.recipes.lm.config import LMRecipeConfig

    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError, match=needle):
        load_config(LMRecipeConfig, path)


def test_specs_are_made_causal_and_top_layers_route():
    cfg = LMConfig(num_layers=4, attention=LayerAttentionConfig(default=LOCAL, top=MIXED, num_top_layers=1))
    specs = cfg.layer_specs()
    assert all(s.causal for s in specs)
    assert [s.kind for s in specs] == ["local", "local", "local", "mixed"]


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, -1.0]])
    assert sample_next(logits, SamplingConfig(temperature=0)).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, SamplingConfig(top_k=2), g).item() for _ in range(200)}
    assert draws == {1, 3}
    draws = {sample_next(logits, SamplingConfig(top_p=0.5), g).item() for _ in range(100)}
    assert draws == {1}  # p(token 1) ~ 0.64 >= 0.5 already
    draws = {sample_next(logits, SamplingConfig(top_p=0.9, temperature=1.0), g).item() for _ in range(400)}
    assert draws == {1, 3, 2}  # 0.64 + 0.24 < 0.9, + 0.09 reaches it; token 0 and 4 are cut


def test_generate_is_reproducible_and_stops_at_eos():
    model = _model("mixed_top")
    prompt = torch.randint(0, 41, (1, 9))
    a = generate(model, prompt, 20, SamplingConfig(temperature=0.9), seed=3)
    b = generate(model, prompt, 20, SamplingConfig(temperature=0.9), seed=3)
    assert torch.equal(a.tokens, b.tokens) and a.tokens.shape == (1, 20)
    greedy = generate(model, prompt, 20, SamplingConfig(temperature=0))
    eos = int(greedy.tokens[0, 4])
    stopped = generate(model, prompt, 20, SamplingConfig(temperature=0), eos_idx=eos)
    assert stopped.tokens.shape[1] == int((greedy.tokens[0] == eos).nonzero()[0]) + 1
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, prompt, 600, SamplingConfig())


def test_fairseq2_family_registration(tmp_path):
    from fairseq2.composition.lib import _register_library
    from fairseq2.device import CPU
    from fairseq2.gang import create_fake_gangs
    from fairseq2.models.family import ModelFamily
    from fairseq2.runtime.dependency import DependencyContainer

    from seqwin.models.lm import register_seqwin_lm
    from seqwin.training.checkpoint import atomic_save

    container = DependencyContainer()
    _register_library(container)
    register_seqwin_lm(container)
    family = container.resolve(ModelFamily, key="seqwin_lm")
    assert {"mini", "rt_wikitext103", "rt_pg19"} <= family.get_archs()
    model = _model("mixed_top")
    cfg = tiny_lm_config(LAYOUTS["mixed_top"])
    atomic_save({"model": model.state_dict(), "step": 3}, tmp_path / "step_3.pt")  # a trainer checkpoint
    loaded = family.load_custom_model(tmp_path / "step_3.pt", cfg, create_fake_gangs(CPU), torch.float32,
                                      False, False, True).eval()
    x = torch.randint(0, 41, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, BatchLayout.of(x)), model(x, BatchLayout.of(x)))


@pytest.mark.parametrize("shared_qk,kv_heads", [(False, 1), (True, 2)])
def test_routing_prompt_ingestion_equals_steps(shared_qk, kv_heads):
    from seqwin.attention.routing import KMeansRouter, RoutingKVCache, ingest_routing

    torch.manual_seed(0)
    router = KMeansRouter(2, 8, 3)
    q = torch.randn(2, 90, 2, 8)
    k = q if shared_qk else torch.randn(2, 90, kv_heads, 8)
    v = torch.randn(2, 90, kv_heads, 8)
    router(q)  # initialize the centroids
    router.eval()
    stepped, bulk = RoutingKVCache(router, 5, shared_qk=shared_qk), RoutingKVCache(router, 5, shared_qk=shared_qk)
    stepped.step(q[:, :30], k[:, :30], v[:, :30])
    ingest_routing(bulk, q[:, :30], k[:, :30], v[:, :30])
    stepped.step(q[:, 30:], k[:, 30:], v[:, 30:])
    ingest_routing(bulk, q[:, 30:], k[:, 30:], v[:, 30:])  # onto a partly filled cache
    for name in ("keys", "values", "count"):
        assert torch.equal(getattr(stepped, name), getattr(bulk, name)), name
    assert stepped.num_steps == bulk.num_steps == 90
