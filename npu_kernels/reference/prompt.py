"""Golden ``npu_prompt_flash_attention``: the same arguments, exact math, any device.

Float inputs: exact attention in ``compute_dtype``. int8 inputs: the NPU's pipeline step by step
(``core.Int8Steps``). int8 output: AscendQuant of the result with ``quant_scale2``/``quant_offset2``
(per tensor or per channel), 0 on rows that are not computed.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import quant
from ..kernels import prefill
from ..layouts import from_bnsd
from ..ops import prompt
from .core import BatchSpan, Int8Steps, attention


def spans_of(call: prompt.PromptCall) -> list[BatchSpan]:
    offsets = call.offsets or ((0, 0, 0, 0, 0),) * len(call.qlens)
    return [BatchSpan(q, kv, *off[:4], band) for q, kv, band, off in zip(call.qlens, call.kvlens, call.bands, offsets)]


def int8_steps(qa: quant.QuantArgs, block_n: int) -> Optional[Int8Steps]:
    if not qa.int8_in:
        return None
    return Int8Steps(quant.deq_scale(qa.deq_scale1).reshape(()), qa.quant_scale1.reshape(()),
                     quant.deq_scale(qa.deq_scale2).reshape(()), block_n)


def quantise_output(out: torch.Tensor, lse: torch.Tensor, qa: quant.QuantArgs) -> torch.Tensor:
    """(B, N, S1, Dv) result → int8 with AscendQuant; rows not computed (lse +inf) are 0."""
    n, dv = out.shape[1], out.shape[3]
    shape = (1, n, 1, dv) if qa.per_channel else ()
    offset = None if qa.quant_offset2 is None else qa.quant_offset2.reshape(shape)
    q = quant.ascend_quant(out, qa.quant_scale2.reshape(shape), offset)
    return torch.where((lse != float("inf"))[..., None], q, torch.zeros_like(q))


def npu_prompt_flash_attention(query, key, value, *, compute_dtype: torch.dtype = torch.float32,
                               block_n: Optional[int] = None, emulate_fp16: bool = False, **kwargs) -> torch.Tensor:
    """Reference of ``nk.npu_prompt_flash_attention`` (same keyword arguments, validated the same way).

    ``compute_dtype`` is the precision of the math (float32 or float64); the result has the operator's
    output dtype and layout. ``block_n``: compute block by block over keys as a flash kernel does (P is
    rounded against the running maximum; ``kernel_block_n`` gives the prefill kernel's block); None: the
    exact softmax for float inputs, ``kernel_block_n`` for int8 inputs, whose P quantisation needs blocks.
    ``emulate_fp16``: where the NPU takes its fp16 high-performance path (fp16 input, PFA's default
    precision, no pse), follow its fp16 roundings step by step (spec ops §1.8) instead of exact math.
    """
    call = prompt.validate(query, key, value, **kwargs)
    h = call.heads
    fp16_path = emulate_fp16 and call.fp16_path
    if block_n is None and (call.quant.int8_in or fp16_path):
        block_n = kernel_block_n(query, key, value, **kwargs)
    out, lse = attention(h.q, h.k, h.v, spans_of(call), scale=call.scale, fill=call.fill, mask=call.mask,
                         pse=call.pse, zero_masked_rows=call.zero_masked_rows, compute_dtype=compute_dtype,
                         int8=int8_steps(call.quant, block_n), block_n=block_n, fp16_path=fp16_path)
    if call.quant.int8_out:
        out = quantise_output(out, lse, call.quant)
    return from_bnsd(out, call.layout.out).to(call.out_dtype).contiguous()


def kernel_block_n(query, key, value, **kwargs) -> int:
    """BLOCK_N of the prefill kernel for these arguments on the query's device."""
    h = prompt.validate(query, key, value, **kwargs).heads
    return prefill.block_config(h.D, h.Dv, h.q.device.type == "cuda")[1]
