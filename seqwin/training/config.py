"""Recipe configs: YAML files and ``--set a.b=value`` overrides -> typed dataclasses, checked before training.

The conversion and its checks are :mod:`seqwin.io.config_dict`'s (``ConfigError`` names the offending key); this
module adds reading YAML files, applying overrides and writing the resolved config back as YAML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from seqwin.io.config_dict import ConfigError, from_dict, to_dict

__all__ = ["ConfigError", "from_dict", "load_config", "to_dict", "to_yaml"]

T = TypeVar("T")


def _set(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part} is not a section")
    node[parts[-1]] = value


def load_config(kls: type[T], path: Path | None, overrides: list[str] | None = None) -> T:
    """Read YAML ``path`` (optional) and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    tree: dict = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        dotted, raw = item.split("=", 1)
        _set(tree, dotted.strip(), yaml.safe_load(raw))
    return from_dict(kls, tree)


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
