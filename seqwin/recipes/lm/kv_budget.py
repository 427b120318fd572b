"""WindowKV budgets from the command line: ``--kv-budget 0.5`` (every layer group) or ``--kv-budget 0.75,0.5,0.25``
(one per group of ``--share-layers`` full-attention layers, bottom group first), shared by ``seqwin generate`` and
``seqwin eval lm``."""

from __future__ import annotations

import math

from seqwin.attention.windowkv import WindowKVConfig
from seqwin.errors import UserError


def parse_kv_budget(text: str, option: str = "--kv-budget") -> float | list[float]:
    """One fraction, or a list of fractions (one per layer group); a single value stays a float so that it applies
    to every group."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"{option}: expected a fraction in (0, 1] or comma-separated fractions, one per layer group "
                        f"(e.g. 0.5 or 0.75,0.5,0.25), got {text!r}") from None
    bad = [v for v in values if not (math.isfinite(v) and 0.0 < v <= 1.0)]
    if bad:
        raise UserError(f"{option}: budgets must lie in (0, 1], got {bad[0]:g} in {text!r}")
    return values[0] if len(values) == 1 else values


def windowkv_config(budget: float | list[float], *, num_full_layers: int, window_size: int = 8,
                    obs_window: int = 32, share_layers: int = 8, option: str = "--kv-budget") -> WindowKVConfig:
    """A validated config whose per-group budgets (if a list) match the model's ``num_full_layers``; user mistakes
    raise :class:`UserError` naming the option."""
    for name, value in (("--window-size", window_size), ("--obs-window", obs_window), ("--share-layers", share_layers)):
        if value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    cfg = WindowKVConfig(budget=budget, window_size=window_size, obs_window=obs_window, share_layers=share_layers)
    try:
        cfg.validate()
    except ValueError as exc:
        raise UserError(f"{option}: {exc}") from None
    try:
        cfg.group_budgets(num_full_layers)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}; give one budget, or one per group (group size: --share-layers)") from None
    return cfg
