"""Sliding-window attention forward kernel (FlashAttention-2 style online softmax over the window's key blocks).

One program handles ``BLOCK_M`` query rows of one (sequence, head). It visits only the key blocks that can hold a
visible key (sink blocks, then the window's blocks), keeps a running max / sum in fp32 and writes the normalized
output plus the base-2 log-sum-exp the backward needs. Rows that see no key (padding, empty windows) get output 0
and log-sum-exp +inf, which makes every recomputed probability exactly 0 in the backward without special cases.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._sw_common import _dot, _key_blocks, _load_tile, _program, _seq_info, _visible


@triton.jit
def _fwd_block(acc, m_i, l_i, q, K_base, V_base, blk, offs_m, offs_n, offs_d, offs_dv,
               skn, skd, svn, svd, off, q_len, k_len, D, DV, left, right, num_sinks, dilation, qk_scale,
               BLOCK_N: tl.constexpr, CHECK_D: tl.constexpr, CHECK_DV: tl.constexpr, MASKED: tl.constexpr,
               USE_DIL: tl.constexpr, HAS_SINKS: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr):
    start_n = blk * BLOCK_N
    kj = start_n + offs_n
    # 64-bit block offset: rows * row stride overflows int32 on long sequences.
    kT_ptrs = K_base + start_n.to(tl.int64) * skn + offs_n[None, :] * skn + offs_d[:, None] * skd
    kT = _load_tile(kT_ptrs, (kj < k_len)[None, :], (offs_d < D)[:, None], MASKED, CHECK_D)
    s = _dot(q, kT, None, DOT_PREC, UPCAST) * qk_scale
    if MASKED:
        vis = _visible(offs_m[:, None], kj[None, :], off, q_len, k_len, left, right, num_sinks, dilation,
                       USE_DIL, HAS_SINKS)
        s = tl.where(vis, s, float("-inf"))
    # m_i starts finite (-1e30), so a row whose block is fully masked keeps m finite and gets p = exp2(-inf) = 0.
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v_ptrs = V_base + start_n.to(tl.int64) * svn + offs_n[:, None] * svn + offs_dv[None, :] * svd
    v = _load_tile(v_ptrs, (kj < k_len)[:, None], (offs_dv < DV)[None, :], MASKED, CHECK_DV)
    acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_PREC, UPCAST)
    return acc, m_new, l_i


@triton.jit
def _sw_fwd_kernel(
    Q, K, V, O, LSE, LENS_Q, LENS_K, TABLE,
    sqb, sqm, sqh, sqd, skb, skn, skh, skd, svb, svn, svh, svd, sob, som, soh, sod, slb, slh,
    N_Q, N_K, H, G, D, DV, left, right, num_sinks, dilation, qk_scale,
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
    row0 = (q_start + m0).to(tl.int64)
    Q_blk = Q + b64 * sqb + h.to(tl.int64) * sqh + row0 * sqm
    K_base = K + b64 * skb + hk.to(tl.int64) * skh + k_start.to(tl.int64) * skn
    V_base = V + b64 * svb + hk.to(tl.int64) * svh + k_start.to(tl.int64) * svn
    q = _load_tile(Q_blk + offs_r[:, None] * sqm + offs_d[None, :] * sqd, (offs_m < q_len)[:, None],
                   (offs_d < D)[None, :], True, CHECK_D)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    n_sink, lo, full_lo, full_hi, end = _key_blocks(m0, off, q_len, k_len, left, right, num_sinks,
                                                    BLOCK_M, BLOCK_N, USE_DIL)
    if HAS_SINKS:
        for blk in range(0, n_sink):
            acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, K_base, V_base, blk, offs_m, offs_n, offs_d, offs_dv,
                                       skn, skd, svn, svd, off, q_len, k_len, D, DV, left, right, num_sinks,
                                       dilation, qk_scale, BLOCK_N, CHECK_D, CHECK_DV, True, USE_DIL,
                                       HAS_SINKS, DOT_PREC, UPCAST)
    for blk in range(lo, full_lo):
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, K_base, V_base, blk, offs_m, offs_n, offs_d, offs_dv,
                                   skn, skd, svn, svd, off, q_len, k_len, D, DV, left, right, num_sinks,
                                   dilation, qk_scale, BLOCK_N, CHECK_D, CHECK_DV, True, USE_DIL,
                                   HAS_SINKS, DOT_PREC, UPCAST)
    for blk in range(full_lo, full_hi):
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, K_base, V_base, blk, offs_m, offs_n, offs_d, offs_dv,
                                   skn, skd, svn, svd, off, q_len, k_len, D, DV, left, right, num_sinks,
                                   dilation, qk_scale, BLOCK_N, CHECK_D, CHECK_DV, False, USE_DIL,
                                   HAS_SINKS, DOT_PREC, UPCAST)
    for blk in range(full_hi, end):
        acc, m_i, l_i = _fwd_block(acc, m_i, l_i, q, K_base, V_base, blk, offs_m, offs_n, offs_d, offs_dv,
                                   skn, skd, svn, svd, off, q_len, k_len, D, DV, left, right, num_sinks,
                                   dilation, qk_scale, BLOCK_N, CHECK_D, CHECK_DV, True, USE_DIL,
                                   HAS_SINKS, DOT_PREC, UPCAST)

    # Rows past q_len may have accumulated garbage in unmasked blocks: force them (and empty rows) to zero.
    live = (offs_m < q_len) & (l_i > 0.0)
    l_safe = tl.where(live, l_i, 1.0)
    out = tl.where(live[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(live, m_i + tl.math.log2(l_safe), float("inf"))
    O_blk = O + b64 * sob + h.to(tl.int64) * soh + row0 * som
    st_rows = offs_m < q_bound
    tl.store(O_blk + offs_r[:, None] * som + offs_dv[None, :] * sod, out.to(O.dtype.element_ty),
             mask=st_rows[:, None] & (offs_dv < DV)[None, :])
    L_base = LSE + b64 * slb + h.to(tl.int64) * slh + q_start
    tl.store(L_base + offs_m, lse, mask=st_rows)
