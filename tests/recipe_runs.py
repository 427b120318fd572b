"""Runs several ``seqwin`` command lines in one process, launched as a subprocess by tests/test_distributed_recipes.py
(also under torchrun: the recipes then share one process group), so the tests pay Python's start-up and the
fairseq2 import once per launch rather than once per recipe.

usage: python tests/recipe_runs.py COMMANDS.json   (a JSON list of argument lists for ``seqwin``)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from seqwin.cli.main import main as seqwin


def run(commands: list[list[str]]) -> int:
    torch.set_num_threads(1)  # tiny models: the tests compare runs, threads would only add contention
    for argv in commands:
        code = seqwin(argv)
        if code != 0:
            print(f"recipe_runs: `seqwin {' '.join(argv)}` exited {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run(json.loads(Path(sys.argv[1]).read_text())))
