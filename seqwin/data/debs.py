"""Fetch Debian packages with ``apt-get download`` and unpack them with ``dpkg -x`` (no installation, no root
needed for either, except ``apt-get update`` on a machine whose package lists are still empty)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from seqwin.data.errors import DataError

log = logging.getLogger(__name__)

# apt's wording when the package lists do not know a package (e.g. a fresh container before `apt-get update`).
_UNKNOWN_PACKAGE = ("Unable to locate package", "has no installation candidate", "Can't select candidate")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "seqwin" / "debs"


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DataError(
            f"'{cmd[0]}' not found: this step needs Debian/Ubuntu tools (apt-get, dpkg)"
        ) from None


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit code {proc.returncode}"


def download(packages: Sequence[str], cache_dir: Path) -> dict[str, Path]:
    """``package -> .deb`` in ``cache_dir``; a ``<package>_*.deb`` already there is reused (offline use:
    put the files there yourself)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    updated = False
    for package in packages:
        cached = sorted(cache_dir.glob(f"{package}_*.deb"))
        if cached:
            found[package] = cached[-1]
            continue
        log.info("apt-get download %s -> %s", package, cache_dir)
        proc = _run(["apt-get", "download", package], cwd=cache_dir)
        if proc.returncode != 0 and not updated and any(s in proc.stderr for s in _UNKNOWN_PACKAGE):
            log.info("%s unknown to apt; running apt-get update once", package)
            upd = _run(["apt-get", "update"])
            if upd.returncode != 0:
                raise DataError(f"apt-get update failed ({_last_line(upd)}); run it as root, then retry")
            updated = True
            proc = _run(["apt-get", "download", package], cwd=cache_dir)
        cached = sorted(cache_dir.glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not cached:
            raise DataError(
                f"apt-get download {package} failed: {_last_line(proc)} "
                f"(offline? put {package}_*.deb into {cache_dir})"
            )
        found[package] = cached[-1]
    return found


def extract(deb_files: Sequence[Path], dest_root: Path) -> Path:
    """Unpack all ``deb_files`` into one directory (reused when the same set was unpacked before)."""
    key = hashlib.sha256("\n".join(sorted(p.name for p in deb_files)).encode()).hexdigest()[:12]
    dest = dest_root / key
    done = dest / ".extracted"
    if done.is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for deb in deb_files:
        proc = _run(["dpkg", "-x", str(deb), str(dest)])
        if proc.returncode != 0:
            raise DataError(
                f"{deb}: dpkg -x failed: {_last_line(proc)} (corrupt download? delete it and retry)"
            )
    done.write_text("\n".join(p.name for p in deb_files) + "\n", encoding="utf-8")
    return dest
