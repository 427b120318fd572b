"""The package layers, bottom up: kernels -> attention -> models -> recipes -> cli, with io, data and training beside
them. A module imports only from its own layer or below: nothing upward, no recipe from another recipe, no model
from training. Read from the source (``ast``), so lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each part of the package may import from seqwin (besides itself and the top-level helper modules).
ALLOWED = {
    "kernels": set(),
    "io": set(),
    "attention": {"kernels"},
    "data": {"io"},
    "training": {"io", "data"},
    "models": {"kernels", "attention", "io", "data"},
    "recipes": {"kernels", "attention", "io", "data", "training", "models"},
    "cli": {"kernels", "attention", "io", "data", "training", "models", "recipes"},
}
# seqwin/errors.py, cpu_memory.py and cpu_bf16.py: importable by all
TOP_LEVEL_HELPERS = {"errors", "cpu_memory", "cpu_bf16"}


def _modules() -> list[tuple[str, Path]]:
    found = [(f"seqwin.kernels.{p.stem}", p) for p in sorted((ROOT / "kernels").glob("*.py"))]
    for path in sorted((ROOT / "seqwin").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found.append((".".join(parts), path))
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n == "seqwin" or n.startswith("seqwin.")}


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_imports_go_down_the_layers(module, path):
    own = _part(module)
    if own not in ALLOWED:  # seqwin/__init__.py and the top-level helpers
        return
    for name in _imports(path):
        target = _part(name)
        if target is None or target == own or target in TOP_LEVEL_HELPERS:
            continue
        assert target in ALLOWED[own], f"{module} imports {name}: {own} may not import {target}"
    if own == "recipes":  # a recipe imports no other recipe
        task = module.split(".")[2]
        others = {n for n in _imports(path) if n.startswith("seqwin.recipes.") and n.split(".")[2] != task}
        assert not others, f"{module} imports another recipe: {sorted(others)}"
    if module.startswith("seqwin.attention.") and not module.startswith("seqwin.attention.fairseq2"):
        fairseq2 = [n for n in _imports(path) if n.startswith("seqwin.attention.fairseq2")]
        assert not fairseq2, f"{module}: the torch-only attention core imports its fairseq2 adapter"


def test_the_rule_catches_an_upward_import(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def f():\n    from seqwin.recipes.lm.train import run_train\n")
    with pytest.raises(AssertionError, match="models may not import recipes"):
        test_imports_go_down_the_layers("seqwin.models.bad", path)
