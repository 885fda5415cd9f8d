"""Golden ``npu_attention_update``: the log-sum-exp merge of SP partial attention outputs (spec
vllm-ascend-ops §3.2, the A2/A3 kernel of CANN's G1 generation), step by step in float32.

Per row r, with x_i = lse_i[r] where +inf (the prefill path's "no key" sentinel) is replaced by -inf:
    m = max_i x_i;  S = sum_i exp(x_i - m) (in i order);  L = m + ln S  (= lse_out[r])
    out[r] = cast(sum_i exp(x_i - L) * float32(local_out_i[r]))  (in i order, from i = 0)
So a +inf partial has weight 0 and the decode path's -3.4e38 weight exp(-3.4e38 - m) = 0 next to a finite
one; a row whose partials are all +inf is NaN (-inf - (-inf)); one whose partials are all -3.4e38 is the
sum of the partial outputs with lse_out = -3.4e38. No guard against S = 0, as on the NPU.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def merge(lse: Sequence[torch.Tensor], local_out: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(out in local_out[0]'s dtype, lse_out float32) of the partials."""
    x = torch.stack([t.float() for t in lse])                               # [SP, R]
    x = torch.where(x == float("inf"), float("-inf"), x)
    m = x.max(0).values                                                     # NaN propagates
    s = torch.zeros_like(m)
    for x_i in x:
        s = s + torch.exp(x_i - m)
    lse_out = m + torch.log(s)
    acc = torch.zeros(local_out[0].shape, dtype=torch.float32, device=local_out[0].device)
    for x_i, o_i in zip(x, local_out):
        acc = acc + torch.exp(x_i - lse_out)[:, None] * o_i.float()
    return acc.to(local_out[0].dtype), lse_out


def npu_attention_update(lse: Sequence[torch.Tensor], local_out: Sequence[torch.Tensor],
                         update_type: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """torch_npu.npu_attention_update: (out, lse_out), lse_out None unless update_type == 1."""
    out, lse_out = merge(lse, local_out)
    return out, lse_out if update_type == 1 else None
