"""Decode (query length 1) flash attention: split-KV partials plus a combine step, one family for every
decode variant (constexpr flags).

Split kernel: one program per (split, batch, kv head). The query heads of the kv head's group are the
rows of one [BLOCK_G, D] tile (GQA packing), so each key/value tile is read once per group and every
score block is one ``tl.dot``. The batch's keys are cut into ``SPLITS`` chunks of ``chunk`` keys,
``chunk = ceil(ceil(kvlen / SPLITS) / BLOCK_N) * BLOCK_N``, computed on the device from the length in
the parameter block: the grid depends only on ``SPLITS`` (fixed by the plan from static capacity; a
plain argument, so that a key tensor growing by one token per step does not recompile), a
program whose chunk is empty exits at once. Each program writes its unnormalised accumulator and its
(max, sum) to the workspace.

Combine kernel: one program per (batch, query head) merges the ``ceil(kvlen / chunk)`` written partials
(log-sum-exp weights), normalises, and writes the output (cast, or int8-quantised) and optionally the
log-sum-exp. A batch without keys (length 0, or a kv padding start below 0) writes zeros and the decode
lse sentinel.

Keys: contiguous ``[B, KV_N, S2, D]`` views starting at the batch's kv padding offset, or paged
(``IS_PAGED``): token t of batch b at block ``TABLE[b, t // BLOCK_SIZE]``, slot ``t % BLOCK_SIZE``,
addressed in int64; a page holding whole key blocks (``PAGE_TILES``) costs one table read per block,
and a block id outside ``[0, NUM_BLOCKS)`` is never dereferenced: its keys and values read as zeros.
NZ paged caches (K_C0, V_C0 > 0) keep each token's channels in tiles of C0 (``prefill.channel_offsets``).
The key blocks of a split run without a length predicate; only its last block, when partial, masks.
Int8 keys/values (per-channel ``(x + offset) * scale``) enter both dots as integers converted to the
query's dtype: the key scale is folded into q (fp32, then the query dtype) and its offset into a
per-row constant added to the scores, the value scale and offset are applied once per split to the
accumulator: ``(acc + offset * l) * scale``. Int8 caches are read as int16 words of channel pairs
(``_words``): each dot splits into one over the low bytes (even channels) and one over the high bytes
(odd channels), which ``quant.int8_pairs_to_float_tl`` converts in registers. Masked scores (non-zero
mask) are replaced by FILL, keys past the chunk are -inf; a batch whose keys are all masked averages V
uniformly, as the NPU does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import params as pb
from .. import quant
from .. import launcher
from .prefill import cdiv, channel_offsets, load2, positional
from .prefill import grid as fold_grid

MAX_SPLITS = 1024                 # bounds the scratch and the combine's loop, not the occupancy


@triton.jit
def _kv_span(PARAMS, KV_PAD, i_b, S2, HAS_KV_PAD: tl.constexpr):
    """(kvlen, first key in the key seq axis, first mask/pse column) of batch i_b; kvlen is 0 where
    the left-padded start would be negative."""
    p_par = PARAMS + i_b * pb.FIELDS
    kvlen = tl.load(p_par + pb.KVLEN)
    kv_off = tl.load(p_par + pb.KV_OFF)
    kvm_off = tl.load(p_par + pb.KVM_OFF)
    if HAS_KV_PAD:
        start = S2 - tl.maximum(tl.load(KV_PAD), 0) - kvlen        # int64: the pad is any int64
        kvlen = tl.where(start < 0, 0, kvlen)
        kv_off += tl.maximum(start, 0).to(tl.int32)
        kvm_off += tl.maximum(start, 0).to(tl.int32)
    return kvlen, kv_off, kvm_off


@triton.jit
def _chunk(kvlen, SPLITS, BLOCK_N: tl.constexpr):
    """Keys per split, a multiple of BLOCK_N (at least BLOCK_N, so that 0 keys give 0 splits)."""
    return tl.maximum(tl.cdiv(tl.cdiv(kvlen, SPLITS), BLOCK_N) * BLOCK_N, BLOCK_N)


@triton.jit
def _decode_split_kernel(
    Q, K, V, MASK, PSE, TABLE, KV_PAD, AQ_SCALE, AQ_OFFSET, WS_ACC, WS_ML, PARAMS,
    sm_scale,
    stride_qb, stride_qn, stride_qd,                # Q: [B, N, D] (seq axis of length 1 dropped)
    stride_kb, stride_kn, stride_ks, stride_kd,     # K: [B, KV_N, S2, D] or paged [blocks, KV_N, BLOCK_SIZE, D]
    stride_vb, stride_vn, stride_vs, stride_vd,     # V: as K, last dim DV
    stride_mb, stride_mk,                           # MASK: [B, cols]
    stride_pb, stride_pn, stride_pk,                # PSE: [B or 1, N, cols]
    stride_tb, stride_tk,                           # TABLE: [B, max blocks] int32
    stride_a2, stride_an, stride_ad,                # AQ_SCALE: [2 (key, value), KV_N, D]
    stride_o2, stride_on, stride_od,                # AQ_OFFSET: [2 (key, value), KV_N, D]
    stride_kt, stride_vt,                           # K/V of NZ caches: channel tiles (channel_offsets)
    KV_N, BKV_TOTAL, GROUP, S2, BLOCK_SIZE, SPLITS,  # BKV_TOTAL = B * KV_N; GROUP = N // KV_N
    NUM_BLOCKS,                                     # blocks of a paged cache
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_PSE: tl.constexpr, HAS_KV_PAD: tl.constexpr, IS_PAGED: tl.constexpr,
    ANTIQUANT: tl.constexpr, HAS_AQ_OFFSET: tl.constexpr, FILL: tl.constexpr,
    K_C0: tl.constexpr, V_C0: tl.constexpr, PAGE_TILES: tl.constexpr, K_WORDS: tl.constexpr,
    V_WORDS: tl.constexpr, PACKED16: tl.constexpr, ROWS32: tl.constexpr,
):
    i_s = tl.program_id(0)
    i_bk = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if i_bk >= BKV_TOTAL:
        return
    i_b = i_bk // KV_N
    i_kvn = i_bk % KV_N
    b64 = i_b.to(tl.int64)
    kvlen, kv_off, kvm_off = _kv_span(PARAMS, KV_PAD, i_b, S2, HAS_KV_PAD)
    chunk = _chunk(kvlen, SPLITS, BLOCK_N)
    j_start = i_s * chunk
    j_end = tl.minimum(j_start + chunk, kvlen)
    if j_start >= j_end:
        return
    j_full = j_start + (j_end - j_start) // BLOCK_N * BLOCK_N     # blocks before it lie inside the length

    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < GROUP
    o_qn = (i_kvn * GROUP + o_g).to(tl.int64)           # [BG] query heads of the group
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    m_d = o_d < HEAD_DIM
    m_dv = o_dv < HEAD_DIM_V
    DTYPE = Q.dtype.element_ty

    p_q = Q + b64 * stride_qb + o_qn[:, None] * stride_qn + o_d[None, :] * stride_qd
    b_q = tl.load(p_q, mask=m_g[:, None] & m_d[None, :], other=0.0).to(tl.float32)     # [BG, BD]
    b_c = tl.zeros([BLOCK_G], tl.float32)
    if ANTIQUANT:      # (k + off) * scale: the key scale folds into q, the offset into a per-row constant
        p_a = AQ_SCALE + i_kvn.to(tl.int64) * stride_an
        b_q = b_q * tl.load(p_a + o_d * stride_ad, mask=m_d, other=0.0).to(tl.float32)[None, :]
        if HAS_AQ_OFFSET:
            p_o = AQ_OFFSET + i_kvn.to(tl.int64) * stride_on
            b_c = tl.sum(b_q * tl.load(p_o + o_d * stride_od, mask=m_d, other=0.0).to(tl.float32)[None, :], 1)
    b_qlo, b_qhi = b_q, b_q
    if K_WORDS:        # query channels 2i and 2i + 1, for the low and high bytes of the key words
        b_qlo, b_qhi = b_q.reshape(BLOCK_G, BLOCK_D // 2, 2).split()
        b_qlo, b_qhi = b_qlo.to(DTYPE), b_qhi.to(DTYPE)
    b_q = b_q.to(DTYPE)
    k_head = K + i_kvn.to(tl.int64) * stride_kn
    v_head = V + i_kvn.to(tl.int64) * stride_vn
    p_table = TABLE + b64 * stride_tb

    b_m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_G], tl.float32)
    VW: tl.constexpr = 2 if V_WORDS else 1
    b_acc = tl.zeros([BLOCK_G, BLOCK_DV // VW], tl.float32)       # V_WORDS: the even channels
    b_acc2 = tl.zeros([BLOCK_G, BLOCK_DV // 2], tl.float32)       # V_WORDS: the odd channels (else unused)
    b_lv = tl.zeros([BLOCK_G], tl.float32)
    for j0 in range(j_start, j_full, BLOCK_N):           # whole blocks: no length predicate
        b_acc, b_acc2, b_l, b_m, b_lv = _split_block(
            j0, j_end, b_acc, b_acc2, b_l, b_m, b_lv, b_q, b_qlo, b_qhi, b_c, k_head, v_head, p_table, NUM_BLOCKS, MASK,
            PSE, b64, o_qn, m_g, kv_off, kvm_off, sm_scale, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs,
            stride_vd, stride_mb, stride_mk, stride_pb, stride_pn, stride_pk, stride_tk, stride_kt, stride_vt,
            BLOCK_SIZE, DTYPE, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N, HAS_MASK, HAS_PSE, IS_PAGED,
            PAGE_TILES, ANTIQUANT, FILL, K_C0, V_C0, K_WORDS, V_WORDS, PACKED16, ROWS32, False)
    if j_full < j_end:                                   # the split's last, partial block
        b_acc, b_acc2, b_l, b_m, b_lv = _split_block(
            j_full, j_end, b_acc, b_acc2, b_l, b_m, b_lv, b_q, b_qlo, b_qhi, b_c, k_head, v_head, p_table, NUM_BLOCKS,
            MASK, PSE, b64, o_qn, m_g, kv_off, kvm_off, sm_scale, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs,
            stride_vd, stride_mb, stride_mk, stride_pb, stride_pn, stride_pk, stride_tk, stride_kt, stride_vt,
            BLOCK_SIZE, DTYPE, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, BLOCK_N, HAS_MASK, HAS_PSE, IS_PAGED,
            PAGE_TILES, ANTIQUANT, FILL, K_C0, V_C0, K_WORDS, V_WORDS, PACKED16, ROWS32, True)
    if V_WORDS:        # channels 2i and 2i + 1
        b_acc = tl.join(b_acc, b_acc2).reshape(BLOCK_G, BLOCK_DV)
    if ANTIQUANT:      # sum_j p_j (v_j + off) * scale = (acc + off * l) * scale, once per split
        p_a = AQ_SCALE + stride_a2 + i_kvn.to(tl.int64) * stride_an + o_dv * stride_ad
        b_vs = tl.load(p_a, mask=m_dv, other=0.0).to(tl.float32)
        if HAS_AQ_OFFSET:
            p_o = AQ_OFFSET + stride_o2 + i_kvn.to(tl.int64) * stride_on + o_dv * stride_od
            b_lo = b_lv if IS_PAGED else b_l
            b_acc += b_lo[:, None] * tl.load(p_o, mask=m_dv, other=0.0).to(tl.float32)[None, :]
        b_acc = b_acc * b_vs[None, :]

    # workspace rows: (b * N + query head) * SPLITS + split
    o_row = ((b64 * KV_N * GROUP + o_qn) * SPLITS + i_s)                         # [BG]
    p_acc = WS_ACC + o_row[:, None] * HEAD_DIM_V + o_dv[None, :]
    tl.store(p_acc, b_acc, mask=m_g[:, None] & m_dv[None, :])
    tl.store(WS_ML + o_row * 2, b_m, mask=m_g)
    tl.store(WS_ML + o_row * 2 + 1, b_l, mask=m_g)


@triton.jit
def _split_block(
    j0, j_end, b_acc, b_acc2, b_l, b_m, b_lv, b_q, b_qlo, b_qhi, b_c, k_head, v_head, p_table, NUM_BLOCKS, MASK, PSE,
    b64, o_qn, m_g, kv_off, kvm_off, sm_scale, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
    stride_mb, stride_mk, stride_pb, stride_pn, stride_pk, stride_tk, stride_kt, stride_vt, BLOCK_SIZE,
    DTYPE: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr, HAS_PSE: tl.constexpr,
    IS_PAGED: tl.constexpr, PAGE_TILES: tl.constexpr, ANTIQUANT: tl.constexpr, FILL: tl.constexpr,
    K_C0: tl.constexpr, V_C0: tl.constexpr, K_WORDS: tl.constexpr, V_WORDS: tl.constexpr, PACKED16: tl.constexpr,
    ROWS32: tl.constexpr, PARTIAL: tl.constexpr,
):
    """Keys ``j0 + [0, BLOCK_N)`` of the split: (acc, acc2, l, m, lv) updated; ``PARTIAL``: keys at or past
    ``j_end`` are excluded (-inf, zero values). int8 keys/values enter the dots as integers (their scales
    and offsets are applied around the loop); a paged key whose block id is outside the cache is a zero
    key (score 0) and a zero value, so with an offset the sum of P over the readable keys (lv) is kept.
    K_WORDS/V_WORDS: int8 keys/values read as int16 words of channel pairs (2i, 2i + 1), their row offsets
    counted in words; the values' even channels accumulate in acc, the odd ones in acc2. PACKED16: the
    target has packed 16-bit integer ops (``quant.int8_pairs_to_float_tl``). ROWS32: a key's offset from the
    block's first key (or its page's first slot) multiplied in int32, one instruction per row."""
    MASK_KV: tl.constexpr = IS_PAGED or PARTIAL
    ZERO_INVALID: tl.constexpr = IS_PAGED and ANTIQUANT
    o_j = j0 + tl.arange(0, BLOCK_N)                     # [BN] keys of the batch
    m_j = o_j < j_end
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    m_d = o_d < HEAD_DIM
    m_dv = o_dv < HEAD_DIM_V
    KW: tl.constexpr = 2 if K_WORDS else 1              # bytes per loaded key element (all strides even)
    VW: tl.constexpr = 2 if V_WORDS else 1
    if IS_PAGED:
        if PAGE_TILES:     # the block lies in one page: one table entry, slots from j0 % BLOCK_SIZE on
            blk = tl.load(p_table + (j0 // BLOCK_SIZE).to(tl.int64) * stride_tk)
            ok = (blk >= 0) & (blk < NUM_BLOCKS)         # ids outside the cache read zeros
            m_kv = tl.full([BLOCK_N], 1, tl.int1) & ok
            if PARTIAL:
                m_kv = m_kv & m_j
            o_blk = tl.where(ok, blk, 0).to(tl.int64)
            o_slot = j0 % BLOCK_SIZE + tl.arange(0, BLOCK_N)
            if not ROWS32:
                o_slot = o_slot.to(tl.int64)
            o_krow = o_blk * (stride_kb // KW) + (o_slot * (stride_ks // KW)).to(tl.int64)
            o_vrow = o_blk * (stride_vb // VW) + (o_slot * (stride_vs // VW)).to(tl.int64)
        else:
            o_blk = tl.load(p_table + (o_j // BLOCK_SIZE).to(tl.int64) * stride_tk, mask=m_j, other=0)
            m_kv = (o_blk >= 0) & (o_blk < NUM_BLOCKS)   # ids outside the cache read zeros
            if PARTIAL:
                m_kv = m_kv & m_j
            o_blk = tl.where(m_kv, o_blk, 0).to(tl.int64)
            o_slot = (o_j % BLOCK_SIZE).to(tl.int64)
            o_krow = o_blk * (stride_kb // KW) + o_slot * (stride_ks // KW)
            o_vrow = o_blk * (stride_vb // VW) + o_slot * (stride_vs // VW)
    else:
        if ROWS32:     # the block's first key in int64, the keys' offsets from it in int32
            o_t = (kv_off + j0).to(tl.int64)
            o_n = tl.arange(0, BLOCK_N)
            o_krow = b64 * (stride_kb // KW) + o_t * (stride_ks // KW) + (o_n * (stride_ks // KW)).to(tl.int64)
            o_vrow = b64 * (stride_vb // VW) + o_t * (stride_vs // VW) + (o_n * (stride_vs // VW)).to(tl.int64)
        else:
            o_t = (kv_off + o_j).to(tl.int64)
            o_krow = b64 * (stride_kb // KW) + o_t * (stride_ks // KW)
            o_vrow = b64 * (stride_vb // VW) + o_t * (stride_vs // VW)
        m_kv = m_j
    if K_WORDS:        # int8 keys as int16 words of channels (2i, 2i + 1): one dot per byte
        o_w = tl.arange(0, BLOCK_D // 2)
        p_kw = k_head.to(tl.pointer_type(tl.int16)) + o_krow[None, :] \
            + channel_offsets(o_w[:, None], 1, stride_kt // 2, K_C0 // 2)
        b_kw = load2(p_kw, (o_w < HEAD_DIM // 2)[:, None], m_kv[None, :], HEAD_DIM != BLOCK_D, MASK_KV)
        b_klo, b_khi = quant.int8_pairs_to_float_tl(b_kw, DTYPE, PACKED16)
        b_s = tl.dot(b_qhi, b_khi, tl.dot(b_qlo, b_klo))
    else:
        p_k = k_head + o_krow[None, :] + channel_offsets(o_d[:, None], stride_kd, stride_kt, K_C0)
        b_k = load2(p_k, m_d[:, None], m_kv[None, :], HEAD_DIM != BLOCK_D, MASK_KV)            # [BD, BN]
        b_s = tl.dot(b_q, quant.int8_to_float_tl(b_k, DTYPE) if ANTIQUANT else b_k)           # [BG, BN]
    if ZERO_INVALID and PAGE_TILES:                      # the block's keys are all readable or all zeros
        b_s += tl.where(ok, b_c, 0.0)[:, None]
    elif ZERO_INVALID:
        b_s = tl.where(m_kv[None, :], b_s + b_c[:, None], 0.0)
    elif ANTIQUANT:
        b_s += b_c[:, None]
    b_s = b_s * sm_scale
    if HAS_PSE:
        p_p = PSE + b64 * stride_pb + o_qn[:, None] * stride_pn + (kvm_off + o_j)[None, :].to(tl.int64) * stride_pk
        b_s += load2(p_p, m_g[:, None], m_j[None, :], True, PARTIAL).to(tl.float32)
    if HAS_MASK:
        p_um = MASK + b64 * stride_mb + (kvm_off + o_j).to(tl.int64) * stride_mk
        b_um = load2(p_um, m_j, m_j, PARTIAL, False)                                      # [BN]
        b_s = tl.where(b_um[None, :] != 0, FILL, b_s)
    if PARTIAL:
        b_s = tl.where(m_j[None, :], b_s, float("-inf"))
    b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
    b_alpha = tl.exp(b_m - b_m_new)
    b_p = tl.exp(b_s - b_m_new[:, None])
    b_psum = tl.sum(b_p, 1)
    b_l = b_l * b_alpha + b_psum
    if ZERO_INVALID and PAGE_TILES:                      # keys past j_end have P = 0
        b_lv = b_lv * b_alpha + tl.where(ok, b_psum, 0.0)
    elif ZERO_INVALID:
        b_lv = b_lv * b_alpha + tl.sum(tl.where(m_kv[None, :], b_p, 0.0), 1)
    if V_WORDS:
        o_w = tl.arange(0, BLOCK_DV // 2)
        p_vw = v_head.to(tl.pointer_type(tl.int16)) + o_vrow[:, None] \
            + channel_offsets(o_w[None, :], 1, stride_vt // 2, V_C0 // 2)
        b_vw = load2(p_vw, m_kv[:, None], (o_w < HEAD_DIM_V // 2)[None, :], MASK_KV, HEAD_DIM_V != BLOCK_DV)
        b_vlo, b_vhi = quant.int8_pairs_to_float_tl(b_vw, DTYPE, PACKED16)
        b_acc = tl.dot(b_p.to(DTYPE), b_vlo, b_acc * b_alpha[:, None])
        b_acc2 = tl.dot(b_p.to(DTYPE), b_vhi, b_acc2 * b_alpha[:, None])
    else:
        p_v = v_head + o_vrow[:, None] + channel_offsets(o_dv[None, :], stride_vd, stride_vt, V_C0)
        b_v = load2(p_v, m_kv[:, None], m_dv[None, :], MASK_KV, HEAD_DIM_V != BLOCK_DV)     # [BN, BDV]
        if ANTIQUANT:
            b_v = quant.int8_to_float_tl(b_v, DTYPE)
        b_acc = tl.dot(b_p.to(DTYPE), b_v, b_acc * b_alpha[:, None])
    return b_acc, b_acc2, b_l, b_m_new, b_lv


@triton.jit
def _decode_combine_kernel(
    WS_ACC, WS_ML, O, LSE, KV_PAD, QS2, QO2, PARAMS,   # QS2/QO2: output quant, [1] or [N * DV]
    stride_ob, stride_on, stride_od,                # O: [B, N, DV] (seq axis of length 1 dropped)
    stride_lb, stride_ln,                           # LSE: [B, N]
    N, BN_TOTAL, S2, SPLITS,
    HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_KV_PAD: tl.constexpr, HAS_LSE: tl.constexpr, LSE_EMPTY: tl.constexpr,
    OUT_QUANT: tl.constexpr, HAS_OFFSET2: tl.constexpr,   # OUT_QUANT: 0 none, 1 per-tensor, 2 per-channel
):
    i_bn = tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)
    if i_bn >= BN_TOTAL:
        return
    i_b = i_bn // N
    i_n = i_bn % N
    kvlen, kv_off, kvm_off = _kv_span(PARAMS, KV_PAD, i_b, S2, HAS_KV_PAD)
    n_splits = tl.cdiv(kvlen, _chunk(kvlen, SPLITS, BLOCK_N))
    o_dv = tl.arange(0, BLOCK_DV)
    m_dv = o_dv < HEAD_DIM_V
    o_s = tl.arange(0, BLOCK_S)
    row0 = i_bn.to(tl.int64) * SPLITS

    b_m = tl.full([1], float("-inf"), tl.float32)
    b_l = tl.zeros([1], tl.float32)
    b_acc = tl.zeros([BLOCK_DV], tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):
        m_s = s0 + o_s < n_splits
        o_row = row0 + s0 + o_s                                                  # [BS]
        b_ms = tl.load(WS_ML + o_row * 2, mask=m_s, other=float("-inf"))
        b_ls = tl.load(WS_ML + o_row * 2 + 1, mask=m_s, other=0.0)
        b_as = tl.load(WS_ACC + o_row[:, None] * HEAD_DIM_V + o_dv[None, :],
                       mask=m_s[:, None] & m_dv[None, :], other=0.0)             # [BS, BDV]
        b_m_new = tl.maximum(b_m, tl.max(b_ms, 0))
        b_alpha = tl.exp(b_m - b_m_new)
        b_w = tl.where(m_s, tl.exp(b_ms - b_m_new), 0.0)                          # [BS]
        b_l = b_l * b_alpha + tl.sum(b_w * b_ls, 0)
        b_acc = b_acc * b_alpha + tl.sum(b_w[:, None] * b_as, 0)
        b_m = b_m_new

    has_keys = n_splits > 0
    b_o = tl.where(has_keys, b_acc / tl.where(has_keys, b_l, 1.0), 0.0)                # [BDV]
    p_o = O + i_b.to(tl.int64) * stride_ob + i_n.to(tl.int64) * stride_on + o_dv * stride_od
    if OUT_QUANT == 1:                  # per tensor: AscendQuant; a batch without keys writes 0
        b_s2 = tl.load(QS2).to(tl.float32)
        b_o2 = b_s2
        if HAS_OFFSET2:
            b_o2 = tl.load(QO2).to(tl.float32)
        b_q = quant.ascend_quant_tl(b_o, b_s2, b_o2, HAS_OFFSET2)
        tl.store(p_o, tl.where(has_keys, b_q, 0).to(tl.int8), mask=m_dv)
    elif OUT_QUANT == 2:                # per channel (n, d) at n * DV + d: the IFA rounding
        o_c = i_n.to(tl.int64) * HEAD_DIM_V + o_dv
        b_s2 = tl.load(QS2 + o_c, mask=m_dv, other=0.0).to(tl.float32)
        b_o2 = tl.zeros([BLOCK_DV], tl.float32)
        if HAS_OFFSET2:
            b_o2 = tl.load(QO2 + o_c, mask=m_dv, other=0.0).to(tl.float32)
        b_q = quant.ifa_channel_quant_tl(b_o, b_s2, b_o2)
        tl.store(p_o, tl.where(has_keys, b_q, 0).to(tl.int8), mask=m_dv)
    else:
        tl.store(p_o, b_o.to(O.dtype.element_ty), mask=m_dv)
    if HAS_LSE:
        b_lse = tl.where(has_keys, b_m + tl.log(tl.where(has_keys, b_l, 1.0)), LSE_EMPTY)
        p_lse = LSE + i_b.to(tl.int64) * stride_lb + i_n.to(tl.int64) * stride_ln + tl.arange(0, 1)
        tl.store(p_lse, b_lse)


@dataclass(frozen=True)
class DecodeConfig:
    """Static launch description of one decode call (hashable; equal ⇔ same kernels and grids)."""

    split_strides: tuple[int, ...]   # stride_* arguments of the split kernel, in signature order
    split_sizes: tuple[int, ...]     # KV_N, BKV_TOTAL, GROUP, S2, BLOCK_SIZE, SPLITS
    split_meta: tuple[tuple[str, object], ...]
    combine_strides: tuple[int, ...]
    combine_sizes: tuple[int, ...]   # N, BN_TOTAL, S2, SPLITS
    combine_meta: tuple[tuple[str, object], ...]
    split_grid: tuple[int, int, int]
    combine_grid: tuple[int, int, int]
    num_warps: int
    num_stages: int
    sm_scale: float
    splits: int
    workspace: tuple[int, int]       # float32 elements of the accumulators and of (max, sum)
    num_blocks: int = -1             # blocks of a paged cache (-1: the key operand's first dim, at launch)


def block_config(d: int, dv: int, on_gpu: bool, int8_kv: bool = False, page: int = 0) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) for head dims d/dv, from the static report (``python -m bench
    report``): no spills, the fewest main-loop instructions per key, and shared memory within sm_80's
    limit: 128-key blocks with loads two blocks ahead up to D = 128, 128-key blocks one ahead up to 256,
    32-key blocks two ahead beyond. int8 caches (``int8_kv``, half the bytes) up to D = 128 take 256-key
    blocks (the same shared memory; the block's fixed cost over twice the keys) unless pages of ``page``
    keys (paged caches; 0: contiguous) would not hold whole blocks; wider int8 caches take fp16's blocks."""
    if not on_gpu:
        return 16, 4, 1
    width = max(d, dv)
    if int8_kv and width <= 128 and page % 256 == 0:
        return 256, 8, 3
    if width <= 128:
        return 128, 8, 3
    if width <= 256:
        return 128, 8, 2
    return 32, 8, 3


def num_splits(capacity: int, bkv_total: int, block_n: int, programs: int) -> int:
    """Splits per (batch, kv head) from static sizes only: enough programs for ``programs`` resident
    programs (the device's SMs times the programs one SM holds), at most one split per key block of the
    capacity (the longest possible length) and MAX_SPLITS."""
    want = cdiv(programs, max(bkv_total, 1))
    return max(1, min(want, cdiv(max(capacity, 1), block_n), MAX_SPLITS))


def grids(splits: int, bkv_total: int, bn_total: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Split grid (splits, batch*kv heads folded) and combine grid (1, batch*heads folded)."""
    return fold_grid(splits, 1, bkv_total), fold_grid(1, 1, bn_total)


def split_args(cfg: DecodeConfig, tensors: tuple) -> dict:
    """Every argument of ``_decode_split_kernel`` by name: tensors (Q, K, V, MASK, PSE, TABLE, KV_PAD,
    AQ_SCALE, AQ_OFFSET, WS_ACC, WS_ML, PARAMS), then scale, strides, sizes and constexprs of ``cfg``,
    PAGE_TILES (a page holds whole key blocks), K_WORDS and V_WORDS (``_words``), PACKED16 (the target
    has packed 16-bit integer ops: sm_90, and the interpreter) and ROWS32 (a key's offset from its block's
    first key, or its page's first slot, fits int32; not at D = 512, whose registers are full)."""
    num_blocks = cfg.num_blocks if cfg.num_blocks >= 0 else int(tensors[1].shape[0])
    args = dict(zip(_decode_split_kernel.arg_names, (*tensors, cfg.sm_scale, *cfg.split_strides,
                                                      *cfg.split_sizes, num_blocks)))
    args.update(cfg.split_meta)
    args["PAGE_TILES"] = bool(args["IS_PAGED"]) and cfg.split_sizes[4] % args["BLOCK_N"] == 0
    args["K_WORDS"] = _words(args, "K", "k", "HEAD_DIM", "K_C0")
    args["V_WORDS"] = _words(args, "V", "v", "HEAD_DIM_V", "V_C0")
    arch = launcher.target_arch()                        # None: the interpreter
    args["PACKED16"] = arch is None or arch >= 90
    rows = max(args["BLOCK_N"], cfg.split_sizes[4] if args["PAGE_TILES"] else 0)
    args["ROWS32"] = max(args["HEAD_DIM"], args["HEAD_DIM_V"]) <= 256 \
        and rows * max(abs(args["stride_ks"]), abs(args["stride_vs"])) < 2**31
    return args


def _words(args: dict, name: str, s: str, dim: str, c0: str) -> bool:
    """int8 keys (``name`` K) or values (V) read as int16 words: contiguous channel pairs (channel stride 1,
    even head dim, strides and NZ tile width), the cache 16-byte aligned as a traced plan tells alignments
    apart."""
    return bool(args["ANTIQUANT"]) and args[f"stride_{s}d"] == 1 and args[dim] % 2 == 0 and args[c0] % 2 == 0 \
        and args[name].data_ptr() % launcher.ALIGNMENT == 0 and all(args[f"stride_{s}{k}"] % 2 == 0 for k in "bnst")


def combine_args(cfg: DecodeConfig, tensors: tuple) -> dict:
    """Every argument of ``_decode_combine_kernel`` by name: tensors (WS_ACC, WS_ML, O, LSE, KV_PAD, QS2,
    QO2, PARAMS), then strides, sizes and constexprs of ``cfg``."""
    args = dict(zip(_decode_combine_kernel.arg_names, (*tensors, *cfg.combine_strides, *cfg.combine_sizes)))
    args.update(cfg.combine_meta)
    return args


def launch(cfg: DecodeConfig, split_tensors: tuple, combine_tensors: tuple) -> None:
    launcher.run(_decode_split_kernel, cfg.split_grid, positional(_decode_split_kernel, split_args(cfg, split_tensors)),
                 num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    launcher.run(_decode_combine_kernel, cfg.combine_grid,
                 positional(_decode_combine_kernel, combine_args(cfg, combine_tensors)), num_warps=4, num_stages=1)
