"""The completion marker shared by the corpus builders (``prepare voices``, ``shifted``, ``multilingual``).

``OUT/<marker>`` is written with ``"complete": false`` before anything else and rewritten with the options and
the summary when the build has finished, so a second run with the same options does nothing, an interrupted
run is rebuilt, and a run with other options stops instead of mixing two corpora in one directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from seqwin.data.errors import DataError


def read_marker(out: Path, marker: str) -> dict[str, Any] | None:
    try:
        return json.loads((out / marker).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def reuse(out: Path, marker: str, options: dict[str, Any], force: bool, command: str) -> dict[str, Any] | None:
    """The stored summary when ``out`` is complete with these ``options`` (and not ``force``); ``None`` when it
    must be built. Raises when ``out`` holds a finished build with other options."""
    found = read_marker(out, marker)
    if found is None or not found.get("complete") or force:
        if found is None and out.is_dir() and any(out.iterdir()):
            raise DataError(f"{out}: not empty and not made by '{command}'; choose another output directory")
        return None
    if found.get("options") != options:
        changed = sorted(k for k in options.keys() | found.get("options", {}).keys()
                         if options.get(k) != found.get("options", {}).get(k))
        raise DataError(f"{out}: prepared with other options ({', '.join(changed)}); use --force to rebuild it")
    return found["summary"]


def start(out: Path, marker: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / marker).write_text(json.dumps({"complete": False}) + "\n", encoding="utf-8")


def finish(out: Path, marker: str, options: dict[str, Any], summary: dict[str, Any]) -> None:
    data = {"complete": True, "options": options, "summary": summary}
    (out / marker).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def write_checksums(out: Path, tree: Path) -> None:
    """``OUT/SHA256SUMS`` over every file under ``tree`` (``cd OUT && sha256sum -c SHA256SUMS``)."""
    lines = []
    for path in sorted(tree.rglob("*")):
        if path.is_file():
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.relative_to(out).as_posix()}\n")
    (out / "SHA256SUMS").write_text("".join(lines), encoding="utf-8")
