"""LM files: a trained language model with its tokenizer, from one file or a ``seqwin train lm`` directory.

An LM file (``OUT/model.pt``, exported at the end of training) is the :mod:`seqwin.io.model_file` envelope with
format ``seqwin.lm``, the :class:`LMConfig` as config and extras ``{"tokenizer": <tokenizer_state>, "step": N}``:
the file alone rebuilds model and tokenizer. :func:`load` accepts
- an LM file;
- a ``seqwin train lm`` output directory: its ``model.pt``, or else its newest ``checkpoints/step_N.pt`` with the
  ``model`` section of its ``config.yaml`` and its tokenizer (``tokenizer.json`` [+ ``tokenizer.model``]), the
  layout of runs from before the LM file existed;
- a trainer checkpoint ``.../checkpoints/step_N.pt`` (config and tokenizer from ``../..``), or any checkpoint
  file given as ``checkpoint=`` together with the run directory it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from fairseq2.models.transformer_lm import TransformerLM

from seqwin.io.config_dict import to_dict
from seqwin.io.model_file import (
    Family,
    ModelLoadError,
    config_from,
    load_weights,
    read_model_file,
    write_model_file,
)
from seqwin.models.lm.config import LMConfig
from seqwin.models.lm.factory import create_lm_model
from seqwin.models.lm.tokenizer import Tokenizer, load_tokenizer, tokenizer_from_state, tokenizer_state

FORMAT = "seqwin.lm"
EXPORT_NAME = "model.pt"


@dataclass
class LoadedLM:
    config: LMConfig
    model: TransformerLM
    """In eval mode, on the CPU."""
    tokenizer: Tokenizer
    step: int
    """The training step of the weights (0 when unknown)."""
    extras: dict[str, Any] = field(default_factory=dict)
    family: str = FORMAT


def save(path: Path, model: TransformerLM, config: LMConfig, *, tokenizer: Tokenizer, step: int = 0) -> Path:
    return write_model_file(path, FORMAT, to_dict(config), model,
                            {"tokenizer": tokenizer_state(tokenizer), "step": int(step)})


def _run_config(run_dir: Path) -> tuple[str, dict, dict]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ModelLoadError(f"{run_dir}: no config.yaml; not a `seqwin train lm` output directory")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ModelLoadError(f"{path}: not valid YAML ({exc})") from None
    config = (tree.get("model") if isinstance(tree, dict) else None) or {}
    return FORMAT, config, {"tokenizer": tokenizer_state(load_tokenizer(run_dir))}


FAMILY = Family(what="an LM", formats=(FORMAT,), exports=(EXPORT_NAME,), run_config=_run_config)


def load(path: Path, *, checkpoint: Path | None = None, min_seq_len: int = 0) -> LoadedLM:
    """The LM at ``path``; ``checkpoint``: take the weights from this file instead (a trainer checkpoint of the
    run directory ``path``, or an LM file). The rotary table is extended to ``min_seq_len`` positions if the
    config's is shorter (it is not part of the weights)."""
    if checkpoint is not None:
        found = read_model_file(checkpoint, FAMILY, run_dir=Path(path))
    else:
        found = read_model_file(path, FAMILY)
    config = config_from(LMConfig, found.config, found.where)
    tokenizer = tokenizer_from_state(found.extras.get("tokenizer"), str(found.where))
    if tokenizer.vocab_size != config.vocab_size:
        raise ModelLoadError(f"{found.where}: the tokenizer has {tokenizer.vocab_size} ids, the model "
                             f"{config.vocab_size}")
    model = create_lm_model(replace(config, max_seq_len=max(config.max_seq_len, min_seq_len)))
    load_weights(model, found.model, found.where)
    step = found.step if found.step is not None else int(found.extras.get("step", 0))
    return LoadedLM(config, model.eval(), tokenizer, step, found.extras)
