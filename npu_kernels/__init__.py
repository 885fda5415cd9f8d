"""Ascend attention operators as Triton kernels, with golden PyTorch references.

    import npu_kernels as nk
    out = nk.npu_prompt_flash_attention(q, k, v, num_heads=8, input_layout="BNSD", scale_value=0.125)

The operators are also registered as ``torch.ops.npu.<name>``. "npu" means CUDA when a GPU is present,
else the CPU, where the same kernels run through Triton's interpreter (see ``npu_kernels.device``).
"""

from .device import interpreted, npu_device, use_interpreter

if interpreted():
    use_interpreter()

from . import reference  # noqa: E402  (kernels must be defined after the interpreter switch)
from .library import (  # noqa: E402
    _npu_fused_infer_attention_score_get_max_workspace, _npu_fused_infer_attention_score_infer_output,
    npu_fused_infer_attention_score, npu_incre_flash_attention, npu_prompt_flash_attention)
from .library_cache import (  # noqa: E402
    _npu_reshape_and_cache, _npu_reshape_and_cache_siso, npu_attention_update, npu_gather_pa_kv_cache,
    npu_gather_pa_kv_cache_functional, npu_scatter_nd_update, npu_scatter_nd_update_, npu_scatter_pa_kv_cache,
    npu_scatter_pa_kv_cache_functional)
from .library_v2 import (  # noqa: E402
    _npu_fused_infer_attention_score_v2_get_max_workspace, _npu_fused_infer_attention_score_v2_infer_output,
    _npu_paged_attention, _npu_paged_attention_get_workspace, npu_fused_infer_attention_score_v2)
from .quant import npu_trans_quant_param  # noqa: E402

__all__ = ["_npu_fused_infer_attention_score_get_max_workspace", "_npu_fused_infer_attention_score_infer_output",
           "_npu_fused_infer_attention_score_v2_get_max_workspace", "_npu_fused_infer_attention_score_v2_infer_output",
           "_npu_paged_attention", "_npu_paged_attention_get_workspace", "_npu_reshape_and_cache",
           "_npu_reshape_and_cache_siso", "npu_attention_update", "npu_device", "npu_fused_infer_attention_score",
           "npu_fused_infer_attention_score_v2", "npu_gather_pa_kv_cache", "npu_gather_pa_kv_cache_functional",
           "npu_incre_flash_attention", "npu_prompt_flash_attention", "npu_scatter_nd_update", "npu_scatter_nd_update_",
           "npu_scatter_pa_kv_cache", "npu_scatter_pa_kv_cache_functional", "npu_trans_quant_param", "reference"]

# The torch_npu operators the package provides (what ``runtime.compat`` exposes as ``torch_npu.<name>``).
OPERATORS = tuple(name for name in __all__ if name not in ("npu_device", "reference"))
