"""Pieces every benchmark in tools/ shares: one subprocess per case, and its peak memory on Linux.

A case runs as ``python <script> --worker <json>`` (or whatever arguments the script takes) and prints its result
as JSON on its last stdout line; a crash or a timeout becomes ``{"skipped": reason}`` so one bad case never stops
a sweep.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name and core count, from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return "cpu"


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``: resident now, ``VmHWM``: high-water mark)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the process's peak-RSS mark (Linux ``clear_refs`` 5) and return the current RSS in kB, so the next
    ``status_kb("VmHWM")`` minus this is the extra peak of what runs in between."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS")


def run_case(script: str, args: list[str], timeout: float) -> dict | list:
    """Run ``python script *args`` and return the JSON on its last stdout line, or ``{"skipped": reason}``."""
    try:
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ), check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"over {timeout:.0f} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"skipped": f"failed: {last[:200]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])
