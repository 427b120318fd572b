"""Triton kernels of seqwin (installed as ``seqwin.kernels``; the sources live in the repo's ``kernels/``).

Import the kernel modules lazily: importing Triton is slow and the CPU paths never need it.
"""

from __future__ import annotations

import importlib.util
import os


def triton_available() -> bool:
    """Whether the Triton kernels can run here: Triton importable and a CUDA device present, or the Triton CPU
    interpreter requested (``TRITON_INTERPRET=1``, used by the tests)."""
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    import torch  # noqa: PLC0415 - torch is always there; kept local like the rest of this module

    return torch.cuda.is_available()
