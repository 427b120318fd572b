"""A training run's output directory: one run at a time writes it.

Two runs writing the same directory would interleave ``metrics.jsonl`` and overwrite each other's checkpoints, so a
run holds an exclusive ``fcntl.flock`` on ``OUT/.lock`` from start to end. The kernel drops the lock when its
process ends, however it ends (SIGKILL included): there is never a stale lock to clean up by hand. The file keeps
the holder's pid for the error message and is left in place afterwards: deleting it would let one process lock the
deleted file while another locks a new one, both believing they hold the directory.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from seqwin.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"

# Locks this process holds: path -> (file descriptor, depth). A second ``flock`` from the same process on a new
# descriptor would conflict with its own first one, so nested holders (the CLI, then the Trainer) share it.
_held: dict[Path, tuple[int, int]] = {}


class RunDirInUse(UserError):
    pass


def launching_rank() -> bool:
    """Whether this process is rank 0 of a ``torchrun`` job, or not under ``torchrun`` at all."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def hold_run_dir(out_dir: Path, *, enabled: bool | None = None) -> Iterator[None]:
    """Hold ``out_dir``'s lock (creating the directory) for the ``with`` block; :class:`RunDirInUse` if another
    process holds it. ``enabled`` defaults to :func:`launching_rank`: the other ranks of a job write nothing
    there but rank 0's run is theirs, so they take no lock."""
    if enabled is None:
        enabled = launching_rank()
    if not enabled:
        yield
        return
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = out_dir.resolve()
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
    else:
        fd = _lock(out_dir / LOCK_NAME)
        _held[key] = (fd, 1)
    try:
        yield
    finally:
        fd, depth = _held.pop(key)
        if depth > 1:
            _held[key] = (fd, depth - 1)
        elif fd >= 0:
            os.close(fd)  # releases the lock


def _lock(path: Path) -> int:
    """An open descriptor of ``path`` holding its exclusive lock, with our pid written into it; -1 when the file
    system cannot lock (the run then goes ahead unprotected, with a warning)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's pid must survive our attempt
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise RunDirInUse(f"{path.parent} is in use by {who} (another run writing there); wait for it to end "
                              "or use another output directory") from None
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
            log.warning("%s: cannot lock (%s); nothing stops a second run from writing there", path, exc.strerror)
            return -1
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
