"""Golden ``npu_fused_infer_attention_score_v2`` (spec ops §4.5): the golden fused operator on the
translated arguments (``ops.fused_v2.translate``, validated the same way), then the learnable sink in
float64: ``o' = o · sigmoid(lse - sink)``, ``lse' = log(e^lse + e^sink)`` (spec §1.6).

The sink is applied to the fused reference's result, which is rounded to the output dtype (and its lse to
float32) before the sink factor (≤ 1) applies: within one unit in the last place of the exact sink-softmax
(tests check the operator against a sink-softmax computed in float64 from the scores). The reference runs
the CPU execution path, so it reads NZ caches (``device.forced_execution``).
"""

from __future__ import annotations

import torch

from ..device import forced_execution
from ..ops import fused_v2
from .fused import npu_fused_infer_attention_score


def npu_fused_infer_attention_score_v2(query, key, value, *, compute_dtype: torch.dtype = torch.float32,
                                       **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of ``nk.npu_fused_infer_attention_score_v2``: (attention_out, softmax_lse) with the operator's
    shapes and dtypes (softmax_lse empty when ``return_softmax_lse`` is False)."""
    kw = fused_v2.with_defaults(kwargs)
    v1, sink = fused_v2.translate(query, value, kw)
    with fused_v2.v2_names(), forced_execution("native"):
        o, lse = npu_fused_infer_attention_score(query, key, value, compute_dtype=compute_dtype, **v1)
    if sink is None:
        return o, lse
    l, logit = lse.double(), sink.double()[:, None]
    o = (o.double() * torch.sigmoid(l - logit)).to(o.dtype)
    if not kw["return_softmax_lse"]:
        return o, lse.new_empty(0)
    return o, torch.logaddexp(l, logit).float()
