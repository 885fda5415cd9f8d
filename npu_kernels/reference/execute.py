"""The CPU execution path: the work of the prefill and decode kernels in vectorised PyTorch.

``prefill(call, block, out, lse)`` and ``decode(call, block, out, lse)`` stand in for
``kernels.prefill.launch`` and ``kernels.decode.launch`` when the device is the CPU. They read what the
kernels read at launch: the per-batch integers from the parameter block (``block``, one row of
``params.FIELDS`` per batch of ``call.heads.B``, words past the rows ignored; the call's own lists belong
to the call that planned its signature and are not used), left padding, block tables and quantisation
scales from their tensors. The user mask applies iff ``call.mask`` is set. The math is ``core``'s.

Elements written, as the kernels write them:

* prefill, ``out`` the (B, N, S1, Dv) view and ``lse`` the (B, N, S1) view or None:
  - layouts with a batch axis: every row of every batch. Rows outside the batch's valid rows are 0 with
    lse +inf; a batch without keys is 0 on every row with lse ``call.lse_empty`` (+inf, or -3.4e38 with
    the decode semantics);
  - token-major layouts (batch stride 0, batches are row offsets of one sequence): only the batch's rows
    ``[q_off, q_off + qlen)``; a batch without keys writes 0 and ``call.lse_empty`` there; unused
    parameter-block rows (QLEN = KVLEN = 0) write nothing;
  - valid rows: ``core.attend`` (rows without a key in their band 0 with lse +inf; fully masked rows the
    mean of the values, or 0 and +inf with ``zero_masked_rows``); int8 output: AscendQuant per tensor or
    per channel, 0 (not the offset) on rows that are not computed.
* decode, ``out`` the (B, N, 1, Dv) view and ``lse`` a (B, N, ...) view (element 0 of the trailing axes)
  or None: every batch; a batch without keys (length 0, or a kv padding start below 0) writes 0 (int8
  too) and lse -3.4e38; unused rows (QLEN = KVLEN = 0) write nothing. int8 output: AscendQuant per
  tensor, the IFA rounding per channel.

Numerics (``cpu_numerics``): int8 inputs follow the int8 pipeline with P quantised per key block of
``BLOCK_N`` keys. The NPU's fp16 high-performance path (``call.fp16_path``) follows the reference's
emulation (``reference.npu_prompt_flash_attention(..., emulate_fp16=True)``) with that same key block, as
the kernel's FP16_PATH does with its own: the fp16 accumulator is rounded once per block, so the result
depends on the block (an accumulator block of 128 to 1024 keys measured up to 1.6 times the fp16
tolerance away from the 32-key one at scales 0.25-1, none at 128 or 1/sqrt(D)). ``block_n`` tells the
block of whichever runs a call: this path, or the prefill kernel (``kernels.prefill.block_config``).
Everything else is float32 math with P rounded to the input dtype, through torch's CPU flash attention
where its semantics apply (``core``).
"""

from __future__ import annotations

import functools
from typing import Iterator, Optional

import torch

from .. import quant
from ..device import execution
from ..kernels import prefill as prefill_kernel
from ..masks import LSE_DECODE_EMPTY
from ..ops.incre import IncreCall
from ..ops.prompt import PromptCall
from ..ops.sources import PER_CHANNEL, AntiQuant
from . import core, spans
from .core import Int8Steps, Numerics, Setup
from .keys import KeyStore
from .spans import Span

# Key and value elements of one group of batches computed together (bounds what one call of torch's flash
# attention is handed, gathered from a paged cache).
GROUP_ELEMENTS = 1 << 25


def int8_steps(qa: quant.QuantArgs) -> Optional[Int8Steps]:
    """The scales of the int8 pipeline, read now, or None without int8 inputs."""
    if not qa.int8_in:
        return None
    return Int8Steps(quant.deq_scale(qa.deq_scale1).reshape(()), qa.quant_scale1.reshape(()).float(),
                     quant.deq_scale(qa.deq_scale2).reshape(()))


# Keys per block where the numerics follow the key block: the prefill kernel's block on sm_90 at D <= 128
# (the interpreter's 32 makes the block products and the fp16 accumulator's steps 1.3-2 times slower here).
BLOCK_N = 128


def block_n(d: int, dv: int, device: torch.device) -> int:
    """The key block of the numerics of a prefill call on ``device``, as its operator runs it: this path's
    ``BLOCK_N``, or the prefill kernel's (compiled, or in Triton's interpreter)."""
    if execution(device) == "native":
        return BLOCK_N
    return prefill_kernel.block_config(d, dv, device.type == "cuda")[1]


def cpu_numerics(call: PromptCall) -> Numerics:
    if call.quant.int8_in:
        return Numerics(block_n=BLOCK_N, int8=int8_steps(call.quant))
    if call.fp16_path:
        return Numerics(block_n=BLOCK_N, fp16=True)
    return Numerics()


def prefill(call: PromptCall, block: torch.Tensor, out: torch.Tensor, lse: Optional[torch.Tensor]) -> None:
    """The prefill kernel's work for ``call``: writes ``out`` (B, N, S1, Dv) and ``lse`` (B, N, S1)."""
    run_prefill(call, block, out, lse, cpu_numerics(call))


def decode(call: IncreCall, block: torch.Tensor, out: torch.Tensor, lse: Optional[torch.Tensor]) -> None:
    """The decode kernels' work for ``call``: writes ``out`` (B, N, 1, Dv) and ``lse`` (B, N, ...)."""
    run_decode(call, block, out, lse, Numerics())


def run_prefill(call: PromptCall, block: torch.Tensor, out: torch.Tensor, lse: Optional[torch.Tensor],
                numerics: Numerics) -> None:
    """``prefill`` with the given numerics (the golden reference chooses its own)."""
    h, src = call.heads, call.sources
    store = KeyStore(h.k, h.v, call.dtype, src.table, src.page_size, src.prefix, src.rope and src.rope[1],
                     src.key_quant, src.value_quant)
    setup = Setup(scale=call.scale, fill=call.fill, mask=call.mask, pse=call.pse,
                  zero_masked_rows=call.zero_masked_rows, numerics=numerics, sdpa=not call.quant.int8_out)
    dest = _PrefillOutput(call, out, lse)
    all_spans = spans.prefill(block, h.B, h.S1, h.S2, src.q_pad, src.kv_pad)
    for b0, b1, sp in _groups(all_spans, h.KV_N * (h.k.shape[-1] + h.v.shape[-1]),
                              core.online_batches(numerics, h.N)):
        if sp.unused and src.varlen:
            continue
        dest.outside(b0, b1, sp)
        if sp.qlen and sp.kvlen:
            q = h.q[b0:b1, :, sp.q_off:sp.q_off + sp.qlen]
            if src.rope is not None:
                q = torch.cat([q, src.rope[0][b0:b1, :, sp.q_off:sp.q_off + sp.qlen]], -1)
            core.attend(q, store.reader(b0, b1, sp), sp, b0, setup, functools.partial(dest.rows, b0, b1, sp))


def run_decode(call: IncreCall, block: torch.Tensor, out: torch.Tensor, lse: Optional[torch.Tensor],
               numerics: Numerics) -> None:
    """``decode`` with the given numerics."""
    h = call.heads
    store = decode_store(call)
    setup = Setup(scale=call.scale, fill=call.fill, mask=call.mask, pse=call.pse, numerics=numerics,
                  sdpa=not call.quant.int8_out)
    dest = _DecodeOutput(call, out, lse)
    for b0, b1, sp in _groups(spans.decode(block, h.B, h.S2, call.kv_pad), h.KV_N * (h.D + h.Dv)):
        if sp.unused:
            continue
        if sp.kvlen == 0:
            dest.empty(b0, b1)
            continue
        core.attend(h.q[b0:b1], store.reader(b0, b1, sp), sp, b0, setup, functools.partial(dest.rows, b0, b1))


def decode_store(call: IncreCall) -> KeyStore:
    """Where a decode call's keys and values are."""
    h, aq, paged = call.heads, call.antiquant, call.paged
    kq = vq = None
    if aq is not None:                                   # (2, KV_N, D): index 0 keys, 1 values
        kq, vq = (AntiQuant(PER_CHANNEL, aq.scale[i:i + 1], None if aq.offset is None else aq.offset[i:i + 1])
                  for i in (0, 1))
    return KeyStore(h.k, h.v, call.dtype, paged and paged.table, paged.block_size if paged else 0,
                    key_quant=kq, value_quant=vq)


def _groups(all_spans: list[Span], per_key: int, batches: Optional[int] = None) -> Iterator[tuple[int, int, Span]]:
    """Runs of consecutive batches with equal spans, each holding at most ``GROUP_ELEMENTS`` key and value
    elements (``per_key`` per key of a batch), and at most ``batches`` batches when given."""
    b0 = 0
    while b0 < len(all_spans):
        sp = all_spans[b0]
        most = max(1, GROUP_ELEMENTS // max(1, per_key * sp.kvlen))
        if batches is not None:
            most = min(most, batches)
        b1 = b0 + 1
        while b1 < len(all_spans) and b1 - b0 < most and all_spans[b1] == sp:
            b1 += 1
        yield b0, b1, sp
        b0 = b1


class _PrefillOutput:
    """Writes the prefill kernel's elements into ``out`` (B, N, S1, Dv) and ``lse`` (B, N, S1)."""

    def __init__(self, call: PromptCall, out: torch.Tensor, lse: Optional[torch.Tensor]):
        self.out, self.lse = out, lse
        self.varlen, self.s1, self.lse_empty = call.sources.varlen, call.heads.S1, call.lse_empty
        self.quant = call.quant if call.quant.int8_out else None

    def blank(self, b0: int, b1: int, r0: int, r1: int, lse_value: float) -> None:
        if r0 < r1:
            self.out[b0:b1, :, r0:r1].zero_()
            if self.lse is not None:
                self.lse[b0:b1, :, r0:r1].fill_(lse_value)

    def outside(self, b0: int, b1: int, sp: Span) -> None:
        """Rows the kernel writes without computing them."""
        if self.varlen:
            if sp.kvlen == 0:
                self.blank(b0, b1, sp.q_off, sp.q_off + sp.qlen, self.lse_empty)
        elif sp.qlen == 0 or sp.kvlen == 0:
            self.blank(b0, b1, 0, self.s1, float("inf") if sp.kvlen else self.lse_empty)
        else:
            self.blank(b0, b1, 0, sp.q_off, float("inf"))
            self.blank(b0, b1, sp.q_off + sp.qlen, self.s1, float("inf"))

    def rows(self, b0: int, b1: int, sp: Span, i0: int, i1: int, out: torch.Tensor, lse: torch.Tensor) -> None:
        r0, r1 = sp.q_off + i0, sp.q_off + i1
        if self.quant is not None:
            out = quantise_prefill(self.quant, out, lse)
        self.out[b0:b1, :, r0:r1].copy_(out)
        if self.lse is not None:
            self.lse[b0:b1, :, r0:r1].copy_(lse)


def quantise_prefill(qa: quant.QuantArgs, out: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """(G, N, R, Dv) results → int8 with AscendQuant (per tensor or per channel); rows not computed (lse
    +inf) are 0."""
    n, dv = out.shape[1], out.shape[3]
    shape = (1, n, 1, dv) if qa.per_channel else ()
    offset = None if qa.quant_offset2 is None else qa.quant_offset2.reshape(shape)
    q = quant.ascend_quant(out, qa.quant_scale2.reshape(shape), offset)
    return q.masked_fill((lse == float("inf"))[..., None], 0)


def quantise_decode(qa: quant.QuantArgs, out: torch.Tensor) -> torch.Tensor:
    """(G, N, 1, Dv) results → int8: AscendQuant per tensor, the IFA rounding per channel (spec ops §1.9)."""
    n, dv = out.shape[1], out.shape[3]
    if qa.per_channel:
        def channel(t):
            return None if t is None else t.reshape(n, dv)[None, :, None, :]
        return quant.ifa_channel_quant(out.float(), channel(qa.quant_scale2), channel(qa.quant_offset2))
    return quant.ascend_quant(out, qa.quant_scale2.reshape(()),
                              None if qa.quant_offset2 is None else qa.quant_offset2.reshape(()))


class _DecodeOutput:
    """Writes the decode kernels' elements into ``out`` (B, N, 1, Dv) and ``lse`` (B, N, ...)."""

    def __init__(self, call: IncreCall, out: torch.Tensor, lse: Optional[torch.Tensor]):
        self.out = out
        self.lse = None if lse is None else lse[(slice(None), slice(None)) + (0,) * (lse.dim() - 2)]
        self.quant = call.quant if call.quant.int8_out else None

    def empty(self, b0: int, b1: int) -> None:
        self.out[b0:b1].zero_()
        if self.lse is not None:
            self.lse[b0:b1].fill_(LSE_DECODE_EMPTY)

    def rows(self, b0: int, b1: int, i0: int, i1: int, out: torch.Tensor, lse: torch.Tensor) -> None:
        self.out[b0:b1].copy_(out if self.quant is None else quantise_decode(self.quant, out))
        if self.lse is not None:
            self.lse[b0:b1].copy_(lse[..., 0])
