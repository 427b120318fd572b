"""Sliding-window attention backward kernels (FlashAttention-2 style, no atomics).

* ``_sw_bwd_dq_kernel``: one program per query block; computes ``delta = rowsum(dO * O)`` (stored for the second
  kernel), then loops over the same key blocks as the forward and accumulates ``dq``.
* ``_sw_bwd_dkdv_kernel``: one program per key block of one key/value head; loops over the query heads of its
  group (grouped-query attention) and over the query blocks that can see the block, accumulating ``dk``/``dv``
  in registers. Every output row is owned by exactly one program, so no atomics.
* ``_sw_bwd_sink_kernel`` (only with sinks and a bounded left side): the sink keys are seen by every later query,
  so the key block holding them would loop over the whole sequence and stall the grid's tail. Queries past that
  block's window are instead split into chunks over several programs that write fp32 partial dk/dv for the sink
  keys; the dk/dv program of that block adds the partials before its single store (deterministic, no atomics).

Probabilities are recomputed as ``exp2(s * scale * log2(e) - lse)`` with the forward's base-2 log-sum-exp; rows
with ``lse = +inf`` (padding, empty windows) get probability 0 and hence zero gradient.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._sw_common import _dot, _key_blocks, _load_tile, _program, _query_blocks, _seq_info, _visible


@triton.jit
def _dq_block(dq, q, do, lse, delta, K_base, V_base, blk, offs_m, offs_n, offs_d, offs_dv,
              skn, skd, svn, svd, off, q_len, k_len, D, DV, left, right, num_sinks, dilation, qk_scale,
              BLOCK_N: tl.constexpr, CHECK_D: tl.constexpr, CHECK_DV: tl.constexpr, MASKED: tl.constexpr,
              USE_DIL: tl.constexpr, HAS_SINKS: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    start_n = blk * BLOCK_N
    kj = start_n + offs_n
    kT_ptrs = K_base + start_n.to(tl.int64) * skn + offs_n[None, :] * skn + offs_d[:, None] * skd
    kT = _load_tile(kT_ptrs, (kj < k_len)[None, :], (offs_d < D)[:, None], MASKED, CHECK_D)
    vT_ptrs = V_base + start_n.to(tl.int64) * svn + offs_n[None, :] * svn + offs_dv[:, None] * svd
    vT = _load_tile(vT_ptrs, (kj < k_len)[None, :], (offs_dv < DV)[:, None], MASKED, CHECK_DV)
    s = _dot(q, kT, None, DOT_PREC, UPCAST) * qk_scale
    p = tl.math.exp2(s - lse[:, None])
    if MASKED:
        vis = _visible(offs_m[:, None], kj[None, :], off, q_len, k_len, left, right, num_sinks, dilation,
                       USE_DIL, HAS_SINKS)
        p = tl.where(vis, p, 0.0)  # a select, so an overflowed exp2 of a hidden pair never turns into NaN
    dp = _dot(do, vT, None, DOT_PREC, UPCAST)
    ds = p * (dp - delta[:, None])
    return _dot(ds.to(kT.dtype), tl.trans(kT), dq, DOT_PREC, UPCAST)


@triton.jit
def _sw_bwd_dq_kernel(
    Q, K, V, O, DO, DQ, LSE, DELTA, LENS_Q, LENS_K, TABLE,
    sqb, sqm, sqh, sqd, skb, skn, skh, skd, svb, svn, svh, svd,
    sob, som, soh, sod, sdob, sdom, sdoh, sdod, sdqb, sdqm, sdqh, sdqd, slb, slh,
    N_Q, N_K, H, G, D, DV, left, right, num_sinks, dilation, qk_scale, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CHECK_D: tl.constexpr, CHECK_DV: tl.constexpr, VARLEN: tl.constexpr, USE_DIL: tl.constexpr,
    HAS_SINKS: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, PACKED: tl.constexpr,
):
    pid_m, pid_bh = _program(TABLE, PACKED)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // G
    q_start, q_len, q_bound, k_start, k_len, k_bound, off = _seq_info(b, LENS_Q, LENS_K, N_Q, N_K, VARLEN)
    m0 = pid_m * BLOCK_M
    offs_r = tl.arange(0, BLOCK_M)
    offs_m = m0 + offs_r
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    row0 = (q_start + m0).to(tl.int64)
    rows = (offs_m < q_len)[:, None]
    q = _load_tile(Q + b64 * sqb + h64 * sqh + row0 * sqm + offs_r[:, None] * sqm + offs_d[None, :] * sqd,
                   rows, (offs_d < D)[None, :], True, CHECK_D)
    # dO of padded rows is ignored (loaded as 0): their output was a constant zero.
    do = _load_tile(DO + b64 * sdob + h64 * sdoh + row0 * sdom + offs_r[:, None] * sdom + offs_dv[None, :] * sdod,
                    rows, (offs_dv < DV)[None, :], True, CHECK_DV)
    o = _load_tile(O + b64 * sob + h64 * soh + row0 * som + offs_r[:, None] * som + offs_dv[None, :] * sod,
                   rows, (offs_dv < DV)[None, :], True, CHECK_DV)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    st_rows = offs_m < q_bound
    L_off = b64 * slb + h64 * slh + q_start
    tl.store(DELTA + L_off + offs_m, delta, mask=st_rows)
    lse = tl.load(LSE + L_off + offs_m, mask=offs_m < q_len, other=float("inf"))

    K_base = K + b64 * skb + hk.to(tl.int64) * skh + k_start.to(tl.int64) * skn
    V_base = V + b64 * svb + hk.to(tl.int64) * svh + k_start.to(tl.int64) * svn
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    n_sink, lo, full_lo, full_hi, end = _key_blocks(m0, off, q_len, k_len, left, right, num_sinks,
                                                    BLOCK_M, BLOCK_N, USE_DIL)
    if HAS_SINKS:
        for blk in range(0, n_sink):
            dq = _dq_block(dq, q, do, lse, delta, K_base, V_base, blk, offs_m, offs_n, offs_d, offs_dv,
                           skn, skd, svn, svd, off, q_len, k_len, D, DV, left, right, num_sinks, dilation,
                           qk_scale, BLOCK_N, CHECK_D, CHECK_DV, True, USE_DIL, HAS_SINKS, DOT_PREC, UPCAST)
    for blk in range(lo, full_lo):
        dq = _dq_block(dq, q, do, lse, delta, K_base, V_base, blk, offs_m, offs_n, offs_d, offs_dv,
                       skn, skd, svn, svd, off, q_len, k_len, D, DV, left, right, num_sinks, dilation,
                       qk_scale, BLOCK_N, CHECK_D, CHECK_DV, True, USE_DIL, HAS_SINKS, DOT_PREC, UPCAST)
    for blk in range(full_lo, full_hi):
        dq = _dq_block(dq, q, do, lse, delta, K_base, V_base, blk, offs_m, offs_n, offs_d, offs_dv,
                       skn, skd, svn, svd, off, q_len, k_len, D, DV, left, right, num_sinks, dilation,
                       qk_scale, BLOCK_N, CHECK_D, CHECK_DV, False, USE_DIL, HAS_SINKS, DOT_PREC, UPCAST)
    for blk in range(full_hi, end):
        dq = _dq_block(dq, q, do, lse, delta, K_base, V_base, blk, offs_m, offs_n, offs_d, offs_dv,
                       skn, skd, svn, svd, off, q_len, k_len, D, DV, left, right, num_sinks, dilation,
                       qk_scale, BLOCK_N, CHECK_D, CHECK_DV, True, USE_DIL, HAS_SINKS, DOT_PREC, UPCAST)
    dq = dq * scale
    DQ_blk = DQ + b64 * sdqb + h64 * sdqh + row0 * sdqm
    tl.store(DQ_blk + offs_r[:, None] * sdqm + offs_d[None, :] * sdqd, dq.to(DQ.dtype.element_ty),
             mask=st_rows[:, None] & (offs_d < D)[None, :])


@triton.jit
def _dkdv_block(dk, dv, k, v, Q_base, DO_base, LSE_base, DELTA_base, mb, kj, offs_r, offs_d, offs_dv,
                sqm, sqd, sdom, sdod, off, q_len, k_len, D, DV, left, right, num_sinks, dilation, qk_scale,
                BLOCK_M: tl.constexpr, CHECK_D: tl.constexpr, CHECK_DV: tl.constexpr, MASKED: tl.constexpr,
                USE_DIL: tl.constexpr, HAS_SINKS: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    m0 = mb * BLOCK_M
    qi = m0 + offs_r
    m64 = m0.to(tl.int64)
    qT = _load_tile(Q_base + m64 * sqm + offs_r[None, :] * sqm + offs_d[:, None] * sqd, (qi < q_len)[None, :],
                    (offs_d < D)[:, None], MASKED, CHECK_D)
    do = _load_tile(DO_base + m64 * sdom + offs_r[:, None] * sdom + offs_dv[None, :] * sdod,
                    (qi < q_len)[:, None], (offs_dv < DV)[None, :], MASKED, CHECK_DV)
    if MASKED:
        lse = tl.load(LSE_base + qi, mask=qi < q_len, other=float("inf"))
        delta = tl.load(DELTA_base + qi, mask=qi < q_len, other=0.0)
    else:
        lse = tl.load(LSE_base + qi)
        delta = tl.load(DELTA_base + qi)
    # Work transposed, (keys, queries), so dk and dv come out of the dots without transposing accumulators.
    sT = _dot(k, qT, None, DOT_PREC, UPCAST) * qk_scale
    pT = tl.math.exp2(sT - lse[None, :])
    if MASKED:
        vis = _visible(qi[None, :], kj[:, None], off, q_len, k_len, left, right, num_sinks, dilation,
                       USE_DIL, HAS_SINKS)
        pT = tl.where(vis, pT, 0.0)
    dv = _dot(pT.to(do.dtype), do, dv, DOT_PREC, UPCAST)
    dpT = _dot(v, tl.trans(do), None, DOT_PREC, UPCAST)
    dsT = pT * (dpT - delta[None, :])
    dk = _dot(dsT.to(qT.dtype), tl.trans(qT), dk, DOT_PREC, UPCAST)
    return dk, dv


@triton.jit
def _sw_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV_, LSE, DELTA, LENS_Q, LENS_K, TABLE, DKP, DVP,
    sqb, sqm, sqh, sqd, skb, skn, skh, skd, svb, svn, svh, svd,
    sdob, sdom, sdoh, sdod, sdkb, sdkn, sdkh, sdkd, sdvb, sdvn, sdvh, sdvd, slb, slh,
    N_Q, N_K, HK, G, D, DV, left, right, num_sinks, dilation, qk_scale, scale, n_parts,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CHECK_D: tl.constexpr, CHECK_DV: tl.constexpr, VARLEN: tl.constexpr, USE_DIL: tl.constexpr,
    HAS_SINKS: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
    SINK_SPLIT: tl.constexpr, BLOCK_S: tl.constexpr, PACKED: tl.constexpr,
):
    pid_n, pid_bh = _program(TABLE, PACKED)  # PACKED launches never split the sinks (num_programs(1) below)
    b = pid_bh // HK
    hk = pid_bh % HK
    q_start, q_len, q_bound, k_start, k_len, k_bound, off = _seq_info(b, LENS_Q, LENS_K, N_Q, N_K, VARLEN)
    n0 = pid_n * BLOCK_N
    offs_c = tl.arange(0, BLOCK_N)
    kj = n0 + offs_c
    offs_r = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)
    col0 = (k_start + n0).to(tl.int64)
    keys = (kj < k_len)[:, None]
    k = _load_tile(K + b64 * skb + hk64 * skh + col0 * skn + offs_c[:, None] * skn + offs_d[None, :] * skd,
                   keys, (offs_d < D)[None, :], True, CHECK_D)
    v = _load_tile(V + b64 * svb + hk64 * svh + col0 * svn + offs_c[:, None] * svn + offs_dv[None, :] * svd,
                   keys, (offs_dv < DV)[None, :], True, CHECK_DV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    lo, full_lo, full_hi, end = _query_blocks(n0, off, q_len, k_len, left, right, num_sinks,
                                              BLOCK_M, BLOCK_N, USE_DIL, SINK_SPLIT)
    for g in range(0, G):
        h64 = (hk * G + g).to(tl.int64)
        Q_base = Q + b64 * sqb + h64 * sqh + q_start.to(tl.int64) * sqm
        DO_base = DO + b64 * sdob + h64 * sdoh + q_start.to(tl.int64) * sdom
        L_off = b64 * slb + h64 * slh + q_start
        LSE_base = LSE + L_off
        DELTA_base = DELTA + L_off
        for mb in range(lo, full_lo):
            dk, dv = _dkdv_block(dk, dv, k, v, Q_base, DO_base, LSE_base, DELTA_base, mb, kj, offs_r, offs_d,
                                 offs_dv, sqm, sqd, sdom, sdod, off, q_len, k_len, D, DV, left, right, num_sinks,
                                 dilation, qk_scale, BLOCK_M, CHECK_D, CHECK_DV, True, USE_DIL, HAS_SINKS,
                                 DOT_PREC, UPCAST)
        for mb in range(full_lo, full_hi):
            dk, dv = _dkdv_block(dk, dv, k, v, Q_base, DO_base, LSE_base, DELTA_base, mb, kj, offs_r, offs_d,
                                 offs_dv, sqm, sqd, sdom, sdod, off, q_len, k_len, D, DV, left, right, num_sinks,
                                 dilation, qk_scale, BLOCK_M, CHECK_D, CHECK_DV, False, USE_DIL, HAS_SINKS,
                                 DOT_PREC, UPCAST)
        for mb in range(full_hi, end):
            dk, dv = _dkdv_block(dk, dv, k, v, Q_base, DO_base, LSE_base, DELTA_base, mb, kj, offs_r, offs_d,
                                 offs_dv, sqm, sqd, sdom, sdod, off, q_len, k_len, D, DV, left, right, num_sinks,
                                 dilation, qk_scale, BLOCK_M, CHECK_D, CHECK_DV, True, USE_DIL, HAS_SINKS,
                                 DOT_PREC, UPCAST)
    if SINK_SPLIT:
        # Only block 0 holds sinks (num_sinks <= BLOCK_N when split); add the partials of its sink-only tail.
        n_add = tl.where(n0 < num_sinks, n_parts, 0)
        part_rows = (offs_c < BLOCK_S)[:, None]
        for part in range(0, n_add):
            p_off = (part * tl.num_programs(1) + pid_bh).to(tl.int64) * BLOCK_S
            dk += tl.load(DKP + (p_off + offs_c[:, None]) * BLOCK_D + offs_d[None, :], mask=part_rows, other=0.0)
            dv += tl.load(DVP + (p_off + offs_c[:, None]) * BLOCK_DV + offs_dv[None, :], mask=part_rows,
                          other=0.0)
    dk = dk * scale
    st = (kj < k_bound)[:, None]
    tl.store(DK + b64 * sdkb + hk64 * sdkh + col0 * sdkn + offs_c[:, None] * sdkn + offs_d[None, :] * sdkd,
             dk.to(DK.dtype.element_ty), mask=st & (offs_d < D)[None, :])
    tl.store(DV_ + b64 * sdvb + hk64 * sdvh + col0 * sdvn + offs_c[:, None] * sdvn + offs_dv[None, :] * sdvd,
             dv.to(DV_.dtype.element_ty), mask=st & (offs_dv < DV)[None, :])


@triton.jit
def _sw_bwd_sink_kernel(
    Q, K, V, DO, LSE, DELTA, LENS_Q, LENS_K, DKP, DVP,
    sqb, sqm, sqh, sqd, skb, skn, skh, skd, svb, svn, svh, svd, sdob, sdom, sdoh, sdod, slb, slh,
    N_Q, N_K, HK, G, D, DV, left, right, num_sinks, dilation, qk_scale, chunk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CHECK_D: tl.constexpr, CHECK_DV: tl.constexpr, VARLEN: tl.constexpr, USE_DIL: tl.constexpr,
    DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Partial dk/dv of the sink keys ``[0, BLOCK_S)`` from ``chunk`` query blocks past key block 0's window."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HK
    hk = pid_bh % HK
    q_start, q_len, q_bound, k_start, k_len, k_bound, off = _seq_info(b, LENS_Q, LENS_K, N_Q, N_K, VARLEN)
    kj = tl.arange(0, BLOCK_S)
    offs_r = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    b64 = b.to(tl.int64)
    hk64 = hk.to(tl.int64)
    k0 = k_start.to(tl.int64)
    keys = (kj < k_len)[:, None]
    k = _load_tile(K + b64 * skb + hk64 * skh + k0 * skn + kj[:, None] * skn + offs_d[None, :] * skd,
                   keys, (offs_d < D)[None, :], True, CHECK_D)
    v = _load_tile(V + b64 * svb + hk64 * svh + k0 * svn + kj[:, None] * svn + offs_dv[None, :] * svd,
                   keys, (offs_dv < DV)[None, :], True, CHECK_DV)
    dk = tl.zeros([BLOCK_S, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_S, BLOCK_DV], tl.float32)
    # The tail starts where the dk/dv program of key block 0 stops (same call, same block sizes).
    _, _, _, start = _query_blocks(0, off, q_len, k_len, left, right, num_sinks, BLOCK_M, BLOCK_N, USE_DIL, True)
    stop = tl.where(k_len > 0, (q_len + BLOCK_M - 1) // BLOCK_M, 0)
    lo = start + pid_s * chunk
    hi = tl.minimum(lo + chunk, stop)
    for g in range(0, G):
        h64 = (hk * G + g).to(tl.int64)
        Q_base = Q + b64 * sqb + h64 * sqh + q_start.to(tl.int64) * sqm
        DO_base = DO + b64 * sdob + h64 * sdoh + q_start.to(tl.int64) * sdom
        L_off = b64 * slb + h64 * slh + q_start
        for mb in range(lo, hi):
            dk, dv = _dkdv_block(dk, dv, k, v, Q_base, DO_base, LSE + L_off, DELTA + L_off, mb, kj, offs_r,
                                 offs_d, offs_dv, sqm, sqd, sdom, sdod, off, q_len, k_len, D, DV, left, right,
                                 num_sinks, dilation, qk_scale, BLOCK_M, CHECK_D, CHECK_DV, True, USE_DIL, True,
                                 DOT_PREC, UPCAST)
    # Every program stores, even an empty one: the dk/dv kernel sums all parts.
    p_off = (pid_s * tl.num_programs(1) + pid_bh).to(tl.int64) * BLOCK_S
    tl.store(DKP + (p_off + kj[:, None]) * BLOCK_D + offs_d[None, :], dk)
    tl.store(DVP + (p_off + kj[:, None]) * BLOCK_DV + offs_dv[None, :], dv)
