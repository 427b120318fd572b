"""Model files: one envelope for every model family, and where a model lives in a training run directory.

A model file (``torch.save``d, written atomically, read with ``weights_only=True``)::

    {"format": "seqwin.<family>", "version": 1, "config": <the model config as plain values>,
     "model": <state dict>, "extras": {...}}

``format`` names what the file holds (:data:`KINDS`); ``extras`` carries what a family needs besides config and
weights (a CTC model's letters, an LM's tokenizer). Each family's ``seqwin.models.<family>.checkpoint`` module
writes and reads its files through :func:`write_model_file` and :func:`read_model_file`.

A training run directory ``OUT`` holds the model as an exported file once training ends (``OUT/model.pt``; codecs:
``OUT/codec.pt``) and, before that, as trainer checkpoints ``OUT/checkpoints/step_<N>.pt`` (``{"model": ...,
"step": N, "optimizer": ...}``) whose config the family reads from the directory. Which recipe made a run is read
from the sections of its ``config.yaml``; asking one family for another's run or file is one clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from torch import Tensor, nn

from seqwin.errors import UserError
from seqwin.io.checkpoint_files import atomic_save, checkpoint_path, newest_checkpoint, safe_load
from seqwin.io.config_dict import ConfigError, from_dict

T = TypeVar("T")

VERSION = 1

# format tag -> (what the model is, the command that trains one)
KINDS = {
    "seqwin.lm": ("an LM", "seqwin train lm"),
    "seqwin.codec": ("a codec", "seqwin train codec"),
    "seqwin.wav2vec2_asr": ("a wav2vec2 ASR", "seqwin train asr"),
    "seqwin.wav2vec2": ("a wav2vec2 SSL", "seqwin train ssl"),
}
# a top-level config.yaml section only one recipe's runs have -> the format of the model that run trains
_RUN_SECTIONS = (("tokenizer", "seqwin.lm"), ("discriminator", "seqwin.codec"),
                 ("finetune", "seqwin.wav2vec2_asr"), ("loss", "seqwin.wav2vec2"))


class ModelLoadError(UserError):
    pass


@dataclass
class ModelFile:
    """What :func:`read_model_file` found: a model's format, config (plain values), weights and extras."""

    format: str
    config: dict[str, Any]
    model: dict[str, Tensor]
    extras: dict[str, Any] = field(default_factory=dict)
    where: Path = Path()
    """The file read, for messages."""
    step: int | None = None
    """The trainer step when the weights come from a training checkpoint; None for a model file."""


@dataclass(frozen=True)
class Family:
    """How one model family's files and run directories are read."""

    what: str
    """The model wanted, for messages: e.g. ``a codec``."""
    formats: tuple[str, ...]
    exports: tuple[str, ...]
    """Names of the exported model file in a run directory, in order of preference."""
    run_config: Callable[[Path], tuple[str, dict, dict] | None]
    """Run directory -> ``(format, config, extras)`` of its training checkpoints; None when it holds no config
    (then the file is treated as a foreign one)."""
    legacy: Callable[[dict, Path], ModelFile | None] = lambda data, path: None
    """An older seqwin layout of this family's files -> its :class:`ModelFile`; None when ``data`` is not one."""


def write_model_file(path: Path, fmt: str, config: dict[str, Any], model: nn.Module,
                     extras: dict[str, Any] | None = None) -> Path:
    if fmt not in KINDS:
        raise ValueError(f"unknown model format {fmt!r}")
    atomic_save({"format": fmt, "version": VERSION, "config": config, "model": model.state_dict(),
                 "extras": dict(extras or {})}, path)
    return path


def read_checkpoint(path: Path, load: Callable[[Path], Any] = safe_load) -> Any:
    """The contents of a file the user named (``load``: :func:`~seqwin.io.checkpoint_files.safe_load`); a missing,
    truncated or foreign file is a :class:`ModelLoadError`."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file")
    try:
        return load(path)
    except Exception as exc:  # noqa: BLE001 - unreadable is one user error whatever the cause
        raise ModelLoadError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def read_model_file(path: Path, family: Family, *, run_dir: Path | None = None,
                    load: Callable[[Path], Any] = safe_load,
                    foreign: Callable[[Any, Path], T] | None = None) -> ModelFile | T:
    """The model at ``path``: a model file, an older file of the family, a run directory (its exported file, else
    its newest checkpoint), or one trainer checkpoint, whose config comes from ``run_dir`` (default: the run
    directory the checkpoint lies in). ``load`` reads the file. Any other readable file's contents go to
    ``foreign``, whose result is returned (default: an error)."""
    path = Path(path)
    if path.is_dir():
        return _from_run_dir(path, family)
    data = read_checkpoint(path, load)
    if isinstance(data, dict):
        if isinstance(data.get("format"), str) and "version" in data:
            return _from_envelope(data, path, family)
        old = family.legacy(data, path)
        if old is not None:
            return old
        if isinstance(data.get("model"), dict) and "step" in data:  # what the trainer writes
            found = _from_checkpoint(run_dir or path.parent.parent, data, int(data["step"]), path, family)
            if found is not None:
                return found
    if foreign is not None:
        return foreign(data, path)
    raise ModelLoadError(f"{path}: not {family.what} model file (expected one of "
                         f"{', '.join(family.exports)}, a run directory or a trainer step_N.pt)")


def _from_envelope(data: dict, path: Path, family: Family) -> ModelFile:
    fmt, version = data["format"], data["version"]
    if fmt not in KINDS:
        raise ModelLoadError(f"{path}: unknown model format {fmt!r} (known: {', '.join(KINDS)})")
    check_format(fmt, family, path, "model file")
    if not isinstance(version, int) or version > VERSION:
        raise ModelLoadError(f"{path}: model file version {version!r}; this seqwin reads versions up to {VERSION}")
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("model"), dict):
        raise ModelLoadError(f"{path}: a {fmt} file without its config or weights")
    return ModelFile(fmt, data["config"], data["model"], dict(data.get("extras") or {}), path)


def _from_run_dir(run_dir: Path, family: Family) -> ModelFile:
    check_run_dir(run_dir, family)
    for name in family.exports:
        if (run_dir / name).is_file():
            return read_model_file(run_dir / name, family)
    found = newest_checkpoint(run_dir / "checkpoints")
    if found is not None:
        step, data = found
        checkpoint = _from_checkpoint(run_dir, data, step, checkpoint_path(run_dir / "checkpoints", step), family)
        if checkpoint is not None:
            return checkpoint
    raise ModelLoadError(f"{run_dir}: neither {' nor '.join(family.exports)} nor a config with readable "
                         "checkpoints/step_N.pt inside")


def _from_checkpoint(run_dir: Path, data: dict, step: int, where: Path, family: Family) -> ModelFile | None:
    check_run_dir(run_dir, family)
    header = family.run_config(run_dir)
    if header is None:
        return None
    fmt, config, extras = header
    return ModelFile(fmt, config, data["model"], extras, where, step)


def run_format(run_dir: Path) -> str | None:
    """The format of the model a run directory trains, from its ``config.yaml``; None if it cannot tell."""
    try:
        tree = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(tree, dict):
        return None
    return next((fmt for section, fmt in _RUN_SECTIONS if section in tree), None)


def check_run_dir(run_dir: Path, family: Family) -> None:
    """Raise a :class:`ModelLoadError` naming the run if ``run_dir`` trains another family's model. Unknown or
    unreadable configs pass: the family's own loading reports those."""
    fmt = run_format(run_dir)
    if fmt is not None:
        check_format(fmt, family, run_dir, "run")


def check_format(fmt: str, family: Family, where: Path, noun: str) -> None:
    """E.g. ``OUT is a wav2vec2 ASR run (seqwin train asr), not an LM run``."""
    if fmt not in family.formats:
        what, command = KINDS[fmt]
        raise ModelLoadError(f"{where} is {what} {noun} ({command}), not {family.what} {noun}")


def config_from(kls: type[T], data: Any, where: Path | str) -> T:
    """The typed config of a model file; a mismatch is one error naming the file and the key."""
    try:
        return from_dict(kls, data, "model")
    except ConfigError as exc:
        raise ModelLoadError(f"{where}: bad model config: {exc}") from None


def load_weights(model: nn.Module, state: dict[str, Tensor], where: Path | str,
                 optional: Callable[[str], bool] = lambda key: False) -> None:
    """Load ``state`` into ``model``: missing (unless ``optional``), unexpected or misshapen weights are one error."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ
        detail = str(exc).splitlines()[1:2] or str(exc).splitlines()[:1]
        raise ModelLoadError(f"{where}: weights do not fit the model config ({detail[0].strip()})") from None
    missing = [k for k in missing if not optional(k)]
    if missing or unexpected:
        raise ModelLoadError(f"{where}: weights do not fit the model config: missing {missing[:4]}"
                             f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                             f"{'...' if len(unexpected) > 4 else ''}")
