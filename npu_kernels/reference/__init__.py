"""Golden implementations in readable PyTorch (exact math in float32 or float64, any device)."""

from .fused import npu_fused_infer_attention_score
from .incre import npu_incre_flash_attention
from .prompt import npu_prompt_flash_attention

__all__ = ["npu_fused_infer_attention_score", "npu_incre_flash_attention", "npu_prompt_flash_attention"]
