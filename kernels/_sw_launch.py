"""Host side of the sliding-window kernels: block-size heuristics, argument packing and launches.

Block sizes are constexpr. On GPU they come from fixed heuristics (``_config``: wide query blocks for the forward
and dq, wide key blocks for dk/dv, sized so nothing spills on sm_90); ``OVERRIDES`` lets a benchmark sweep them
without code changes. In the Triton CPU interpreter every block is 16 wide, the smallest ``tl.dot`` tile, so
tests stay fast and still cross block boundaries. Packed varlen launches (``Geometry.packed``) run a 1-D grid over
a block table instead of (blocks of the longest sequence) x (sequences * heads); see ``_sw_common``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import triton
from torch import Tensor
from triton.runtime.interpreter import InterpretedFunction

from ._sw_bwd import _sw_bwd_dkdv_kernel, _sw_bwd_dq_kernel, _sw_bwd_sink_kernel
from ._sw_fwd import _sw_fwd_kernel

# kind ("fwd", "dq", "dkdv") -> (block_m, block_n, num_warps, num_stages); consulted before the heuristics.
OVERRIDES: dict[str, tuple[int, int, int, int]] = {}


@dataclass(frozen=True)
class Geometry:
    """Everything but the tensors that the kernels need; built once per call, reused by the backward."""

    lens_q: Tensor  # int32 on the device: q_lens (B,) in padded mode, cu_seqlens_q (B+1,) in varlen mode
    lens_k: Tensor
    batch: int
    n_q: int  # padded: q.shape[1]; varlen: longest query sequence (sizes the grid)
    n_k: int
    left: int  # finite: an unbounded side arrives as a distance larger than any reachable one
    right: int
    num_sinks: int
    dilation: int
    scale: float
    varlen: bool
    packed: bool = False  # varlen only: 1-D grid over a block table (n_q/n_k then only steer the heuristics)
    # Block tables by (side, block size), built on first use and shared by the forward and backward launches.
    tables: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


def interpreting() -> bool:
    """True when the kernels were created under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    return isinstance(_sw_fwd_kernel, InterpretedFunction)


def _interpreter_index_shim() -> None:
    """Let the Triton 3.5 CPU interpreter take loop bounds from runtime scalars under numpy >= 2.4.

    The interpreter stores scalars as 1-element 1-D arrays and converts them with ``int(array)``, which numpy 2.4
    turned into an error; ``range(lo, hi)`` over loaded lengths then fails. ``.item()`` gives the same integer.
    The interpreter re-patches ``tl.tensor`` on every launch, so wrap its patch function (idempotently).
    """
    from triton.runtime import interpreter  # noqa: PLC0415 - only needed in interpreter mode

    if getattr(interpreter, "_seqwin_index_shim", False):
        return
    original = interpreter._patch_lang_tensor

    def patch(tensor) -> None:
        original(tensor)
        tensor.__index__ = lambda self: int(self.handle.data.item())

    interpreter._patch_lang_tensor = patch
    interpreter._seqwin_index_shim = True


if interpreting():
    _interpreter_index_shim()


def _config(kind: str, head_dim: int, elt_size: int, reach: int, group: int) -> tuple[int, int, int, int]:
    """(block_m, block_n, num_warps, num_stages) for one kernel; ``group`` = query heads per key/value head.

    Chosen from sm_90 compiles (ptxas -v, no GPU needed) to avoid register spills; not yet timed on a GPU, so
    benchmarks should sweep them through ``OVERRIDES``. Tall tiles use 8 warps because the masked loops and the
    dk/dv accumulators leave too few registers for 4.
    """
    if kind in OVERRIDES:
        return OVERRIDES[kind]
    if interpreting():
        return 16, 16, 1, 1
    if head_dim > 128:
        return {"fwd": (64, 32, 8, 2), "dq": (64, 32, 8, 2), "dkdv": (16, 64, 8, 2)}[kind]
    big_d = head_dim > 64
    if elt_size == 4:  # fp32 runs on the FMA (ieee) path: smaller tiles, more warps
        if kind == "dkdv" and group == 1:
            # group == 1 is specialized to a constant, the loop over a group's heads disappears and the usual
            # tiles spill 0.8-2 KB on sm_90 (MHA and routing's one-head segments); these spill nothing.
            return (16, 32, 8, 2) if big_d else (32, 32, 8, 2)
        if big_d:  # dq with 4 warps spills 24 B (padded) to 944 B (varlen); 8 warps spill nothing
            return {"fwd": (32, 32, 8, 2), "dq": (32, 32, 8, 2), "dkdv": (32, 32, 8, 2)}[kind]
        return {"fwd": (64, 32, 8, 2), "dq": (64, 32, 8, 2), "dkdv": (32, 64, 8, 2)}[kind]
    if kind == "fwd":
        # A narrow window wastes most of a 128-row block's key span on masked keys.
        return (128, 64, 8, 3) if reach >= 256 else (64, 64, 4, 3)
    if kind == "dq":
        return (128, 32, 8, 2) if big_d else (128, 32, 4, 3)
    return (16, 128, 8, 2) if big_d else (32, 128, 8, 3)


def _strides(x: Tensor, varlen: bool) -> tuple[int, int, int, int]:
    """(batch, row, head, dim) strides; packed varlen tensors have no batch dimension (stride 0)."""
    if varlen:
        return 0, x.stride(0), x.stride(1), x.stride(2)
    return x.stride(0), x.stride(1), x.stride(2), x.stride(3)


def _common(q: Tensor, k: Tensor, v: Tensor, geo: Geometry) -> dict:
    d, dv = q.shape[-1], v.shape[-1]
    block_d = max(16, triton.next_power_of_2(d))
    block_dv = max(16, triton.next_power_of_2(dv))
    if q.dtype == torch.float32:
        prec = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    else:
        prec = "tf32"  # ignored for 16-bit inputs
    return dict(
        BLOCK_D=block_d, BLOCK_DV=block_dv, CHECK_D=block_d != d, CHECK_DV=block_dv != dv,
        VARLEN=geo.varlen, USE_DIL=geo.dilation > 1, HAS_SINKS=geo.num_sinks > 0, DOT_PREC=prec,
        UPCAST=interpreting() and q.dtype == torch.bfloat16, PACKED=geo.packed,
    )


def _heads(x: Tensor, varlen: bool) -> int:
    return x.shape[1] if varlen else x.shape[2]


def _lse_strides(geo: Geometry, h: int, total_q: int) -> tuple[int, int]:
    return (0, total_q) if geo.varlen else (h * geo.n_q, geo.n_q)


def _reach(geo: Geometry) -> int:
    return min(geo.left + geo.right, geo.n_q + geo.n_k)


def _block_table(geo: Geometry, side: str, block: int, heads: int, total: int) -> Tensor:
    """(programs, 2) int32 rows ``(block index, sequence * heads + head)``, one per block of every (sequence,
    head), in order. Built on the device without a host sync: the grid is sized by an upper bound (a sequence of
    ``n`` rows has at most ``n / block + 1`` blocks), and the spare programs get a block index past the end of
    the last sequence, which makes them no-ops (empty key/query ranges, every store masked off)."""
    key = (side, block)
    if key not in geo.tables:
        cu = geo.lens_q if side == "q" else geo.lens_k
        blocks = ((cu.diff().long() + block - 1) // block).repeat_interleave(heads)
        ends = blocks.cumsum(0)
        bound = max(1, (heads * total + blocks.numel() * (block - 1)) // block)
        pid = torch.arange(bound, device=cu.device)
        bh = torch.searchsorted(ends, pid, right=True).clamp_(max=blocks.numel() - 1)
        geo.tables[key] = torch.stack((pid - (ends - blocks)[bh], bh), 1).to(torch.int32)
    return geo.tables[key]


def _launch(geo: Geometry, side: str, block: int, heads: int, total: int, rows: int) -> tuple[tuple, Tensor]:
    """(grid, table) of a kernel with one program per ``block`` rows of each (sequence, head); unpacked
    launches get a placeholder table that the kernels never read."""
    if geo.packed:
        table = _block_table(geo, side, block, heads, total)
        return (table.shape[0],), table
    return (triton.cdiv(rows, block), geo.batch * heads), geo.lens_q


def _scalars(q: Tensor, k: Tensor, v: Tensor, geo: Geometry) -> tuple:
    h, hk = _heads(q, geo.varlen), _heads(k, geo.varlen)
    return (geo.n_q, geo.n_k, h, h // hk, q.shape[-1], v.shape[-1], geo.left, geo.right, geo.num_sinks,
            geo.dilation, geo.scale * math.log2(math.e))


def forward(q: Tensor, k: Tensor, v: Tensor, geo: Geometry) -> tuple[Tensor, Tensor]:
    """Returns the output (shaped like q with v's head dim) and the base-2 log-sum-exp (fp32)."""
    h = _heads(q, geo.varlen)
    group = h // _heads(k, geo.varlen)
    o = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    total_q = q.shape[0]
    lse_shape = (h, total_q) if geo.varlen else (geo.batch, h, geo.n_q)
    lse = torch.empty(lse_shape, device=q.device, dtype=torch.float32)
    bm, bn, warps, stages = _config("fwd", q.shape[-1], q.element_size(), _reach(geo), group)
    grid, table = _launch(geo, "q", bm, h, total_q, geo.n_q)
    _sw_fwd_kernel[grid](
        q, k, v, o, lse, geo.lens_q, geo.lens_k, table,
        *_strides(q, geo.varlen), *_strides(k, geo.varlen), *_strides(v, geo.varlen), *_strides(o, geo.varlen),
        *_lse_strides(geo, h, total_q), *_scalars(q, k, v, geo),
        BLOCK_M=bm, BLOCK_N=bn, **_common(q, k, v, geo), num_warps=warps, num_stages=stages,
    )
    return o, lse


def backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
             geo: Geometry) -> tuple[Tensor, Tensor, Tensor]:
    h, hk = _heads(q, geo.varlen), _heads(k, geo.varlen)
    group = h // hk
    total_q = q.shape[0]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    delta = torch.empty_like(lse)
    common = _common(q, k, v, geo)
    lse_strides = _lse_strides(geo, h, total_q)
    scalars = (*_scalars(q, k, v, geo), geo.scale)
    qkv_strides = (*_strides(q, geo.varlen), *_strides(k, geo.varlen), *_strides(v, geo.varlen))
    do_strides = _strides(do, geo.varlen)

    # dq first: it also writes delta = rowsum(dO * O), which the dk/dv kernel reads.
    bm, bn, warps, stages = _config("dq", q.shape[-1], q.element_size(), _reach(geo), group)
    grid, table = _launch(geo, "q", bm, h, total_q, geo.n_q)
    _sw_bwd_dq_kernel[grid](
        q, k, v, o, do, dq, lse, delta, geo.lens_q, geo.lens_k, table,
        *qkv_strides, *_strides(o, geo.varlen), *do_strides, *_strides(dq, geo.varlen), *lse_strides, *scalars,
        BLOCK_M=bm, BLOCK_N=bn, **common, num_warps=warps, num_stages=stages,
    )
    bm, bn, warps, stages = _config("dkdv", q.shape[-1], q.element_size(), _reach(geo), group)
    dkdv_scalars = (scalars[0], scalars[1], hk, *scalars[3:])  # grid over key/value heads
    grid_bh = geo.batch * hk
    # Split off the sinks' tail (see _sw_bwd) when all sinks sit in key block 0 and the window is bounded on the
    # left (otherwise block 0's own range already covers every query and there is no tail). Packed launches have
    # no second grid axis to index the parts by, so their block 0 takes its whole range itself.
    split = not geo.packed and geo.num_sinks > 0 and geo.num_sinks <= bn and geo.left < geo.n_q + geo.n_k
    block_s = max(16, triton.next_power_of_2(geo.num_sinks)) if split else 16
    chunk = max(4, triton.cdiv(min(_reach(geo), geo.n_q) + bn, bm))  # about one dk/dv program's work
    n_parts = triton.cdiv(triton.cdiv(geo.n_q, bm), chunk) if split else 0
    # Never zero-sized: Triton's launcher rejects a null data pointer even for an argument that goes unread.
    parts_k = torch.empty((max(n_parts, 1), grid_bh, block_s, common["BLOCK_D"]), device=q.device, dtype=torch.float32)
    parts_v = torch.empty((max(n_parts, 1), grid_bh, block_s, common["BLOCK_DV"]), device=q.device, dtype=torch.float32)
    if split:
        sink_common = {key: val for key, val in common.items() if key not in ("HAS_SINKS", "PACKED")}
        _sw_bwd_sink_kernel[(n_parts, grid_bh)](
            q, k, v, do, lse, delta, geo.lens_q, geo.lens_k, parts_k, parts_v,
            *qkv_strides, *do_strides, *lse_strides, *dkdv_scalars[:-1], chunk,
            BLOCK_M=bm, BLOCK_N=bn, BLOCK_S=block_s, **sink_common, num_warps=4 if block_s <= 64 else warps,
            num_stages=stages,
        )
    grid, table = _launch(geo, "k", bn, hk, k.shape[0], geo.n_k)
    _sw_bwd_dkdv_kernel[grid](
        q, k, v, do, dk, dv, lse, delta, geo.lens_q, geo.lens_k, table, parts_k, parts_v,
        *qkv_strides, *do_strides, *_strides(dk, geo.varlen), *_strides(dv, geo.varlen), *lse_strides,
        *dkdv_scalars, n_parts,
        BLOCK_M=bm, BLOCK_N=bn, **common, SINK_SPLIT=split, BLOCK_S=block_s, num_warps=warps, num_stages=stages,
    )
    return dq, dk, dv
