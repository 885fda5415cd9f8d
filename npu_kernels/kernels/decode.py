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
addressed in int64. Int8 keys/values are anti-quantised in the tile, ``(x + offset) * scale``, in
float16 for a float16 query and in float32 (then cast) for bfloat16. Masked scores (non-zero mask) are
replaced by FILL, keys past the chunk are -inf; a batch whose keys are all masked averages V uniformly,
as the NPU does.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from .. import params as pb
from .. import quant
from .. import launcher
from .prefill import cdiv, positional
from .prefill import grid as fold_grid

MAX_SPLITS = 64


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
def _antiquant(x, scale, offset, HAS_OFFSET: tl.constexpr, HALF: tl.constexpr, DTYPE: tl.constexpr):
    """int8 tile -> DTYPE: (x + offset) * scale, in float16 when HALF, else in float32 then cast."""
    if HALF:
        y = x.to(tl.float16)
        if HAS_OFFSET:
            y = y + offset.to(tl.float16)
        y = y * scale.to(tl.float16)
    else:
        y = x.to(tl.float32)
        if HAS_OFFSET:
            y = y + offset.to(tl.float32)
        y = y * scale.to(tl.float32)
    return y.to(DTYPE)


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
    KV_N, BKV_TOTAL, GROUP, S2, BLOCK_SIZE, SPLITS,  # BKV_TOTAL = B * KV_N; GROUP = N // KV_N
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_MASK: tl.constexpr, HAS_PSE: tl.constexpr, HAS_KV_PAD: tl.constexpr, IS_PAGED: tl.constexpr,
    ANTIQUANT: tl.constexpr, HAS_AQ_OFFSET: tl.constexpr, FILL: tl.constexpr,
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

    o_g = tl.arange(0, BLOCK_G)
    m_g = o_g < GROUP
    o_qn = (i_kvn * GROUP + o_g).to(tl.int64)           # [BG] query heads of the group
    o_d = tl.arange(0, BLOCK_D)
    o_dv = tl.arange(0, BLOCK_DV)
    m_d = o_d < HEAD_DIM
    m_dv = o_dv < HEAD_DIM_V
    o_n = tl.arange(0, BLOCK_N)
    DTYPE = Q.dtype.element_ty

    p_q = Q + b64 * stride_qb + o_qn[:, None] * stride_qn + o_d[None, :] * stride_qd
    b_q = tl.load(p_q, mask=m_g[:, None] & m_d[None, :], other=0.0)          # [BG, BD]
    k_head = K + i_kvn.to(tl.int64) * stride_kn
    v_head = V + i_kvn.to(tl.int64) * stride_vn
    if ANTIQUANT:
        p_a = AQ_SCALE + i_kvn.to(tl.int64) * stride_an
        b_ks = tl.load(p_a + o_d * stride_ad, mask=m_d, other=0.0)            # [BD]
        b_vs = tl.load(p_a + stride_a2 + o_dv * stride_ad, mask=m_dv, other=0.0)   # [BDV]
        b_ko = b_ks
        b_vo = b_vs
        if HAS_AQ_OFFSET:
            p_o = AQ_OFFSET + i_kvn.to(tl.int64) * stride_on
            b_ko = tl.load(p_o + o_d * stride_od, mask=m_d, other=0.0)
            b_vo = tl.load(p_o + stride_o2 + o_dv * stride_od, mask=m_dv, other=0.0)

    b_m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_G], tl.float32)
    b_acc = tl.zeros([BLOCK_G, BLOCK_DV], tl.float32)
    for j0 in range(j_start, j_end, BLOCK_N):
        o_j = j0 + o_n                                   # [BN] keys of the batch
        m_j = o_j < j_end
        if IS_PAGED:
            p_t = TABLE + b64 * stride_tb + (o_j // BLOCK_SIZE).to(tl.int64) * stride_tk
            o_blk = tl.load(p_t, mask=m_j, other=0).to(tl.int64)               # [BN] physical blocks
            o_slot = (o_j % BLOCK_SIZE).to(tl.int64)
            o_krow = o_blk * stride_kb + o_slot * stride_ks
            o_vrow = o_blk * stride_vb + o_slot * stride_vs
        else:
            o_t = (kv_off + o_j).to(tl.int64)
            o_krow = b64 * stride_kb + o_t * stride_ks
            o_vrow = b64 * stride_vb + o_t * stride_vs
        b_k = tl.load(k_head + o_krow[None, :] + o_d[:, None] * stride_kd,
                      mask=m_j[None, :] & m_d[:, None], other=0)                 # [BD, BN]
        if ANTIQUANT:
            b_k = _antiquant(b_k, b_ks[:, None], b_ko[:, None], HAS_AQ_OFFSET, DTYPE == tl.float16, DTYPE)
        b_s = tl.dot(b_q, b_k) * sm_scale                                        # [BG, BN]
        if HAS_PSE:
            p_p = PSE + b64 * stride_pb + o_qn[:, None] * stride_pn \
                + (kvm_off + o_j)[None, :].to(tl.int64) * stride_pk
            b_s += tl.load(p_p, mask=m_g[:, None] & m_j[None, :], other=0.0).to(tl.float32)
        if HAS_MASK:
            p_um = MASK + b64 * stride_mb + (kvm_off + o_j).to(tl.int64) * stride_mk
            b_um = tl.load(p_um, mask=m_j, other=0)                               # [BN]
            b_s = tl.where(b_um[None, :] != 0, FILL, b_s)
        b_s = tl.where(m_j[None, :], b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_alpha = tl.exp(b_m - b_m_new)
        b_p = tl.exp(b_s - b_m_new[:, None])
        b_l = b_l * b_alpha + tl.sum(b_p, 1)
        b_v = tl.load(v_head + o_vrow[:, None] + o_dv[None, :] * stride_vd,
                      mask=m_j[:, None] & m_dv[None, :], other=0)                # [BN, BDV]
        if ANTIQUANT:
            b_v = _antiquant(b_v, b_vs[None, :], b_vo[None, :], HAS_AQ_OFFSET, DTYPE == tl.float16, DTYPE)
        b_acc = b_acc * b_alpha[:, None] + tl.dot(b_p.to(DTYPE), b_v)
        b_m = b_m_new

    # workspace rows: (b * N + query head) * SPLITS + split
    o_row = ((b64 * KV_N * GROUP + o_qn) * SPLITS + i_s)                         # [BG]
    p_acc = WS_ACC + o_row[:, None] * HEAD_DIM_V + o_dv[None, :]
    tl.store(p_acc, b_acc, mask=m_g[:, None] & m_dv[None, :])
    tl.store(WS_ML + o_row * 2, b_m, mask=m_g)
    tl.store(WS_ML + o_row * 2 + 1, b_l, mask=m_g)


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


def block_config(d: int, dv: int, on_gpu: bool, int8_kv: bool = False) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) for head dims d/dv: the widest key block that compiles without
    register spills for sm_80/sm_90 (``python -m npu_kernels.aot``)."""
    if not on_gpu:
        return 16, 4, 1
    width = max(d, dv)
    if width <= 128:
        return (32 if int8_kv and width > 64 else 64), 8, 2
    if width <= 256:
        return 32, 8, 2
    return 16, 8, 1


def num_splits(capacity: int, bkv_total: int, block_n: int, programs: int) -> int:
    """Splits per (batch, kv head) from static sizes only: enough programs to fill ``programs`` slots,
    never more splits than key blocks of the capacity (the longest possible length)."""
    want = cdiv(programs, max(bkv_total, 1))
    return max(1, min(want, cdiv(max(capacity, 1), block_n), MAX_SPLITS))


def grids(splits: int, bkv_total: int, bn_total: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Split grid (splits, batch*kv heads folded) and combine grid (1, batch*heads folded)."""
    return fold_grid(splits, 1, bkv_total), fold_grid(1, 1, bn_total)


def split_args(cfg: DecodeConfig, tensors: tuple) -> dict:
    """Every argument of ``_decode_split_kernel`` by name: tensors (Q, K, V, MASK, PSE, TABLE, KV_PAD,
    AQ_SCALE, AQ_OFFSET, WS_ACC, WS_ML, PARAMS), then scale, strides, sizes and constexprs of ``cfg``."""
    args = dict(zip(_decode_split_kernel.arg_names, (*tensors, cfg.sm_scale, *cfg.split_strides,
                                                      *cfg.split_sizes)))
    args.update(cfg.split_meta)
    return args


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
