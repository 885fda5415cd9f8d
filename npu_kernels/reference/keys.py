"""Keys and values of a call's batches, read as the kernels address them (spec ops §1.9-§1.12, §4.4).

Batch b's key j is the shared prefix's key j when ``j < prefix``, else its own key ``t = j - prefix``:
row ``kv_off + t`` of batch b, or in a paged cache slot ``t % page`` of block ``table[b, t // page]``
(gathered with ``paged_attention.paged_rows``, which reads ND and NZ caches).
int8 keys/values are anti-quantised to the query dtype, ``(x + offset) * scale`` (``antiquant``), with
parameters per channel, per token (by position t) or per row (by storage: batch or block, and row), as
``ops.sources.AntiQuant`` describes. Rope keys are stored like the keys and appended along D.

A ``Reader`` gives any range of keys or values of a group of batches: a view of the inputs where nothing
is gathered, converted or appended, else a copy of that range only, so that no copy of all keys of a
paged cache is made when a computation walks them in ranges.

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
from .paged_attention import paged_rows
from .spans import Span


def antiquant(x: torch.Tensor, scale: torch.Tensor, offset: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """(x_int8 + offset) * scale in ``dtype``: float16 arithmetic for float16, float32 then cast otherwise.
    ``scale``/``offset`` broadcast against ``x``."""
    work = torch.float16 if dtype == torch.float16 else torch.float32
    y = x.to(work)
    if offset is not None:
        y = y + offset.to(work)
    return (y * scale.to(work)).to(dtype)


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

    def reader(self, b0: int, b1: int, span: Span) -> "Reader":
        """The keys ``[0, span.kvlen)`` of batches ``b0 .. b1 - 1``, which share ``span`` (block ids checked
        now)."""
        return Reader(self, b0, b1, span)


class Reader:
    """Keys (G, KV_N, n, D [+ rope]) and values (G, KV_N, n, Dv) of a group of batches, by key range."""

    def __init__(self, store: KeyStore, b0: int, b1: int, span: Span):
        self.store, self.b0, self.b1, self.span = store, b0, b1, span
        self.heads = store.k.shape[1]
        self.key_dim = store.k.shape[-1] + (0 if store.rope is None else store.rope.shape[-1])
        self.value_dim = store.v.shape[-1]
        self.key_dtype = store.k.dtype if store.key_quant is None else store.dtype
        self.value_dtype = store.v.dtype if store.value_quant is None else store.dtype
        self.ids = self.outside = None
        if store.table is not None:
            self.ids, self.outside = self._blocks(span.kvlen - span.prefix)

    def keys(self, j0: int, j1: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Keys ``[j0, j1)``; in ``dtype`` and contiguous when given, else possibly a view."""
        st = self.store
        return self._read(st.k, st.key_quant, st.rope, 0 if st.prefix is None else st.prefix[0], j0, j1, dtype)

    def values(self, j0: int, j1: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        st = self.store
        return self._read(st.v, st.value_quant, None, 0 if st.prefix is None else st.prefix[1], j0, j1, dtype)

    def _read(self, t, aq, rope, prefix, j0, j1, dtype) -> torch.Tensor:
        parts = []
        p = self.span.prefix
        if j0 < p:                                   # the shared prefix: per-channel parameters only
            x = prefix[:, :, j0:min(j1, p)]
            if aq is not None:
                width = x.shape[-1]
                x = antiquant(x, aq.scale[:1, :, None, :width],
                              None if aq.offset is None else aq.offset[:1, :, None, :width], self.store.dtype)
            parts.append(x.expand(self.b1 - self.b0, *x.shape[1:]))
        if j1 > p or not parts:
            t0, t1 = max(j0 - p, 0), max(j1 - p, 0)
            x = self._own(t, t0, t1)
            if aq is not None:
                x = antiquant(x, *self._params(aq, x.shape[-1], t0, t1), self.store.dtype)
            if rope is not None:
                x = torch.cat([x, self._own(rope, t0, t1)], -1)
            if self.outside is not None:
                x = x.masked_fill(self.outside[:, None, t0:t1, None], 0)
            parts.append(x)
        x = parts[0] if len(parts) == 1 else torch.cat(parts, 2)
        return x if dtype is None else x.to(dtype, memory_format=torch.contiguous_format)

    def _blocks(self, own: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Block ids of the keys ``[0, own)`` (G, nblk), ids outside the cache replaced by 0, and which keys
        those were (G, nblk · page), or None when every id is valid."""
        st = self.store
        nblk = -(-own // st.page)
        ids = st.table[self.b0:self.b1, :nblk].long()
        blocks = st.k.shape[0]
        outside = (ids < 0) | (ids >= blocks)
        if not bool(outside.any()):
            return ids, None
        if check_block_table():
            at = int(outside.flatten().nonzero()[0])
            b, pos = self.b0 + at // nblk, at % nblk
            require(False, f"block_table[{b}, {pos}]", int(ids.flatten()[at]),
                    f"block id outside [0, {blocks}) for keys {pos * st.page}..{min((pos + 1) * st.page, own) - 1} "
                    f"of batch {b} (NPUK_CHECK_BLOCK_TABLE=1)")
        return ids.masked_fill(outside, 0), outside.repeat_interleave(st.page, 1)

    def _own(self, t: torch.Tensor, t0: int, t1: int) -> torch.Tensor:
        """Own keys ``[t0, t1)`` of ``t`` (stored like the keys: (B or blocks, KV_N, rows, ...))."""
        if self.ids is None:
            off = self.span.kv_off
            return t[self.b0:self.b1, :, off + t0:off + t1]
        page = self.store.page
        c0 = t0 // page
        return paged_rows(t, self.ids[:, c0:-(-t1 // page)])[:, :, t0 - c0 * page:t1 - c0 * page]

    def _params(self, aq: AntiQuant, width: int, t0: int, t1: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Scale and offset broadcastable against the own keys ``[t0, t1)`` (G, KV_N, n, width)."""
        def view(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            if x is None:
                return None
            if aq.mode == PER_CHANNEL:
                return x[:1, :, None, :width]
            if aq.mode == PER_TOKEN:
                return x[self.b0:self.b1, :, t0:t1, None]
            return self._own(x[..., None], t0, t1)                           # per row, stored like the keys
        return view(aq.scale), view(aq.offset)
