"""``npu_prompt_flash_attention`` with the TND layout (spec ops §2.2): bf16 only, N in [8, 128] equal for
query and key/value, D = 192 for query and key and 128 or 192 for value, sparse mode 0 without a mask or 3
with one, no pse and no quantisation. Such a call is the fused operator's token-major prefill call
(cumulative lengths, spec §1.3); ``fused_arguments`` checks the rules and translates the arguments."""

from __future__ import annotations

import torch

from .. import checks
from ..errors import require

QUANT_ARGS = ("deq_scale1", "quant_scale1", "deq_scale2", "quant_scale2", "quant_offset2")


def fused_arguments(query, key, value, kwargs: dict) -> dict:
    """The fused operator's keyword arguments of a PFA call with ``input_layout="TND"``."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        checks.tensor(name, t, ndim=(3,), dtypes=(torch.bfloat16,))
    n, kv_n = kwargs.get("num_heads", 1), kwargs.get("num_key_value_heads", 0) or kwargs.get("num_heads", 1)
    require(isinstance(n, int) and 8 <= n <= 128, "num_heads", n, "TND needs N in [8, 128]")
    require(kv_n == n and key.shape[1] == n and value.shape[1] == n, "num_key_value_heads",
            kwargs.get("num_key_value_heads", 0), "TND needs the same number of heads for query, key and value")
    require(query.shape[2] == 192 and key.shape[2] == 192, "query", query, "TND needs a query and key head dim of 192")
    require(value.shape[2] in (128, 192), "value", value, "TND needs a value head dim of 128 or 192")
    mode = kwargs.get("sparse_mode", 0)
    mode = mode - 10 if isinstance(mode, int) and 10 <= mode <= 14 else mode
    mask = kwargs.get("atten_mask")
    require((mode == 0 and mask is None) or (mode == 3 and mask is not None), "sparse_mode", kwargs.get("sparse_mode", 0),
            "TND supports sparse mode 0 without atten_mask or 3 with it")
    for name in ("pse_shift", *QUANT_ARGS):
        require(kwargs.get(name) is None, name, kwargs.get(name), "not supported with the TND layout")
    return {"atten_mask": mask, "actual_seq_lengths": kwargs.get("actual_seq_lengths"),
            "actual_seq_lengths_kv": kwargs.get("actual_seq_lengths_kv"), "num_heads": n,
            "num_key_value_heads": kwargs.get("num_key_value_heads", 0), "scale": kwargs.get("scale_value", 1.0),
            "pre_tokens": kwargs.get("pre_tokens", 2147483647), "next_tokens": kwargs.get("next_tokens", 0),
            "input_layout": "TND", "sparse_mode": mode}
