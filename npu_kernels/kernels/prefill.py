"""Prefill flash attention: one kernel family for every prefill variant (constexpr flags).

Programs. A program computes a tile of BLOCK_M rows of the query/output seq axis for one query head.
Dense layouts (and token-major ones planned per batch, ``VARLEN`` without ``TOKEN_GRID``): one program
per (row tile, batch·head), tiles in reverse order so that under a causal band the tiles with the most
keys start first. ``TOKEN_GRID`` (token-major layouts, a grid from static sizes only): one program per
(tile of the T token rows, head); it computes, one after the other, every batch whose rows meet the
tile, batches ``[lo, hi)`` read from the tail of the parameter block (``token_grid``), and stores only
that batch's rows. Per batch lengths, offsets and band limits come from the parameter block
(``npu_kernels.params``), so the grid depends on static sizes only and a captured launch can be updated.

Key blocks. The keys that the tile's valid rows reach are cut into blocks of BLOCK_N. *Steady* blocks lie
inside the band of every valid row and inside the kv length: their loop evaluates no element predicate.
The partial blocks before and after them (band edges, the diagonal, the end of the keys) run the same
body with the band/length predicate. The three loops visit the blocks in ascending key order, as the
reference's blockwise emulation does. Masked scores are FILL, keys past the length -inf; a row whose
every score is FILL attends uniformly to all keys of the batch (the NPU result for fully masked rows):
the keys of blocks that were not visited are added in a score-free pass that runs only when such a row
exists. The user mask is non-zero = masked out. With MASK_SUMMARY (a user mask read from row and column 0
by row tiles of one batch: no token grid, no left padding) the launch first summarises the mask in the
kernel's tiles (``mask_summary``) and the loops visit only the key blocks whose tile has a visible
element, reading the mask only where the tile is mixed; a skipped block would have left each valid row's
maximum at FILL (set once), and its keys join the score-free pass of fully masked rows.

Loads. Dense float Q/K/V whose strides allow it (``USE_TMA``, decided at launch) are read through
device-side tensor descriptors (TMA on sm_90; the output is stored through pointers); paged caches, a shared prefix, rope parts,
anti-quantised or token-major rows go through pointers, in int64. A paged cache whose page holds whole
blocks (``PAGE_TILES``) reads one block-table entry per key block; a block id outside
``[0, NUM_BLOCKS)`` is never dereferenced: its keys and values read as zeros. NZ paged caches (K_C0,
V_C0, KR_C0 > 0 for keys, values, key rope) keep each token's channels in tiles of C0, ``stride_*t``
apart (``channel_offsets``); C0 = 0 is a plain cache, whose code is unchanged.

Arithmetic. The float path computes in fp32 with exp2: log2(e) is folded into the scale (and into pse),
FILL is kept as is, and the row maximum is turned back to natural log for ``softmax_lse``.
``FP16_PATH`` follows the NPU's fp16 high-performance path (``reference.core``'s emulation, within the
fp16 tolerance): scores rounded to fp16 after Q·Kᵀ and after the fp16 scale, P = fp16(exp(fp16(s - m))),
P·V rounded to fp16 and the accumulator kept in fp16 (updated in fp16 arithmetic with the rescale factor
rounded to fp16), l the fp32 sum of the exp values before they are rounded, out = acc / fp16(l); exp is
exp2 of the fp32 difference times log2(e), as the CPU execution path computes it. QUANT_MODE=1 is the int8
full-quantisation pipeline (spec ops §2.4): int8 Q·Kᵀ into int32, dequant with the FP19 ``deq_scale1``
to fp16, scale and pse in fp16, P = fp16(exp(fp16(s - m))) quantised to int8 with ``quant_scale1``
(AscendQuant), int8 P·V into int32, dequant with ``deq_scale2`` to fp16, accumulation in fp32, division
by fp16(l). OUT_QUANT quantises the normalised output to int8 (1: per-tensor, 2: per-channel
``quant_scale2`` / ``quant_offset2``); rows that are not computed are 0, not the offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import triton
import triton.language as tl

from .. import launcher
from .. import params as pb
from .. import quant
from . import mask_summary

LOG2E = tl.constexpr(1.4426950408889634)     # exp(x) = exp2(x * LOG2E)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _prefill_kernel(
    Q, K, V, O, LSE, MASK, PSE, PARAMS,     # PARAMS: [rows, FIELDS] int32 (TOKEN_GRID: then the tile tail)
    DEQ1, QS1, DEQ2, QS2, QO2,              # [1] scales (int32 fp32 bits or int64 words); QS2/QO2: [1] or [N*DV]
    QPAD, KVPAD, TABLE, KP, VP, QR, KR, KSC, KOF, VSC, VOF,   # fused-operator inputs (ops.sources); Q when absent
    sm_scale,
    stride_qb, stride_qn, stride_qs, stride_qd,     # Q: [B, N, S1, D] view
    stride_kb, stride_kn, stride_ks, stride_kd,     # K: [B, KV_N, S2, D] view, or paged [blocks, KV_N, PAGE, D]
    stride_vb, stride_vn, stride_vs, stride_vd,     # V: like K, last dim DV
    stride_ob, stride_on, stride_os, stride_od,     # O: [B, N, S1, DV] view
    stride_lb, stride_ln, stride_ls,                # LSE: [B, N, S1]
    stride_mb, stride_ms, stride_mk,                # MASK: [B or 1, rows, cols]
    stride_pb, stride_pn, stride_ps, stride_pk,     # PSE: [B or 1, N, rows, cols]
    stride_tb,                                      # TABLE: [B, max blocks] int32
    stride_kpn, stride_kps, stride_kpd,             # KP: [1, KV_N, P_S, D] shared-prefix keys
    stride_vpn, stride_vps, stride_vpd,             # VP: [1, KV_N, P_S, DV]
    stride_qrb, stride_qrn, stride_qrs, stride_qrd, # QR: [B, N, S1, DR] rope part of the query
    stride_krb, stride_krn, stride_krs, stride_krd, # KR: like K, rope part of the keys
    stride_ksx, stride_ksh, stride_ksy,             # KSC/KOF: key anti-quant [X, KV_N, Y] (see _antiquant)
    stride_vsx, stride_vsh, stride_vsy,             # VSC/VOF: value anti-quant
    stride_kt, stride_vt, stride_krt,               # K/V/KR of NZ caches: channel tiles (see channel_offsets)
    N, S1, S2, BN_TOTAL, GROUP, PAGE_SIZE, NUM_BLOCKS,   # GROUP = N // KV_N; NUM_BLOCKS: paged cache blocks
    SUMMARY, stride_ub, SUMMARY_COLS,               # mask block summary (mask_summary; Q when absent)
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_PSE: tl.constexpr, HAS_LSE: tl.constexpr,
    FILL: tl.constexpr, ZERO_MASKED_ROWS: tl.constexpr,
    QUANT_MODE: tl.constexpr, OUT_QUANT: tl.constexpr, HAS_OFFSET2: tl.constexpr,
    VARLEN: tl.constexpr, HAS_QPAD: tl.constexpr, HAS_KVPAD: tl.constexpr, IS_PAGED: tl.constexpr,
    HAS_PREFIX: tl.constexpr, ROPE_DIM: tl.constexpr, BLOCK_DR: tl.constexpr,
    K_QUANT: tl.constexpr, V_QUANT: tl.constexpr, HAS_K_OFFSET: tl.constexpr, HAS_V_OFFSET: tl.constexpr,
    K_C0: tl.constexpr, V_C0: tl.constexpr, KR_C0: tl.constexpr, LSE_EMPTY: tl.constexpr,
    FP16_PATH: tl.constexpr, TOKEN_GRID: tl.constexpr, USE_TMA: tl.constexpr, PAGE_TILES: tl.constexpr,
    SCALE_POS: tl.constexpr, MASK_SUMMARY: tl.constexpr, PTX: tl.constexpr,
):
    if TOKEN_GRID:                                       # (row tile of T, head): batches [lo, hi) of the tail
        i_t = tl.program_id(0)
        i_n = tl.program_id(1)
        p_tail = PARAMS + (BN_TOTAL // N) * pb.FIELDS + 2 * i_t     # after the block's rows
        for i_b in range(tl.load(p_tail), tl.load(p_tail + 1)):
            _rows(
                Q, K, V, O, LSE, MASK, PSE, PARAMS, DEQ1, QS1, DEQ2, QS2, QO2, QPAD, KVPAD, TABLE, KP, VP, QR, KR,
                KSC, KOF, VSC, VOF, sm_scale, stride_qb, stride_qn, stride_qs, stride_qd, stride_kb, stride_kn,
                stride_ks, stride_kd, stride_vb, stride_vn, stride_vs, stride_vd, stride_ob, stride_on, stride_os,
                stride_od, stride_lb, stride_ln, stride_ls, stride_mb, stride_ms, stride_mk, stride_pb, stride_pn,
                stride_ps, stride_pk, stride_tb, stride_kpn, stride_kps, stride_kpd, stride_vpn, stride_vps,
                stride_vpd, stride_qrb, stride_qrn, stride_qrs, stride_qrd, stride_krb, stride_krn, stride_krs,
                stride_krd, stride_ksx, stride_ksh, stride_ksy, stride_vsx, stride_vsh, stride_vsy, stride_kt,
                stride_vt, stride_krt, N, S1, S2, BN_TOTAL, GROUP, PAGE_SIZE, NUM_BLOCKS, SUMMARY, stride_ub,
                SUMMARY_COLS, i_b, i_n, i_t * BLOCK_M,
                HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, HAS_MASK, HAS_PSE, HAS_LSE, FILL,
                ZERO_MASKED_ROWS, QUANT_MODE, OUT_QUANT, HAS_OFFSET2, VARLEN, HAS_QPAD, HAS_KVPAD, IS_PAGED,
                HAS_PREFIX, ROPE_DIM, BLOCK_DR, K_QUANT, V_QUANT, HAS_K_OFFSET, HAS_V_OFFSET, K_C0, V_C0, KR_C0,
                LSE_EMPTY, FP16_PATH, USE_TMA, PAGE_TILES, SCALE_POS, MASK_SUMMARY, PTX, True)
    else:
        i_bh = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
        if i_bh < BN_TOTAL:
            i_m = tl.num_programs(0) - 1 - tl.program_id(0)     # heaviest row tiles of a causal band first
            _rows(
                Q, K, V, O, LSE, MASK, PSE, PARAMS, DEQ1, QS1, DEQ2, QS2, QO2, QPAD, KVPAD, TABLE, KP, VP, QR, KR,
                KSC, KOF, VSC, VOF, sm_scale, stride_qb, stride_qn, stride_qs, stride_qd, stride_kb, stride_kn,
                stride_ks, stride_kd, stride_vb, stride_vn, stride_vs, stride_vd, stride_ob, stride_on, stride_os,
                stride_od, stride_lb, stride_ln, stride_ls, stride_mb, stride_ms, stride_mk, stride_pb, stride_pn,
                stride_ps, stride_pk, stride_tb, stride_kpn, stride_kps, stride_kpd, stride_vpn, stride_vps,
                stride_vpd, stride_qrb, stride_qrn, stride_qrs, stride_qrd, stride_krb, stride_krn, stride_krs,
                stride_krd, stride_ksx, stride_ksh, stride_ksy, stride_vsx, stride_vsh, stride_vsy, stride_kt,
                stride_vt, stride_krt, N, S1, S2, BN_TOTAL, GROUP, PAGE_SIZE, NUM_BLOCKS, SUMMARY, stride_ub,
                SUMMARY_COLS, i_bh // N, i_bh % N, i_m * BLOCK_M,
                HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_M, BLOCK_N, HAS_MASK, HAS_PSE, HAS_LSE, FILL,
                ZERO_MASKED_ROWS, QUANT_MODE, OUT_QUANT, HAS_OFFSET2, VARLEN, HAS_QPAD, HAS_KVPAD, IS_PAGED,
                HAS_PREFIX, ROPE_DIM, BLOCK_DR, K_QUANT, V_QUANT, HAS_K_OFFSET, HAS_V_OFFSET, K_C0, V_C0, KR_C0,
                LSE_EMPTY, FP16_PATH, USE_TMA, PAGE_TILES, SCALE_POS, MASK_SUMMARY, PTX, False)


@triton.jit
def _rows(
    Q, K, V, O, LSE, MASK, PSE, PARAMS, DEQ1, QS1, DEQ2, QS2, QO2, QPAD, KVPAD, TABLE, KP, VP, QR, KR,
    KSC, KOF, VSC, VOF, sm_scale, stride_qb, stride_qn, stride_qs, stride_qd, stride_kb, stride_kn,
    stride_ks, stride_kd, stride_vb, stride_vn, stride_vs, stride_vd, stride_ob, stride_on, stride_os,
    stride_od, stride_lb, stride_ln, stride_ls, stride_mb, stride_ms, stride_mk, stride_pb, stride_pn,
    stride_ps, stride_pk, stride_tb, stride_kpn, stride_kps, stride_kpd, stride_vpn, stride_vps,
    stride_vpd, stride_qrb, stride_qrn, stride_qrs, stride_qrd, stride_krb, stride_krn, stride_krs,
    stride_krd, stride_ksx, stride_ksh, stride_ksy, stride_vsx, stride_vsh, stride_vsy, stride_kt, stride_vt,
    stride_krt, N, S1, S2, BN_TOTAL, GROUP, PAGE_SIZE, NUM_BLOCKS, SUMMARY, stride_ub, SUMMARY_COLS, i_b, i_n, row0,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PSE: tl.constexpr,
    HAS_LSE: tl.constexpr, FILL: tl.constexpr, ZERO_MASKED_ROWS: tl.constexpr, QUANT_MODE: tl.constexpr,
    OUT_QUANT: tl.constexpr, HAS_OFFSET2: tl.constexpr, VARLEN: tl.constexpr, HAS_QPAD: tl.constexpr,
    HAS_KVPAD: tl.constexpr, IS_PAGED: tl.constexpr, HAS_PREFIX: tl.constexpr, ROPE_DIM: tl.constexpr,
    BLOCK_DR: tl.constexpr, K_QUANT: tl.constexpr, V_QUANT: tl.constexpr, HAS_K_OFFSET: tl.constexpr,
    HAS_V_OFFSET: tl.constexpr, K_C0: tl.constexpr, V_C0: tl.constexpr, KR_C0: tl.constexpr,
    LSE_EMPTY: tl.constexpr, FP16_PATH: tl.constexpr, USE_TMA: tl.constexpr, PAGE_TILES: tl.constexpr,
    SCALE_POS: tl.constexpr, MASK_SUMMARY: tl.constexpr, PTX: tl.constexpr, TILE_OF_T: tl.constexpr,
):
    """Rows ``row0 + [0, BLOCK_M)`` of batch ``i_b``, query head ``i_n``: attention, output and lse.
    ``TILE_OF_T``: the tile is a tile of the token axis shared with other batches (store own rows only);
    else, for VARLEN, ``row0`` counts from the batch's first row."""
    i_kvn = i_n // GROUP
    b64 = tl.cast(i_b, tl.int64)                         # i_b: a Python int in the interpreter's loop
    n64 = i_n.to(tl.int64)
    kvn64 = i_kvn.to(tl.int64)
    p_par = PARAMS + i_b * pb.FIELDS
    qlen = tl.load(p_par + pb.QLEN)
    kvlen = tl.load(p_par + pb.KVLEN)
    q_off = tl.load(p_par + pb.Q_OFF)
    kv_off = tl.load(p_par + pb.KV_OFF)
    qm_off = tl.load(p_par + pb.QM_OFF)
    kvm_off = tl.load(p_par + pb.KVM_OFF)
    pre = tl.load(p_par + pb.PRE)
    nxt = tl.load(p_par + pb.NEXT)
    prefix = tl.load(p_par + pb.PREFIX)
    if HAS_QPAD:                                         # right-aligned rows before S1 - padding
        q_off = S1 - tl.maximum(tl.load(QPAD), 0).to(tl.int32) - qlen
        qm_off = q_off
        if q_off < 0:
            qlen = 0
    if HAS_KVPAD:
        kv_off = S2 - tl.maximum(tl.load(KVPAD), 0).to(tl.int32) - kvlen
        kvm_off = kv_off
        if kv_off < 0:
            kvlen = 0
    if QUANT_MODE == 1:
        deq1 = quant.deq_scale_tl(DEQ1)
        deq2 = quant.deq_scale_tl(DEQ2)
        qs1 = tl.load(QS1)
    else:
        deq1 = 1.0
        deq2 = 1.0
        qs1 = 1.0
    if VARLEN and not TILE_OF_T:
        row0 += q_off

    o_r = row0 + tl.arange(0, BLOCK_M)                   # [BM] rows of the tensor's seq axis
    o_i = o_r - q_off                                    # [BM] rows of the batch
    m_row = (o_i >= 0) & (o_i < qlen)
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    m_d = o_d < HEAD_DIM
    m_dv = o_dv < HEAD_DIM_V

    # Valid rows of the tile, the keys their bands reach, and the steady blocks among them.
    i_lo = tl.maximum(row0 - q_off, 0)
    i_hi = tl.minimum(row0 - q_off + BLOCK_M - 1, qlen - 1)
    j_lo = tl.maximum(i_lo - pre, 0)
    j_hi = tl.minimum(i_hi + nxt + 1, kvlen)             # exclusive
    if (i_lo > i_hi) | (j_lo >= j_hi):                   # no valid row or no key: the loops run empty
        j_lo = 0
        j_hi = 0
    j_start = j_lo - j_lo % BLOCK_N
    j_end = j_start + tl.cdiv(j_hi - j_start, BLOCK_N) * BLOCK_N
    s_lo = tl.minimum(tl.cdiv(tl.maximum(i_hi - pre, j_start), BLOCK_N) * BLOCK_N, j_end)
    s_hi = tl.maximum(tl.minimum(tl.maximum(tl.minimum(i_lo + nxt + 1, kvlen), 0) // BLOCK_N * BLOCK_N, j_end),
                      s_lo)

    DTYPE = Q.dtype.element_ty
    if USE_TMA:
        n_b = BN_TOTAL // N
        desc_q = tl.make_tensor_descriptor(Q, shape=[n_b, N, S1, HEAD_DIM], block_shape=[1, 1, BLOCK_M, BLOCK_D],
                                           strides=[stride_qb, stride_qn, stride_qs, stride_qd])
        desc_k = tl.make_tensor_descriptor(K, shape=[n_b, N // GROUP, S2, HEAD_DIM],
                                           strides=[stride_kb, stride_kn, stride_ks, stride_kd],
                                           block_shape=[1, 1, BLOCK_N, BLOCK_D])
        desc_v = tl.make_tensor_descriptor(V, shape=[n_b, N // GROUP, S2, HEAD_DIM_V],
                                           strides=[stride_vb, stride_vn, stride_vs, stride_vd],
                                           block_shape=[1, 1, BLOCK_N, BLOCK_DV])
        b_q = desc_q.load([i_b, i_n, row0, 0]).reshape(BLOCK_M, BLOCK_D)                 # [BM, BD]
    else:
        desc_k = K
        desc_v = V
        p_q = Q + b64 * stride_qb + n64 * stride_qn + o_r[:, None].to(tl.int64) * stride_qs + o_d[None, :] * stride_qd
        b_q = tl.load(p_q, mask=m_row[:, None] & m_d[None, :], other=0.0)                 # [BM, BD]
    b_qr = b_q
    if ROPE_DIM > 0:
        o_dr = tl.arange(0, BLOCK_DR)
        p_qr = QR + b64 * stride_qrb + n64 * stride_qrn + o_r[:, None].to(tl.int64) * stride_qrs \
            + o_dr[None, :] * stride_qrd
        b_qr = tl.load(p_qr, mask=m_row[:, None] & (o_dr[None, :] < ROPE_DIM), other=0.0)  # [BM, BDR]
    if QUANT_MODE == 0 and not FP16_PATH:                # exp2 domain: log2(e) folded into the scale
        qk_scale = sm_scale * LOG2E
    else:
        qk_scale = sm_scale
    k_head = K + kvn64 * stride_kn
    v_head = V + kvn64 * stride_vn
    p_mrow = MASK + b64 * stride_mb + (qm_off + o_i).to(tl.int64) * stride_ms             # [BM]
    p_prow = PSE + b64 * stride_pb + n64 * stride_pn + (qm_off + o_i).to(tl.int64) * stride_ps
    p_table = TABLE + b64 * stride_tb

    # The loops visit key blocks [j_start, s_lo), [s_lo, s_hi), [s_hi, j_end): every block, or with
    # MASK_SUMMARY the row tile's visits of the summary (``mask_summary``), all-masked blocks left out.
    r_tile = ((qm_off + row0 - q_off) // BLOCK_M).to(tl.int64)              # the tile's mask rows
    p_count = SUMMARY + b64 * stride_ub + r_tile * (2 * SUMMARY_COLS + 1)
    p_visit = p_count + SUMMARY_COLS + 1
    v_start = _visit_at(p_count, j_start, BLOCK_N, MASK_SUMMARY)
    v_lo = _visit_at(p_count, s_lo, BLOCK_N, MASK_SUMMARY)
    v_hi = _visit_at(p_count, s_hi, BLOCK_N, MASK_SUMMARY)
    v_end = _visit_at(p_count, j_end, BLOCK_N, MASK_SUMMARY)
    V_STEP: tl.constexpr = 1 if MASK_SUMMARY else BLOCK_N
    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    if MASK_SUMMARY:                                     # a skipped block leaves every valid row's max at FILL
        b_m = tl.where((v_end - v_start) * BLOCK_N < j_end - j_start, FILL, b_m)
    b_m16 = b_m.to(tl.float16)                           # PAIRS: the row maxima in fp16 too (exact; _row_max16)
    PAIRS: tl.constexpr = FP16_PATH and BLOCK_DV <= 128  # as in _block
    b_l = tl.zeros([BLOCK_M, 4] if PAIRS else [BLOCK_M], tl.float32)         # PAIRS: per lane (_lane_sums)
    b_acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float16 if FP16_PATH else tl.float32)
    for v in range(v_start, v_lo, V_STEP):               # partial blocks before the steady ones (band start)
        b_acc, b_l, b_m, b_m16 = _block(
            _visit(p_visit, v, MASK_SUMMARY), b_acc, b_l, b_m, b_m16, b_q, b_qr, desc_k, desc_v, k_head, v_head, KP, VP, KR, p_table, NUM_BLOCKS,
            KSC, KOF, VSC, VOF, p_mrow, p_prow, b64, kvn64, i_b, i_kvn, kv_off, kvm_off, kvlen, prefix, o_i, m_row,
            pre, nxt, qk_scale, deq1, qs1, deq2, stride_ks, stride_kd, stride_vs, stride_vd, stride_kb, stride_vb,
            stride_kpn, stride_kps, stride_kpd, stride_vpn, stride_vps, stride_vpd, stride_krb, stride_krn,
            stride_krs, stride_krd, stride_ksx, stride_ksh, stride_ksy, stride_vsx, stride_vsh, stride_vsy,
            stride_kt, stride_vt, stride_krt, stride_mk, stride_pk, PAGE_SIZE, DTYPE, HEAD_DIM, HEAD_DIM_V, BLOCK_D,
            BLOCK_DV, BLOCK_N, BLOCK_DR, ROPE_DIM, HAS_MASK, HAS_PSE, FILL, QUANT_MODE, FP16_PATH, IS_PAGED,
            PAGE_TILES, HAS_PREFIX, K_QUANT, V_QUANT, HAS_K_OFFSET, HAS_V_OFFSET, K_C0, V_C0, KR_C0, USE_TMA,
            SCALE_POS, MASK_SUMMARY, PTX, True)
    for v in range(v_lo, v_hi, V_STEP):                  # steady blocks: no element predicate
        b_acc, b_l, b_m, b_m16 = _block(
            _visit(p_visit, v, MASK_SUMMARY), b_acc, b_l, b_m, b_m16, b_q, b_qr, desc_k, desc_v, k_head, v_head, KP, VP, KR, p_table, NUM_BLOCKS,
            KSC, KOF, VSC, VOF, p_mrow, p_prow, b64, kvn64, i_b, i_kvn, kv_off, kvm_off, kvlen, prefix, o_i, m_row,
            pre, nxt, qk_scale, deq1, qs1, deq2, stride_ks, stride_kd, stride_vs, stride_vd, stride_kb, stride_vb,
            stride_kpn, stride_kps, stride_kpd, stride_vpn, stride_vps, stride_vpd, stride_krb, stride_krn,
            stride_krs, stride_krd, stride_ksx, stride_ksh, stride_ksy, stride_vsx, stride_vsh, stride_vsy,
            stride_kt, stride_vt, stride_krt, stride_mk, stride_pk, PAGE_SIZE, DTYPE, HEAD_DIM, HEAD_DIM_V, BLOCK_D,
            BLOCK_DV, BLOCK_N, BLOCK_DR, ROPE_DIM, HAS_MASK, HAS_PSE, FILL, QUANT_MODE, FP16_PATH, IS_PAGED,
            PAGE_TILES, HAS_PREFIX, K_QUANT, V_QUANT, HAS_K_OFFSET, HAS_V_OFFSET, K_C0, V_C0, KR_C0, USE_TMA,
            SCALE_POS, MASK_SUMMARY, PTX, False)
    for v in range(v_hi, v_end, V_STEP):                 # partial blocks after them (diagonal, end of keys)
        b_acc, b_l, b_m, b_m16 = _block(
            _visit(p_visit, v, MASK_SUMMARY), b_acc, b_l, b_m, b_m16, b_q, b_qr, desc_k, desc_v, k_head, v_head, KP, VP, KR, p_table, NUM_BLOCKS,
            KSC, KOF, VSC, VOF, p_mrow, p_prow, b64, kvn64, i_b, i_kvn, kv_off, kvm_off, kvlen, prefix, o_i, m_row,
            pre, nxt, qk_scale, deq1, qs1, deq2, stride_ks, stride_kd, stride_vs, stride_vd, stride_kb, stride_vb,
            stride_kpn, stride_kps, stride_kpd, stride_vpn, stride_vps, stride_vpd, stride_krb, stride_krn,
            stride_krs, stride_krd, stride_ksx, stride_ksh, stride_ksy, stride_vsx, stride_vsh, stride_vsy,
            stride_kt, stride_vt, stride_krt, stride_mk, stride_pk, PAGE_SIZE, DTYPE, HEAD_DIM, HEAD_DIM_V, BLOCK_D,
            BLOCK_DV, BLOCK_N, BLOCK_DR, ROPE_DIM, HAS_MASK, HAS_PSE, FILL, QUANT_MODE, FP16_PATH, IS_PAGED,
            PAGE_TILES, HAS_PREFIX, K_QUANT, V_QUANT, HAS_K_OFFSET, HAS_V_OFFSET, K_C0, V_C0, KR_C0, USE_TMA,
            SCALE_POS, MASK_SUMMARY, PTX, True)
    b_acc = b_acc.to(tl.float32)
    if PAIRS:
        b_l = tl.sum(b_l, 1)

    m_has_key = m_row & (tl.maximum(o_i - pre, 0) <= tl.minimum(o_i + nxt, kvlen - 1))
    m_all_fill = m_has_key & (b_m == FILL)
    if HAS_MASK:
        if not ZERO_MASKED_ROWS:
            # Fully masked rows: every key outside the visited blocks scores FILL as well.
            if tl.sum(m_all_fill.to(tl.int32)) > 0:
                b_pf = tl.where(m_all_fill, 1.0, 0.0)                        # exp(FILL - m)
                for j0 in range(0, kvlen, BLOCK_N):
                    unvisited = (j0 < j_start) | (j0 >= j_end)
                    if MASK_SUMMARY:                     # or skipped as all masked: no visit between the counts
                        unvisited = unvisited | (_visit_at(p_count, j0 + BLOCK_N, BLOCK_N, MASK_SUMMARY)
                                                 == _visit_at(p_count, j0, BLOCK_N, MASK_SUMMARY))
                    if unvisited:
                        o_j = j0 + tl.arange(0, BLOCK_N)
                        m_j = o_j < kvlen
                        o_kb, o_kr, m_kv = _key_rows(o_j, m_j, prefix, b64, kv_off, p_table, NUM_BLOCKS,
                                                     PAGE_SIZE, IS_PAGED)
                        b_p = tl.where(m_j[None, :], b_pf[:, None], 0.0)
                        b_v = _load_v(v_head, VP, VSC, VOF, o_j, m_kv, prefix, kvn64, b64, o_kb, o_kr, o_dv, m_dv,
                                      stride_vb, stride_vs, stride_vd, stride_vt, stride_vpn, stride_vps, stride_vpd,
                                      stride_vsx, stride_vsh, stride_vsy, DTYPE, HAS_PREFIX, V_QUANT,
                                      HAS_V_OFFSET, IS_PAGED, True, HEAD_DIM_V != BLOCK_DV, V_C0)
                        b_acc += _pv(b_p, b_v, qs1, deq2, QUANT_MODE)
                        b_l += tl.sum(b_p, 1)

    m_out = m_has_key
    if ZERO_MASKED_ROWS:
        m_out = m_out & (b_m != FILL)
    b_norm = b_l
    if QUANT_MODE == 1 or FP16_PATH:
        b_norm = b_l.to(tl.float16).to(tl.float32)                           # O / fp16(l)
    b_o = tl.where(m_out[:, None], b_acc / tl.where(m_out, b_norm, 1.0)[:, None], 0.0)
    if OUT_QUANT > 0:
        if OUT_QUANT == 2:                                                   # per channel: n * DV + d
            p_s2 = n64 * HEAD_DIM_V + o_dv
            b_s2 = tl.load(QS2 + p_s2, mask=m_dv, other=0.0).to(tl.float32)[None, :]    # [1, BDV]
            b_o2 = b_s2
            if HAS_OFFSET2:
                b_o2 = tl.load(QO2 + p_s2, mask=m_dv, other=0.0).to(tl.float32)[None, :]
        else:
            b_s2 = tl.load(QS2).to(tl.float32)
            b_o2 = b_s2
            if HAS_OFFSET2:
                b_o2 = tl.load(QO2).to(tl.float32)
        b_o = tl.where(m_out[:, None], quant.ascend_quant_tl(b_o, b_s2, b_o2, HAS_OFFSET2), 0)
    m_r = m_row if VARLEN else o_r < S1                  # token-major rows of other batches are theirs
    p_o = O + b64 * stride_ob + n64 * stride_on + o_r[:, None].to(tl.int64) * stride_os + o_dv[None, :] * stride_od
    tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_r[:, None] & m_dv[None, :])
    if HAS_LSE:
        b_mn = b_m
        if QUANT_MODE == 0 and not FP16_PATH:            # natural log again; FILL was never scaled
            b_mn = tl.where(b_m == FILL, FILL, b_m * LN2)
        b_lse = tl.where(m_out, b_mn + tl.log(tl.where(m_out, b_l, 1.0)),
                         tl.where(kvlen > 0, float("inf"), LSE_EMPTY))
        p_lse = LSE + b64 * stride_lb + n64 * stride_ln + o_r.to(tl.int64) * stride_ls
        tl.store(p_lse, b_lse, mask=m_r)


@triton.jit
def _block(
    visit, b_acc, b_l, b_m, b_m16, b_q, b_qr, desc_k, desc_v, k_head, v_head, KP, VP, KR, p_table, NUM_BLOCKS,
    KSC, KOF, VSC, VOF, p_mrow, p_prow, b64, kvn64, i_b, i_kvn, kv_off, kvm_off, kvlen, prefix, o_i, m_row,
    pre, nxt, qk_scale, deq1, qs1, deq2, stride_ks, stride_kd, stride_vs, stride_vd, stride_kb, stride_vb,
    stride_kpn, stride_kps, stride_kpd, stride_vpn, stride_vps, stride_vpd, stride_krb, stride_krn,
    stride_krs, stride_krd, stride_ksx, stride_ksh, stride_ksy, stride_vsx, stride_vsh, stride_vsy,
    stride_kt, stride_vt, stride_krt, stride_mk, stride_pk, PAGE_SIZE, DTYPE: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_DR: tl.constexpr,
    ROPE_DIM: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PSE: tl.constexpr, FILL: tl.constexpr,
    QUANT_MODE: tl.constexpr, FP16_PATH: tl.constexpr, IS_PAGED: tl.constexpr, PAGE_TILES: tl.constexpr,
    HAS_PREFIX: tl.constexpr, K_QUANT: tl.constexpr, V_QUANT: tl.constexpr, HAS_K_OFFSET: tl.constexpr,
    HAS_V_OFFSET: tl.constexpr, K_C0: tl.constexpr, V_C0: tl.constexpr, KR_C0: tl.constexpr,
    USE_TMA: tl.constexpr, SCALE_POS: tl.constexpr, MASK_SUMMARY: tl.constexpr, PTX: tl.constexpr,
    PARTIAL: tl.constexpr,
):
    """One key block ``j0 + [0, BLOCK_N)`` of the online softmax: (acc, l, m) updated. ``visit``: ``j0``, or
    with MASK_SUMMARY the summary's ``2 * (j0 // BLOCK_N) + mixed`` (only a mixed block reads the mask).
    ``PARTIAL``: apply the band/length predicate (else every (row, key) of the block is inside the band
    and the length). Steady float blocks without mask or pse apply the scale inside exp2 (FOLD; SCALE_POS:
    scale >= 0)."""
    FOLD: tl.constexpr = SCALE_POS and not (PARTIAL or HAS_MASK or HAS_PSE or FP16_PATH or QUANT_MODE == 1)
    # FP16_PATH on packed column pairs (_scale16, _row_max16, _lane_sums); not above DV = 128, where it
    # costs sm_80 registers (fp16-d256: 787 -> 902 instructions per 32 keys)
    PAIRS: tl.constexpr = FP16_PATH and BLOCK_DV <= 128
    if MASK_SUMMARY:
        j0 = (visit >> 1) * BLOCK_N
    else:
        j0 = visit
    o_j = j0 + tl.arange(0, BLOCK_N)                     # [BN] keys of the batch
    m_j = o_j < kvlen
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    m_d = o_d < HEAD_DIM
    m_dv = o_dv < HEAD_DIM_V
    if USE_TMA:
        b_k = desc_k.load([i_b, i_kvn, kv_off + j0, 0]).reshape(BLOCK_N, BLOCK_D).T        # [BD, BN]
        b_v = desc_v.load([i_b, i_kvn, kv_off + j0, 0]).reshape(BLOCK_N, BLOCK_DV)         # [BN, BDV]
        if PARTIAL:                                      # keys past the length: zero values (no NaN into P·V)
            b_v = tl.where(m_j[:, None], b_v, 0.0)
    else:
        if PAGE_TILES:                                   # the block lies in one page: one table entry
            o_kb, o_kr, m_kv = _page_rows(j0, m_j, p_table, NUM_BLOCKS, PAGE_SIZE, BLOCK_N)
        else:
            o_kb, o_kr, m_kv = _key_rows(o_j, m_j, prefix, b64, kv_off, p_table, NUM_BLOCKS, PAGE_SIZE, IS_PAGED)
        p_k = k_head + (o_kb * stride_kb + o_kr * stride_ks)[None, :] \
            + channel_offsets(o_d[:, None], stride_kd, stride_kt, K_C0)
        if HAS_PREFIX:
            p_kp = KP + kvn64 * stride_kpn + o_j[None, :].to(tl.int64) * stride_kps + o_d[:, None] * stride_kpd
            p_k = tl.where((o_j < prefix)[None, :], p_kp, p_k)
        b_k = load2(p_k, m_d[:, None], m_kv[None, :], HEAD_DIM != BLOCK_D, PARTIAL or IS_PAGED)     # [BD, BN]
        if K_QUANT > 0:
            b_k = _antiquant(b_k, KSC, KOF, kvn64, b64, o_kb, o_kr, o_j - prefix, o_d, m_d, m_kv, stride_ksx,
                             stride_ksh, stride_ksy, DTYPE, K_QUANT, HAS_K_OFFSET, True)
        b_v = _load_v(v_head, VP, VSC, VOF, o_j, m_kv, prefix, kvn64, b64, o_kb, o_kr, o_dv, m_dv, stride_vb,
                      stride_vs, stride_vd, stride_vt, stride_vpn, stride_vps, stride_vpd, stride_vsx, stride_vsh,
                      stride_vsy, DTYPE, HAS_PREFIX, V_QUANT, HAS_V_OFFSET, IS_PAGED, PARTIAL, HEAD_DIM_V != BLOCK_DV,
                      V_C0)                                                                    # [BN, BDV]

    if QUANT_MODE == 1:                                  # fp16 scores, each step rounded
        b_s = (tl.dot(b_q, b_k, out_dtype=tl.int32).to(tl.float32) * deq1).to(tl.float16)   # [BM, BN]
        b_s = b_s * tl.cast(qk_scale, tl.float16)
    else:
        b_s = tl.dot(b_q, b_k)                                               # [BM, BN]
        if ROPE_DIM > 0:                                 # MLA: [q, q_rope]·[k, k_rope]
            o_dr = tl.arange(0, BLOCK_DR)
            p_kr = KR + kvn64 * stride_krn + (o_kb * stride_krb + o_kr * stride_krs)[None, :] \
                + channel_offsets(o_dr[:, None], stride_krd, stride_krt, KR_C0)
            b_kr = load2(p_kr, (o_dr < ROPE_DIM)[:, None], m_kv[None, :], ROPE_DIM != BLOCK_DR,
                          PARTIAL or IS_PAGED)                                              # [BDR, BN]
            b_s += tl.dot(b_qr, b_kr)
        if FP16_PATH:                                    # fp16(fp16(q·k) * fp16 scale)
            b_s = _scale16(b_s, qk_scale, PTX and PAIRS)
        elif not FOLD:
            b_s = b_s * qk_scale
    if HAS_PSE:
        p_p = p_prow[:, None] + (kvm_off + o_j)[None, :].to(tl.int64) * stride_pk
        b_pse = load2(p_p, m_row[:, None], m_j[None, :], True, PARTIAL)
        if QUANT_MODE == 1 or FP16_PATH:
            b_s = (b_s + b_pse.to(tl.float16)).to(tl.float16)                # fp16 sum
        else:
            b_s += b_pse.to(tl.float32) * LOG2E
    if PARTIAL:                                          # (i, j) outside the band: FILL; past the keys: -inf
        keep = (o_j[None, :] - o_i[:, None] <= nxt) & (o_i[:, None] - o_j[None, :] <= pre)
        b_s = tl.where(keep, b_s, FILL)
        b_s = tl.where(m_j[None, :], b_s, float("-inf"))
    if HAS_MASK:
        if MASK_SUMMARY:
            if (visit & 1) != 0:
                b_s = _user_mask(b_s, p_mrow, kvm_off, o_j, m_row, m_j, stride_mk, FILL, PARTIAL)
        else:
            b_s = _user_mask(b_s, p_mrow, kvm_off, o_j, m_row, m_j, stride_mk, FILL, PARTIAL)

    if FOLD:                                             # max(qk) * scale = max(qk * scale) for a scale >= 0
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1) * qk_scale)
    elif PAIRS:                                          # b_m = fp32(b_m16): fp16 maxima, -inf or FILL
        b_m16 = _row_max16(b_s, b_m16, BLOCK_N, PTX)
        b_m_new = b_m16.to(tl.float32)
    else:                                                # (exact in the scores' dtype)
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1).to(tl.float32))
    if QUANT_MODE == 1 or FP16_PATH:                     # exp of fp16 differences (as exp2, as the CPU path), P in fp16
        b_alpha = tl.math.exp2((b_m - b_m_new) * LOG2E)
        b_e = tl.math.exp2((b_s - (b_m16 if PAIRS else b_m_new.to(tl.float16))[:, None]).to(tl.float32) * LOG2E)
        b_p = b_e.to(tl.float16)
        if FP16_PATH:                                    # l sums the exp values before P is rounded
            if PAIRS:
                b_l = b_l * b_alpha[:, None] + _lane_sums(b_e, BLOCK_N)
            else:
                b_l = b_l * b_alpha + tl.sum(b_e, 1)
        else:
            b_l = b_l * b_alpha + tl.sum(b_p.to(tl.float32), 1)
    else:
        b_alpha = tl.math.exp2(b_m - b_m_new)
        if FOLD:
            b_p = tl.math.exp2(b_s * qk_scale - b_m_new[:, None])           # one multiply-add per score
        else:
            b_p = tl.math.exp2(b_s - b_m_new[:, None])                      # [BM, BN]
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
    if FP16_PATH:                                        # acc = fp16(acc * alpha + fp16(P·V)), in fp16
        b_acc = b_acc * b_alpha.to(tl.float16)[:, None] + tl.dot(b_p, b_v).to(tl.float16)
    elif QUANT_MODE == 1:
        b_acc = b_acc * b_alpha[:, None] + _pv(b_p, b_v, qs1, deq2, QUANT_MODE)
    else:
        b_acc = tl.dot(b_p.to(b_v.dtype), b_v, b_acc * b_alpha[:, None])
    return b_acc, b_l, b_m_new, b_m16


@triton.jit
def _scale16(b_s, qk_scale, PTX: tl.constexpr):
    """fp16(fp16(s) * fp16(scale)) of fp32 scores. PTX: one packed conversion and multiply per pair of
    adjacent columns (compiled as is, the conversion runs one element at a time once ``_row_max16`` reads
    the pairs)."""
    if PTX:
        c16 = tl.full(b_s.shape, qk_scale, tl.float16)
        return tl.inline_asm_elementwise("{ .reg .b32 t; cvt.rn.f16x2.f32 t, $2, $1; mul.rn.f16x2 $0, t, $3; }",
                                         "=r,r,r,r", [b_s, c16], dtype=tl.float16, is_pure=True, pack=2)
    return b_s.to(tl.float16) * tl.cast(qk_scale, tl.float16)


@triton.jit
def _fmax(a, b):
    return tl.maximum(a, b)


@triton.jit
def _row_max16(b_s, b_m16, BLOCK_N: tl.constexpr, PTX: tl.constexpr):
    """max(b_m16, row maximum of fp16 scores [BM, BN]) in fp16 (exact: a maximum does not round). The MMA
    layouts give a thread columns 8k + 2t + p (t: its lane in the row's quad) of rows i and i + 8: the
    maximum over k runs on packed fp16 pairs; then rows i and i + 8 of each 16 rows share a word (their
    maxima over p, across the lanes and with b_m16 are one max.f16x2 each, one shuffle per step for both).
    Any pairing of rows gives the same result (the words are only compared half by half); PTX only
    chooses the instructions (the interpreter runs the same steps on integer words)."""
    BM: tl.constexpr = b_s.shape[0]
    x = tl.reduce(b_s.reshape(BM, BLOCK_N // 8, 4, 2), 1, _fmax)            # [BM, 4, 2]
    z = x.reshape(BM // 16, 2, 8, 4, 2).permute(0, 2, 3, 1, 4)              # [BM/16, 8, 4, rows i / i + 8, p]
    z0, z1 = tl.split(z)                                                     # p = 0, 1
    m = b_m16.reshape(BM // 16, 2, 8).permute(0, 2, 1)                       # [BM/16, 8, rows i / i + 8]
    if PTX:
        w = tl.reduce(_hmax2(_pack16(z0, PTX), _pack16(z1, PTX), PTX), 2, _hmax2_ptx)      # [BM/16, 8]
    else:
        w = tl.reduce(_hmax2(_pack16(z0, PTX), _pack16(z1, PTX), PTX), 2, _hmax2_int)
    lo, hi = _unpack16(_hmax2(w, _pack16(m, PTX), PTX), PTX)
    return tl.join(lo, hi).permute(0, 2, 1).reshape(BM)


@triton.jit
def _pack16(x, PTX: tl.constexpr):
    """[..., 2] fp16 -> [...] int32 words, element 0 in the low half."""
    lo, hi = tl.split(x)
    if PTX:
        return tl.inline_asm_elementwise("mov.b32 $0, {$1, $2};", "=r,h,h", [lo, hi], dtype=tl.int32,
                                         is_pure=True, pack=1)
    return (lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF) \
        | (hi.to(tl.int16, bitcast=True).to(tl.int32) << 16)


@triton.jit
def _unpack16(w, PTX: tl.constexpr):
    """Words -> (low, high) fp16 halves."""
    if PTX:
        return tl.inline_asm_elementwise("mov.b32 {$0, $1}, $2;", "=h,=h,r", [w], dtype=(tl.float16, tl.float16),
                                         is_pure=True, pack=1)
    return (w.to(tl.int16).to(tl.float16, bitcast=True), (w >> 16).to(tl.int16).to(tl.float16, bitcast=True))


@triton.jit
def _hmax2(a, b, PTX: tl.constexpr):
    """Half by half fp16 maximum of words (max.f16x2: a NaN half yields the other operand's, as tl.maximum)."""
    if PTX:
        return tl.inline_asm_elementwise("max.f16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True,
                                         pack=1)
    a0, a1 = _unpack16(a, PTX)
    b0, b1 = _unpack16(b, PTX)
    return _pack16(tl.join(tl.maximum(a0, b0), tl.maximum(a1, b1)), PTX)


@triton.jit
def _hmax2_ptx(a, b):
    return _hmax2(a, b, True)


@triton.jit
def _hmax2_int(a, b):
    return _hmax2(a, b, False)


@triton.jit
def _lane_sums(b_e, BLOCK_N: tl.constexpr):
    """[BM, 4] sums of fp32 [BM, BN] over columns 8k + 2t + p for each t: in the MMA layouts, each lane's
    own columns (no shuffle; the lanes' sums are added once, after the key loop)."""
    return tl.sum(tl.sum(b_e.reshape(b_e.shape[0], BLOCK_N // 8, 4, 2), 3), 1)


@triton.jit
def _user_mask(b_s, p_mrow, kvm_off, o_j, m_row, m_j, stride_mk, FILL: tl.constexpr, PARTIAL: tl.constexpr):
    """Scores with FILL where the user mask is non-zero (rows ``m_row``, keys ``m_j`` of the block)."""
    p_um = p_mrow[:, None] + (kvm_off + o_j)[None, :].to(tl.int64) * stride_mk
    b_um = load2(p_um, m_row[:, None], m_j[None, :], True, PARTIAL)
    return tl.where(b_um != 0, FILL, b_s)


@triton.jit
def _visit_at(p_count, j, BLOCK_N: tl.constexpr, MASK_SUMMARY: tl.constexpr):
    """Where the loops' visits of the key blocks from key ``j`` (a multiple of BLOCK_N) start: ``j``, or with
    MASK_SUMMARY the row tile's count of visits before block ``j // BLOCK_N``."""
    if MASK_SUMMARY:
        return tl.load(p_count + j // BLOCK_N)
    return j


@triton.jit
def _visit(p_visit, v, MASK_SUMMARY: tl.constexpr):
    """The ``visit`` argument of ``_block`` for loop index ``v``."""
    if MASK_SUMMARY:
        return tl.load(p_visit + v)
    return v


@triton.jit
def load2(p, m_a, m_b, MASK_A: tl.constexpr, MASK_B: tl.constexpr):
    """Load a 2-D block with the row/column masks that apply (zeros where masked)."""
    if MASK_A and MASK_B:
        return tl.load(p, mask=m_a & m_b, other=0)
    elif MASK_A:
        return tl.load(p, mask=m_a, other=0)
    elif MASK_B:
        return tl.load(p, mask=m_b, other=0)
    else:
        return tl.load(p)


@triton.jit
def channel_offsets(o_c, stride_c, stride_tile, C0: tl.constexpr):
    """Offsets of channels ``o_c`` from a token's first channel: ``o_c * stride_c``; in an NZ cache
    (C0 > 0: tiles of C0 channels, ``stride_tile`` apart) ``(o_c // C0) * stride_tile + (o_c % C0) * stride_c``."""
    if C0 > 0:
        return (o_c // C0) * stride_tile + (o_c % C0) * stride_c
    return o_c * stride_c


@triton.jit
def _valid_block(o_blk, NUM_BLOCKS):
    """Block ids inside the cache; any other id reads as zeros and is replaced by block 0 for addressing."""
    ok = (o_blk >= 0) & (o_blk < NUM_BLOCKS)
    return tl.where(ok, o_blk, 0).to(tl.int64), ok


@triton.jit
def _key_rows(o_j, m_j, prefix, b64, kv_off, p_table, NUM_BLOCKS, PAGE_SIZE, IS_PAGED: tl.constexpr):
    """[BN] (block, row, readable) of the batch's own keys ``o_j - prefix``: paged caches keep key t at
    row t % PAGE_SIZE of block table[b, t // PAGE_SIZE]; plain tensors at row kv_off + t of batch b (the
    blocks of plain tensors are batches). ``readable`` is ``m_j`` (and a valid block id when paged)."""
    o_t = o_j - prefix
    if IS_PAGED:
        o_t = tl.maximum(o_t, 0)
        o_blk = tl.load(p_table + o_t // PAGE_SIZE, mask=m_j, other=0)
        o_blk, ok = _valid_block(o_blk, NUM_BLOCKS)
        return o_blk, (o_t % PAGE_SIZE).to(tl.int64), ok & m_j
    return tl.zeros_like(o_t).to(tl.int64) + b64, (kv_off + o_t).to(tl.int64), m_j


@triton.jit
def _page_rows(j0, m_j, p_table, NUM_BLOCKS, PAGE_SIZE, BLOCK_N: tl.constexpr):
    """``_key_rows`` of a block inside one page (no prefix): one table entry for the whole block."""
    o_n = tl.arange(0, BLOCK_N)
    o_kb, ok = _valid_block(tl.zeros_like(o_n) + tl.load(p_table + j0 // PAGE_SIZE), NUM_BLOCKS)  # [BN], one id
    return o_kb, (j0 % PAGE_SIZE + o_n).to(tl.int64), m_j & ok


@triton.jit
def _antiquant(b_x, SC, OF, kvn64, b64, o_kb, o_kr, o_t, o_d, m_d, m_kv, stride_x, stride_h, stride_y,
               dtype: tl.constexpr, MODE: tl.constexpr, HAS_OFFSET: tl.constexpr, D_FIRST: tl.constexpr):
    """int8 block → (x + offset) * scale in ``dtype`` (fp16 arithmetic for fp16, fp32 then cast for bf16).
    Parameters are [X, KV_N, Y] views: MODE 1 per channel (Y = d); 2 per token by position (X = batch,
    Y = token index t of the sequence); 3 per token by storage (X = batch or paged block, Y = row in it).
    Keys that are not readable (``m_kv``) get scale and offset 0, hence 0.
    D_FIRST: the block is [BD, BN] (keys), else [BN, BD] (values)."""
    if MODE == 1:
        p_s = kvn64 * stride_h + o_d * stride_y                                        # [BD]
        m_s = m_d
    elif MODE == 2:
        p_s = b64 * stride_x + kvn64 * stride_h + o_t.to(tl.int64) * stride_y          # [BN]
        m_s = m_kv
    else:
        p_s = o_kb * stride_x + kvn64 * stride_h + o_kr * stride_y                      # [BN]
        m_s = m_kv
    b_sc = tl.load(SC + p_s, mask=m_s, other=0.0)
    if HAS_OFFSET:
        b_of = tl.load(OF + p_s, mask=m_s, other=0.0)
    else:
        b_of = tl.zeros_like(b_sc)
    if (MODE == 1) == D_FIRST:                           # parameters run along the block's first axis
        b_sc = b_sc[:, None]
        b_of = b_of[:, None]
    else:
        b_sc = b_sc[None, :]
        b_of = b_of[None, :]
    if dtype == tl.float16:
        return (b_x.to(tl.float16) + b_of.to(tl.float16)) * b_sc.to(tl.float16)
    return ((b_x.to(tl.float32) + b_of.to(tl.float32)) * b_sc.to(tl.float32)).to(dtype)


@triton.jit
def _load_v(v_head, VP, VSC, VOF, o_j, m_kv, prefix, kvn64, b64, o_kb, o_kr, o_dv, m_dv,
            stride_vb, stride_vs, stride_vd, stride_vt, stride_vpn, stride_vps, stride_vpd,
            stride_vsx, stride_vsh, stride_vsy, dtype: tl.constexpr, HAS_PREFIX: tl.constexpr,
            V_QUANT: tl.constexpr, HAS_V_OFFSET: tl.constexpr, IS_PAGED: tl.constexpr, MASKED: tl.constexpr,
            PAD_DV: tl.constexpr, V_C0: tl.constexpr):
    """Value block [BN, BDV] of keys ``o_j`` (shared prefix first, then own keys; int8 anti-quantised);
    keys that are not readable (``m_kv``, applied when MASKED or paged) read as zeros; PAD_DV: BDV > DV."""
    p_v = v_head + (o_kb * stride_vb + o_kr * stride_vs)[:, None] \
        + channel_offsets(o_dv[None, :], stride_vd, stride_vt, V_C0)
    if HAS_PREFIX:
        p_vp = VP + kvn64 * stride_vpn + o_j[:, None].to(tl.int64) * stride_vps + o_dv[None, :] * stride_vpd
        p_v = tl.where((o_j < prefix)[:, None], p_vp, p_v)
    b_v = load2(p_v, m_kv[:, None], m_dv[None, :], MASKED or IS_PAGED, PAD_DV)
    if V_QUANT > 0:
        b_v = _antiquant(b_v, VSC, VOF, kvn64, b64, o_kb, o_kr, o_j - prefix, o_dv, m_dv, m_kv, stride_vsx,
                         stride_vsh, stride_vsy, dtype, V_QUANT, HAS_V_OFFSET, False)
    return b_v


@triton.jit
def _pv(b_p, b_v, qs1, deq2, QUANT_MODE: tl.constexpr):
    """P·V of one key block, fp32 [BM, BDV]: P in V's dtype, or (int8) P quantised with quant_scale1,
    int8 dot into int32, dequantised with deq_scale2 to fp16."""
    if QUANT_MODE == 1:
        b_pq = quant.ascend_quant_f16_tl(b_p.to(tl.float16), qs1.to(tl.float16))   # [BM, BN] int8
        b_o = tl.dot(b_pq, b_v, out_dtype=tl.int32).to(tl.float32)
        b_o = (b_o * deq2).to(tl.float16).to(tl.float32)
    else:
        b_o = tl.dot(b_p.to(b_v.dtype), b_v)
    return b_o


@dataclass(frozen=True)
class PrefillConfig:
    """Static launch description of one prefill call (hashable; equal ⇔ same kernel and grid)."""

    strides: tuple[int, ...]        # the stride_* arguments, in signature order
    sizes: tuple[int, ...]          # N, S1, S2, BN_TOTAL, GROUP, PAGE_SIZE
    meta: tuple[tuple[str, object], ...]   # constexpr name/value pairs (FP16_PATH, TOKEN_GRID: False if absent)
    grid: tuple[int, int, int]
    num_warps: int
    num_stages: int
    sm_scale: float
    num_blocks: int = -1            # blocks of a paged cache (-1: the key operand's first dim, at launch)
    summary: Optional[mask_summary.SummaryConfig] = None    # the user mask's block summary (MASK_SUMMARY)
    tma: bool = field(init=False)   # the layout allows tensor descriptors (addresses are checked at launch)

    def __post_init__(self):
        object.__setattr__(self, "tma", _tma_layout(self.strides, self.sizes, dict(self.meta)))


_DEFAULT_META = {"FP16_PATH": False, "TOKEN_GRID": False}


def _tma_layout(strides: tuple, sizes: tuple, meta: dict) -> bool:
    """Dense float Q/K/V (no paging, prefix, rope, anti-quant or token-major rows), boxes of at most 256
    per dim, unit last strides and every other stride a positive multiple of 16 bytes."""
    if meta["QUANT_MODE"] or meta["VARLEN"] or meta["IS_PAGED"] or meta["HAS_PREFIX"] or meta["ROPE_DIM"] \
            or meta["K_QUANT"] or meta["V_QUANT"] or max(meta["BLOCK_D"], meta["BLOCK_DV"], meta["BLOCK_M"]) > 256 \
            or sizes[2] == 0:
        return False
    return all(s[3] == 1 and all(x > 0 and x % 8 == 0 for x in s[:3])      # 8 two-byte elements
               for s in (strides[0:4], strides[4:8], strides[8:12]))


def block_config(d: int, dv: int, on_gpu: bool, tiles: int = 0) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for head dims d/dv on the GPU launches compile for
    (``launcher.target_arch``). Chosen from the static report (``python -m bench report``): no spills in
    the main loop, the fewest main-loop instructions per key, shared memory within the arch's limit.
    ``tiles``: [BLOCK_M, BLOCK_N] tiles each key block reads besides Q/K/V (user mask, pse); they take
    32-key blocks. Calls whose numerics depend on the key block (the int8 pipeline quantises P per block)
    pass 0, so that their block is the one the reference reads here with the default."""
    if not on_gpu:
        return 32, 32, 4, 1
    width = max(d, dv)
    hopper = (launcher.target_arch() or 90) >= 90
    if width <= 128 and tiles:
        return 128, 32, 8, 2
    if width <= 128:
        return (128, 128, 8, 3) if hopper else (128, 64, 8, 2)
    if width <= 256:
        return 128, 64, 8, 2
    return 64, 32, 8, 2


def cdiv(a: int, b: int) -> int:
    """Host-side ceiling division (``triton.cdiv`` is a JIT function: slow to call on the launch path)."""
    return -(-a // b)


def grid(s1: int, block_m: int, bn_total: int) -> tuple[int, int, int]:
    """(row blocks, batch*heads folded into axes 1 and 2 so no axis exceeds 65535; no batch: 0 programs)."""
    y = max(1, min(bn_total, 65535))
    return (cdiv(s1, block_m), y, cdiv(bn_total, y))


def token_grid(t: int, block_m: int, n: int) -> tuple[int, int, int]:
    """Grid of a TOKEN_GRID launch: (row tiles of the T tokens, query heads, 1), whatever the number of
    sequences. Its parameter block has ``BN_TOTAL // N`` rows of ``params.FIELDS`` (unused rows zero),
    then per row tile r two int32 words ``lo, hi``: the batch rows that may meet tokens
    [r·BLOCK_M, (r+1)·BLOCK_M) (``lo == hi``: none)."""
    return (cdiv(t, block_m), n, 1)


def kernel_args(cfg: PrefillConfig, tensors: tuple, scales: tuple = (), sources: tuple = (), summary=None) -> dict:
    """Every argument of ``_prefill_kernel`` by name: tensors (Q, K, V, O, LSE, MASK, PSE, PARAMS), the
    quantisation scales (DEQ1, QS1, DEQ2, QS2, QO2) and the fused-operator inputs (QPAD, KVPAD, TABLE, KP,
    VP, QR, KR, KSC, KOF, VSC, VOF), Q standing in for absent ones, then the scale, strides and sizes of ``cfg``,
    the mask summary (``summary``: its scratch when ``cfg.summary``), then its constexprs and those derived
    at launch (USE_TMA, PAGE_TILES, SCALE_POS, MASK_SUMMARY, PTX)."""
    def padded(group: tuple, size: int) -> tuple:
        return tuple(tensors[0] if t is None else t for t in group) + (tensors[0],) * (size - len(group))

    num_blocks = cfg.num_blocks if cfg.num_blocks >= 0 else int(tensors[1].shape[0])
    values = (*tensors, *padded(scales, 5), *padded(sources, 11), cfg.sm_scale, *cfg.strides, *cfg.sizes,
              num_blocks)
    args = dict(zip(_prefill_kernel.arg_names, values))
    args.update(_DEFAULT_META)
    args.update(cfg.meta)
    arch = launcher.target_arch()                        # None: the interpreter, which runs descriptors too
    args["USE_TMA"] = cfg.tma and (arch is None or arch >= 90) and all(t.data_ptr() % 16 == 0 for t in tensors[:3])
    args["PAGE_TILES"] = bool(args["IS_PAGED"]) and cfg.sizes[5] % args["BLOCK_N"] == 0
    args["SCALE_POS"] = cfg.sm_scale >= 0
    args["PTX"] = arch is not None                       # inline PTX: compiled for a GPU
    sc = cfg.summary
    args.update(SUMMARY=tensors[0] if sc is None else summary, stride_ub=0 if sc is None else sc.batch_stride,
                SUMMARY_COLS=0 if sc is None else sc.col_tiles, MASK_SUMMARY=sc is not None)
    return args


def fp_fusion(meta) -> bool:
    """Whether the compiler may fuse a multiply and an add: not on the int8 path (QUANT_MODE) nor on
    FP16_PATH, whose fp16 steps are each rounded as on the NPU (fused, the fp16 accumulator's
    ``acc * alpha + P·V`` would round once)."""
    meta = dict(meta)
    return meta.get("QUANT_MODE", 0) == 0 and not meta.get("FP16_PATH", False)


def positional(kernel, args: dict) -> tuple:
    """``args`` (by name) in ``kernel``'s signature order."""
    return tuple(map(args.__getitem__, kernel.arg_names))


def num_stages(cfg: PrefillConfig) -> int:
    """The plan's pipeline depth, at most 2 when a user-mask or pse tile joins each key block of 128 or
    more keys: three stages of those exceed sm_90's 227 KiB of shared memory."""
    meta = dict(cfg.meta)
    if (meta["HAS_MASK"] or meta["HAS_PSE"]) and meta["BLOCK_N"] >= 128:
        return min(cfg.num_stages, 2)
    return cfg.num_stages


def launch(cfg: PrefillConfig, *tensors, scales: tuple = (), sources: tuple = (), summary=None) -> None:
    """The launch's device work: the mask summary pass into ``summary`` (with ``cfg.summary``), then the
    prefill kernel."""
    if cfg.summary is not None:
        mask_summary.launch(cfg.summary, tensors[5], summary)
    args = kernel_args(cfg, tensors, scales, sources, summary)
    launcher.run(_prefill_kernel, cfg.grid, positional(_prefill_kernel, args), num_warps=cfg.num_warps,
                 num_stages=num_stages(cfg), enable_fp_fusion=fp_fusion(cfg.meta))
