"""``npu_fused_infer_attention_score`` (FIA): validate → plan → run (spec ops §4).

``call``: validation and the prefill/decode dispatch (split into the static part a call signature fixes
and the per-call integers); ``prefill_path`` / ``decode_path``: the call on the prefill kernel or on the
split-KV decode kernels; ``antiquant``: int8 key/value parameters; ``workspace``: the ``.out`` workspace;
``run``: the entry points, planned once per signature.
"""

from .call import DEFAULTS, OP, FusedCall, validate, with_defaults
from .run import (get_max_workspace, infer_output, npu_fused_infer_attention_score,
                  npu_fused_infer_attention_score_out, outputs, submit, update, workspace_numel)

__all__ = ["DEFAULTS", "OP", "FusedCall", "get_max_workspace", "infer_output", "npu_fused_infer_attention_score",
           "npu_fused_infer_attention_score_out", "outputs", "submit", "update", "validate", "with_defaults",
           "workspace_numel"]
