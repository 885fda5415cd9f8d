"""Golden ``npu_incre_flash_attention``: the same arguments, exact math, any device (spec ops §3.3).

Paged caches are gathered into per-batch key/value tensors and int8 caches anti-quantised
(``(x + offset) * scale``: in float16 for a float16 query, in float32 then cast for bfloat16), then the
shared attention core runs with the decode fill value and lse sentinel. The NPU's MSD expansion of the
anti-quantised matmuls is not emulated: it differs from exact dequantisation by about 1e-3 (spec ops §3.3).
Float outputs are cast half to even (as the kernel does); the NPU rounds float16 outputs half away from
zero, which differs on exact ties only.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import quant
from ..layouts import from_bnsd
from ..masks import INT_MAX, LSE_DECODE_EMPTY, Band
from ..ops import incre
from .core import BatchSpan, attention


def antiquant(x: torch.Tensor, scale: torch.Tensor, offset: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """(x_int8 + offset) * scale in ``dtype``: float16 arithmetic for float16, float32 then cast otherwise.
    ``scale``/``offset`` broadcast against ``x``."""
    work = torch.float16 if dtype == torch.float16 else torch.float32
    y = x.to(work)
    if offset is not None:
        y = y + offset.to(work)
    return (y * scale.to(work)).to(dtype)


def key_values(call: incre.IncreCall) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values as (B, KV_N, capacity, D) in the query dtype (pages gathered, int8 anti-quantised)."""
    h = call.heads
    k, v = h.k, h.v
    if call.paged is not None:
        table = call.paged.table.long()                                  # (B, blocks)

        def gather(cache):                                               # (blocks, KV_N, bs, D)
            g = cache[table.reshape(-1)]                                 # (B*blocks, KV_N, bs, D)
            g = g.reshape(h.B, table.shape[1], h.KV_N, call.paged.block_size, -1)
            return g.permute(0, 2, 1, 3, 4).reshape(h.B, h.KV_N, call.capacity, -1)

        k, v = gather(k), gather(v)
    aq = call.antiquant
    if aq is not None:
        def param(t, i):                                                 # (KV_N, D) -> (1, KV_N, 1, D)
            return None if t is None else t[i][None, :, None, :]

        k = antiquant(k, param(aq.scale, 0), param(aq.offset, 0), call.dtype)
        v = antiquant(v, param(aq.scale, 1), param(aq.offset, 1), call.dtype)
    return k, v


def spans_of(call: incre.IncreCall) -> list[BatchSpan]:
    """Per batch: one query row, keys ``[start, start + kvlen)``; none where the padded start is < 0."""
    band = Band(INT_MAX, INT_MAX, call.mask is not None)
    pad = None if call.kv_pad is None else max(int(call.kv_pad[0]), 0)
    spans = []
    for kvlen in call.kvlens:
        start = 0 if pad is None else call.capacity - pad - kvlen
        if start < 0:
            start, kvlen = 0, 0
        spans.append(BatchSpan(1, kvlen, 0, start, 0, start, band))
    return spans


def decode_attention(call: incre.IncreCall, compute_dtype: torch.dtype = torch.float32
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, N, 1, Dv), lse (B, N, 1)) in ``compute_dtype`` for a validated decode call."""
    k, v = key_values(call)
    return attention(call.heads.q, k, v, spans_of(call), scale=call.scale, fill=call.fill, mask=call.mask,
                     pse=call.pse, empty_lse=LSE_DECODE_EMPTY, compute_dtype=compute_dtype)


def npu_incre_flash_attention(query, key, value, *, compute_dtype: torch.dtype = torch.float32,
                              **kwargs) -> torch.Tensor:
    """Reference of ``nk.npu_incre_flash_attention`` (same keyword arguments, validated the same way).

    ``compute_dtype`` is the precision of the math (float32 or float64); the result has the operator's
    output dtype and the query's layout.
    """
    call = incre.validate(query, key, value, **kwargs)
    out, _ = decode_attention(call, compute_dtype)
    if call.quant.int8_out:
        out = quantise_output(call, out)
    return from_bnsd(out, call.layout.inp).to(call.out_dtype).contiguous()


def quantise_output(call: incre.IncreCall, out: torch.Tensor) -> torch.Tensor:
    """int8 output (spec ops §1.9): per-tensor AscendQuant, per-channel the IFA rounding; batches without
    keys are 0. ``out`` (B, N, 1, Dv) float."""
    qa, h = call.quant, call.heads
    x = out.to(torch.float32)
    if qa.per_channel:
        def channel(t):
            return None if t is None else t.reshape(h.N, h.Dv)[None, :, None, :]
        y = quant.ifa_channel_quant(x, channel(qa.quant_scale2), channel(qa.quant_offset2))
    else:
        y = quant.ascend_quant(x, qa.quant_scale2.reshape(()), None if qa.quant_offset2 is None
                               else qa.quant_offset2.reshape(()))
    empty = torch.tensor([sp.kvlen == 0 for sp in spans_of(call)], device=out.device)[:, None, None, None]
    return y.masked_fill(empty, 0)
