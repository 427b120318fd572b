"""Typed dataclass configs <-> plain values (dicts, lists, strings, numbers): what YAML files and model files hold.

:func:`from_dict` rebuilds a dataclass, recursively, checking every value against its field's type; unknown keys,
wrong types and impossible values fail with one :class:`ConfigError` naming the key (a ``UserError``: the CLI
prints it as one line). Dataclasses may define ``validate(self) -> None`` raising ``ValueError`` for cross-field
checks; the message is prefixed with the dataclass's key path. :func:`to_dict` is the inverse.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from seqwin.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    pass


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        conv = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(conv) if origin is tuple else conv
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: _convert(v, args[1] if args else Any, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        # Enums are written by name in YAML (e.g. fairseq2's TransformerNormOrder: POST / PRE).
        if isinstance(value, tp):
            return value
        if isinstance(value, str) and value in tp.__members__:
            return tp[value]
        raise ConfigError(f"{key}: must be one of {list(tp.__members__)}, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `2e-3` (no dot) as a string; it is plainly a number
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    return value


def from_dict(kls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass ``kls`` from a mapping, recursively, naming the offending key on any error."""
    prefix = f"{key}." if key else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(kls)
    fields = {f.name: f for f in dataclasses.fields(kls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (valid keys here: {', '.join(sorted(fields))})")
    kwargs = {name: _convert(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        obj = kls(**kwargs)
    except (ValueError, TypeError) as exc:  # checks in __post_init__ (e.g. seqwin.attention's AttentionSpec)
        raise ConfigError(f"{key or 'config'}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"{prefix}{exc}") from None
    return obj


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.name
    return obj
