"""The contextual text encoder built from our own LMs (``teachers.text_encoder: <seqwin train lm OUT>``): one row
per word pooled exactly from its pieces, context-dependent, deterministic, named by the weights, cached by the codec
recipe; bad directories fail as one-line config errors."""

from __future__ import annotations

import pytest
import torch
from fairseq2.nn import BatchLayout
from lm_helpers import TINY_RECIPE, layer_kinds, tiny_lm
from test_codec_util import write_corpus

from seqwin.errors import UserError
from seqwin.models.codec.text_encoder import LMTextEncoder, orthonormal_projection
from seqwin.models.lm.tokenizer import ByteTokenizer, CodeTokenizer
from seqwin.recipes.codec.config import CodecRecipeConfig
from seqwin.recipes.codec.data import read_split
from seqwin.recipes.codec.teacher_features import TeacherFeatures, load_text_encoder
from seqwin.recipes.lm.config import LMRecipeConfig
from seqwin.recipes.lm.train import run_train
from seqwin.training import load_config

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "".join(f"the cat sat on the mat {i} while a dog ran to the park by the river.\n" for i in range(200))
WORDS = "the unbelievable cat sat on the riverbank".split()


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """A `seqwin train lm` run directory: SentencePiece tokenizer, local + routing layers, four training steps."""
    root = tmp_path_factory.mktemp("lm")
    (root / "text").mkdir()
    for split in ("train", "valid"):
        (root / "text" / f"{split}.txt").write_text(TEXT, encoding="utf-8")
    (root / "lm.yaml").write_text(TINY_RECIPE % ("sentencepiece", root / "text", "text"))
    run_train(load_config(LMRecipeConfig, root / "lm.yaml"), root / "run")
    return root / "run"


def _layer_average(model, ids: list[int]) -> torch.Tensor:
    """Reference: the hidden states of a plain LM forward, averaged over the decoder layers."""
    layers = []
    handle = model.decoder.register_layer_hook(lambda i, out, layout, n: layers.append(out) or True)
    x = torch.tensor([ids])
    with torch.no_grad():
        model(x, BatchLayout.of(x))
    handle.remove()
    return torch.stack(layers).mean(0)[0]


def test_rows_per_word_pooled_from_the_words_pieces(lm_dir):
    enc = load_text_encoder(lm_dir, 48, seed=0)
    tok = enc.tokenizer
    ids, owner = enc.token_ids(WORDS)
    assert ids == tok.encode(" ".join(WORDS))  # exactly the joined transcript's ids
    pieces = [owner.count(i) for i in range(len(WORDS))]
    assert min(pieces) >= 1 and max(pieces) > 1  # "unbelievable" / "riverbank" are several pieces
    vecs = enc.encode(WORDS)
    assert vecs.shape == (len(WORDS), 48) and vecs.dtype == torch.float32
    hidden = _layer_average(enc.model, tok.encode("\n") + ids)[1:]
    for i in range(len(WORDS)):
        rows = hidden[[j for j, w in enumerate(owner) if w == i]]
        torch.testing.assert_close(vecs[i], rows.mean(0) @ enc.projection)
    assert enc.encode([]).shape == (0, 48)
    with pytest.raises(ValueError, match="without whitespace"):
        enc.encode(["two words"])


def test_byte_lm_words_and_separators():
    model = tiny_lm(layer_kinds(["full", "local", "full"]), vocab_size=257)
    enc = LMTextEncoder(model, ByteTokenizer(), 16)
    ids, owner = enc.token_ids(["HI", "YOU"])
    assert ids == list(b"HI YOU") and owner == [0, 0, -1, 1, 1, 1]  # the space byte belongs to no word
    assert enc.encode(["HI", "YOU"]).shape == (2, 16)
    with pytest.raises(ValueError, match="speech codes"):
        LMTextEncoder(model, CodeTokenizer(2, 16), 16)


def test_contextual_and_causal(lm_dir):
    enc = load_text_encoder(lm_dir, 48, seed=0)
    a = enc.encode("the cat sat on the mat".split())
    b = enc.encode("a dog ran to the cat".split())
    c = enc.encode("the cat ran to the river".split())
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(a[1], b[5], dim=0)) < 0.999  # the same word "cat" in two sentences: different vectors
    torch.testing.assert_close(a[:2], c[:2])  # a causal LM: only the words before count


def test_projection_keeps_cosines_when_widening():
    wide = orthonormal_projection(32, 48, seed=3)
    torch.testing.assert_close(wide @ wide.T, torch.eye(32), atol=1e-5, rtol=0)
    narrow = orthonormal_projection(48, 32, seed=3)
    torch.testing.assert_close(narrow.T @ narrow, torch.eye(32), atol=1e-5, rtol=0)
    assert torch.equal(orthonormal_projection(32, 48, seed=3), wide)
    assert not torch.equal(orthonormal_projection(32, 48, seed=4), wide)
    x = torch.randn(5, 32)
    cos = torch.nn.functional.cosine_similarity
    torch.testing.assert_close(cos(x[:1] @ wide, x @ wide), cos(x[:1], x), atol=1e-5, rtol=0)


def test_deterministic_and_named_by_the_weights(lm_dir):
    first, again = load_text_encoder(lm_dir, 48, 0), load_text_encoder(lm_dir, 48, 0)
    assert first.name == again.name and first.name.startswith("lm-")
    assert torch.equal(first.encode(WORDS), again.encode(WORDS))
    assert load_text_encoder(lm_dir, 48, 1).name != first.name  # another projection
    with torch.no_grad():
        again.model.decoder.layers[0].ffn.output_proj.weight.add_(0.01)
    changed = LMTextEncoder(again.model, again.tokenizer, 48)
    assert changed.name != first.name
    assert not torch.equal(changed.encode(WORDS), first.encode(WORDS))


def test_codec_recipe_caches_lm_context_features(tmp_path, lm_dir):
    manifests = write_corpus(tmp_path, count=3)
    path = tmp_path / "codec.yaml"
    path.write_text(f"model: {{teacher_dim: 48, quantizer: {{threshold_ema_dead_code: 0}}}}\n"
                    f"teachers: {{text_encoder: {lm_dir}}}\ndata: {{manifest_dir: {manifests}}}\n")
    recipe = load_config(CodecRecipeConfig, path)
    utts = read_split(manifests, "train", with_text=True)
    feats = TeacherFeatures(recipe, tmp_path / "cache")
    assert isinstance(feats.text_encoder, LMTextEncoder)
    assert feats.context_cache.directory.name == feats.text_encoder.name
    feats.prepare(utts)
    assert feats.context_cache.misses == 3
    again = TeacherFeatures(recipe, tmp_path / "cache")
    again.prepare(utts)
    assert (again.context_cache.hits, again.context_cache.misses) == (3, 0)
    for utt in utts:
        tokens = again.context_tokens(utt)
        assert tokens.shape == (len(utt.text.split()), 48)
        torch.testing.assert_close(tokens, feats.text_encoder.encode(utt.text.split()).half().float())


def test_not_an_lm_directory_is_a_config_error(tmp_path, lm_dir):
    recipe = CodecRecipeConfig()
    for bad in (tmp_path / "missing", lm_dir.parent / "text"):
        recipe.teachers.text_encoder = bad
        with pytest.raises(UserError, match="teachers.text_encoder") as info:
            TeacherFeatures(recipe, tmp_path / "cache")
        assert str(bad) in str(info.value) and "\n" not in str(info.value)
