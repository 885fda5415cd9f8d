"""The workspace of the fused operator's ``.out`` (``_npu_fused_infer_attention_score_get_max_workspace``):
in the query's dtype, room for the scratch of the call's kernels, sized for the worst case of the call
(capacity, not actual lengths): the split-KV scratch of the decode kernels (partial outputs and per-split
max/sum, float32), or the user mask's block summary on the prefill kernel (int32, ``kernels.mask_summary``);
then the parameter block (an int32 per batch field). With it ``.out`` allocates nothing on the device."""

from __future__ import annotations

import torch

from ... import params
from .. import prompt
from ...errors import require
from .call import FusedCall


def block_words(call: FusedCall) -> int:
    """Words of the call's parameter block: a row per batch (token-grid launches: two more per row tile
    of the tokens, at most one per token)."""
    h = (call.prompt or call.incre).heads
    tail = 2 * h.S1 if call.prompt is not None and prompt.token_grid(call.prompt) else 0
    return h.B * params.FIELDS + tail


def numel(scratch_words: int, call: FusedCall, element_size: int) -> int:
    """Elements of ``element_size`` bytes holding ``scratch_words`` 4-byte words of scratch and the
    parameter block (at least one 4-byte word, as ``scratch`` requires whole words)."""
    return -(-max(1, scratch_words + block_words(call)) * 4 // element_size)


def scratch(scratch_words: int, call: FusedCall, workspace: torch.Tensor) -> torch.Tensor:
    """The float32 scratch at the start of a caller's ``workspace`` (checked to hold the parameter block too)."""
    nbytes = workspace.numel() * workspace.element_size()
    need = (scratch_words + block_words(call)) * 4
    require(workspace.is_contiguous() and nbytes % 4 == 0 and nbytes >= need, "workspace", workspace,
            f"must be contiguous, whole 4-byte words and at least {need} bytes "
            "(see _npu_fused_infer_attention_score_get_max_workspace)")
    return workspace.view(-1).view(torch.int32)[:scratch_words].view(torch.float32)


def block(scratch_words: int, workspace: torch.Tensor, words: int) -> torch.Tensor:
    """The int32 parameter block of ``words`` words after the scratch in ``workspace``."""
    return workspace.view(-1).view(torch.int32)[scratch_words:scratch_words + words]
