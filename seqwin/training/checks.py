"""Checks that need more than one config section or the data: run before training starts, each failing with one
:class:`~seqwin.training.config.ConfigError` that names the key to change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from seqwin.training.config import ConfigError


def _sections(attention: Any) -> Iterator[tuple[str, Any]]:
    """``(key, spec)`` of every attention spec a layer can get: default, top (if used), each override."""
    yield "default", attention.default
    if attention.top is not None and attention.num_top_layers > 0:
        yield "top", attention.top
    for index, spec in attention.overrides.items():
        yield f"overrides.{index}", spec


def check_clusters_fit(attention: Any, key: str, num_tokens: int, what: str) -> None:
    """Routing heads with more clusters than a training sequence has tokens leave clusters empty on every batch
    (their centroids never move; non-causal groups come out empty)."""
    for name, spec in _sections(attention):
        if spec.kind in ("routing", "mixed") and spec.num_clusters > num_tokens:
            raise ConfigError(f"{key}.{name}.num_clusters ({spec.num_clusters}) is more than the {num_tokens} "
                              f"tokens of {what}: clusters would stay empty; lower it")


def check_batches_per_step(available: int, needed_per_rank: int, world_size: int, key: str, unit: str,
                           hint: str) -> None:
    """The training split must fill at least one batch on every rank, or training would have nothing to do
    (or, under torchrun, some ranks would wait forever for the others)."""
    needed = needed_per_rank * world_size
    if available < needed:
        ranks = f" x {world_size} processes" if world_size > 1 else ""
        raise ConfigError(f"{key} ({needed_per_rank}){ranks} needs {needed} {unit} per step but the training "
                          f"split has only {available}: no full batch; {hint}")
