"""Reading Hugging Face ``transformers`` wav2vec2 folders (``save_pretrained`` output) without ``transformers``.

A folder holds ``config.json``, the weights (``model.safetensors`` or ``pytorch_model.bin``, either possibly
sharded with an ``*.index.json``), and for CTC models ``vocab.json`` (+ ``tokenizer_config.json``,
``added_tokens.json``) and ``preprocessor_config.json``. :func:`read_folder` turns one into a seqwin config and a
fairseq2-keyed state dict, as :mod:`~seqwin.models.wav2vec2.fairseq1` does for fairseq (v1) files:

- ``Wav2Vec2ForPreTraining`` -> the SSL family (quantizer and projections included);
- ``Wav2Vec2Model`` (no pretraining heads) -> the SSL family with a freshly initialized quantizer and projections:
  the encoder is the checkpoint's, ready for CTC fine-tuning; continued pretraining would start those heads anew;
- ``Wav2Vec2ForCTC`` -> the CTC family. fairseq2's CTC blank is output 0 and seqwin's decoders skip outputs 0-3
  (``<s>`` = blank, ``<pad>``, ``</s>``, ``<unk>``, the ``dict.ltr.txt`` layout), while Hugging Face's blank is
  ``pad_token_id`` wherever the vocabulary puts it: the output rows are reordered (blank, bos, eos, unk, then the
  other tokens in their order), a special token the vocabulary lacks gets an inert row (bias -1e4, never
  emitted), and the word delimiter becomes ``|``.

Both norm orders (``do_stable_layer_norm``: pre-norm, XLS-R and "large"; else post-norm, "base"), both feature
encoders (``feat_extract_norm`` group / layer), conv bias on or off, and the position convolution's weight norm in
either naming (``weight_g``/``weight_v``, or ``parametrizations.weight.original0/1`` from newer ``transformers``)
are read. ``preprocessor_config.json``'s ``do_normalize`` (per-utterance zero mean, unit variance waveforms)
becomes the model's ``normalize`` setting. What fairseq2's wav2vec2 cannot compute is refused with one line.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fairseq2.models.transformer import TransformerNormOrder
from torch import Tensor

from seqwin.io.checkpoint_files import safe_load
from seqwin.io.model_file import ModelLoadError
from seqwin.models.wav2vec2.config import SeqwinWav2Vec2AsrConfig, SeqwinWav2Vec2Config, asr_presets, ssl_presets
from seqwin.models.wav2vec2.fairseq1 import fix_fairseq1_keys

ARCHITECTURES = {"Wav2Vec2Model": "encoder", "Wav2Vec2ForPreTraining": "pretraining", "Wav2Vec2ForCTC": "ctc"}
# The first four outputs of a seqwin CTC model, named as in a dict.ltr.txt-built vocabulary (blank first).
SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")
WORD_BOUNDARY = "|"
INERT_BIAS = -1e4
"""Bias of an output row no Hugging Face token fills: far below any trained logit, representable in fp16."""
# transformers' defaults (the paper's conv stack), for a config.json that leaves them out
_CONV_DEFAULTS = {"conv_dim": (512,) * 7, "conv_kernel": (10, 3, 3, 3, 3, 2, 2), "conv_stride": (5, 2, 2, 2, 2, 2, 2)}
FRESH_PREFIXES = ("quantizer.", "final_proj.", "final_target_proj.", "masker.")
"""What a bare ``Wav2Vec2Model`` folder does not have; the model keeps its fresh initialization there."""


@dataclass
class HfFolder:
    architecture: str
    config: SeqwinWav2Vec2Config | SeqwinWav2Vec2AsrConfig
    state: dict[str, Tensor]
    """fairseq2 key names, CTC rows already reordered."""
    dictionary: list[str] | None
    """The CTC outputs' symbols, when ``vocab.json`` is there."""
    normalize: bool
    fresh: tuple[str, ...] = ()
    """Key prefixes the folder has no weights for (freshly initialized)."""


def is_hf_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def read_folder(folder: Path) -> HfFolder:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: no such directory")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder}: no config.json (not a Hugging Face model folder)")
    hf = _json(folder / "config.json")
    where = folder / "config.json"
    if hf.get("model_type") != "wav2vec2":
        raise ModelLoadError(f"{where}: model_type {hf.get('model_type')!r} is not a wav2vec2 model")
    _check_supported(hf, where)
    weights = read_weights(folder)
    architecture = _architecture(hf, weights, where)
    kind = ARCHITECTURES[architecture]
    try:
        config = model_config(hf, kind)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{where}: unusable setting ({exc})") from None
    state = convert_state_dict(weights, hf, kind, folder)
    dictionary = None
    if kind == "ctc":
        dictionary = _ctc_head(state, folder, hf)
        config.model.target_vocab_size = state["final_proj.weight"].shape[0]
        if config.model.use_masking and "masker.temporal_mask_embed" not in state:
            config.model.use_masking = False
    fresh: tuple[str, ...] = ()
    if kind == "encoder":
        fresh = FRESH_PREFIXES
    elif "masker.temporal_mask_embed" not in state and kind == "pretraining":
        fresh = ("masker.",)  # transformers keeps no mask embedding when its config masks nothing
    try:
        config.validate()
    except ValueError as exc:
        raise ModelLoadError(f"{where}: {exc}") from None
    return HfFolder(architecture, config, state, dictionary, _normalize(folder), fresh)


# ---- files ---------------------------------------------------------------------------------------------------


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def read_weights(folder: Path) -> dict[str, Tensor]:
    """The folder's tensors: safetensors preferred over ``.bin``, shards joined through their index."""
    for name, reader in (("model.safetensors", _read_safetensors), ("pytorch_model.bin", _read_bin)):
        index = folder / f"{name}.index.json"
        files = [folder / name] if (folder / name).is_file() else []
        if not files and index.is_file():
            weight_map = _json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ModelLoadError(f"{index}: no weight_map")
            files = [folder / shard for shard in sorted(set(weight_map.values()))]
        if files:
            state: dict[str, Tensor] = {}
            for path in files:
                if not path.is_file():
                    raise ModelLoadError(f"{path}: missing (named by {index.name})")
                state.update(reader(path))
            return state
    raise ModelLoadError(f"{folder}: no weights (model.safetensors or pytorch_model.bin, or their .index.json)")


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from None


def _read_bin(path: Path) -> dict[str, Tensor]:
    try:
        state = safe_load(path)
    except Exception as exc:  # noqa: BLE001 - unreadable is one user error whatever the cause
        raise ModelLoadError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: not a state dict of tensors")
    return state


def _normalize(folder: Path) -> bool:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return True  # the Wav2Vec2FeatureExtractor default
    pre = _json(path)
    if int(pre.get("sampling_rate", 16000)) != 16000 or int(pre.get("feature_size", 1)) != 1:
        raise ModelLoadError(f"{path}: seqwin reads 16 kHz mono audio; this model expects sampling_rate "
                             f"{pre.get('sampling_rate')}, feature_size {pre.get('feature_size')}")
    return bool(pre.get("do_normalize", True))


# ---- config --------------------------------------------------------------------------------------------------


def _architecture(hf: dict[str, Any], weights: dict[str, Tensor], where: Path) -> str:
    named = hf.get("architectures") or []
    if named:
        if named[0] not in ARCHITECTURES:
            raise ModelLoadError(f"{where}: architecture {named[0]} is not supported (only "
                                 f"{', '.join(ARCHITECTURES)})")
        head = _HEADS.get(named[0])
        if head is not None and head not in weights:
            raise ModelLoadError(f"{where}: architecture {named[0]}, but the weights have no {head}")
        return named[0]
    if "lm_head.weight" in weights:
        return "Wav2Vec2ForCTC"
    return "Wav2Vec2ForPreTraining" if "quantizer.codevectors" in weights else "Wav2Vec2Model"


_HEADS = {"Wav2Vec2ForCTC": "lm_head.weight", "Wav2Vec2ForPreTraining": "quantizer.codevectors"}


def _check_supported(hf: dict[str, Any], where: Path) -> None:
    """One line for the first setting fairseq2's wav2vec2 cannot reproduce."""
    for key in ("hidden_act", "feat_extract_activation"):
        if hf.get(key, "gelu") != "gelu":
            raise ModelLoadError(f"{where}: {key} {hf[key]!r} is not supported (only gelu)")
    if hf.get("feat_extract_norm", "group") not in ("group", "layer"):
        raise ModelLoadError(f"{where}: feat_extract_norm {hf['feat_extract_norm']!r} (expected group or layer)")
    if hf.get("add_adapter") or hf.get("adapter_attn_dim") is not None:
        raise ModelLoadError(f"{where}: adapter layers (add_adapter / adapter_attn_dim) are not supported")
    if float(hf.get("layer_norm_eps", 1e-5)) != 1e-5:
        raise ModelLoadError(f"{where}: layer_norm_eps {hf['layer_norm_eps']} is not supported (only 1e-5)")
    dims = [list(hf.get(k, default)) for k, default in _CONV_DEFAULTS.items()]
    if not dims[0] or len({len(d) for d in dims}) != 1:
        raise ModelLoadError(f"{where}: conv_dim, conv_kernel and conv_stride must be lists of one length")
    hidden = int(hf.get("hidden_size", 768))
    if dims[0][-1] == hidden:
        raise ModelLoadError(f"{where}: conv_dim[-1] equal to hidden_size ({hidden}) is not supported (fairseq2's "
                             "wav2vec2 has no feature projection then)")
    for key, default in (("num_attention_heads", 12), ("num_conv_pos_embedding_groups", 16)):
        value = int(hf.get(key, default))
        if value < 1 or hidden % value:
            raise ModelLoadError(f"{where}: {key} ({value}) must divide hidden_size ({hidden})")


def model_config(hf: dict[str, Any], kind: str) -> SeqwinWav2Vec2Config | SeqwinWav2Vec2AsrConfig:
    """The seqwin config (dense attention, the paper's conv frontend) of a Hugging Face ``config.json``."""
    config: Any = copy.deepcopy(asr_presets()["base_10h"] if kind == "ctc" else ssl_presets()["base"])
    enc = config.model.encoder_config
    stable = bool(hf.get("do_stable_layer_norm", False))
    enc.model_dim = int(hf.get("hidden_size", 768))
    enc.num_encoder_layers = int(hf.get("num_hidden_layers", 12))
    enc.num_encoder_attn_heads = int(hf.get("num_attention_heads", 12))
    enc.ffn_inner_dim = int(hf.get("intermediate_size", 3072))
    convs = [hf.get(k, default) for k, default in _CONV_DEFAULTS.items()]
    enc.feature_extractor_layer_descs = [(int(d), int(k), int(s)) for d, k, s in zip(*convs, strict=True)]
    enc.feature_dim = enc.feature_extractor_layer_descs[-1][0]
    enc.feature_extractor_bias = bool(hf.get("conv_bias", False))
    enc.feature_extractor_layer_norm_convs = hf.get("feat_extract_norm", "group") == "layer"
    enc.pos_conv_kernel_size = int(hf.get("num_conv_pos_embeddings", 128))
    enc.num_pos_conv_groups = int(hf.get("num_conv_pos_embedding_groups", 16))
    # post-norm encoders normalize after the position convolution: fairseq2 keeps that norm in the frontend
    enc.norm_order = TransformerNormOrder.PRE if stable else TransformerNormOrder.POST
    enc.layer_norm_features = not stable
    # training-time settings, so that fine-tuning regularizes as the checkpoint's authors did
    enc.dropout_p = float(hf.get("hidden_dropout", 0.1))
    enc.attn_dropout_p = float(hf.get("attention_dropout", 0.1))
    enc.ffn_inner_dropout_p = float(hf.get("activation_dropout", 0.1))
    enc.first_pass_dropout_p = float(hf.get("feat_proj_dropout", 0.0))
    enc.layer_drop_p = float(hf.get("layerdrop", 0.1))
    m = config.model
    if kind == "ctc":
        m.final_dropout_p = float(hf.get("final_dropout", 0.1))
        m.use_masking = bool(hf.get("apply_spec_augment", True)) and (
            float(hf.get("mask_time_prob", 0.05)) > 0 or float(hf.get("mask_feature_prob", 0.0)) > 0)
        m.max_temporal_mask_prob = float(hf.get("mask_time_prob", 0.05))
        m.temporal_mask_span_len = int(hf.get("mask_time_length", 10))
        m.min_num_temporal_mask_spans = int(hf.get("mask_time_min_masks", 2))
        m.max_spatial_mask_prob = float(hf.get("mask_feature_prob", 0.0))
        m.spatial_mask_span_len = int(hf.get("mask_feature_length", 10))
        m.min_num_spatial_mask_spans = int(hf.get("mask_feature_min_masks", 0))
        m.target_vocab_size = int(hf.get("vocab_size", 32))
    else:  # the config's masking is fine-tuning SpecAugment: pretraining keeps the preset's (the paper's)
        m.num_codebooks = int(hf.get("num_codevector_groups", 2))
        m.num_codebook_entries = int(hf.get("num_codevectors_per_group", 320))
        m.quantized_dim = int(hf.get("codevector_dim", 256))
        m.final_dim = int(hf.get("proj_codevector_dim", 256))
        m.num_distractors = int(hf.get("num_negatives", 100))
        m.logit_temp = float(hf.get("contrastive_logits_temperature", 0.1))
    return config


# ---- weights -------------------------------------------------------------------------------------------------

_KEY_MAP = [
    (r"^masked_spec_embed$", "masker.temporal_mask_embed"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"encoder_frontend.feature_extractor.layers.\1.conv."),
    (r"^feature_projection\.layer_norm\.", "encoder_frontend.post_extract_layer_norm."),
    (r"^feature_projection\.projection\.", "encoder_frontend.model_dim_proj."),
    (r"^encoder\.pos_conv_embed\.conv\.", "encoder_frontend.pos_encoder.conv."),
    (r"^encoder\.layers\.(\d+)\.attention\.out_proj\.", r"encoder.layers.\1.self_attn.output_proj."),
    (r"^encoder\.layers\.(\d+)\.attention\.([qkv])_proj\.", r"encoder.layers.\1.self_attn.\2_proj."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.ffn.inner_proj."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.ffn.output_proj."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.ffn_layer_norm."),
    (r"^quantizer\.codevectors$", "quantizer.entries"),
    (r"^quantizer\.weight_proj\.", "quantizer.entry_proj."),
    (r"^project_hid\.", "final_proj."),
    (r"^project_q\.", "final_target_proj."),
    (r"^lm_head\.", "final_proj."),
]


def convert_state_dict(weights: dict[str, Tensor], hf: dict[str, Any], kind: str, where: Path) -> dict[str, Tensor]:
    """Hugging Face key names -> fairseq2's; a weight with no counterpart is an error naming it."""
    stable = bool(hf.get("do_stable_layer_norm", False))
    group = hf.get("feat_extract_norm", "group") == "group"
    out: dict[str, Tensor] = {}
    for key, value in fix_fairseq1_keys(weights).items():
        name = key.removeprefix("wav2vec2.")
        new: str | None
        if m := re.match(r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)$", name):
            # the group norm of the first conv layer is also called layer_norm in transformers
            norm = "group_norm" if group else "layer_norm"
            new = f"encoder_frontend.feature_extractor.layers.{m.group(1)}.{norm}.{m.group(2)}"
        elif name.startswith("encoder.layer_norm."):
            new = name if stable else name.replace("encoder.", "encoder_frontend.", 1)
        else:
            new = next((re.sub(p, r, name) for p, r in _KEY_MAP if re.match(p, name)), None)
        if new is None:
            raise ModelLoadError(f"{where}: weight {key} has no counterpart in a seqwin wav2vec2 model")
        out[new] = value
    if kind == "pretraining":
        out.setdefault("quantizer.num_updates", torch.zeros((), dtype=torch.int64))
    return out


def _ctc_head(state: dict[str, Tensor], folder: Path, hf: dict[str, Any]) -> list[str] | None:
    """Reorder the CTC head's rows in ``state`` (see :func:`ctc_rows`); returns the symbols."""
    weight, bias = state["final_proj.weight"], state["final_proj.bias"]
    if weight.shape[0] != int(hf.get("vocab_size", 32)):
        raise ModelLoadError(f"{folder}: lm_head has {weight.shape[0]} outputs, config.json's vocab_size says "
                             f"{hf.get('vocab_size', 32)}")
    rows, dictionary = ctc_rows(folder, hf)
    state["final_proj.weight"], state["final_proj.bias"] = reorder_rows(weight, bias, rows)
    return dictionary


def reorder_rows(weight: Tensor, bias: Tensor, rows: list[int | None]) -> tuple[Tensor, Tensor]:
    """Output ``i`` of the result is Hugging Face's output ``rows[i]``; ``None`` rows are inert."""
    new_weight = weight.new_zeros(len(rows), weight.shape[1])
    new_bias = bias.new_full((len(rows),), INERT_BIAS)
    for i, j in enumerate(rows):
        if j is not None:
            new_weight[i], new_bias[i] = weight[j], bias[j]
    return new_weight, new_bias


# ---- vocabulary ----------------------------------------------------------------------------------------------


def _token(value: Any) -> str | None:
    """A tokenizer config's special token: a string, or ``{"content": ...}``."""
    return value.get("content") if isinstance(value, dict) else value


def ctc_rows(folder: Path, hf: dict[str, Any]) -> tuple[list[int | None], list[str] | None]:
    """Which Hugging Face output fills each seqwin output, and the seqwin symbols (see the module docstring)."""
    size = int(hf.get("vocab_size", 32))
    blank = int(hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0)
    if not 0 <= blank < size:
        raise ModelLoadError(f"{folder / 'config.json'}: pad_token_id {blank} (the CTC blank) outside vocab_size "
                             f"{size}")
    if not (folder / "vocab.json").is_file():
        if blank != 0:
            raise ModelLoadError(f"{folder}: no vocab.json to place the CTC blank (pad_token_id {blank}) first")
        return list(range(size)), None
    vocab = _json(folder / "vocab.json")
    if any(isinstance(v, dict) for v in vocab.values()):
        raise ModelLoadError(f"{folder / 'vocab.json'}: per-language vocabularies (adapters) are not supported")
    names = {int(i): t for t, i in vocab.items()}
    if (folder / "added_tokens.json").is_file():
        names.update({int(i): t for t, i in _json(folder / "added_tokens.json").items()})
    settings: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            settings.update(_json(folder / name))
    for i, added in (settings.get("added_tokens_decoder") or {}).items():
        names.setdefault(int(i), _token(added))
    ids = {t: i for i, t in names.items() if i < size}
    rows: list[int | None] = [blank]
    for key, default in (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>")):
        i = ids.get(_token(settings.get(key, default)))
        rows.append(i if i is not None and i not in rows else None)
    rest = [i for i in range(size) if i not in rows]
    unnamed = [i for i in rest if i not in names]
    if unnamed:
        raise ModelLoadError(f"{folder / 'vocab.json'}: no token for CTC output(s) {unnamed[:5]} of {size}")
    delimiter = _token(settings.get("word_delimiter_token", WORD_BOUNDARY))
    symbols = list(SPECIAL_SYMBOLS) + [WORD_BOUNDARY if names[i] == delimiter else names[i] for i in rest]
    clash = sorted({s for s in symbols if symbols.count(s) > 1})
    if clash:
        raise ModelLoadError(f"{folder / 'vocab.json'}: token(s) {clash} would repeat a seqwin symbol (the special "
                             f"symbols {', '.join(SPECIAL_SYMBOLS)} and the word delimiter {WORD_BOUNDARY})")
    return rows + rest, symbols
