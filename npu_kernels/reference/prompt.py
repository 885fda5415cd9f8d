"""Golden ``npu_prompt_flash_attention``: the same arguments, exact math, any device."""

from __future__ import annotations

import torch

from ..layouts import from_bnsd
from ..ops import prompt
from .core import BatchSpan, attention


def spans_of(call: prompt.PromptCall) -> list[BatchSpan]:
    return [BatchSpan(q, kv, call.q_off, call.kv_off, call.q_off, call.kv_off, band)
            for q, kv, band in zip(call.qlens, call.kvlens, call.bands)]


def npu_prompt_flash_attention(query, key, value, *, compute_dtype: torch.dtype = torch.float32,
                               **kwargs) -> torch.Tensor:
    """Reference of ``nk.npu_prompt_flash_attention`` (same keyword arguments, validated the same way).

    ``compute_dtype`` is the precision of the math (float32 or float64); the result has the operator's
    output dtype and layout.
    """
    call = prompt.validate(query, key, value, **kwargs)
    h = call.heads
    out, _ = attention(h.q, h.k, h.v, spans_of(call), scale=call.scale, fill=call.fill, mask=call.mask,
                       pse=call.pse, zero_masked_rows=call.zero_masked_rows, compute_dtype=compute_dtype)
    return from_bnsd(out, call.layout.out).to(call.out_dtype).contiguous()
