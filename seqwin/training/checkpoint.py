"""Checkpoints written atomically (temporary file, fsync, rename) and loaded with ``weights_only=True``.

A checkpoint is one ``step_<N>.pt`` file holding plain tensors and containers: model/optimizer/scheduler state,
the step, RNG states, the data position. If the newest file is corrupt or partial (a kill during a copy, a full
disk), loading warns and falls back to the previous one.

A write goes to ``.step_<N>.pt.tmp.<pid>`` first. A failed write (full disk, interrupt) removes it; one killed
outright (SIGKILL, power loss) leaves it behind, and the next run's :meth:`CheckpointManager.remove_stale_temp_files`
removes it once its process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from seqwin.errors import UserError

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d+)\.pt$")
_TEMP = re.compile(r"^\..+\.tmp\.(\d+)$")


def atomic_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that readers see the old file or the whole new one, never a part. On failure
    the partial temporary file is removed; an OS error (a full disk, typically) is re-raised naming ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = _os_error(exc)
        if cause is None or not isinstance(exc, Exception):  # an interrupt stays an interrupt
            raise
        # torch.save reports a failed write as a chain (OSError, then RuntimeError from the zip writer, then the
        # OSError of closing the file): one error about the checkpoint, with the reason, is what the user needs.
        raise OSError(cause.errno, cause.strerror, str(path)) from exc
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _os_error(exc: BaseException) -> OSError | None:
    """The first OS error with an errno in ``exc``'s chain of context (``exc`` included)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def safe_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """:func:`safe_load` for a file the user named: a missing, truncated or foreign file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        return safe_load(path, map_location)
    except Exception as exc:  # noqa: BLE001 - unreadable is one user error whatever the cause
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


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

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete the temporary files of writes whose process is gone (killed mid-write); returns them."""
        if not self.directory.is_dir():
            return []
        removed = []
        for path in self.directory.iterdir():
            match = _TEMP.match(path.name)
            if match and int(match.group(1)) != os.getpid() and _process_gone(int(match.group(1))):
                path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            log.info("removed %d partial checkpoint(s) of killed runs: %s", len(removed),
                     ", ".join(p.name for p in removed))
        return removed

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
