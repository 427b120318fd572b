"""Checks that need more than one config section or the data: run before training starts, each failing with one
:class:`~seqwin.training.config.ConfigError` that names the key to change. Checks of an attention config against
the sequence length live with the config itself (``seqwin.attention.LayerAttentionConfig.check_clusters_fit``)."""

from __future__ import annotations

from seqwin.training.config import ConfigError


def check_batches_per_step(available: int, needed_per_rank: int, world_size: int, key: str, unit: str,
                           hint: str) -> None:
    """The training split must fill at least one batch on every rank, or training would have nothing to do
    (or, under torchrun, some ranks would wait forever for the others)."""
    needed = needed_per_rank * world_size
    if available < needed:
        ranks = f" x {world_size} processes" if world_size > 1 else ""
        raise ConfigError(f"{key} ({needed_per_rank}){ranks} needs {needed} {unit} per step but the training "
                          f"split has only {available}: no full batch; {hint}")
