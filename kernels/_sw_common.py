"""Triton helpers shared by the sliding-window forward and backward kernels.

Conventions used by every kernel (see ``seqwin.attention.reference`` for the semantics):

* Query row ``i`` of a sequence sits at key position ``i + off`` (bottom-right alignment). In padded mode
  ``off = N_K - N_Q`` (tensor lengths, as in the reference); in varlen mode ``off = k_len - q_len`` per sequence.
* ``left``/``right`` arrive already made finite: an unbounded side is passed as a number larger than any reachable
  distance, so one formula serves every window and no side needs a branch.
* Visibility of (query i, key j), ``rel = j - (i + off)``::

      (-left <= rel <= right  and  rel % dilation == 0)  or  (j < num_sinks and rel <= right)
      and  i < q_len  and  j < k_len

* Block ranges are computed once per program so the loops only touch key (query) blocks that can hold a visible
  pair. Each range is split in three: masked head, unmasked interior, masked tail. Interior blocks are those
  where every (row, key) pair is visible, so the hot loop runs without building a mask at all.
* All integer divisions below have non-negative operands (C and Python disagree on negative ones).
* Grid: by default axis 0 is the query (key) block and axis 1 the (sequence, head) pair, so a varlen launch
  sizes axis 0 by the longest sequence. With ``PACKED`` the grid is 1-D and each program reads its (block,
  sequence * heads + head) pair from a block table (``_sw_launch._block_table``): one program per real block
  however skewed the lengths, and no 65535 limit on the number of sequences (routing attention packs one
  sequence per (batch, head, cluster)).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, acc, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST: the Triton CPU interpreter multiplies bf16 tiles as their raw uint16 bits; bf16 -> fp32 is exact and
    # products of bf16 values are exact in fp32, so upcasting gives what the tensor cores compute.
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc, input_precision=DOT_PREC)
    return out


@triton.jit
def _load_tile(ptrs, ok_rows, ok_cols, CHECK_ROWS: tl.constexpr, CHECK_COLS: tl.constexpr):
    """Load a tile, masking only the dimensions that can run out of bounds (masks cost registers and time)."""
    if CHECK_ROWS:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=ok_rows & ok_cols, other=0.0)
        else:
            x = tl.load(ptrs, mask=ok_rows, other=0.0)
    else:
        if CHECK_COLS:
            x = tl.load(ptrs, mask=ok_cols, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _program(TABLE, PACKED: tl.constexpr):
    """(block index inside its sequence, sequence * heads + head) of this program."""
    if PACKED:
        pid = tl.program_id(0)
        blk = tl.load(TABLE + 2 * pid)
        bh = tl.load(TABLE + 2 * pid + 1)
    else:
        blk = tl.program_id(0)
        bh = tl.program_id(1)
    return blk, bh


@triton.jit
def _visible(qi, kj, off, q_len, k_len, left, right, num_sinks, dilation,
             USE_DIL: tl.constexpr, HAS_SINKS: tl.constexpr):
    """Visibility of query rows ``qi`` and keys ``kj`` (broadcastable index tensors, e.g. (M, 1) and (1, N))."""
    rel = kj - (qi + off)
    ok = (rel >= -left) & (rel <= right)
    if USE_DIL:
        ok = ok & (rel % dilation == 0)  # zero remainder means the same under C or Python sign rules
    if HAS_SINKS:
        ok = ok | ((kj < num_sinks) & (rel <= right))
    return ok & (qi < q_len) & (kj < k_len)


@triton.jit
def _seq_info(b, LENS_Q, LENS_K, N_Q, N_K, VARLEN: tl.constexpr):
    """Per-sequence geometry: (q_start, q_len, q_bound, k_start, k_len, k_bound, off).

    ``*_start`` is the first row in the (packed) row dimension, ``*_len`` the valid rows, ``*_bound`` the rows an
    output may be written to: padded rows of the padded layout get explicit zeros, in varlen the rows past a
    sequence belong to the next one and must not be touched.
    """
    if VARLEN:
        q_start = tl.load(LENS_Q + b)
        q_len = tl.load(LENS_Q + b + 1) - q_start
        k_start = tl.load(LENS_K + b)
        k_len = tl.load(LENS_K + b + 1) - k_start
        q_bound = q_len
        k_bound = k_len
        off = k_len - q_len
    else:
        q_start = b * 0
        k_start = b * 0
        q_len = tl.load(LENS_Q + b)
        k_len = tl.load(LENS_K + b)
        q_bound = q_start + N_Q
        k_bound = k_start + N_K
        off = q_start + (N_K - N_Q)
    return q_start, q_len, q_bound, k_start, k_len, k_bound, off


@triton.jit
def _key_blocks(m0, off, q_len, k_len, left, right, num_sinks,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_DIL: tl.constexpr):
    """Key blocks seen by query rows ``[m0, m0 + BLOCK_M)``.

    Returns ``(n_sink, lo, full_lo, full_hi, end)``: blocks ``[0, n_sink)`` hold sinks and are always masked;
    window blocks ``[lo, end)`` (``lo >= n_sink`` so no pair is counted twice) are masked on ``[lo, full_lo)`` and
    ``[full_hi, end)`` and unmasked on ``[full_lo, full_hi)``. Empty ranges come out as ``lo >= end``.
    """
    q_last = tl.minimum(m0 + BLOCK_M, q_len) - 1
    k_len = tl.where(q_last >= m0, k_len, 0)  # a block of padding rows sees nothing
    pos_first = m0 + off
    pos_last = q_last + off
    sink_end = tl.maximum(tl.minimum(tl.minimum(num_sinks, k_len), pos_last + right + 1), 0)
    n_sink = (sink_end + BLOCK_N - 1) // BLOCK_N
    win_lo = tl.maximum(pos_first - left, 0)
    win_hi = tl.minimum(pos_last + right, k_len - 1)
    lo = tl.maximum(win_lo // BLOCK_N, n_sink)
    end = tl.maximum(tl.where(win_hi >= win_lo, (win_hi + BLOCK_N) // BLOCK_N, 0), lo)
    # Block n is interior when n*BN >= pos_last - left and n*BN + BN - 1 <= min(pos_first + right, k_len - 1).
    full_lo = (tl.maximum(pos_last - left, 0) + BLOCK_N - 1) // BLOCK_N
    full_hi = tl.maximum(tl.minimum(pos_first + right, k_len - 1) + 1, 0) // BLOCK_N
    if USE_DIL:
        full_hi = full_lo
    full_lo = tl.minimum(tl.maximum(full_lo, lo), end)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), end)
    return n_sink, lo, full_lo, full_hi, end


@triton.jit
def _query_blocks(n0, off, q_len, k_len, left, right, num_sinks, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  USE_DIL: tl.constexpr, SINK_SPLIT: tl.constexpr):
    """Query blocks that see any key of ``[n0, n0 + BLOCK_N)``: ``(lo, full_lo, full_hi, end)``, split like
    :func:`_key_blocks`. One contiguous range: a sink block is seen by every query from its first viewer on.
    With ``SINK_SPLIT`` the range stops where the window stops; the sink-only tail beyond it is left to
    ``_sw_bwd_sink_kernel`` (which calls this too, to start exactly there)."""
    k_last = tl.minimum(n0 + BLOCK_N, k_len) - 1
    q_len_e = tl.where(k_last >= n0, q_len, 0)  # a block of padding keys is seen by nobody
    i_lo = tl.maximum(n0 - right - off, 0)
    i_hi = k_last + left - off
    if not SINK_SPLIT:
        i_hi = tl.where(n0 < num_sinks, q_len_e - 1, i_hi)
    i_hi = tl.minimum(i_hi, q_len_e - 1)
    lo = i_lo // BLOCK_M
    end = tl.maximum(tl.where(i_hi >= i_lo, (i_hi + BLOCK_M) // BLOCK_M, 0), lo)
    # Query block m is interior when its rows and keys are all valid and every pair is visible: the right bound
    # holds for all pairs (m*BM >= n0 + BN - 1 - off - right) and the left bound for every non-sink key
    # (m*BM <= first_win + left - off - BM + 1). A block made only of sinks has no left bound at all.
    full_lo = (tl.maximum(n0 + BLOCK_N - 1 - off - right, 0) + BLOCK_M - 1) // BLOCK_M
    first_win = tl.maximum(n0, num_sinks)
    last_m0 = tl.minimum(first_win + left - off - BLOCK_M + 1, q_len - BLOCK_M)
    last_m0 = tl.where(first_win >= n0 + BLOCK_N, q_len - BLOCK_M, last_m0)
    full_hi = tl.maximum(last_m0 + BLOCK_M, 0) // BLOCK_M
    full_hi = tl.where(n0 + BLOCK_N <= k_len, full_hi, full_lo)
    if USE_DIL:
        full_hi = full_lo
    full_lo = tl.minimum(tl.maximum(full_lo, lo), end)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), end)
    return lo, full_lo, full_hi, end
