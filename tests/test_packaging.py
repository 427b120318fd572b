"""The wheel, built offline, holds every file of seqwin/ and of kernels/ (as seqwin/kernels/), nothing else."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> where its files land in the wheel.
LAYOUT = {"seqwin": "seqwin", "kernels": "seqwin/kernels"}
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md")


def _ignored(path: Path) -> bool:
    return "__pycache__" in path.parts or path.suffix == ".pyc"


def _source_files() -> set[str]:
    """Every file the installed package needs: modules, and any data file kept next to them."""
    return {
        f"{target}/{path.relative_to(ROOT / folder).as_posix()}"
        for folder, target in LAYOUT.items()
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and not _ignored(path)
    }


def _can_build_wheels() -> bool:
    # setuptools >= 70.1 has bdist_wheel itself; older ones take it from the `wheel` package.
    return any(importlib.util.find_spec(name) is not None for name in ("setuptools.command.bdist_wheel", "wheel"))


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    if not _can_build_wheels():
        pytest.skip("building a wheel needs the `wheel` package (pip install -e '.[dev]')")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so the build leaves no build/ or egg-info in the checkout
    for folder in LAYOUT:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index",
           "-q", "-w", str(tmp / "dist")]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("seqwin-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        return {name for name in zf.namelist() if ".dist-info/" not in name}


def test_wheel_holds_every_source_file(wheel_files):
    missing = sorted(_source_files() - wheel_files)
    assert not missing, f"{len(missing)} files not in the wheel, e.g. {missing[:5]}"
    assert "seqwin/kernels/__init__.py" in wheel_files and "seqwin/training/__init__.py" in wheel_files


def test_wheel_has_nothing_outside_seqwin(wheel_files):
    assert sorted(name for name in wheel_files if not name.startswith("seqwin/")) == []
