"""Which (query row i, key column j) pairs attend: sparse modes, pre/next tokens and fill values.

One definition serves the plan (per-batch band limits in the parameter block), the kernels (the same
predicate on partial blocks) and the reference. Polarity: an Ascend ``atten_mask`` element that is
non-zero means *masked out* (torch SDPA's boolean mask is the opposite: True = attend).

Coordinates are "left-up": row i in [0, qlen), column j in [0, kvtot) of the batch's valid region.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import numpy as np
import torch

INT_MAX = 2147483647
# Band limits are clamped to this in the parameter block, so that i + next and i - pre stay in int32.
BAND_INF = 1 << 30

FILL_FP32 = -3.4028234663852886e38  # lowest finite fp32 (0xFF7FFFFF): prefill path, fp32 compute
FILL_FP16 = -65504.0           # prefill path, fp16 high performance and int8
FILL_DECODE = -1e12            # decode path (IFA, FIA with Q_S = 1)
LSE_DECODE_EMPTY = -3.4e38     # decode-path lse of a batch without keys (the prefill path writes +inf)

SPARSE_MODES = (0, 1, 2, 3, 4)
COMPRESSED_MASK = 2048         # side of the triu(ones, 1) mask that sparse modes 2-4 require


class Band(NamedTuple):
    """Per-batch limits: key j is in the band of row i iff ``i - pre <= j <= i + next``."""

    pre: int
    next: int
    use_user_mask: bool

    def clamped(self) -> tuple[int, int]:
        return (max(-BAND_INF, min(self.pre, BAND_INF)), max(-BAND_INF, min(self.next, BAND_INF)))


def prefill_band(sparse_mode: int, pre_tokens: int, next_tokens: int, qlen: int, kvtot: int,
                 has_mask: bool, left_padding: bool) -> Band:
    """Band of one batch on the prefill path (spec ops §1.5); ``sparse_mode`` already in 0..4. Cached:
    it runs for every batch of every call (symbolic lengths while tracing are not hashable)."""
    try:
        return _cached_band(sparse_mode, pre_tokens, next_tokens, qlen, kvtot, has_mask, left_padding)
    except TypeError:
        return _band(sparse_mode, pre_tokens, next_tokens, qlen, kvtot, has_mask, left_padding)


def _band(sparse_mode: int, pre_tokens: int, next_tokens: int, qlen: int, kvtot: int, has_mask: bool,
          left_padding: bool) -> Band:
    if sparse_mode == 0:
        if not has_mask or left_padding:
            return Band(INT_MAX, INT_MAX, has_mask)
        return Band(pre_tokens, next_tokens, True)
    if sparse_mode == 1:
        return Band(INT_MAX, INT_MAX, True)
    if sparse_mode == 2:
        return Band(INT_MAX, 0, False)
    if sparse_mode == 3:
        return Band(INT_MAX, kvtot - qlen, False)
    if sparse_mode == 4:
        return Band(pre_tokens - kvtot + qlen, next_tokens + kvtot - qlen, False)
    raise ValueError(f"sparse_mode={sparse_mode}: expected one of {SPARSE_MODES}")


_cached_band = functools.lru_cache(maxsize=4096)(_band)


def fp16_value(x: float) -> float:
    """``x`` rounded to float16 (the NPU's fp16 compute paths cast the scale so)."""
    return float(np.float16(x))


def in_band(i, j, pre, nxt):
    """The band predicate on index tensors (torch or triton alike): ``i - pre <= j <= i + nxt``."""
    return (j - i <= nxt) & (i - j <= pre)


def outside_band(i0: int, i1: int, j0: int, j1: int, pre: int, nxt: int, device=None) -> Optional[torch.Tensor]:
    """[i1 - i0, j1 - j0] bool, True where (i, j) of rows ``[i0, i1)`` and keys ``[j0, j1)`` fails ``in_band``
    (built from diagonals, 5 times faster than the predicate on index tensors); None when no pair does."""
    ones = torch.ones(i1 - i0, j1 - j0, dtype=torch.bool, device=device)
    out = None
    if j1 - 1 - i0 > nxt:                     # keys past i + nxt
        out = ones.triu(nxt + i0 - j0 + 1)
    if i1 - 1 - j0 > pre:                     # keys before i - pre
        before = ones.tril(i0 - j0 - pre - 1)
        out = before if out is None else out | before
    return out


def band_matrix(qlen: int, kvtot: int, band: Band, device=None) -> torch.Tensor:
    """[qlen, kvtot] bool, True where the band keeps (i, j)."""
    i = torch.arange(qlen, device=device)[:, None]
    j = torch.arange(kvtot, device=device)[None, :]
    return in_band(i, j, band.pre, band.next)
