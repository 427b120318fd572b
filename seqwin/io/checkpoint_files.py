"""Torch files written atomically (temporary file, fsync, rename) and read with ``weights_only=True``.

A write goes to ``.<name>.tmp.<pid>`` first. A failed write (full disk, interrupt) removes it; one killed outright
(SIGKILL, power loss) leaves it behind: :func:`temp_file_owner` tells whose it is, so a later run can remove it once
that process is gone.

A training run keeps its checkpoints as ``step_<N>.pt`` in one directory; :func:`newest_checkpoint` reads the
newest readable one, falling back (with a warning) past a corrupt or partial file (a kill during a copy, a full
disk).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
_STEP_NAME = re.compile(r"^step_(\d+)\.pt$")
_TEMP_NAME = re.compile(r"^\..+\.tmp\.(\d+)$")


def atomic_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that readers see the old file or the whole new one, never a part. On failure
    the partial temporary file is removed; an OS error (a full disk, typically) is re-raised naming ``path``."""
    path = Path(path)
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


def temp_file_owner(name: str) -> int | None:
    """The pid of the process whose :func:`atomic_save` left a temporary file named ``name``; None if not one."""
    match = _TEMP_NAME.match(name)
    return int(match.group(1)) if match else None


def safe_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"step_{step}.pt"


def checkpoint_steps(directory: Path) -> list[int]:
    """The steps of the ``step_<N>.pt`` files in ``directory``, ascending; [] if there is no such directory."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = (_STEP_NAME.match(p.name) for p in directory.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def newest_checkpoint(directory: Path, map_location: str | torch.device = "cpu") -> tuple[int, dict] | None:
    """``(step, contents)`` of the newest readable checkpoint, skipping (with a warning) any that fail to load."""
    for step in reversed(checkpoint_steps(directory)):
        path = checkpoint_path(directory, step)
        try:
            return step, safe_load(path, map_location)
        except Exception as exc:  # noqa: BLE001 - any unreadable file means: try the previous one
            log.warning("checkpoint %s is unreadable (%s: %s); falling back to the previous one",
                        path, type(exc).__name__, exc)
    return None
