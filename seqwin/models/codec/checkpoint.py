"""Codec files: what ``seqwin tokenize``/``detokenize``/``eval codec`` load with ``--checkpoint``.

A codec file (``codec.pt``, exported at the end of training) is the :mod:`seqwin.io.model_file` envelope with
format ``seqwin.codec`` and the :class:`CodecConfig` as config. :func:`load` accepts
- a codec file, or one written before the envelope (``{"format": "seqwin-codec/1", "config", "model"}``);
- a training output directory: its ``codec.pt``, or else its newest ``checkpoints/step_N.pt`` together with the
  ``model`` section of its ``config.yaml``;
- a trainer checkpoint ``.../checkpoints/step_N.pt`` (its config is read from ``../config.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqwin.io.config_dict import to_dict
from seqwin.io.model_file import (
    Family,
    ModelFile,
    ModelLoadError,
    config_from,
    load_weights,
    read_model_file,
    write_model_file,
)
from seqwin.models.codec.config import CodecConfig
from seqwin.models.codec.model import Codec, create_codec

FORMAT = "seqwin.codec"
EXPORT_NAME = "codec.pt"
_OLD_FORMAT = "seqwin-codec/1"
_DECODER_PREFIXES = ("decoder_in.", "decoder_seq.", "decoder_seq_out.", "decoder.")


@dataclass
class LoadedCodec:
    config: CodecConfig
    model: Codec
    """In eval mode, on the CPU."""
    extras: dict[str, Any] = field(default_factory=dict)
    family: str = FORMAT


def save(path: Path, model: Codec) -> Path:
    """Write ``model`` (its own config, ``model.cfg``, goes with it)."""
    return write_model_file(path, FORMAT, to_dict(model.cfg), model)


def _run_config(run_dir: Path) -> tuple[str, dict, dict]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ModelLoadError(f"{run_dir}: no config.yaml next to the checkpoints (is this a codec training run?)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{path}: not valid YAML ({exc})") from None
    return FORMAT, (tree.get("model") if isinstance(tree, dict) else None) or {}, {}


def _legacy(data: dict, path: Path) -> ModelFile | None:
    if data.get("format") != _OLD_FORMAT:
        return None
    return ModelFile(FORMAT, data["config"], data["model"], {}, path)


FAMILY = Family(what="a codec", formats=(FORMAT,), exports=(EXPORT_NAME,), run_config=_run_config,
                legacy=_legacy)


def load(path: Path, *, decoder: bool = True) -> LoadedCodec:
    """``decoder=False``: the encoder side only (tokenizing); the decoder's weights are neither built nor kept."""
    found = read_model_file(path, FAMILY)
    config = config_from(CodecConfig, found.config, found.where)
    model = create_codec(config, decoder=decoder)
    weights = found.model
    if not decoder:
        weights = {k: v for k, v in weights.items() if not k.startswith(_DECODER_PREFIXES)}
    load_weights(model, weights, found.where)
    return LoadedCodec(config, model.eval(), found.extras)
