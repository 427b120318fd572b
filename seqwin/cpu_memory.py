"""Keep freed memory in the process heap (glibc ``mallopt``), for CPU inference on large activations.

glibc serves every allocation above its mmap threshold (at most 32 MB by default) with a fresh ``mmap`` and returns
it to the kernel on free, so each large activation costs a page fault per 4 KiB page and a kernel zeroing pass,
every time. The paper-size codec's encoder at batch 16 x 5 s allocates tensors of 80-330 MB per layer: measured on a
2-core EPYC with ``tools/bench_codec.py``, 94.6 s of a 150.6 s run were kernel time (25.8 M page faults); with this
setting 22.5 s of 95.7 s (2.6 M), and the batched encode went from RTF 0.220 to 0.110 (fp32), 0.096 to 0.058 (bf16).
The cost is that the process keeps its peak heap instead of shrinking after a batch: right for a tokenizer, not
applied globally.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_ONE_GIB = 1 << 30


def keep_freed_memory(threshold_bytes: int = _ONE_GIB) -> bool:
    """Serve allocations below ``threshold_bytes`` from the heap and keep up to that much freed memory in it.
    Returns False (and changes nothing) where the C library is not glibc."""
    try:  # the running process's own symbols: libc is already loaded (find_library would spawn ldconfig)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold_bytes)) and bool(mallopt(_M_TRIM_THRESHOLD, threshold_bytes))
