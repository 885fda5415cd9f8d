"""Prefill flash attention: one kernel family for every prefill variant (constexpr flags).

One program computes BLOCK_M rows of the query/output seq axis for one (batch, query head). Per batch
lengths, offsets and band limits come from the parameter block (``npu_kernels.params``), so the grid
depends on static sizes only and the launch can be captured and later updated.

Per program: rows outside the batch's valid query range are written as 0; the key loop visits only
the blocks that intersect the band of the program's valid rows; the band/length predicate is
evaluated only on blocks that are not entirely inside the band; the user mask (non-zero = masked out)
is applied element-wise. Masked scores are replaced by FILL; keys past the batch's length are
excluded (-inf). A row whose every score is FILL attends uniformly to all keys of the batch (the NPU
result for fully masked rows); the keys of skipped blocks are added in a second, score-free pass that
runs only when such a row exists.

QUANT_MODE=1 is the int8 full-quantisation pipeline (spec ops §2.4): int8 Q·Kᵀ on int8 tensor cores into
int32, dequant with the FP19 ``deq_scale1`` to fp16, scale and pse in fp16, online softmax whose
unnormalised P is rounded to fp16 and quantised to int8 with ``quant_scale1`` (AscendQuant), int8 P·V
into int32, dequant with ``deq_scale2`` to fp16, accumulation in fp32, division by fp16(l) at the end.
OUT_QUANT quantises the normalised output to int8 (1: per-tensor, 2: per-channel ``quant_scale2`` /
``quant_offset2``); rows that are not computed are 0, not the offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from .. import launcher
from .. import params as pb
from .. import quant


@triton.jit
def _prefill_kernel(
    Q, K, V, O, LSE, MASK, PSE, PARAMS,     # PARAMS: [B, FIELDS] int32
    DEQ1, QS1, DEQ2, QS2, QO2,              # [1] scales (int32 fp32 bits or int64 words); QS2/QO2: [1] or [N*DV]
    QPAD, KVPAD, TABLE, KP, VP, QR, KR, KSC, KOF, VSC, VOF,   # fused-operator inputs (ops.sources); Q when absent
    sm_scale,
    stride_qb, stride_qn, stride_qs, stride_qd,     # Q: [B, N, S1, D] view
    stride_kb, stride_kn, stride_ks, stride_kd,     # K: [B, KV_N, S2, D] view
    stride_vb, stride_vn, stride_vs, stride_vd,     # V: [B, KV_N, S2, DV] view
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
    N, S1, S2, BN_TOTAL, GROUP, PAGE_SIZE,          # GROUP = N // KV_N
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_PSE: tl.constexpr, HAS_LSE: tl.constexpr,
    FILL: tl.constexpr, ZERO_MASKED_ROWS: tl.constexpr,
    QUANT_MODE: tl.constexpr, OUT_QUANT: tl.constexpr, HAS_OFFSET2: tl.constexpr,
    VARLEN: tl.constexpr, HAS_QPAD: tl.constexpr, HAS_KVPAD: tl.constexpr, IS_PAGED: tl.constexpr,
    HAS_PREFIX: tl.constexpr, ROPE_DIM: tl.constexpr, BLOCK_DR: tl.constexpr,
    K_QUANT: tl.constexpr, V_QUANT: tl.constexpr, HAS_K_OFFSET: tl.constexpr, HAS_V_OFFSET: tl.constexpr,
    LSE_EMPTY: tl.constexpr,
):
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if i_bh >= BN_TOTAL:
        return
    i_b = i_bh // N
    i_n = i_bh % N
    i_kvn = i_n // GROUP
    b64 = i_b.to(tl.int64)

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

    if VARLEN:                                           # token-major: programs walk the batch's rows
        i_base = i_m * BLOCK_M
        o_i = i_base + tl.arange(0, BLOCK_M)             # [BM] rows in the batch's valid region
        o_r = o_i + q_off                                # [BM] rows of the tensor's seq axis
    else:                                                # programs walk the tensor's rows
        i_base = i_m * BLOCK_M - q_off
        o_r = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
        o_i = o_r - q_off
    m_row = (o_i >= 0) & (o_i < qlen)
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    m_d = o_d < HEAD_DIM
    m_dv = o_dv < HEAD_DIM_V
    o_n = tl.arange(0, BLOCK_N)

    # Valid rows of this block and the key range their bands reach.
    i_lo = tl.maximum(i_base, 0)
    i_hi = tl.minimum(i_base + BLOCK_M - 1, qlen - 1)
    j_lo = tl.maximum(i_lo - pre, 0)
    j_hi = tl.minimum(i_hi + nxt + 1, kvlen)             # exclusive
    j_start = j_lo - j_lo % BLOCK_N
    if i_lo > i_hi:                                      # no valid row: the loops below run empty
        j_start = 0
        j_hi = 0

    p_q = Q + b64 * stride_qb + i_n.to(tl.int64) * stride_qn \
        + o_r[:, None].to(tl.int64) * stride_qs + o_d[None, :] * stride_qd
    b_q = tl.load(p_q, mask=m_row[:, None] & m_d[None, :], other=0.0)    # [BM, BD]
    if ROPE_DIM > 0:
        o_dr = tl.arange(0, BLOCK_DR)
        p_qr = QR + b64 * stride_qrb + i_n.to(tl.int64) * stride_qrn \
            + o_r[:, None].to(tl.int64) * stride_qrs + o_dr[None, :] * stride_qrd
        b_qr = tl.load(p_qr, mask=m_row[:, None] & (o_dr[None, :] < ROPE_DIM), other=0.0)   # [BM, BDR]
    kvn64 = i_kvn.to(tl.int64)

    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_M], tl.float32)
    b_acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)

    for j0 in range(j_start, j_hi, BLOCK_N):
        o_j = j0 + o_n                                   # [BN] keys in the batch's region
        m_j = o_j < kvlen
        o_kb, o_kr = _key_slots(o_j, kvlen, prefix, b64, kv_off, TABLE, stride_tb, PAGE_SIZE, IS_PAGED)
        p_k = K + kvn64 * stride_kn + (o_kb * stride_kb + o_kr * stride_ks)[None, :] + o_d[:, None] * stride_kd
        if HAS_PREFIX:
            p_kp = KP + kvn64 * stride_kpn + o_j[None, :].to(tl.int64) * stride_kps + o_d[:, None] * stride_kpd
            p_k = tl.where((o_j < prefix)[None, :], p_kp, p_k)
        b_k = tl.load(p_k, mask=m_j[None, :] & m_d[:, None], other=0)                   # [BD, BN]
        if K_QUANT > 0:
            b_k = _antiquant(b_k, KSC, KOF, kvn64, b64, o_kb, o_kr, o_j - prefix, o_d, m_d, m_j, stride_ksx,
                             stride_ksh, stride_ksy, Q.dtype.element_ty, K_QUANT, HAS_K_OFFSET, True)
        if QUANT_MODE == 1:                              # fp16 scores, each step rounded
            b_s = (tl.dot(b_q, b_k, out_dtype=tl.int32).to(tl.float32) * deq1).to(tl.float16)   # [BM, BN]
            b_s = b_s * tl.cast(sm_scale, tl.float16)
        elif ROPE_DIM > 0:                               # MLA: [q, q_rope]·[k, k_rope]
            p_kr = KR + kvn64 * stride_krn + (o_kb * stride_krb + o_kr * stride_krs)[None, :] \
                + o_dr[:, None] * stride_krd
            b_kr = tl.load(p_kr, mask=m_j[None, :] & (o_dr[:, None] < ROPE_DIM), other=0.0)  # [BDR, BN]
            b_s = (tl.dot(b_q, b_k) + tl.dot(b_qr, b_kr)) * sm_scale
        else:
            b_s = tl.dot(b_q, b_k) * sm_scale                                # [BM, BN]
        if HAS_PSE:
            p_p = PSE + b64 * stride_pb + i_n.to(tl.int64) * stride_pn \
                + (qm_off + o_i)[:, None].to(tl.int64) * stride_ps \
                + (kvm_off + o_j)[None, :].to(tl.int64) * stride_pk
            b_s += tl.load(p_p, mask=m_row[:, None] & m_j[None, :], other=0.0).to(tl.float32)
            if QUANT_MODE == 1:
                b_s = b_s.to(tl.float16)                                     # fp16 sum
        # Partial block: some (i, j) outside the band or past the keys.
        if (j0 < i_hi - pre) | (j0 + BLOCK_N - 1 > i_lo + nxt) | (j0 + BLOCK_N > kvlen):
            keep = (o_j[None, :] - o_i[:, None] <= nxt) & (o_i[:, None] - o_j[None, :] <= pre)
            b_s = tl.where(keep, b_s, FILL)
            b_s = tl.where(m_j[None, :], b_s, float("-inf"))
        if HAS_MASK:
            p_um = MASK + b64 * stride_mb + (qm_off + o_i)[:, None].to(tl.int64) * stride_ms \
                + (kvm_off + o_j)[None, :].to(tl.int64) * stride_mk
            b_um = tl.load(p_um, mask=m_row[:, None] & m_j[None, :], other=0)
            b_s = tl.where(b_um != 0, FILL, b_s)
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_alpha = tl.exp(b_m - b_m_new)
        if QUANT_MODE == 1:                              # P = fp16(exp(fp16(s - m)))
            b_p = tl.exp((b_s - b_m_new.to(tl.float16)[:, None]).to(tl.float32)).to(tl.float16)
            b_l = b_l * b_alpha + tl.sum(b_p.to(tl.float32), 1)
        else:
            b_p = tl.exp(b_s - b_m_new[:, None])                             # [BM, BN]
            b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_v = _load_v(V, VP, VSC, VOF, o_j, m_j, prefix, kvn64, b64, o_kb, o_kr, o_dv, m_dv,
                      stride_vb, stride_vn, stride_vs, stride_vd, stride_vpn, stride_vps, stride_vpd,
                      stride_vsx, stride_vsh, stride_vsy, Q.dtype.element_ty, HAS_PREFIX, V_QUANT,
                      HAS_V_OFFSET)                                                    # [BN, BDV]
        b_acc = b_acc * b_alpha[:, None] + _pv(b_p, b_v, qs1, deq2, QUANT_MODE)
        b_m = b_m_new

    m_has_key = m_row & (tl.maximum(o_i - pre, 0) <= tl.minimum(o_i + nxt, kvlen - 1))
    m_all_fill = m_has_key & (b_m == FILL)
    if HAS_MASK:
        if not ZERO_MASKED_ROWS:
            # Fully masked rows: every key outside the visited blocks scores FILL as well.
            if tl.sum(m_all_fill.to(tl.int32)) > 0:
                b_pf = tl.where(m_all_fill, 1.0, 0.0)                        # exp(FILL - m)
                for j0 in range(0, kvlen, BLOCK_N):
                    if (j0 < j_start) | (j0 >= j_hi):
                        o_j = j0 + o_n
                        m_j = o_j < kvlen
                        o_kb, o_kr = _key_slots(o_j, kvlen, prefix, b64, kv_off, TABLE, stride_tb, PAGE_SIZE,
                                                IS_PAGED)
                        b_p = tl.where(m_j[None, :], b_pf[:, None], 0.0)
                        b_v = _load_v(V, VP, VSC, VOF, o_j, m_j, prefix, kvn64, b64, o_kb, o_kr, o_dv, m_dv,
                                      stride_vb, stride_vn, stride_vs, stride_vd, stride_vpn, stride_vps,
                                      stride_vpd, stride_vsx, stride_vsh, stride_vsy, Q.dtype.element_ty,
                                      HAS_PREFIX, V_QUANT, HAS_V_OFFSET)
                        b_acc += _pv(b_p, b_v, qs1, deq2, QUANT_MODE)
                        b_l += tl.sum(b_p, 1)

    m_out = m_has_key
    if ZERO_MASKED_ROWS:
        m_out = m_out & (b_m != FILL)
    b_norm = b_l
    if QUANT_MODE == 1:
        b_norm = b_l.to(tl.float16).to(tl.float32)                           # O / fp16(l)
    b_o = tl.where(m_out[:, None], b_acc / tl.where(m_out, b_norm, 1.0)[:, None], 0.0)
    if OUT_QUANT > 0:
        if OUT_QUANT == 2:                                                   # per channel: n * DV + d
            p_s2 = i_n.to(tl.int64) * HEAD_DIM_V + o_dv
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
    p_o = O + b64 * stride_ob + i_n.to(tl.int64) * stride_on \
        + o_r[:, None].to(tl.int64) * stride_os + o_dv[None, :] * stride_od
    tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_r[:, None] & m_dv[None, :])
    if HAS_LSE:
        b_lse = tl.where(m_out, b_m + tl.log(tl.where(m_out, b_l, 1.0)), tl.where(kvlen > 0, float("inf"), LSE_EMPTY))
        p_lse = LSE + b64 * stride_lb + i_n.to(tl.int64) * stride_ln + o_r.to(tl.int64) * stride_ls
        tl.store(p_lse, b_lse, mask=m_r)


@triton.jit
def _key_slots(o_j, kvlen, prefix, b64, kv_off, TABLE, stride_tb, PAGE_SIZE, IS_PAGED: tl.constexpr):
    """[BN] (block, row) of the batch's own keys ``o_j - prefix``, int64: paged caches keep key t at row
    t % PAGE_SIZE of block table[b, t // PAGE_SIZE]; plain tensors at row kv_off + t of batch b."""
    o_t = o_j - prefix
    if IS_PAGED:
        p_blk = TABLE + b64 * stride_tb + tl.maximum(o_t, 0) // PAGE_SIZE
        o_blk = tl.load(p_blk, mask=(o_t >= 0) & (o_j < kvlen), other=0).to(tl.int64)
        return o_blk, (tl.maximum(o_t, 0) % PAGE_SIZE).to(tl.int64)
    return tl.zeros_like(o_t).to(tl.int64) + b64, (kv_off + o_t).to(tl.int64)


@triton.jit
def _antiquant(b_x, SC, OF, kvn64, b64, o_kb, o_kr, o_t, o_d, m_d, m_j, stride_x, stride_h, stride_y,
               dtype: tl.constexpr, MODE: tl.constexpr, HAS_OFFSET: tl.constexpr, D_FIRST: tl.constexpr):
    """int8 block → (x + offset) * scale in ``dtype`` (fp16 arithmetic for fp16, fp32 then cast for bf16).
    Parameters are [X, KV_N, Y] views: MODE 1 per channel (Y = d); 2 per token by position (X = batch,
    Y = token index t of the sequence); 3 per token by storage (X = batch or paged block, Y = row in it).
    D_FIRST: the block is [BD, BN] (keys), else [BN, BD] (values)."""
    if MODE == 1:
        p_s = kvn64 * stride_h + o_d * stride_y                                        # [BD]
        m_s = m_d
    elif MODE == 2:
        p_s = b64 * stride_x + kvn64 * stride_h + o_t.to(tl.int64) * stride_y          # [BN]
        m_s = m_j
    else:
        p_s = o_kb * stride_x + kvn64 * stride_h + o_kr * stride_y                      # [BN]
        m_s = m_j
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
def _load_v(V, VP, VSC, VOF, o_j, m_j, prefix, kvn64, b64, o_kb, o_kr, o_dv, m_dv,
            stride_vb, stride_vn, stride_vs, stride_vd, stride_vpn, stride_vps, stride_vpd,
            stride_vsx, stride_vsh, stride_vsy, dtype: tl.constexpr, HAS_PREFIX: tl.constexpr,
            V_QUANT: tl.constexpr, HAS_V_OFFSET: tl.constexpr):
    """Value block [BN, BDV] of keys ``o_j`` (shared prefix first, then own keys; int8 anti-quantised)."""
    p_v = V + kvn64 * stride_vn + (o_kb * stride_vb + o_kr * stride_vs)[:, None] + o_dv[None, :] * stride_vd
    if HAS_PREFIX:
        p_vp = VP + kvn64 * stride_vpn + o_j[:, None].to(tl.int64) * stride_vps + o_dv[None, :] * stride_vpd
        p_v = tl.where((o_j < prefix)[:, None], p_vp, p_v)
    b_v = tl.load(p_v, mask=m_j[:, None] & m_dv[None, :], other=0)
    if V_QUANT > 0:
        b_v = _antiquant(b_v, VSC, VOF, kvn64, b64, o_kb, o_kr, o_j - prefix, o_dv, m_dv, m_j, stride_vsx,
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
    meta: tuple[tuple[str, object], ...]   # constexpr name/value pairs
    grid: tuple[int, int, int]
    num_warps: int
    num_stages: int
    sm_scale: float


def block_config(d: int, dv: int, on_gpu: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for head dims d/dv. On GPUs: the sizes with the fewest
    register spills in the static report for sm_80/sm_90 (to be tuned on the device)."""
    if not on_gpu:
        return 32, 32, 4, 1
    width = max(d, dv)
    if width <= 64:
        return 128, 64, 4, 3
    if width <= 256:
        return 128, 32, 8, 2
    return 64, 32, 8, 1


def cdiv(a: int, b: int) -> int:
    """Host-side ceiling division (``triton.cdiv`` is a JIT function: slow to call on the launch path)."""
    return -(-a // b)


def grid(s1: int, block_m: int, bn_total: int) -> tuple[int, int, int]:
    """(row blocks, batch*heads folded into axes 1 and 2 so no axis exceeds 65535)."""
    y = min(bn_total, 65535)
    return (cdiv(s1, block_m), y, cdiv(bn_total, y))


def kernel_args(cfg: PrefillConfig, tensors: tuple, scales: tuple = (), sources: tuple = ()) -> dict:
    """Every argument of ``_prefill_kernel`` by name: tensors (Q, K, V, O, LSE, MASK, PSE, PARAMS), the
    quantisation scales (DEQ1, QS1, DEQ2, QS2, QO2) and the fused-operator inputs (QPAD, KVPAD, TABLE, KP,
    VP, QR, KR, KSC, KOF, VSC, VOF), Q standing in for absent ones, then the scale, strides and sizes of ``cfg``,
    then its constexprs."""
    def padded(group: tuple, size: int) -> tuple:
        return tuple(tensors[0] if t is None else t for t in group) + (tensors[0],) * (size - len(group))

    values = (*tensors, *padded(scales, 5), *padded(sources, 11), cfg.sm_scale, *cfg.strides, *cfg.sizes)
    args = dict(zip(_prefill_kernel.arg_names, values))
    args.update(cfg.meta)
    return args


def fp_fusion(meta) -> bool:
    """Whether the compiler may fuse a multiply and an add: not on the int8 path (QUANT_MODE), whose
    fp16 steps are each rounded as on the NPU."""
    return dict(meta).get("QUANT_MODE", 0) == 0


def positional(kernel, args: dict) -> tuple:
    """``args`` (by name) in ``kernel``'s signature order."""
    return tuple(map(args.__getitem__, kernel.arg_names))


def launch(cfg: PrefillConfig, *tensors, scales: tuple = (), sources: tuple = ()) -> None:
    launcher.run(_prefill_kernel, cfg.grid, positional(_prefill_kernel, kernel_args(cfg, tensors, scales, sources)),
                 num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=fp_fusion(cfg.meta))
