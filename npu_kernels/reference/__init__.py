"""Golden implementations in readable PyTorch (exact math in float32 or float64, any device)."""

from .prompt import npu_prompt_flash_attention

__all__ = ["npu_prompt_flash_attention"]
