"""A training run's checkpoints: ``step_<N>.pt`` files, the last few kept, written and read through
:mod:`seqwin.io.checkpoint_files` (atomic writes, ``weights_only=True`` reads).

A checkpoint holds plain tensors and containers: model/optimizer/scheduler state, the step, RNG states, the data
position. If the newest file is corrupt or partial, loading warns and falls back to the previous one. A write
killed outright (SIGKILL, power loss) leaves its temporary file behind; the next run's
:meth:`CheckpointManager.remove_stale_temp_files` removes it once its process is gone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from seqwin.io.checkpoint_files import (
    atomic_save,
    checkpoint_path,
    checkpoint_steps,
    newest_checkpoint,
    safe_load,
    temp_file_owner,
)

__all__ = ["CheckpointManager", "atomic_save", "safe_load"]

log = logging.getLogger(__name__)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    return False


class CheckpointManager:
    def __init__(self, directory: Path, keep_last: int = 2) -> None:
        self.directory = Path(directory)
        self.keep_last = max(1, keep_last)

    def steps(self) -> list[int]:
        return checkpoint_steps(self.directory)

    def path(self, step: int) -> Path:
        return checkpoint_path(self.directory, step)

    def save(self, step: int, state: dict) -> Path:
        path = self.path(step)
        atomic_save(state, path)
        for old in self.steps()[: -self.keep_last]:
            self.path(old).unlink(missing_ok=True)
        return path

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the temporary files of writes whose process is gone (killed mid-write); returns them."""
        if not self.directory.is_dir():
            return []
        removed = []
        for path in self.directory.iterdir():
            pid = temp_file_owner(path.name)
            if pid is not None and pid != os.getpid() and _process_gone(pid):
                path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            log.info("removed %d partial checkpoint(s) of killed runs: %s", len(removed),
                     ", ".join(p.name for p in removed))
        return removed

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[int, dict] | None:
        """The newest readable checkpoint, skipping (with a warning) any that fail to load."""
        return newest_checkpoint(self.directory, map_location)
