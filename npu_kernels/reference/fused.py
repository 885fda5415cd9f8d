"""Golden ``npu_fused_infer_attention_score``: the same arguments, exact math, any device (spec ops §4).

The call runs the path the operator chooses (``ops.fused.validate``): the prefill path with its fill
value and lse sentinel (``execute.run_prefill``: paged caches, int8 keys/values anti-quantised, the
shared prefix in front of each batch's keys, rope parts concatenated along D, left padding and
token-major rows as the kernel addresses them), or the decode path of the split-KV kernels
(``execute.run_decode``).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..layouts import as_bnsd
from ..ops import fused, incre, prompt
from . import execute
from .core import Numerics


def npu_fused_infer_attention_score(query, key, value, *, compute_dtype: torch.dtype = torch.float32,
                                    block_n: Optional[int] = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``nk.npu_fused_infer_attention_score``: (attention_out, softmax_lse) with the operator's
    shapes and dtypes (softmax_lse float32; an empty dummy when ``softmax_lse_flag`` is False).
    ``block_n`` as in the prompt reference (needed for int8 inputs, defaulting to the kernel's)."""
    call = fused.validate(query, key, value, **kwargs)
    int8_out = (call.prompt or call.incre).quant.int8_out
    device = query.device
    out = torch.empty(call.out_shape, dtype=torch.int8 if int8_out else compute_dtype, device=device)
    lse = torch.empty(call.lse_shape, dtype=torch.float32, device=device)
    lse_k = call.lse_view(lse) if call.lse_flag else None
    if call.incre is not None:
        c = call.incre
        execute.run_decode(c, incre.pack(c.kvlens), as_bnsd(out, call.layout.out, c.heads.N), lse_k,
                           Numerics(compute=compute_dtype))
    else:
        c = call.prompt
        if block_n is None and c.quant.int8_in:
            block_n = execute.block_n(c.heads.D, c.heads.Dv, device)
        numerics = Numerics(compute=compute_dtype, block_n=block_n, int8=execute.int8_steps(c.quant))
        execute.run_prefill(c, prompt.pack(c.qlens, c.kvlens, c.bands, c.offsets), prompt.out_view(c, out), lse_k,
                            numerics)
    return out.to(call.out_dtype), lse
