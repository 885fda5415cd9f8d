"""Mask block summaries: per row tile of a user mask (non-zero = masked out), the key blocks that hold a
visible element, in ascending order, each marked mixed or all visible (the prefill kernel's MASK_SUMMARY).

Tiles are the prefill launch's BLOCK_M x BLOCK_N, over rows [0, rows) and columns [0, cols) of a
(B or 1, R, C) mask: the part a call can read. Per (mask batch, row tile) the pass writes one int32 row
of ``2 * col_tiles + 1`` words:

- ``count[c]``, c in [0, col_tiles]: how many column tiles before tile c are not all masked;
- ``visit[t]``, t in [0, count[col_tiles]), after them: those column tiles, ``2 * c + mixed`` (mixed: the
  tile holds masked and visible elements; else each element is visible).

Key blocks [lo, hi) of a row tile are then the visits ``count[lo] .. count[hi] - 1``: the kernel loads no
mask for an all-visible tile and skips an all-masked one. The pass runs at every launch (the mask's
contents may change between graph replays); a program per (row tile, mask batch) walks the columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl

from .. import launcher

CHUNK_COLS = 128                 # mask columns a program reads per step


@triton.jit
def _mask_summary_kernel(
    MASK, SUMMARY, stride_mb, stride_ms, stride_mk, ROWS, COLS, COL_TILES, stride_ub,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr,
):
    r = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    o_i = r * BLOCK_M + tl.arange(0, BLOCK_M)
    m_i = o_i < ROWS
    p_row = MASK + b * stride_mb + o_i.to(tl.int64)[:, None] * stride_ms
    p_count = SUMMARY + b * stride_ub + r * (2 * COL_TILES + 1)
    p_visit = p_count + COL_TILES + 1
    kept = 0
    for c0 in range(0, COL_TILES, CHUNK):
        o_j = c0 * BLOCK_N + tl.arange(0, CHUNK * BLOCK_N)
        inside = m_i[:, None] & (o_j < COLS)[None, :]
        x = tl.load(p_row + o_j.to(tl.int64)[None, :] * stride_mk, mask=inside, other=0)
        masked = tl.max(tl.reshape(tl.max(((x != 0) & inside).to(tl.int32), 0), [CHUNK, BLOCK_N]), 1)
        visible = tl.max(tl.reshape(tl.max(((x == 0) & inside).to(tl.int32), 0), [CHUNK, BLOCK_N]), 1)
        o_c = c0 + tl.arange(0, CHUNK)
        keep = (visible > 0) & (o_c < COL_TILES)
        k = keep.to(tl.int32)
        before = kept + tl.cumsum(k, 0) - k
        tl.store(p_count + o_c, before, mask=o_c < COL_TILES)
        tl.store(p_visit + before, 2 * o_c + masked, mask=keep)
        kept += tl.sum(k, 0)
    tl.store(p_count + COL_TILES, kept)


@dataclass(frozen=True)
class SummaryConfig:
    """Static description of the summary of one prefill launch's mask (hashable, part of its plan)."""

    batches: int                    # the mask's batch axis: B, or 1 when shared
    rows: int                       # mask rows the call reads: [0, rows)
    cols: int                       # mask columns the call reads: [0, cols)
    block_m: int
    block_n: int
    mask_strides: tuple[int, int, int]      # batch (0 when shared), row, column

    @property
    def row_tiles(self) -> int:
        return -(-self.rows // self.block_m)

    @property
    def col_tiles(self) -> int:
        return -(-self.cols // self.block_n)

    @property
    def batch_stride(self) -> int:
        """int32 words between the summaries of two mask batches (0 when the mask is shared)."""
        return 0 if self.batches == 1 else self.row_tiles * (2 * self.col_tiles + 1)

    @property
    def words(self) -> int:
        """int32 words of scratch the summary fills."""
        return self.batches * self.row_tiles * (2 * self.col_tiles + 1)


def launch(cfg: SummaryConfig, mask, summary) -> None:
    """Summarise ``mask`` (the prefill kernel's MASK operand) into ``summary`` (``cfg.words`` int32)."""
    chunk = max(1, CHUNK_COLS // cfg.block_n)
    args = (mask, summary, *cfg.mask_strides, cfg.rows, cfg.cols, cfg.col_tiles, cfg.batch_stride,
            cfg.block_m, cfg.block_n, chunk)
    launcher.run(_mask_summary_kernel, (cfg.row_tiles, cfg.batches, 1), args, num_warps=4, num_stages=1)
