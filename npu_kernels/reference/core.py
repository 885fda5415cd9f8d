"""The attention core of the golden operators and of the CPU execution path (spec ops §1.6-§1.8, §2.4, §9).

``attend`` computes the valid rows of a group of batches that share one span (``spans.Span``), in chunks
of rows so that memory stays O(rows × keys) per chunk, and hands each chunk to a sink. Per chunk:

* keys: only ``Span.key_range`` of the chunk's rows (causal and band modes skip what no row reaches),
  read by range through ``keys.Reader`` (paged caches gathered, int8 anti-quantised, range by range);
* scores ``scale · q·kᵀ`` (+ pse after the scale); keys outside a row's band, and keys the user mask
  marks (non-zero = masked out), score ``fill``;
* softmax and P·V by one of three methods, each a reading of the same semantics:
  - ``_exact``: the row softmax; P rounded to the values' dtype (against the row maximum) before P·V;
  - ``_online``: flash attention's online softmax over key blocks of ``Numerics.block_n``, P against the
    running maximum, in tiles of ``TILE_KEYS`` keys: per tile one cumulative maximum gives the running
    maxima, one batched product every block's P·V, and l (and a float accumulator) follow the closed
    form of the recurrence. With ``Numerics.fp16`` the NPU's fp16 high-performance path (spec ops §1.8):
    scores rounded to fp16 after Q·Kᵀ and after the scale, P = fp16(exp(fp16(s - m))) while l sums the
    exp values before they are rounded, each block's P·V rounded to fp16, the accumulator kept in fp16
    and updated in fp16 arithmetic with the rescale factor rounded to fp16 (the one step that runs block
    by block), out = acc / fp16(l). With ``Numerics.int8`` the int8 pipeline (spec ops §2.4):
    FP19 dequant scales, fp16 scores, P quantised with ``quant_scale1`` per key block, int8 P·V exact,
    dequantised to fp16, out = acc / fp16(l). Blocks start at key 0 of the batch; a chunk starts at the
    block holding its first key: the blocks before hold only fill scores for its rows, which leave the
    result unchanged (their weight is multiplied by exp(fill - m) = 0 once a real score is seen);
  - ``_Group.flash``: torch's CPU flash attention (``aten._scaled_dot_product_flash_attention_for_cpu``)
    where its semantics are those of ``_exact``: float32 math on fp16/bf16 inputs with D = Dv, P rounded
    to the input dtype before P·V (against the running maximum of its key blocks, as the kernels),
    lse = m + ln l; at least ``FLASH_ROWS`` query rows (it repacks keys per call). No mask and a full or
    top-left causal band: all rows in one call; else per chunk with an additive mask (pse, -inf where
    masked). -inf instead of ``fill`` changes nothing for a row that keeps a key unless one of its real
    scores lies within 104 of ``fill`` (not a finite fp32 score for the fp32 fill; |score| near 1e12 for
    the decode fill); rows without a kept key are fixed up below.
* rows without a key in their band: 0, lse +inf; rows whose every score is ``fill`` (all keys in the
  band masked): the result of attending uniformly to all keys of the batch (the mean of the values,
  computed by the same method, ``_Group.uniform``), lse = fill + ln(kvlen); 0 and +inf instead with
  ``zero_masked_rows``.

Query heads of a key/value head are folded into rows (GQA without repeating keys and values).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .. import caches, quant
from ..masks import outside_band
from .keys import Reader
from .spans import Span

# Score elements per chunk of rows (exact and SDPA methods) and per key tile (online method).
CHUNK_ELEMENTS = 1 << 21
TILE_ELEMENTS = 1 << 19
TILE_KEYS = 512
# Rows per chunk the online method keeps where it can (batched products of fewer rows run slowly): its
# key tiles shrink to as little as one block, and groups hold as few batches, to leave it that many.
ONLINE_ROWS = 128
# Value columns per batched block product of the online method.
PV_COLUMNS = 64
# Key (or value) elements converted to the working dtype at a time by the exact method.
KEY_ELEMENTS = 1 << 18
# Fewest query rows for torch's CPU flash attention, which repacks fp16/bf16 keys and values per call.
FLASH_ROWS = 64

Sink = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class Int8Steps:
    """Scales of the int8 pipeline: FP19 dequant scales already decoded, 0-d float32 tensors."""

    deq_scale1: torch.Tensor
    quant_scale1: torch.Tensor
    deq_scale2: torch.Tensor


@dataclass(frozen=True)
class Numerics:
    """How the softmax and P·V are computed. ``block_n``: online softmax over key blocks of that size
    (needed by ``fp16`` and ``int8``); None: the exact row softmax in ``compute`` (float32 or float64)."""

    compute: torch.dtype = torch.float32
    block_n: Optional[int] = None
    fp16: bool = False
    int8: Optional[Int8Steps] = None


@dataclass(frozen=True)
class Setup:
    """What a call fixes for every batch. ``mask``: (B or 1, R, C), non-zero = masked out; ``pse``:
    (B or 1, N, R, C); ``sdpa``: the results may come from torch's CPU flash attention (its output has the
    query dtype, which the destination must tolerate: not before an int8 quantisation)."""

    scale: float
    fill: float
    mask: Optional[torch.Tensor] = None
    pse: Optional[torch.Tensor] = None
    zero_masked_rows: bool = False
    numerics: Numerics = Numerics()
    sdpa: bool = False


def fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to float16 and continue in float32."""
    return x.to(torch.float16).float()


LOG2E = 1.4426950408889634


def exp_(x: torch.Tensor) -> torch.Tensor:
    """``x.exp_()``; float32 as exp2(x·log2 e), as the kernels compute it (relative error under 4e-6 for
    x ≥ -87): torch's CPU exp2 runs 3 times faster than its exp, whose vector path also leaves arguments
    below ln(2^-126) (masked scores, keys far below the row maximum) to a loop 10-30 times slower."""
    if x.dtype != torch.float32:
        return x.exp_()
    return torch.exp2(x.mul_(LOG2E), out=x)


def attend(q: torch.Tensor, kv: Reader, span: Span, b0: int, setup: Setup, sink: Sink) -> None:
    """Rows ``[0, span.qlen)`` of batches ``b0 .. b0 + G - 1``: q (G, N, qlen, D), their keys and values
    ``kv`` (``span.kvlen > 0``). Calls ``sink(i0, i1, out, lse)`` for consecutive row chunks with out
    (G, N, i1 - i0, Dv) and lse (G, N, i1 - i0); rows not computed have lse +inf."""
    grp = _Group(q, kv, span, b0, setup)
    if grp.sdpa and setup.mask is None and setup.pse is None and span.pre >= span.qlen - 1:
        full, causal = span.nxt >= span.kvlen - 1, span.nxt == 0      # causal: torch's top-left diagonal
        if full or causal:
            sink(0, span.qlen, *_flash(q, kv.keys(0, span.kvlen), kv.values(0, span.kvlen), None, setup.scale,
                                       not full))
            return
    rows = grp.rows_per_chunk()
    for i0 in range(0, span.qlen, rows):
        i1 = min(i0 + rows, span.qlen)
        sink(i0, i1, *grp.chunk(i0, i1))


def online_batches(numerics: Numerics, heads: int) -> Optional[int]:
    """The most batches of ``heads`` query heads that ``attend`` should get at once with ``numerics``: with
    the online method, as many as leave it chunks of ``ONLINE_ROWS`` rows over one key block; else None."""
    if numerics.block_n is None:
        return None
    return max(1, TILE_ELEMENTS // (heads * ONLINE_ROWS * numerics.block_n))


def _flash(q, k, v, mask: Optional[torch.Tensor], scale: float, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=causal, attn_mask=mask,
                                                                      scale=scale)


class _Scratch(threading.local):
    """Buffers by name, reused from tile to tile and call to call in a thread (fresh pages cost more than
    the arithmetic on them); emptied by ``npu_kernels.caches.release``. A buffer's contents are valid until
    the next request of its name."""

    def __init__(self):
        self.buffers: dict[tuple, torch.Tensor] = {}

    def get(self, name: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        key = (name, dtype, device)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = self.buffers[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)

    def clear(self) -> None:
        self.buffers.clear()


_SCRATCH = _Scratch()
caches.register(_SCRATCH.clear)


class _Group:
    """One group of batches sharing a span: its tensors, with keys/values folded to (G·KV_N, keys, ·) where
    they are used."""

    def __init__(self, q, kv: Reader, span: Span, b0: int, setup: Setup):
        self.q, self.kv, self.span, self.setup = q, kv, span, setup
        self.G, self.N, _, self.D = q.shape
        self.H, self.Dv, self.vdtype = kv.heads, kv.value_dim, kv.value_dtype
        self.g = self.N // self.H
        num = setup.numerics
        self.steps = num.fp16 or num.int8 is not None
        self.work = torch.float32 if self.steps else num.compute
        self.sdpa = (setup.sdpa and num.block_n is None and num.compute == torch.float32 and q.device.type == "cpu"
                     and q.dtype in (torch.float16, torch.bfloat16) and kv.key_dtype == kv.value_dtype == q.dtype
                     and kv.key_dim == kv.value_dim and q.shape[2] >= FLASH_ROWS)
        self.mask = None if setup.mask is None else setup.mask[b0:b0 + self.G] if setup.mask.shape[0] > 1 \
            else setup.mask[:1]
        self.pse = None if setup.pse is None else setup.pse[b0:b0 + self.G] if setup.pse.shape[0] > 1 \
            else setup.pse[:1]
        self._uniform = None
        self._fills: dict = {}

    # ---- sizes, buffers and operands ----

    def rows_per_chunk(self) -> int:
        sp = self.span
        if self.setup.numerics.block_n is not None and not self.sdpa:
            rows = max(1, TILE_ELEMENTS // (self.G * self.N * min(self.tile_keys(), sp.kvlen)))
            # a band that cuts keys (causal): a chunk computes the keys its last row reaches, so two chunks
            # of half the rows compute a quarter fewer scores than one
            if sp.nxt < sp.kvlen - 1 or sp.pre < sp.qlen - 1:
                rows = min(rows, max(ONLINE_ROWS, -(-sp.qlen // 2)))
            return rows
        width = max(1, min(sp.kvlen, sp.pre + sp.nxt + 1))        # keys one row's band reaches
        rows = max(1, CHUNK_ELEMENTS // (self.G * self.N * width))
        return max(1, CHUNK_ELEMENTS // (self.G * self.N * min(sp.kvlen, width + rows - 1)))

    def tile_keys(self) -> int:
        """Keys per tile of the online method: whole blocks, up to ``TILE_KEYS``, fewer where ``ONLINE_ROWS``
        rows of every head of the group would exceed ``TILE_ELEMENTS`` scores."""
        bn = self.setup.numerics.block_n
        keys = min(TILE_KEYS, TILE_ELEMENTS // (self.G * self.N * ONLINE_ROWS))
        return max(bn, keys - keys % bn)

    def scratch(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous buffer of ``shape`` (``_Scratch``)."""
        return _SCRATCH.get(name, shape, dtype, self.q.device)

    def converted(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """(G, KV_N, n, ·) keys or values → (G·KV_N, n, ·) in the working dtype (int8 values are exact in
        float32), in scratch ``name``."""
        return self.scratch(name, x.shape, self.work).copy_(x).flatten(0, 1)

    def key_step(self) -> int:
        """Keys per conversion of the exact method."""
        return max(1, KEY_ELEMENTS // (self.G * self.H * max(self.D, self.Dv)))

    def qf(self, i0: int, i1: int) -> torch.Tensor:
        """Query rows (G·KV_N, g·R, D) in the working dtype, the g query heads of a kv head folded into rows."""
        q = self.scratch("q", (self.G, self.N, i1 - i0, self.D), self.work).copy_(self.q[:, :, i0:i1])
        return q.view(self.G * self.H, self.g * (i1 - i0), self.D)

    def unfold(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """(G·KV_N, g·R, ...) → (G, N, R, ...)."""
        return x.reshape(self.G, self.N, rows, *x.shape[2:])

    # ---- scores ----

    def fill(self, dtype: torch.dtype) -> torch.Tensor:
        """``Setup.fill`` as a 0-d tensor of ``dtype``."""
        t = self._fills.get(dtype)
        if t is None:
            t = self._fills[dtype] = torch.tensor(self.setup.fill, dtype=dtype, device=self.q.device)
        return t

    def masked(self, i0: int, i1: int, j0: int, j1: int) -> Optional[torch.Tensor]:
        """(G or 1, R, keys) bool: (i, j) outside the band or masked by the user mask; None when none is."""
        sp = self.span
        out = outside_band(i0, i1, j0, j1, sp.pre, sp.nxt, self.q.device)
        if out is not None:
            out = out[None]
        if self.mask is not None:
            m = self.mask[:, sp.qm_off + i0:sp.qm_off + i1, sp.kvm_off + j0:sp.kvm_off + j1] != 0
            out = m if out is None else out | m
        return out

    def pse_tile(self, i0: int, i1: int, j0: int, j1: int) -> torch.Tensor:
        """(G or 1, N, R, keys)."""
        sp = self.span
        return self.pse[:, :, sp.qm_off + i0:sp.qm_off + i1, sp.kvm_off + j0:sp.kvm_off + j1]

    def scores(self, qf: torch.Tensor, i0: int, i1: int, j0: int, j1: int, width: int) -> torch.Tensor:
        """Scores of rows ``[i0, i1)`` against keys ``[j0, j1)`` masked with ``fill``, then -inf up to ``width``
        columns: (G·KV_N, g·R, width) in the working dtype, or fp16 for the NPU's fp16 steps (a scratch
        buffer, valid until the next call)."""
        setup, num = self.setup, self.setup.numerics
        keys = j1 - j0
        s = self.scratch("scores", (qf.shape[0], qf.shape[1], width), self.work)
        step = self.key_step()
        for a in range(j0, j1, step):
            b = min(a + step, j1)
            k = self.converted("keys", self.kv.keys(a, b))
            torch.bmm(qf, k.transpose(1, 2), out=s[:, :, a - j0:b - j0])
        if num.int8 is not None:                         # int32 values, exact: dequant to fp16
            s[..., :keys].mul_(num.int8.deq_scale1)
        if self.steps:                                   # fp16 arithmetic: each step rounded
            s = self.scratch("scores16", s.shape, torch.float16).copy_(s)
        s[..., :keys].mul_(setup.scale)
        s5 = s[..., :keys].view(self.G, self.H, self.g, i1 - i0, keys)
        if self.pse is not None:
            s5.add_(self.pse_tile(i0, i1, j0, j1).to(s.dtype).unflatten(1, (self.H, self.g)))
        masked = self.masked(i0, i1, j0, j1)
        if masked is not None:
            torch.where(masked[:, None, None], self.fill(s.dtype), s5, out=s5)     # faster than masked_fill_
        s[..., keys:].fill_(float("-inf"))
        return s

    # ---- one chunk of rows ----

    def chunk(self, i0: int, i1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(out (G, N, R, Dv), lse (G, N, R)) of rows ``[i0, i1)`` with the fix-ups of rows without keys
        and of fully masked rows."""
        sp, setup = self.span, self.setup
        rows = i1 - i0
        has_key = sp.rows_with_keys(i0, i1, self.q.device)
        j_lo, j_hi = sp.key_range(i0, i1)
        if j_lo >= j_hi:
            return (torch.zeros(self.G, self.N, rows, self.Dv, dtype=self.work, device=self.q.device),
                    torch.full((self.G, self.N, rows), float("inf"), device=self.q.device))
        if self.sdpa:
            out, lse, full = self.flash(i0, i1, j_lo, j_hi)
        else:
            qf = self.qf(i0, i1)
            method = _exact if setup.numerics.block_n is None else _online
            out, lse, m = method(self, lambda a, b, w: self.scores(qf, i0, i1, a, b, w), j_lo, j_hi)
            out, lse, full = self.unfold(out, rows), self.unfold(lse, rows), self.unfold(m, rows) == setup.fill
        full = full & has_key
        zero = ~has_key
        if bool(full.any()):
            if setup.zero_masked_rows:
                zero = zero | full
            else:
                out = out.clone()                        # a scratch buffer, which ``uniform`` reuses
                u_out, u_lse = self.uniform()
                out = torch.where(full[..., None], u_out.to(out.dtype), out)
                lse = torch.where(full, u_lse.to(lse.dtype), lse)
        if bool(zero.any()):
            out = out.masked_fill(zero[..., None], 0)
            lse = lse.masked_fill(zero, float("inf"))
        return out, lse

    def flash(self, i0: int, i1: int, j0: int, j1: int) -> tuple[torch.Tensor, ...]:
        """``_sdpa``: (out, lse, rows whose every key is masked), rows over (G, N, R)."""
        masked = self.masked(i0, i1, j0, j1)
        add = None
        if self.pse is not None:
            add = self.pse_tile(i0, i1, j0, j1)
            if masked is not None:
                add = add.masked_fill(masked[:, None], float("-inf"))
        elif masked is not None:
            add = torch.zeros(masked.shape, dtype=self.q.dtype, device=self.q.device)
            add = add.masked_fill_(masked, float("-inf"))[:, None]
        out, lse = _flash(self.q[:, :, i0:i1], self.kv.keys(j0, j1), self.kv.values(j0, j1), add, self.setup.scale,
                          False)
        full = torch.zeros(1, 1, i1 - i0, dtype=torch.bool, device=self.q.device) if masked is None \
            else masked.all(-1)[:, None]
        return out, lse, full

    def uniform(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention with every score ``fill`` over all keys, by this group's method: (G, N, 1, Dv), (G, N, 1)."""
        if self._uniform is None:
            fill, rows = self.setup.fill, self.G * self.H
            dtype = torch.float16 if self.steps else self.work

            def scores(a: int, b: int, width: int) -> torch.Tensor:
                s = torch.full((rows, 1, width), fill, dtype=dtype, device=self.q.device)
                return s.index_fill_(2, torch.arange(b - a, width, device=s.device), float("-inf"))

            method = _exact if self.setup.numerics.block_n is None else _online
            out, lse, _ = method(self, scores, 0, self.span.kvlen)
            out = out.clone()                            # kept past the scratch buffer's next use
            shape = (self.G, self.H, self.g)
            self._uniform = (out.reshape(self.G, self.H, 1, -1).expand(*shape, -1).reshape(self.G, self.N, 1, -1),
                             lse.reshape(self.G, self.H, 1).expand(*shape).reshape(self.G, self.N, 1))
        return self._uniform


Scores = Callable[[int, int, int], torch.Tensor]


def _exact(grp: _Group, scores: Scores, j0: int, j1: int) -> tuple[torch.Tensor, ...]:
    """Row softmax over keys ``[j0, j1)``: (out, lse, row max), rows as ``scores`` gives them."""
    s = scores(j0, j1, j1 - j0)
    m = s.amax(-1, keepdim=True)
    p = exp_(s.sub_(m))
    l = p.sum(-1, keepdim=True)
    p = p.to(grp.vdtype).to(grp.work)
    out = grp.scratch("out", (p.shape[0], p.shape[1], grp.Dv), grp.work).zero_()
    step = grp.key_step()
    for a in range(j0, j1, step):
        b = min(a + step, j1)
        out.baddbmm_(p[:, :, a - j0:b - j0], grp.converted("values", grp.kv.values(a, b)))
    out.div_(l)
    return out, (m + l.log()).squeeze(-1), m.squeeze(-1)


def _online(grp: _Group, scores: Scores, j0: int, j1: int) -> tuple[torch.Tensor, ...]:
    """Online softmax over key blocks (block k covers keys [k·bn, (k+1)·bn) of the batch) from the block
    holding key ``j0`` to key ``j1``, in tiles of ``TILE_KEYS``: (out, lse, final running max).

    Per tile, the running maxima after each block come from one cumulative maximum, P and every block's
    P·V from batched operations, and l (and the accumulator where it stays in float) from the closed form
    of the recurrence, ``x_last = x_prev · exp(m_prev - m_last) + Σ_k x_k · exp(m_k - m_last)``; the fp16
    accumulator of the NPU's fp16 path, rounded after every block, runs block by block."""
    num = grp.setup.numerics
    bn = num.block_n
    tile = grp.tile_keys()
    dv, kvlen = grp.Dv, grp.span.kvlen
    width = min(dv, PV_COLUMNS)
    parts = -(-dv // width)
    m = l = acc = None
    for t0 in range(j0 - j0 % bn, j1, tile):
        t1 = min(t0 + tile, j1)
        nb = -(-(t1 - t0) // bn)
        s = scores(t0, t1, nb * bn)                      # (GH, M, nb·bn); fp16 values in fp16 with ``steps``
        rows, m_rows = s.shape[:2]
        sb = s.view(rows, m_rows, nb, bn)
        if m is None:
            m = torch.full((rows, m_rows, 1), float("-inf"), dtype=grp.work, device=s.device)
            l = torch.zeros_like(m)
            acc = grp.scratch("acc", (parts, rows, m_rows, width),
                              torch.float16 if num.fp16 else grp.work).zero_()
        blocks = grp.scratch("blocks", sb.shape, grp.work).copy_(sb) if grp.steps else sb
        m_blk = torch.maximum(blocks.amax(-1).cummax(-1).values, m)          # (GH, M, nb) running max
        m_last = m_blk[..., -1:]
        if grp.steps:                                    # P = fp16(exp(fp16(s - m))), fp16 arithmetic
            p = torch.sub(sb, m_blk.to(sb.dtype)[..., None], out=grp.scratch("p16", sb.shape, sb.dtype))
            if num.fp16:                                 # l sums the exp values before P is rounded
                e = exp_(blocks.copy_(p))
                p_sum = e.sum(-1).transpose(1, 2)[..., None]
                p.copy_(e)
            else:
                p.exp_()
        else:
            p = exp_(sb.sub_(m_blk[..., None]))
        pp = grp.scratch("p", (rows, nb, m_rows, bn), grp.work).copy_(p.transpose(1, 2))
        if not num.fp16:
            p_sum = pp.sum(-1, keepdim=True)
        weight = torch.exp(m_blk - m_last).transpose(1, 2)[..., None]       # (GH, nb, M, 1)
        rescale = torch.exp(m - m_last)
        l = l * rescale + (p_sum * weight).sum(1)
        vb = grp.scratch("tile values", (grp.G, grp.H, nb * bn, parts * width), grp.work)
        vb[:, :, :min(t0 + nb * bn, kvlen) - t0, :dv].copy_(grp.kv.values(t0, min(t0 + nb * bn, kvlen)))
        if vb.shape[2] > kvlen - t0 or dv < parts * width:
            vb[:, :, kvlen - t0:].zero_()
            vb[..., dv:].zero_()
        pv = _blocks_pv(grp, pp, vb.flatten(0, 1).unflatten(1, (nb, bn)), width)   # (parts, GH, nb, M, width)
        if num.fp16:                                     # acc = fp16(fp16(acc · fp16(alpha)) + pv), every block
            alpha = torch.exp(torch.cat([m, m_blk[..., :-1]], -1) - m_blk).to(torch.float16)
            for blk in range(nb):
                acc.mul_(alpha[..., blk:blk + 1]).add_(pv[:, :, blk])
        else:
            acc = acc.mul_(rescale).add_(pv.mul_(weight).sum(2))
        m = m_last
    out = grp.scratch("out", (rows, m_rows, parts * width), grp.work)
    out.view(rows, m_rows, parts, width).copy_(acc.permute(1, 2, 0, 3))
    out = out[..., :dv].div_(fp16(l) if grp.steps else l)
    return out, (m + l.log()).squeeze(-1), m.squeeze(-1)


def _blocks_pv(grp: _Group, p: torch.Tensor, v: torch.Tensor, width: int) -> torch.Tensor:
    """P·V of each key block, p (GH, nb, M, bn), v (GH, nb, bn, parts · width) → (parts, GH, nb, M, width),
    products over ``width`` value columns at a time (batched products with a short inner dimension run
    faster on narrow outputs). P rounded to the values' dtype; fp16 path: rounded to fp16 after; int8: P
    quantised with quant_scale1, int8 product exact, dequantised with deq_scale2 to fp16."""
    num = grp.setup.numerics
    if num.int8 is not None:
        p = quant.ascend_quant(p, num.int8.quant_scale1).to(torch.float32)
    elif not num.fp16:
        p = p.to(grp.vdtype).to(grp.work)
    rows, nb, m_rows, bn = p.shape
    parts = v.shape[-1] // width
    out = grp.scratch("pv", (parts, rows * nb, m_rows, width), p.dtype)
    for c in range(parts):
        torch.bmm(p.flatten(0, 1), v[..., c * width:(c + 1) * width].flatten(0, 1), out=out[c])
    out = out.unflatten(1, (rows, nb))
    if num.int8 is not None:
        return fp16(out.mul_(num.int8.deq_scale2))
    return grp.scratch("pv16", out.shape, torch.float16).copy_(out) if num.fp16 else out
