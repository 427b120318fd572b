"""Sweep the sliding-window kernels' block sizes on a GPU and pick the fastest per kernel and problem, in one run.

``kernels/_sw_launch.py`` chooses (block_m, block_n, num_warps, num_stages) for each of the three kernels —
forward, dq, dk/dv — by fixed rules (``_config``). This tool times candidates through ``OVERRIDES`` on the
problems the GPU benchmark reports (causal window ``(W, 0)``, H=16, bf16, B*N = 64k tokens):

* a forward candidate is timed on the forward alone;
* a dq or dk/dv candidate is timed on the whole backward with the other backward kernel at its default, so the
  difference between two rows is the tuned kernel's own;
* every candidate's output (or gradients) must match the default configuration's; one that fails to compile
  (shared memory, registers) or to match is listed with the reason and never wins.

Then the winners run together, forward and forward+backward, next to the defaults and FlexAttention with a block
mask (compiled), and the JSON records the device, torch and Triton versions, every timing and the winners; the
markdown table is ready for a note and the winners for ``_config``.

    python tools/tune_sw_kernels.py --out bench_out/tune          # on the GPU: a few minutes
    python tools/tune_sw_kernels.py --quick --out bench_out/tune  # fewer candidates and problems

Needs torch and Triton only (no fairseq2). ``TRITON_INTERPRET=1 ... --interpret`` runs a tiny problem in Triton's
CPU interpreter, which checks the plumbing (overrides applied, results compared, JSON written), not speed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

KINDS = ("fwd", "dq", "dkdv")


def candidates(kind: str, size: str) -> list[tuple[int, int, int, int]]:
    """(block_m, block_n, num_warps, num_stages) to try: query-wide tiles for fwd/dq, key-wide ones for dk/dv.
    ``size``: "full", "quick" or "tiny" (two 16/32-wide tiles, for the interpreter)."""
    if size == "tiny":
        return [(16, 16, 1, 1), (32, 16, 1, 1)]
    full = size == "full"
    if kind == "fwd":
        grid = ([64, 128], [32, 64, 128], [4, 8], [2, 3, 4]) if full else ([64, 128], [64], [4, 8], [3])
    elif kind == "dq":
        grid = ([64, 128], [32, 64], [4, 8], [2, 3]) if full else ([64, 128], [32], [4, 8], [2])
    else:
        grid = ([16, 32, 64], [64, 128], [4, 8], [2, 3]) if full else ([16, 32], [128], [8], [2, 3])
    return [tuple(c) for c in itertools.product(*grid)]


def _timer(interpret: bool) -> Callable[[Callable[[], object]], float]:
    """Milliseconds of one call: Triton's do_bench (CUDA events, median) on a GPU, best of 3 in the interpreter."""
    if not interpret:
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=10, rep=50)

    def best_of_3(fn):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return min(times)

    return best_of_3


class Problem:
    """q, k, v of one shape, the default configuration's results, and timed calls under a given override."""

    def __init__(self, batch: int, n: int, heads: int, dim: int, window: int, device: str, dtype) -> None:
        import torch

        gen = torch.Generator(device=device).manual_seed(0)
        self.q, self.k, self.v = (torch.randn(batch, n, heads, dim, device=device, dtype=dtype, generator=gen)
                                  .requires_grad_() for _ in range(3))
        self.grad = torch.randn(batch, n, heads, dim, device=device, dtype=dtype, generator=gen)
        self.window = window
        self.keys = sum(min(i, window) + 1 for i in range(n)) * batch  # visible (query, key) pairs
        self.flops_fwd = 4 * heads * dim * self.keys
        self.ref_out, self.ref_grads = self.forward(), self.backward(self.forward())

    def forward(self):
        from seqwin.attention import sliding_window_attention

        return sliding_window_attention(self.q, self.k, self.v, window=(self.window, 0), backend="triton")

    def backward(self, out):
        import torch

        return torch.autograd.grad(out, (self.q, self.k, self.v), self.grad, retain_graph=True)

    def matches(self, out, grads) -> bool:
        import torch

        pairs = [(out, self.ref_out)] + ([] if grads is None else list(zip(grads, self.ref_grads, strict=True)))
        return all(bool(torch.allclose(a.float(), b.float(), atol=2e-2, rtol=2e-2)) for a, b in pairs)


def time_candidate(problem: Problem, kind: str, cfg: tuple, timer) -> dict:
    """Time one candidate of one kernel; ``{"ms": ...}`` or ``{"skipped": why}``."""
    import torch
    from seqwin.kernels import _sw_launch

    _sw_launch.OVERRIDES.clear()
    _sw_launch.OVERRIDES[kind] = cfg
    try:
        if kind == "fwd":
            def run():
                with torch.no_grad():
                    return problem.forward()

            ok = problem.matches(run(), None)
        else:
            out = problem.forward()

            def run():
                return problem.backward(out)

            ok = problem.matches(out, run())
        if not ok:
            return {"skipped": "results differ from the default configuration"}
        return {"ms": timer(run)}
    except Exception as err:  # noqa: BLE001 - a candidate that cannot compile or launch is a result, not a crash
        first = str(err).splitlines()[0][:160] if str(err) else ""
        return {"skipped": f"{type(err).__name__}: {first}"}
    finally:
        _sw_launch.OVERRIDES.clear()


def _fwd_bwd_ms(problem: Problem, timer) -> tuple[float, float]:
    import torch

    with torch.no_grad():
        fwd = timer(problem.forward)
    return fwd, timer(lambda: problem.backward(problem.forward()))


def _flex_ms(problem: Problem, timer) -> tuple[float, float] | str:
    """FlexAttention with a block mask of the same band, compiled: forward and forward+backward ms."""
    import torch

    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        n, w = problem.q.shape[1], problem.window
        mask = create_block_mask(lambda b, h, qi, ki: (ki <= qi) & (ki >= qi - w), None, None, n, n,
                                 device=problem.q.device)
        flex = torch.compile(flex_attention, dynamic=False)
        q, k, v = (x.transpose(1, 2) for x in (problem.q, problem.k, problem.v))
        grad = problem.grad.transpose(1, 2)
        with torch.no_grad():
            fwd = timer(lambda: flex(q, k, v, block_mask=mask))
        bwd = timer(lambda: torch.autograd.grad(flex(q, k, v, block_mask=mask), (q, k, v), grad))
        return fwd, bwd
    except Exception as err:  # noqa: BLE001 - a peer that cannot run here is reported, not fatal
        return f"{type(err).__name__}: {str(err)[:160]}"


def tune(problem: Problem, size: str, timer) -> dict:
    from seqwin.kernels import _sw_launch

    result: dict = {"candidates": {}, "best": {}}
    for kind in KINDS:
        rows = [{"config": list(cfg), **time_candidate(problem, kind, cfg, timer)} for cfg in candidates(kind, size)]
        result["candidates"][kind] = rows
        timed = [r for r in rows if "ms" in r]
        if timed:
            result["best"][kind] = min(timed, key=lambda r: r["ms"])["config"]
    result["default_ms"] = _fwd_bwd_ms(problem, timer)
    _sw_launch.OVERRIDES.update({kind: tuple(cfg) for kind, cfg in result["best"].items()})
    try:
        result["tuned_ms"] = _fwd_bwd_ms(problem, timer)
    finally:
        _sw_launch.OVERRIDES.clear()
    return result


def _table(info: dict, results: list[dict]) -> str:
    lines = [f"{info['device']}, torch {info['torch']}, Triton {info['triton']}, {info['dtype']}, H={info['heads']}; "
             "fwd / fwd+bwd ms (useful TFLOP/s)", "",
             "| N (batch) | D | W | default | tuned | FlexAttention | tuned / Flex speed | winners fwd · dq · dkdv |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(ms: tuple[float, float], flops: float) -> str:
        return (f"{ms[0]:.2f} / {ms[1]:.2f} ({flops / ms[0] / 1e9:.0f} / "
                f"{3.5 * flops / ms[1] / 1e9:.0f})")

    for r in results:
        flex, tuned = r["flex_ms"], r["tuned_ms"]
        speed = "—" if isinstance(flex, str) else f"{flex[0] / tuned[0]:.2f}x / {flex[1] / tuned[1]:.2f}x"
        flex_cell = flex if isinstance(flex, str) else cell(flex, r["flops_fwd"])
        winners = " · ".join(str(tuple(r["best"].get(kind, ()))) for kind in KINDS)
        lines.append(f"| {r['n']} ({r['batch']}) | {r['dim']} | {r['window']} | "
                     f"{cell(r['default_ms'], r['flops_fwd'])} | {cell(tuned, r['flops_fwd'])} | {flex_cell} | "
                     f"{speed} | {winners} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench_out/tune"))
    p.add_argument("--windows", type=int, nargs="+", default=[128, 1024, 4096])
    p.add_argument("--dims", type=int, nargs="+", default=[128, 64])
    p.add_argument("--quick", action="store_true", help="fewer candidates, D=128 only")
    p.add_argument("--interpret", action="store_true", help="a tiny problem in the Triton CPU interpreter")
    args = p.parse_args()

    import torch
    import triton

    if not args.interpret and not torch.cuda.is_available():
        p.error("no CUDA device here: run on a GPU, or with TRITON_INTERPRET=1 and --interpret for the plumbing")
    if args.interpret and os.environ.get("TRITON_INTERPRET") != "1":
        p.error("--interpret needs TRITON_INTERPRET=1 in the environment (set before Triton is imported)")
    device, dtype = ("cpu", torch.float32) if args.interpret else ("cuda", torch.bfloat16)
    batch, n, heads = (1, 48, 2) if args.interpret else (4, 16384, 16)
    dims = [16] if args.interpret else ([128] if args.quick else args.dims)
    windows = [20] if args.interpret else args.windows
    timer = _timer(args.interpret)
    size = "tiny" if args.interpret else "quick" if args.quick else "full"
    info = {"device": torch.cuda.get_device_name() if device == "cuda" else "Triton CPU interpreter",
            "torch": torch.__version__, "triton": triton.__version__, "dtype": str(dtype).split(".")[-1],
            "heads": heads, "candidates": size}
    started = time.perf_counter()
    results: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for dim, window in itertools.product(dims, windows):
        problem = Problem(batch, n, heads, dim, window, device, dtype)
        res = {"n": n, "batch": batch, "dim": dim, "window": window, "flops_fwd": problem.flops_fwd,
               **tune(problem, size, timer)}
        res["flex_ms"] = "not in the interpreter" if args.interpret else _flex_ms(problem, timer)
        results.append(res)
        print(_table(info, [res]).splitlines()[-1], flush=True)
        # after every problem: a run cut short by a time limit keeps what it measured
        (args.out / "tune.json").write_text(json.dumps({"info": info, "results": results}, indent=1))
    info["seconds"] = round(time.perf_counter() - started, 1)
    (args.out / "tune.json").write_text(json.dumps({"info": info, "results": results}, indent=1))
    (args.out / "tune.md").write_text(_table(info, results))
    print(_table(info, results))
    print(f"wrote {args.out}/tune.json, {args.out}/tune.md in {info['seconds']:.0f} s")


if __name__ == "__main__":
    main()
