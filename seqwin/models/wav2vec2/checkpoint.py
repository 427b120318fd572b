"""Model files: seqwin's (the :mod:`seqwin.io.model_file` envelope), and import of fairseq2 and fairseq (v1)
checkpoints and Hugging Face ``transformers`` folders.

seqwin format (``model.pt``): format ``seqwin.wav2vec2`` (self-supervised) or ``seqwin.wav2vec2_asr`` (CTC), the
``SeqwinWav2Vec2Config`` / ``SeqwinWav2Vec2AsrConfig`` as config, extras ``{"dictionary": [symbols]}`` for a CTC
model whose letters are known and ``{"normalize": true}`` for a model that expects per-utterance zero mean, unit
variance waveforms (the recipes' ``data.normalize``). ``model.yaml`` beside a run's training checkpoints is the
same header without the weights. Files and ``model.yaml`` written before the envelope (``{"seqwin_family": ...,
"config": ..., "model": ..., "dictionary": ...}``) still load.

:func:`load` accepts
- a seqwin model file, or a recipe output directory (``model.pt``, else ``model.yaml`` + the newest
  ``checkpoints/step_*.pt``), or one ``step_*.pt`` of such a directory;
- a fairseq2 wav2vec2 / wav2vec2_asr checkpoint (fairseq2 key names, ``{"model": ...}`` or bare);
- a fairseq (v1) wav2vec 2.0 pretraining or CTC fine-tuning checkpoint;
- a Hugging Face wav2vec2 folder (``config.json`` + weights; :mod:`~seqwin.models.wav2vec2.hf`).
For fairseq2 and fairseq (v1) checkpoints the architecture is read from the weights' shapes (layers, widths, conv
kernels, vocabulary) plus the fairseq1 config when the file has one (heads, norm order, conv strides); ``heads``
overrides the head count when neither says (default ``model_dim // 64``, true of every published wav2vec 2.0). A
Hugging Face folder's ``config.json`` says everything.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from fairseq2.models.transformer import TransformerNormOrder
from fairseq2.models.wav2vec2.asr import convert_wav2vec2_asr_state_dict
from torch import Tensor, nn

from seqwin.io.config_dict import to_dict
from seqwin.io.model_file import (
    VERSION,
    Family,
    ModelFile,
    ModelLoadError,
    config_from,
    load_weights,
    read_model_file,
    write_model_file,
)
from seqwin.models.wav2vec2 import fairseq1, hf
from seqwin.models.wav2vec2.config import (
    ASR_FAMILY,
    SSL_FAMILY,
    SeqwinWav2Vec2AsrConfig,
    SeqwinWav2Vec2Config,
    asr_presets,
    ssl_presets,
)
from seqwin.models.wav2vec2.factory import create_seqwin_wav2vec2_asr_model, create_seqwin_wav2vec2_model

__all__ = ["ASR_FAMILY", "SSL_FAMILY", "LoadedModel", "ModelLoadError", "import_hf", "load", "model_yaml", "save"]

log = logging.getLogger("seqwin.wav2vec2")

_PRETRAINING_ONLY = re.compile(r"^w2v_encoder\.w2v_model\.(quantizer|project_q|final_proj|target_glu)\.")
AnyConfig = SeqwinWav2Vec2Config | SeqwinWav2Vec2AsrConfig
CONFIG_KLS = {SSL_FAMILY: SeqwinWav2Vec2Config, ASR_FAMILY: SeqwinWav2Vec2AsrConfig}
FORMATS = {SSL_FAMILY: "seqwin.wav2vec2", ASR_FAMILY: "seqwin.wav2vec2_asr"}
_FAMILY_OF_FORMAT = {fmt: family for family, fmt in FORMATS.items()}


@dataclass
class LoadedModel:
    family: str
    """``SSL_FAMILY`` or ``ASR_FAMILY`` (the fairseq2 family names)."""
    config: AnyConfig
    model: nn.Module
    """In eval mode, on the CPU."""
    source: str
    """What was read: ``seqwin``, ``seqwin-training``, ``fairseq2``, ``fairseq1`` or ``hf``."""
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def dictionary(self) -> list[str] | None:
        """The CTC letters, if the file has them."""
        return self.extras.get("dictionary")

    @property
    def normalize(self) -> bool:
        """Whether the model expects per-utterance zero mean, unit variance waveforms."""
        return bool(self.extras.get("normalize"))


def family_of(config: AnyConfig) -> str:
    return ASR_FAMILY if isinstance(config, SeqwinWav2Vec2AsrConfig) else SSL_FAMILY


def create_model(config: AnyConfig) -> nn.Module:
    if isinstance(config, SeqwinWav2Vec2AsrConfig):
        return create_seqwin_wav2vec2_asr_model(config)
    return create_seqwin_wav2vec2_model(config)


def _extras(dictionary: list[str] | None, normalize: bool = False) -> dict[str, Any]:
    # a false ``normalize`` is left out: files of models that take raw waveforms stay as they always were
    return ({} if dictionary is None else {"dictionary": list(dictionary)}) | ({"normalize": True} if normalize else {})


def model_yaml(config: AnyConfig, dictionary: list[str] | None = None) -> str:
    """Text of ``model.yaml`` beside training checkpoints: the model file's header, what :func:`load` needs to
    rebuild the model."""
    header = {"format": FORMATS[family_of(config)], "version": VERSION, "config": to_dict(config),
              "extras": _extras(dictionary)}
    return yaml.safe_dump(header, sort_keys=False)


def same_model(yaml_a: str, yaml_b: str) -> bool:
    """Whether two ``model.yaml`` texts (either layout) describe the same model."""
    return _header(yaml.safe_load(yaml_a), "model.yaml") == _header(yaml.safe_load(yaml_b), "model.yaml")


def save(path: Path, model: nn.Module, config: AnyConfig, *, dictionary: list[str] | None = None,
         normalize: bool = False) -> Path:
    return write_model_file(path, FORMATS[family_of(config)], to_dict(config), model, _extras(dictionary, normalize))


def _header(header: Any, where: Path | str) -> tuple[str, dict, dict]:
    """``(format, config, extras)`` of a ``model.yaml`` or a model file's header, in either layout."""
    if isinstance(header, dict) and "seqwin_family" in header:  # before the envelope
        family = header["seqwin_family"]
        if family not in FORMATS:
            raise ModelLoadError(f"{where}: unknown model family {family!r} (expected {SSL_FAMILY} or {ASR_FAMILY})")
        return FORMATS[family], header.get("config"), _extras(header.get("dictionary"))
    if isinstance(header, dict) and header.get("format") in _FAMILY_OF_FORMAT:
        return header["format"], header.get("config"), dict(header.get("extras") or {})
    raise ModelLoadError(f"{where}: not a wav2vec2 model header (expected format {' or '.join(_FAMILY_OF_FORMAT)})")


def _run_config(run_dir: Path) -> tuple[str, dict, dict] | None:
    path = run_dir / "model.yaml"
    if not path.is_file():
        return None
    try:
        return _header(yaml.safe_load(path.read_text()), path)
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{path}: not valid YAML ({exc})") from None


def _legacy(data: dict, path: Path) -> ModelFile | None:
    if "seqwin_family" not in data:
        return None
    fmt, config, extras = _header(data, path)
    return ModelFile(fmt, config, data["model"], extras, path)


FAMILY = Family(what="a wav2vec2", formats=tuple(FORMATS.values()), exports=("model.pt",),
                run_config=_run_config, legacy=_legacy)


def _optional(key: str) -> bool:
    # Log-mel filterbank matrices are buffers derived from the config, not learned: tolerate their absence.
    return ".feature_extractor.mel." in key


def _wav2vec2_weights(state: dict[str, Any]) -> dict[str, Any]:
    """The model's weights of a training checkpoint: a masked-unit SSL run holds them under ``wav2vec2.``, next to
    its unit head and centroids (:mod:`seqwin.models.wav2vec2.units`)."""
    if "centroids" not in state:
        return state
    return {k.removeprefix("wav2vec2."): v for k, v in state.items() if k.startswith("wav2vec2.")}


def load(path: Path, *, heads: int | None = None) -> LoadedModel:
    if hf.is_hf_folder(path):
        return import_hf(path)
    found = read_model_file(path, FAMILY, load=fairseq1.read_checkpoint,
                            foreign=lambda data, where: _import(data, where, heads))
    if isinstance(found, LoadedModel):
        return found
    family = _FAMILY_OF_FORMAT[found.format]
    config = config_from(CONFIG_KLS[family], found.config, found.where)
    model = create_model(config)
    load_weights(model, _wav2vec2_weights(found.model), found.where, _optional)
    return LoadedModel(family, config, model.eval(), "seqwin" if found.step is None else "seqwin-training",
                       found.extras)


def import_hf(folder: Path) -> LoadedModel:
    """A Hugging Face wav2vec2 folder -> a seqwin model with dense attention (as trained)."""
    found = hf.read_folder(Path(folder))
    model = create_model(found.config)
    load_weights(model, found.state, folder, lambda key: _optional(key) or key.startswith(found.fresh))
    if found.fresh:
        log.warning("%s (%s) has no weights for %s: freshly initialized (the encoder is the checkpoint's)", folder,
                    found.architecture, ", ".join(p.rstrip(".") for p in found.fresh))
    return LoadedModel(family_of(found.config), found.config, model.eval(), "hf",
                       _extras(found.dictionary, found.normalize))


def _import(data: Any, path: Path, heads: int | None) -> LoadedModel:
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: not a checkpoint (a {type(data).__name__})")
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
    load_weights(model, state, where, _optional)
    return LoadedModel(ASR_FAMILY if asr else SSL_FAMILY, config, model.eval(), source)


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
