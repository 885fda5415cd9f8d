"""Keys and values of a call's batches, addressed as the kernels address them (spec ops §1.9-§1.12, §4.4).

Batch b's key j is the shared prefix's key j when ``j < prefix``, else its own key ``t = j - prefix``:
row ``kv_off + t`` of batch b, or in a paged cache slot ``t % page`` of block ``table[b, t // page]``.
int8 keys/values are anti-quantised to the query dtype, ``(x + offset) * scale`` (``antiquant``), with
parameters per channel, per token (by position t) or per row (by storage: batch or block, and row), as
``ops.sources.AntiQuant`` describes. Rope keys are stored like the keys and appended along D.

Block ids: an id outside ``[0, blocks)`` never reads outside the cache; its slots read as zero keys and
zero values (after anti-quantisation). With ``NPUK_CHECK_BLOCK_TABLE=1`` such an id inside a batch's kv
length raises ``ValueError`` naming the batch, the table position and the id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..env import check_block_table
from ..errors import require
from ..ops.sources import PER_CHANNEL, PER_TOKEN, AntiQuant
from .spans import Span


def antiquant(x: torch.Tensor, scale: torch.Tensor, offset: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """(x_int8 + offset) * scale in ``dtype``: float16 arithmetic for float16, float32 then cast otherwise.
    ``scale``/``offset`` broadcast against ``x``."""
    work = torch.float16 if dtype == torch.float16 else torch.float32
    y = x.to(work)
    if offset is not None:
        y = y + offset.to(work)
    return (y * scale.to(work)).to(dtype)


def paged_rows(store: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Blocks ``ids`` (G, nblk) of ``store`` (blocks, KV_N, page, ...) as (G, KV_N, nblk * page, ...)."""
    g = store.index_select(0, ids.reshape(-1))                       # (G * nblk, KV_N, page, ...)
    g = g.unflatten(0, ids.shape).transpose(1, 2)                    # (G, KV_N, nblk, page, ...)
    return g.flatten(2, 3)


@dataclass(frozen=True)
class KeyStore:
    """Where the keys and values of every batch are, and how they are read."""

    k: torch.Tensor                          # (B, KV_N, S2, D) views, or paged caches (blocks, KV_N, page, D)
    v: torch.Tensor                          # likewise with Dv
    dtype: torch.dtype                       # int8 keys/values with anti-quant parameters come out in it
    table: Optional[torch.Tensor] = None     # (B, max blocks) int32
    page: int = 0
    prefix: Optional[tuple[torch.Tensor, torch.Tensor]] = None   # (1, KV_N, P_S, D), (1, KV_N, P_S, Dv)
    rope: Optional[torch.Tensor] = None      # key rope part, stored like ``k``
    key_quant: Optional[AntiQuant] = None
    value_quant: Optional[AntiQuant] = None

    def take(self, b0: int, b1: int, span: Span) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (G, KV_N, kvlen, D [+ rope]) and values (G, KV_N, kvlen, Dv) of batches ``b0..b1-1``, which
        share ``span``: views of the inputs where no gathering, prefix, rope or anti-quantisation applies."""
        own = span.kvlen - span.prefix
        slots = bad = None
        if self.table is not None:
            slots, bad = self._blocks(b0, b1, own)
        k = self._own(self.k, b0, b1, span, own, slots)
        v = self._own(self.v, b0, b1, span, own, slots)
        if self.key_quant is not None:
            k = antiquant(k, *self._params(self.key_quant, k.shape[-1], b0, b1, span, own, slots), self.dtype)
        if self.value_quant is not None:
            v = antiquant(v, *self._params(self.value_quant, v.shape[-1], b0, b1, span, own, slots), self.dtype)
        if self.rope is not None:
            k = torch.cat([k, self._own(self.rope, b0, b1, span, own, slots)], -1)
        if bad is not None:
            zero = bad[:, None, :own, None]
            k, v = k.masked_fill(zero, 0), v.masked_fill(zero, 0)
        if self.prefix is not None:
            k, v = (torch.cat([self._prefix(t, aq, span.prefix, b1 - b0), x], 2)
                    for t, aq, x in zip(self.prefix, (self.key_quant, self.value_quant), (k, v)))
        return k, v

    def _blocks(self, b0: int, b1: int, own: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Block ids of the keys ``[0, own)`` of batches ``b0..b1-1`` (G, nblk), ids outside the cache
        replaced by 0, and which keys those were (G, nblk * page), or None when every id is valid."""
        nblk = -(-own // self.page)
        ids = self.table[b0:b1, :nblk].long()
        blocks = self.k.shape[0]
        outside = (ids < 0) | (ids >= blocks)
        if not bool(outside.any()):
            return ids, None
        if check_block_table():
            at = int(outside.flatten().nonzero()[0])
            b, p = b0 + at // nblk, at % nblk
            require(False, f"block_table[{b}, {p}]", int(ids.flatten()[at]),
                    f"block id outside [0, {blocks}) for keys {p * self.page}..{min((p + 1) * self.page, own) - 1} "
                    f"of batch {b} (NPUK_CHECK_BLOCK_TABLE=1)")
        return ids.masked_fill(outside, 0), outside.repeat_interleave(self.page, 1)

    def _own(self, t: torch.Tensor, b0: int, b1: int, span: Span, own: int,
             slots: Optional[torch.Tensor]) -> torch.Tensor:
        if slots is None:
            return t[b0:b1, :, span.kv_off:span.kv_off + own]
        return paged_rows(t, slots)[:, :, :own]

    def _params(self, aq: AntiQuant, width: int, b0: int, b1: int, span: Span, own: int,
                slots: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Scale and offset broadcastable against the own keys (G, KV_N, own, width)."""
        def view(p: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if p is None:
                return None
            if aq.mode == PER_CHANNEL:
                return p[:1, :, None, :width]
            if aq.mode == PER_TOKEN:
                return p[b0:b1, :, :own, None]
            return self._own(p[..., None], b0, b1, span, own, slots)          # per row, stored like the keys
        return view(aq.scale), view(aq.offset)

    def _prefix(self, t: torch.Tensor, aq: Optional[AntiQuant], length: int, batches: int) -> torch.Tensor:
        p = t[:, :, :length]
        if aq is not None:                                 # a shared prefix takes per-channel parameters
            width = p.shape[-1]
            p = antiquant(p, aq.scale[:1, :, None, :width],
                          None if aq.offset is None else aq.offset[:1, :, None, :width], self.dtype)
        return p.expand(batches, *p.shape[1:])
