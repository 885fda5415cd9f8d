"""Triton kernels of the KV-cache operators (``npu_kernels/ops/kv_cache.py``): token rows into a paged
cache (scatter), cache tokens into rows (gather), and index-vector slices (scatter_nd).

Data movement only: the callers pass integer views of the data (``ops.kv_cache.bits``), so every copy is
bit exact. Addresses are int64. Indices are loaded on the device; an index outside its tensor turns the
load or store off (masks), so no program touches memory outside the tensors. Grids come from tensor
shapes only. A scalar condition joins a vector mask as its bound (``o < tl.where(ok, n, 0)``): Triton's
interpreter types ``vector & scalar`` as int32, which its loads and stores reject.

``cache_offset`` is the paged-cache addressing (ND or NZ) shared with any kernel that reads these caches.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import launcher
from .prefill import cdiv, positional

MAX_BLOCK_H = 1024


@triton.jit
def cache_offset(slot, h, BLOCK_SIZE, H, IS_NZ: tl.constexpr, C0: tl.constexpr):
    """Element offset (int64) of channel ``h`` (= n * D + d) of token ``slot`` (= blk * BLOCK_SIZE + off) in a
    contiguous paged cache of H channels per token: ND (nb, bs, KV_N, D): slot * H + h; NZ (nb, H / C0, bs,
    C0), the same bytes as (nb, KV_N, D / C0, bs, C0): blk * bs * H + (h // C0) * bs * C0 + off * C0 + h % C0."""
    slot = slot.to(tl.int64)
    h = h.to(tl.int64)
    if IS_NZ:
        blk = slot // BLOCK_SIZE
        off = slot % BLOCK_SIZE
        return blk * BLOCK_SIZE * H + (h // C0) * (BLOCK_SIZE * C0) + off * C0 + h % C0
    return slot * H + h


@triton.jit
def _scatter_kernel(
    SRC,        # [T, KV_N, D] token rows, any strides
    SLOTS,      # [T] int32/int64: slot of each token
    CACHE,      # paged cache (ND or NZ), contiguous
    D, H, BLOCK_SIZE, N_SLOTS,
    stride_src_t, stride_src_n, stride_src_d, stride_slots,
    IS_NZ: tl.constexpr, C0: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """One program per (token, channel block): row ``i_t`` goes to its slot unless the slot is outside
    [0, N_SLOTS)."""
    i_t = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1)
    slot = tl.load(SLOTS + i_t * stride_slots).to(tl.int64)
    o_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)                                         # [BH]
    m_h = o_h < tl.where((slot >= 0) & (slot < N_SLOTS), H, 0)
    p_src = SRC + i_t * stride_src_t + (o_h // D).to(tl.int64) * stride_src_n + (o_h % D).to(tl.int64) * stride_src_d
    b_x = tl.load(p_src, mask=m_h)
    tl.store(CACHE + cache_offset(slot, o_h, BLOCK_SIZE, H, IS_NZ, C0), b_x, mask=m_h)


@triton.jit
def _gather_kernel(
    CACHE,      # paged cache (ND or NZ), contiguous
    TABLE,      # [B, W] int32 block ids
    SEQ_LENS,   # [B] int32 lengths, or [B + 1] cumulative (CUMSUM)
    SEQ_OFFSET, # [B] int32 tokens skipped per request (HAS_OFFSET; whole blocks count)
    DST,        # [R, H] rows, contiguous
    H, BLOCK_SIZE, N_BLOCKS, B, W,
    stride_table_b, stride_table_w,
    IS_NZ: tl.constexpr, C0: tl.constexpr, CUMSUM: tl.constexpr, HAS_OFFSET: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """One program per (output row, channel block). The row's request is found from the prefix sums of
    the lengths (computed by every program: B is small); rows of no request are not written, tokens whose
    table column or block id is out of range read zeros."""
    i_r = tl.program_id(0).to(tl.int64)
    i_h = tl.program_id(1)
    o_b = tl.arange(0, BLOCK_B)                                                          # [BB]
    m_b = o_b < B
    if CUMSUM:
        first = tl.load(SEQ_LENS).to(tl.int64)
        b_n = tl.load(SEQ_LENS + o_b + 1, mask=m_b, other=0).to(tl.int64) \
            - tl.load(SEQ_LENS + o_b, mask=m_b, other=0).to(tl.int64)
    else:
        first = tl.zeros([], dtype=tl.int64)
        b_n = tl.load(SEQ_LENS + o_b, mask=m_b, other=0).to(tl.int64)
    b_n = tl.maximum(b_n, 0)
    b_end = first + tl.cumsum(b_n, 0)                                                    # [BB]
    i_b = tl.sum((m_b & (b_end <= i_r)).to(tl.int32), 0)
    start = tl.sum(tl.where(o_b == i_b, b_end - b_n, 0), 0)
    in_request = (i_b < B) & (i_r >= first)
    t = i_r - start
    col = t // BLOCK_SIZE
    if HAS_OFFSET:
        col += tl.load(SEQ_OFFSET + i_b, mask=in_request, other=0).to(tl.int64) // BLOCK_SIZE  # truncates, as the NPU
    m_col = in_request & (col >= 0) & (col < W)
    blk = tl.load(TABLE + i_b.to(tl.int64) * stride_table_b + col * stride_table_w, mask=m_col, other=-1).to(tl.int64)
    found = m_col & (blk >= 0) & (blk < N_BLOCKS)
    o_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)                                         # [BH]
    slot = blk * BLOCK_SIZE + t % BLOCK_SIZE
    b_x = tl.load(CACHE + cache_offset(slot, o_h, BLOCK_SIZE, H, IS_NZ, C0), mask=o_h < tl.where(found, H, 0), other=0)
    tl.store(DST + i_r * H + o_h, b_x, mask=o_h < tl.where(in_request, H, 0))


@triton.jit
def _scatter_nd_kernel(
    SELF,       # target; dims >= 1 contiguous
    INDICES,    # [K, A] int32/int64
    UPDATES,    # [K, ROW]
    ROW, stride_idx_k, stride_idx_a, stride_upd_k, stride_upd_c,
    SIZES: tl.constexpr,    # the A indexed dims of SELF
    STRIDES: tl.constexpr,  # their strides
    BLOCK: tl.constexpr,
):
    """One program per (index vector, slice block): the slice SELF[i_0, ..., i_{A-1}] takes the vector's
    update row, unless a component is outside its dim."""
    i_k = tl.program_id(0).to(tl.int64)
    i_c = tl.program_id(1)
    off = tl.zeros([], dtype=tl.int64)
    ok = tl.full([], 1, tl.int1)
    for j in tl.static_range(len(SIZES)):
        idx = tl.load(INDICES + i_k * stride_idx_k + j * stride_idx_a).to(tl.int64)
        ok = ok & (idx >= 0) & (idx < SIZES[j])
        off += idx * STRIDES[j]
    o_c = i_c * BLOCK + tl.arange(0, BLOCK)                                              # [BLOCK]
    m_c = o_c < tl.where(ok, ROW, 0)
    b_x = tl.load(UPDATES + i_k * stride_upd_k + o_c.to(tl.int64) * stride_upd_c, mask=m_c)
    tl.store(SELF + off + o_c, b_x, mask=m_c)


def _block(n: int) -> int:
    return min(MAX_BLOCK_H, triton.next_power_of_2(max(n, 1)))


def scatter_args(rows, slots, cache, nz: bool, c0: int, block_size: int, n_slots: int) -> dict:
    """Arguments of ``_scatter_kernel`` by name: rows [T, KV_N, D] into ``cache`` at ``slots``."""
    d, h = rows.shape[2], rows.shape[1] * rows.shape[2]
    return dict(SRC=rows, SLOTS=slots, CACHE=cache, D=d, H=h, BLOCK_SIZE=block_size, N_SLOTS=n_slots,
                stride_src_t=rows.stride(0), stride_src_n=rows.stride(1), stride_src_d=rows.stride(2),
                stride_slots=slots.stride(0), IS_NZ=nz, C0=c0, BLOCK_H=_block(h))


def scatter(rows, slots, cache, nz: bool, c0: int, block_size: int, n_slots: int) -> None:
    args = scatter_args(rows, slots, cache, nz, c0, block_size, n_slots)
    grid = (rows.shape[0], cdiv(args["H"], args["BLOCK_H"]))
    launcher.run(_scatter_kernel, grid, positional(_scatter_kernel, args), num_warps=4, num_stages=1)


def gather_args(cache, table, seq_lens, seq_offset, dst, nz: bool, c0: int, block_size: int, width: int,
                blocks: int, cumsum: bool) -> dict:
    """Arguments of ``_gather_kernel`` by name: the requests' tokens of ``cache`` into ``dst`` rows."""
    batch = table.shape[0]
    return dict(CACHE=cache, TABLE=table, SEQ_LENS=seq_lens, SEQ_OFFSET=seq_lens if seq_offset is None else seq_offset,
                DST=dst, H=width, BLOCK_SIZE=block_size, N_BLOCKS=blocks, B=batch, W=table.shape[1],
                stride_table_b=table.stride(0), stride_table_w=table.stride(1), IS_NZ=nz, C0=c0, CUMSUM=cumsum,
                HAS_OFFSET=seq_offset is not None, BLOCK_B=triton.next_power_of_2(batch), BLOCK_H=_block(width))


def gather(cache, table, seq_lens, seq_offset, dst, nz: bool, c0: int, block_size: int, width: int, blocks: int,
           cumsum: bool) -> None:
    args = gather_args(cache, table, seq_lens, seq_offset, dst, nz, c0, block_size, width, blocks, cumsum)
    grid = (dst.shape[0], cdiv(width, args["BLOCK_H"]))
    launcher.run(_gather_kernel, grid, positional(_gather_kernel, args), num_warps=4, num_stages=1)


def scatter_nd_args(target, indices, updates, sizes: tuple, strides: tuple) -> dict:
    """Arguments of ``_scatter_nd_kernel`` by name: ``updates`` [K, ROW] into the slices of ``target``
    selected by ``indices`` [K, A] over its first A dims (``sizes``, ``strides``)."""
    row = updates.shape[1]
    return dict(SELF=target, INDICES=indices, UPDATES=updates, ROW=row, stride_idx_k=indices.stride(0),
                stride_idx_a=indices.stride(1), stride_upd_k=updates.stride(0), stride_upd_c=updates.stride(1),
                SIZES=tuple(sizes), STRIDES=tuple(strides), BLOCK=_block(row))


def scatter_nd(target, indices, updates, sizes: tuple, strides: tuple) -> None:
    args = scatter_nd_args(target, indices, updates, sizes, strides)
    grid = (indices.shape[0], cdiv(args["ROW"], args["BLOCK"]))
    launcher.run(_scatter_nd_kernel, grid, positional(_scatter_nd_kernel, args), num_warps=4, num_stages=1)


def aot_variants() -> list:
    """Representative launches of the three kernels, planned for a GPU (``npu_kernels.aot.Variant``)."""
    import torch

    from .. import aot

    i8, i16, i32, i64 = torch.int8, torch.int16, torch.int32, torch.int64
    z = torch.zeros
    cases = [
        ("scatter-nd-fp16", lambda: scatter(z(64, 8, 128, dtype=i16), z(64, dtype=i32), z(16, 128, 8, 128, dtype=i16),
                                            False, 1024, 128, 2048)),
        ("scatter-nz-int8-i64slots", lambda: scatter(z(64, 2, 128, dtype=i8), z(64, dtype=i64),
                                                     z(16, 2, 4, 128, 32, dtype=i8), True, 32, 128, 2048)),
        ("gather-norm-offset", lambda: gather(z(16, 128, 1, 512, dtype=i16), z(4, 8, dtype=i32), z(4, dtype=i32),
                                              z(4, dtype=i32), z(256, 1, 512, dtype=i16), False, 512, 128, 512, 16,
                                              False)),
        ("gather-nz-cumsum", lambda: gather(z(16, 4, 128, 16, dtype=i16), z(4, 8, dtype=i32), z(5, dtype=i32), None,
                                            z(256, 64, dtype=i16), True, 16, 128, 64, 16, True)),
        ("scatter-nd-rows", lambda: scatter_nd(z(2048, 64, dtype=i8), z(64, 1, dtype=i32), z(64, 64, dtype=i8),
                                               (2048,), (64,))),
        ("scatter-nd-2d-i64", lambda: scatter_nd(z(16, 128, 576, dtype=i16), z(64, 2, dtype=i64),
                                                 z(64, 576, dtype=i16), (16, 128), (128 * 576, 576))),
    ]
    return [aot.Variant(name, launch) for name, launch in cases]
