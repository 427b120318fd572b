"""Run the Triton kernel tests without a GPU, in the Triton CPU interpreter (shared by the test_triton_* modules).

The interpreter must be chosen before ``triton.language`` is first imported (its own ``@jit`` helpers such as
``tl.zeros`` are bound then). Importing this module first sets ``TRITON_INTERPRET=1`` when there is no GPU and
nothing imported Triton yet; the test module then runs in-process. In a full-suite run Triton was usually
imported earlier (torch._dynamo pulls it in), so the module instead re-runs itself in a fresh interpreter-mode
subprocess (:func:`rerun_in_interpreter`); the rest of the suite's process is left untouched either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU and "triton.language" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"  # nothing imported Triton yet: this process can host the interpreter

DEVICE = "cuda" if ON_GPU else "cpu"


def runs_here() -> bool:
    """Whether the kernels can run in this process: a GPU, or Triton and our kernels created interpreted."""
    import triton.language as tl  # noqa: PLC0415 - only after the environment above is settled
    from seqwin.kernels._sw_launch import interpreting  # noqa: PLC0415
    from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415

    return ON_GPU or (isinstance(tl.zeros, InterpretedFunction) and interpreting())


def rerun_in_interpreter(test_file: str, timeout: int = 900) -> None:
    """Run ``test_file`` in a fresh pytest process with the interpreter on from the start; fail if it fails."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file],
                          cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-2000:]
