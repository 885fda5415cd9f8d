"""Golden ``npu_prompt_flash_attention``: the same arguments, exact math, any device.

Float inputs: exact attention in ``compute_dtype``. int8 inputs: the NPU's pipeline step by step
(``core.Numerics.int8``). int8 output: AscendQuant of the result with ``quant_scale2``/``quant_offset2``
(per tensor or per channel), 0 on rows that are not computed. The computation is the CPU execution
path's (``execute.run_prefill``) with the reference's numerics.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..layouts import out_shape
from ..ops import prompt, prompt_tnd
from . import execute
from .core import Numerics


def npu_prompt_flash_attention(query, key, value, *, compute_dtype: torch.dtype = torch.float32,
                               block_n: Optional[int] = None, emulate_fp16: bool = False, **kwargs) -> torch.Tensor:
    """Reference of ``nk.npu_prompt_flash_attention`` (same keyword arguments, validated the same way).

    ``compute_dtype`` is the precision of the math (float32 or float64); the result has the operator's
    output dtype and layout. ``block_n``: compute block by block over keys as a flash kernel does (P is
    rounded against the running maximum; ``kernel_block_n`` gives the operator's block); None: the
    exact softmax for float inputs, ``kernel_block_n`` for int8 inputs, whose P quantisation needs blocks.
    ``emulate_fp16``: where the NPU takes its fp16 high-performance path (fp16 input, PFA's default
    precision, no pse), follow its fp16 roundings step by step (spec ops §1.8) instead of exact math.
    """
    if kwargs.get("input_layout") == "TND":                    # the fused operator's call (spec ops §2.2)
        from . import fused

        return fused.npu_fused_infer_attention_score(query, key, value, compute_dtype=compute_dtype,
                                                     **prompt_tnd.fused_arguments(query, key, value, kwargs))[0]
    call = prompt.validate(query, key, value, **kwargs)
    fp16_path = emulate_fp16 and call.fp16_path
    if block_n is None and (call.quant.int8_in or fp16_path):
        block_n = kernel_block_n(query, key, value, **kwargs)
    numerics = Numerics(compute=compute_dtype, block_n=block_n, fp16=fp16_path, int8=execute.int8_steps(call.quant))
    h = call.heads
    out = torch.empty(out_shape(call.layout.out, h.B, h.N, h.S1, h.Dv),
                      dtype=torch.int8 if call.quant.int8_out else compute_dtype, device=h.q.device)
    block = prompt.pack(call.qlens, call.kvlens, call.bands, call.offsets)
    execute.run_prefill(call, block, prompt.out_view(call, out), None, numerics)
    return out.to(call.out_dtype)


def kernel_block_n(query, key, value, **kwargs) -> int:
    """The key block that the operator's numerics follow for these arguments on the query's device (int8
    inputs, the fp16 path): the CPU execution path's or the prefill kernel's (``execute.block_n``;
    ``ops.prompt`` plans those calls without extra tiles)."""
    h = prompt.validate(query, key, value, **kwargs).heads
    return execute.block_n(h.D, h.Dv, h.q.device)
