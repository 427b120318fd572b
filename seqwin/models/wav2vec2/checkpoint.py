"""Model files: seqwin's self-describing format, and import of fairseq2 and fairseq (v1) checkpoints.

seqwin format (``model.pt``): ``{"seqwin_family": SSL_FAMILY | ASR_FAMILY, "config": <config as plain dict>,
"model": state_dict, "dictionary": [symbols] (CTC only)}``, written atomically, read with ``weights_only=True``.

:func:`load_model` accepts
- a seqwin model file, or a recipe output directory (``model.pt``, else ``model.yaml`` + the newest
  ``checkpoints/step_*.pt``), or one ``step_*.pt`` of such a directory;
- a fairseq2 wav2vec2 / wav2vec2_asr checkpoint (fairseq2 key names, ``{"model": ...}`` or bare);
- a fairseq (v1) wav2vec 2.0 pretraining or CTC fine-tuning checkpoint.
For the last two the architecture is read from the weights' shapes (layers, widths, conv kernels, vocabulary)
plus the fairseq1 config when the file has one (heads, norm order, conv strides); ``heads`` overrides the head
count when neither says (default ``model_dim // 64``, true of every published wav2vec 2.0).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from fairseq2.models.transformer import TransformerNormOrder
from fairseq2.models.wav2vec2.asr import convert_wav2vec2_asr_state_dict
from torch import Tensor, nn

from seqwin.errors import UserError
from seqwin.models.wav2vec2 import fairseq1
from seqwin.models.wav2vec2.config import (
    ASR_FAMILY,
    SSL_FAMILY,
    SeqwinWav2Vec2AsrConfig,
    SeqwinWav2Vec2Config,
    asr_presets,
    ssl_presets,
)
from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_asr_model, create_seqwin_wav2vec2_model
from seqwin.training.checkpoint import CheckpointManager, atomic_save
from seqwin.training.config import ConfigError, from_dict, to_dict

_PRETRAINING_ONLY = re.compile(r"^w2v_encoder\.w2v_model\.(quantizer|project_q|final_proj|target_glu)\.")
AnyConfig = SeqwinWav2Vec2Config | SeqwinWav2Vec2AsrConfig
CONFIG_KLS = {SSL_FAMILY: SeqwinWav2Vec2Config, ASR_FAMILY: SeqwinWav2Vec2AsrConfig}


class ModelLoadError(UserError):
    pass


@dataclass
class LoadedModel:
    family: str
    config: AnyConfig
    model: nn.Module
    dictionary: list[str] | None
    source: str
    """What was read: ``seqwin``, ``seqwin-training``, ``fairseq2`` or ``fairseq1``."""


def family_of(config: AnyConfig) -> str:
    return ASR_FAMILY if isinstance(config, SeqwinWav2Vec2AsrConfig) else SSL_FAMILY


def create_model(config: AnyConfig) -> nn.Module:
    if isinstance(config, SeqwinWav2Vec2AsrConfig):
        return create_seqwin_wav2vec2_asr_model(config)
    return create_seqwin_wav2vec2_model(config)


def config_from_dict(family: str, data: Any, where: str) -> AnyConfig:
    if family not in CONFIG_KLS:
        raise ModelLoadError(f"{where}: unknown model family {family!r} (expected {SSL_FAMILY} or {ASR_FAMILY})")
    try:
        return from_dict(CONFIG_KLS[family], data, "model")
    except ConfigError as exc:
        raise ModelLoadError(f"{where}: bad model config: {exc}") from None


def model_header(config: AnyConfig, dictionary: list[str] | None = None) -> dict[str, Any]:
    header: dict[str, Any] = {"seqwin_family": family_of(config), "config": to_dict(config)}
    if dictionary is not None:
        header["dictionary"] = list(dictionary)
    return header


def model_yaml(config: AnyConfig, dictionary: list[str] | None = None) -> str:
    """Text of ``model.yaml`` beside training checkpoints: what :func:`load_model` needs to rebuild the model."""
    return yaml.safe_dump(model_header(config, dictionary), sort_keys=False)


def save_model(path: Path, config: AnyConfig, model: nn.Module, dictionary: list[str] | None = None) -> None:
    atomic_save({**model_header(config, dictionary), "model": model.state_dict()}, path)


def _from_header(header: dict, state: dict, where: str, source: str) -> LoadedModel:
    family = header.get("seqwin_family")
    config = config_from_dict(family, header.get("config"), where)
    model = create_model(config)
    _load_state(model, state, where)
    return LoadedModel(family, config, model, header.get("dictionary"), source)


def _load_state(model: nn.Module, state: dict[str, Any], where: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Log-mel filterbank matrices are buffers derived from the config, not learned: tolerate their absence.
    missing = [k for k in missing if ".feature_extractor.mel." not in k]
    if missing or unexpected:
        raise ModelLoadError(f"{where}: weights do not match the model: missing {missing[:4]}"
                             f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                             f"{'...' if len(unexpected) > 4 else ''}")


def load_model(path: Path, *, heads: int | None = None) -> LoadedModel:
    path = Path(path)
    if path.is_dir():
        if (path / "model.pt").is_file():
            return load_model(path / "model.pt", heads=heads)
        found = CheckpointManager(path / "checkpoints").load_latest()
        if found is None or not (path / "model.yaml").is_file():
            raise ModelLoadError(f"{path}: neither model.pt nor model.yaml + checkpoints/step_*.pt inside")
        return _from_header(yaml.safe_load((path / "model.yaml").read_text()), found[1]["model"],
                            str(path), "seqwin-training")
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file or directory")
    try:
        data = fairseq1.read_checkpoint(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user-facing error
        raise ModelLoadError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: not a checkpoint (a {type(data).__name__})")
    if "seqwin_family" in data:
        return _from_header(data, data["model"], str(path), "seqwin")
    if re.fullmatch(r"step_\d+\.pt", path.name) and (path.parent.parent / "model.yaml").is_file():
        header = yaml.safe_load((path.parent.parent / "model.yaml").read_text())
        return _from_header(header, data["model"], str(path), "seqwin-training")
    state = data.get("model", data)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: no model weights found (expected a seqwin, fairseq2 or fairseq checkpoint)")
    settings = fairseq1.model_settings(data) if fairseq1.is_fairseq1(state) else {}
    return import_state_dict(dict(state), settings, heads=heads, where=str(path))


def import_state_dict(state: dict[str, Any], settings: dict[str, Any], *, heads: int | None = None,
                      where: str = "checkpoint") -> LoadedModel:
    """A fairseq2- or fairseq1-keyed wav2vec2 state dict -> a seqwin model with dense attention (as trained)."""
    source = "fairseq1" if fairseq1.is_fairseq1(state) else "fairseq2"
    # CTC models have a final projection but no quantizer (pretraining models have both)
    asr = "w2v_encoder.proj.weight" in state or (
        "final_proj.weight" in state and not any(k.startswith("quantizer.") for k in state))
    norm = TransformerNormOrder.PRE if settings.get("layer_norm_first") else TransformerNormOrder.POST
    if source == "fairseq1":
        state = convert_fairseq1(state, asr, norm)
    elif "encoder.layer_norm.weight" in state:  # fairseq2 keeps this norm only in pre-norm encoders
        norm = TransformerNormOrder.PRE
    try:
        config = infer_config(state, asr, settings, norm, heads)
        model = create_model(config)
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelLoadError(f"{where}: cannot infer a wav2vec2 architecture from the weights ({exc})") from None
    if asr and config.model.use_masking and "masker.temporal_mask_embed" not in state:
        config.model.use_masking = False
        model = create_model(config)
    _load_state(model, state, where)
    return LoadedModel(ASR_FAMILY if asr else SSL_FAMILY, config, model, None, source)


def convert_fairseq1(state: dict[str, Any], asr: bool, norm: TransformerNormOrder) -> dict[str, Any]:
    if not asr:
        return fairseq1.convert_fairseq1_ssl(state, post_norm=norm == TransformerNormOrder.POST)
    base = asr_presets()["base_10h"]
    base.model.encoder_config.norm_order = norm
    state = convert_wav2vec2_asr_state_dict(fairseq1.fix_fairseq1_keys(state), base.model)
    # Fine-tuned fairseq1 files may keep pretraining-only modules the CTC model does not have.
    return {k: v for k, v in state.items() if not _PRETRAINING_ONLY.match(k)}


def infer_config(state: dict[str, Any], asr: bool, settings: dict[str, Any], norm: TransformerNormOrder,
                 heads: int | None) -> AnyConfig:
    """The architecture that produced a fairseq2-keyed state dict (see the module docstring)."""
    config: AnyConfig = copy.deepcopy(asr_presets()["base_10h"] if asr else ssl_presets()["base"])
    enc = config.model.encoder_config
    layers = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}
    enc.num_encoder_layers = max(layers) + 1
    enc.model_dim = state["encoder.layers.0.self_attn.q_proj.weight"].shape[0]
    enc.ffn_inner_dim = state["encoder.layers.0.ffn.inner_proj.weight"].shape[0]
    enc.num_encoder_attn_heads = int(settings.get("encoder_attention_heads") or heads or enc.model_dim // 64)
    enc.norm_order = norm
    enc.layer_norm_features = "encoder_frontend.layer_norm.weight" in state
    prefix = "encoder_frontend.feature_extractor.layers"
    convs = sorted({int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.conv\.", k))})
    kernels = [(state[f"{prefix}.{i}.conv.weight"].shape[0], state[f"{prefix}.{i}.conv.weight"].shape[2])
               for i in convs]
    if "conv_feature_layers" in settings:
        descs = fairseq1.parse_conv_layers(str(settings["conv_feature_layers"]))
        if [(d, k) for d, k, _ in descs] != kernels:
            raise ValueError(f"conv_feature_layers {descs} disagrees with the conv weights {kernels}")
    else:  # the paper's strides: 5 for the first layer, 2 after
        descs = [(d, k, 5 if i == 0 else 2) for i, (d, k) in enumerate(kernels)]
    enc.feature_extractor_layer_descs = descs
    enc.feature_dim = descs[-1][0]
    enc.feature_extractor_bias = f"{prefix}.0.conv.bias" in state
    enc.feature_extractor_layer_norm_convs = f"{prefix}.0.layer_norm.weight" in state
    pos = state.get("encoder_frontend.pos_encoder.conv.weight_v", state.get("encoder_frontend.pos_encoder.conv.weight"))
    enc.pos_conv_kernel_size = pos.shape[2]
    enc.num_pos_conv_groups = enc.model_dim // pos.shape[1]
    if asr:
        config.model.target_vocab_size = state["final_proj.weight"].shape[0]
    else:
        entries = state["quantizer.entries"]
        groups = int(settings.get("latent_groups") or 2)
        config.model.num_codebooks = groups
        config.model.num_codebook_entries = entries.shape[1] // groups
        config.model.quantized_dim = entries.shape[2] * groups
        config.model.final_dim = state["final_proj.weight"].shape[0]
    config.validate()
    return config
