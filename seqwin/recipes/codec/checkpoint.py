"""Codec files: what ``seqwin tokenize``/``detokenize``/``eval codec`` load with ``--checkpoint``.

``--checkpoint`` accepts
- a training output directory: its ``codec.pt`` (exported at the end of training) or else its newest
  ``checkpoints/step_N.pt`` together with its ``config.yaml``;
- a ``codec.pt`` file: ``{"format": "seqwin-codec/1", "config": <CodecConfig as plain values>,
  "model": <generator state dict>}`` (``weights_only=True`` loadable);
- a trainer checkpoint ``.../checkpoints/step_N.pt`` (its config is read from ``../config.yaml``).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from seqwin.errors import UserError
from seqwin.models.codec import Codec, CodecConfig, create_codec
from seqwin.training.checkpoint import CheckpointManager, atomic_save, read_checkpoint
from seqwin.training.config import ConfigError, from_dict, to_dict
from seqwin.training.run_dir import check_run_kind

FORMAT = "seqwin-codec/1"


def export_codec(model: Codec, path: Path) -> Path:
    atomic_save({"format": FORMAT, "config": to_dict(model.cfg), "model": model.state_dict()}, path)
    return path


def _config_from_run(run_dir: Path) -> CodecConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: no config.yaml next to the checkpoints (is this a codec training run?)")
    check_run_kind(run_dir, "codec", "a codec run")
    tree = yaml.safe_load(path.read_text()) or {}
    try:
        return from_dict(CodecConfig, tree.get("model", {}), "model")
    except ConfigError as exc:
        raise UserError(f"{path}: {exc}") from None


def load_codec(checkpoint: Path, *, decoder: bool = True) -> Codec:
    """The codec in eval mode, on the CPU; ``decoder=False``: encoder side only (tokenizing), the decoder's
    weights are neither built nor kept."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        if (checkpoint / "codec.pt").is_file():
            return load_codec(checkpoint / "codec.pt", decoder=decoder)
        found = CheckpointManager(checkpoint / "checkpoints").load_latest()
        if found is None:
            raise UserError(f"{checkpoint}: no codec.pt and no readable checkpoints/step_N.pt")
        return _build(_config_from_run(checkpoint), found[1]["model"], checkpoint, decoder)
    if not checkpoint.is_file():
        raise UserError(f"{checkpoint}: no such checkpoint file or run directory")
    state = read_checkpoint(checkpoint)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        try:
            cfg = from_dict(CodecConfig, state["config"], "config")
        except ConfigError as exc:
            raise UserError(f"{checkpoint}: {exc}") from None
        return _build(cfg, state["model"], checkpoint, decoder)
    if isinstance(state, dict) and "model" in state and "step" in state:
        return _build(_config_from_run(checkpoint.parent.parent), state["model"], checkpoint, decoder)
    raise UserError(f"{checkpoint}: not a codec checkpoint (expected a codec.pt or a trainer step_N.pt)")


_DECODER_PREFIXES = ("decoder_in.", "decoder_seq.", "decoder_seq_out.", "decoder.")


def _build(cfg: CodecConfig, weights: dict, source: Path, decoder: bool = True) -> Codec:
    model = create_codec(cfg, decoder=decoder)
    if not decoder:
        weights = {k: v for k, v in weights.items() if not k.startswith(_DECODER_PREFIXES)}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UserError(f"{source}: weights do not fit the codec config ({first})") from None
    return model.eval()
