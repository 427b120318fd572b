"""keep_freed_memory: repeated large-activation inference must stop page-faulting its memory in afresh each time
(what made the codec tokenizer spend more time in the kernel than in its convolutions)."""

import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent("""
    import resource, sys, torch
    from seqwin.cpu_memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    torch.set_num_threads(1)
    conv = torch.nn.Conv1d(64, 64, 3, padding=1)
    x = torch.randn(2, 64, 100_000)  # 51 MB activations: above glibc's default mmap threshold (32 MB at most)
    def run():
        with torch.inference_mode():
            return torch.nn.functional.elu(conv(torch.nn.functional.elu(x))).sum()
    run()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        run()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_kept_heap_stops_refaulting_large_activations():
    default, kept = _faults("default"), _faults("keep")
    pages_per_run = 2 * (2 * 64 * 100_000 * 4) // 4096  # two fresh activations per run
    assert default > 5 * pages_per_run // 2, default  # glibc default: each run maps and faults its tensors again
    assert kept < default // 4, (kept, default)
