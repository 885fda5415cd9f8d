"""The workspace of the fused operator's ``.out`` (``_npu_fused_infer_attention_score_get_max_workspace``):
in the query's dtype, room for the split-KV scratch of the decode kernels (partial outputs and per-split
max/sum, float32; none on the prefill kernel) sized for the worst case of the call (capacity, not actual
lengths), then the parameter block (an int32 per batch field). With it ``.out`` allocates nothing on the
device."""

from __future__ import annotations

import torch

from ... import params
from ...errors import require
from .call import FusedCall


def block_words(call: FusedCall) -> int:
    return (call.prompt or call.incre).heads.B * params.FIELDS


def numel(scratch_words: int, call: FusedCall, element_size: int) -> int:
    """Elements of ``element_size`` bytes (at least one) holding ``scratch_words`` float32 words of scratch
    and the parameter block, as 4-byte words."""
    return max(1, -(-(scratch_words + block_words(call)) * 4 // element_size))


def carve(scratch_words: int, call: FusedCall, workspace: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 scratch, int32 parameter block) views of a caller's ``workspace``."""
    nbytes = workspace.numel() * workspace.element_size()
    need = (scratch_words + block_words(call)) * 4
    require(workspace.is_contiguous() and nbytes % 4 == 0 and nbytes >= need, "workspace", workspace,
            f"must be contiguous, whole 4-byte words and at least {need} bytes "
            "(see _npu_fused_infer_attention_score_get_max_workspace)")
    words = workspace.view(-1).view(torch.int32)
    return words[:scratch_words].view(torch.float32), words[scratch_words:need // 4]
