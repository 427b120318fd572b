"""Compile the sliding-window kernels for a GPU target on a machine without a GPU.

The Triton CPU interpreter checks numerics but not whether a kernel compiles for real hardware. This runs the
real launchers with stub kernels to capture the exact arguments, specializes them the way Triton's launcher
would (integers equal to 1 become constexpr, multiples of 16 get divisibility hints), compiles each kernel for
``cuda:<arch>`` (frontend, MLIR lowering, PTX) and runs the bundled ``ptxas -v`` to report registers and spills.

    python -m seqwin.kernels.aot_check [--arch 90] [--quick] [--routing]

``--routing`` compiles only the packed-grid variants that ``seqwin.kernels.routing`` launches (driven through
``triton_routing_attention`` itself, so the arguments are exactly the routing path's).

Must run without TRITON_INTERPRET (the kernels must be ordinary ``@triton.jit`` functions). Exit status 0 means
every kernel compiled.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import _sw_launch as launch
from .sliding_window import _window

_KERNELS = ("_sw_fwd_kernel", "_sw_bwd_dq_kernel", "_sw_bwd_dkdv_kernel", "_sw_bwd_sink_kernel")
_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int32: "*i32"}
# (dtype, head_dim, window, num_sinks, dilation): every constexpr branch and block-size family at least once.
CASES = [
    (torch.bfloat16, 64, (256, 0), 4, 1),
    (torch.float16, 128, (64, 0), 0, 1),
    (torch.bfloat16, 80, (-1, -1), 0, 2),
    (torch.float32, 64, (128, 0), 0, 1),
    (torch.float32, 128, (128, 16), 2, 1),
]
# (dtype, head_dim, causal, window) of routing attention: packed grid, varlen, one head per segment.
ROUTING_CASES = [
    (torch.bfloat16, 64, True, 128),
    (torch.float32, 128, False, None),
]


@contextmanager
def _recording() -> Iterator[list]:
    """Replace the launchers' kernels by stubs that record (kernel, args, kwargs) instead of launching."""
    calls: list = []
    real = {name: getattr(launch, name) for name in _KERNELS}

    class Stub:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            return lambda *args, **kwargs: calls.append((self.fn, args, kwargs))

    try:
        for name, fn in real.items():
            setattr(launch, name, Stub(fn))
        yield calls
    finally:
        for name, fn in real.items():
            setattr(launch, name, fn)


def _source(fn, args: tuple, kwargs: dict) -> tuple[ASTSource, dict]:
    kwargs = dict(kwargs)
    options = {"num_warps": kwargs.pop("num_warps"), "num_stages": kwargs.pop("num_stages")}
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        value = kwargs[name] if name in kwargs else args[i]
        if name in kwargs or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = _PTR[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(value, int):
            signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0:  # as Triton's launcher: 0 (a packed tensor's batch stride) counts too
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: unexpected argument {name}={value!r}")
    return ASTSource(fn, signature, constexprs, attrs), options


def _ptxas_info(ptx: str, arch: int) -> str:
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        out = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores", out)
    return f"{regs.group(1) if regs else '?'} regs, {spills.group(1) if spills else '?'} B spilled"


def _compile(arch: int, dtype: torch.dtype, d: int, calls: list) -> list[str]:
    lines = []
    for fn, args, kwargs in calls:
        src, options = _source(fn, args, kwargs)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        tiles = f"{kwargs['BLOCK_M']}x{kwargs['BLOCK_N']} w{options['num_warps']} s{options['num_stages']}"
        lines.append(f"sm_{arch} {str(dtype).removeprefix('torch.')} d={d} {fn.__name__:20s} {tiles:15s} "
                     f"smem={compiled.metadata.shared} {_ptxas_info(compiled.asm['ptx'], arch)}")
    return lines


def compile_case(arch: int, dtype: torch.dtype, d: int, window, num_sinks: int, dilation: int,
                 n: int = 1024) -> list[str]:
    """Compile the forward and backward kernels of one configuration; returns one report line per kernel."""
    q = torch.zeros(2, n, 8, d, dtype=dtype)
    k = torch.zeros(2, n, 2, d, dtype=dtype)
    v = torch.zeros(2, n, 2, d, dtype=dtype)
    left, right = _window(window, 4 * n + 1024)
    lens = torch.tensor([n, n], dtype=torch.int32)
    geo = launch.Geometry(lens, lens, 2, n, n, left, right, num_sinks, dilation, 1 / math.sqrt(d), False)
    with _recording() as calls:
        o, lse = launch.forward(q, k, v, geo)
        launch.backward(torch.zeros_like(o), q, k, v, o, lse, geo)
    return _compile(arch, dtype, d, calls)


def compile_routing_case(arch: int, dtype: torch.dtype, d: int, causal: bool, window: int | None,
                         n: int = 1024, clusters: int = 16) -> list[str]:
    """Compile the kernels of one routing-attention configuration (forward, dq, dk/dv), as routing launches them."""
    from .routing import triton_routing_attention  # noqa: PLC0415 - only this check needs it

    q, k, v = (torch.zeros(2, n, heads, d, dtype=dtype, requires_grad=True) for heads in (8, 2, 2))
    ids = torch.randint(0, clusters, (2, 8, n), generator=torch.Generator().manual_seed(0))
    with _recording() as calls:
        out = triton_routing_attention(q, k, v, ids, ids, causal=causal, num_clusters=clusters, window=window)
        torch.autograd.grad(out, (q, k, v), torch.zeros_like(out))
    return _compile(arch, dtype, d, calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    parser.add_argument("--quick", action="store_true", help="only the first configuration (of each kind chosen)")
    parser.add_argument("--routing", action="store_true", help="only the routing-attention configurations")
    args = parser.parse_args(argv)
    if launch.interpreting():
        print("TRITON_INTERPRET is set: the kernels are interpreted and cannot be compiled", file=sys.stderr)
        return 2
    jobs = [] if args.routing else [(compile_case, case) for case in CASES[: 1 if args.quick else None]]
    if args.routing or not args.quick:  # --quick alone keeps its old meaning: the first sliding-window case
        jobs += [(compile_routing_case, case) for case in ROUTING_CASES[: 1 if args.quick else None]]
    for fn, case in jobs:
        for line in fn(args.arch, *case):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
