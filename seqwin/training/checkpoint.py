"""Checkpoints written atomically (temporary file, fsync, rename) and loaded with ``weights_only=True``.

A checkpoint is one ``step_<N>.pt`` file holding plain tensors and containers: model/optimizer/scheduler state,
the step, RNG states, the data position. If the newest file is corrupt or partial (a kill during a copy, a full
disk), loading warns and falls back to the previous one.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d+)\.pt$")


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the whole new one
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def safe_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


class CheckpointManager:
    def __init__(self, directory: Path, keep_last: int = 2) -> None:
        self.directory = Path(directory)
        self.keep_last = max(1, keep_last)

    def steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def path(self, step: int) -> Path:
        return self.directory / f"step_{step}.pt"

    def save(self, step: int, state: dict) -> Path:
        path = self.path(step)
        atomic_save(state, path)
        for old in self.steps()[: -self.keep_last]:
            self.path(old).unlink(missing_ok=True)
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[int, dict] | None:
        """The newest readable checkpoint, skipping (with a warning) any that fail to load."""
        for step in reversed(self.steps()):
            path = self.path(step)
            try:
                return step, safe_load(path, map_location)
            except Exception as exc:  # noqa: BLE001 - any unreadable file means: try the previous one
                log.warning("checkpoint %s is unreadable (%s: %s); falling back to the previous one",
                            path, type(exc).__name__, exc)
        return None
