"""Golden ``npu_incre_flash_attention``: the same arguments, exact math, any device (spec ops §3.3).

Paged caches are read through the block table and int8 caches anti-quantised (``(x + offset) * scale``:
in float16 for a float16 query, in float32 then cast for bfloat16), then the shared attention core runs
with the decode fill value and lse sentinel (``execute.run_decode``). The NPU's MSD expansion of the
anti-quantised matmuls is not emulated: it differs from exact dequantisation by about 1e-3 (spec ops
§3.3). Float outputs are cast half to even (as the kernel does); the NPU rounds float16 outputs half away
from zero, which differs on exact ties only.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..layouts import as_bnsd, out_shape
from ..masks import INT_MAX
from ..ops import incre
from ..quant import NO_QUANT
from . import execute, spans
from .core import Numerics
from .spans import Span


def key_values(call: incre.IncreCall) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys/values as (B, KV_N, capacity, D) in the query dtype (pages gathered, int8 anti-quantised)."""
    whole = execute.decode_store(call).reader(0, call.heads.B, Span(1, call.capacity, 0, 0, 0, 0, INT_MAX, INT_MAX, 0))
    return whole.keys(0, call.capacity), whole.values(0, call.capacity)


def decode_attention(call: incre.IncreCall, compute_dtype: torch.dtype = torch.float32
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, N, 1, Dv), lse (B, N, 1)) in ``compute_dtype`` for a validated decode call, before any int8
    output quantisation."""
    h = call.heads
    out = torch.empty(h.B, h.N, 1, h.Dv, dtype=compute_dtype, device=h.q.device)
    lse = torch.empty(h.B, h.N, 1, dtype=torch.float32, device=h.q.device)
    execute.run_decode(replace(call, quant=NO_QUANT), incre.pack(call.kvlens), out, lse, Numerics(compute=compute_dtype))
    return out, lse


def npu_incre_flash_attention(query, key, value, *, compute_dtype: torch.dtype = torch.float32,
                              **kwargs) -> torch.Tensor:
    """Reference of ``nk.npu_incre_flash_attention`` (same keyword arguments, validated the same way).

    ``compute_dtype`` is the precision of the math (float32 or float64); the result has the operator's
    output dtype and the query's layout.
    """
    call = incre.validate(query, key, value, **kwargs)
    h = call.heads
    out = torch.empty(out_shape(call.layout.inp, h.B, h.N, 1, h.Dv),
                      dtype=torch.int8 if call.quant.int8_out else compute_dtype, device=h.q.device)
    execute.run_decode(call, incre.pack(call.kvlens), as_bnsd(out, call.layout.inp, h.N), None,
                       Numerics(compute=compute_dtype))
    return out.to(call.out_dtype)


def quantise_output(call: incre.IncreCall, out: torch.Tensor) -> torch.Tensor:
    """int8 output (spec ops §1.9) of a float (B, N, 1, Dv) result: per-tensor AscendQuant, per-channel the
    IFA rounding; batches without keys are 0."""
    empty = [sp.kvlen == 0 for sp in spans.decode(incre.pack(call.kvlens), call.heads.B, call.heads.S2, call.kv_pad)]
    y = execute.quantise_decode(call.quant, out)
    return y.masked_fill(torch.tensor(empty, device=out.device)[:, None, None, None], 0)
