"""Golden implementations in readable PyTorch (exact math in float32 or float64, any device)."""

import torch

from .fused import npu_fused_infer_attention_score
from .incre import npu_incre_flash_attention
from .prompt import npu_prompt_flash_attention

__all__ = ["npu_fused_infer_attention_score", "npu_incre_flash_attention", "npu_prompt_flash_attention", "tolerance",
           "_npu_reshape_and_cache", "_npu_reshape_and_cache_siso", "npu_attention_update", "npu_gather_pa_kv_cache",
           "npu_gather_pa_kv_cache_functional", "npu_scatter_nd_update", "npu_scatter_nd_update_",
           "npu_scatter_pa_kv_cache", "npu_scatter_pa_kv_cache_functional"]


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) within which a kernel output of ``dtype`` must match the float32 reference: twice the
    dtype's epsilon, about two units in the last place (fp16 2e-3, bf16 1.6e-2)."""
    eps = torch.finfo(dtype).eps
    return 2 * eps, 2 * eps


from .attention_update import npu_attention_update  # noqa: E402
from .kv_cache import (  # noqa: E402
    _npu_reshape_and_cache, _npu_reshape_and_cache_siso, npu_gather_pa_kv_cache, npu_gather_pa_kv_cache_functional,
    npu_scatter_nd_update, npu_scatter_nd_update_, npu_scatter_pa_kv_cache, npu_scatter_pa_kv_cache_functional)
from .fused_v2 import npu_fused_infer_attention_score_v2  # noqa: E402
from .paged_attention import _npu_paged_attention  # noqa: E402

__all__ += ["_npu_paged_attention", "npu_fused_infer_attention_score_v2"]
