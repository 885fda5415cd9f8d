"""torch.library registration of ``npu_fused_infer_attention_score_v2`` (and ``.out``, its workspace and
infer-output companions, spec ops §4.5) and of ATB's ``_npu_paged_attention`` (and its workspace helper,
spec vllm-ascend-ops §1.1-§1.2) in namespace ``npu``, with their Python entry points.

As in ``library``: ``.out`` keeps torch_npu's schema and is a composite of an operator that returns
nothing (``_npu_fused_infer_attention_score_v2_into``), so torch.compile can functionalise it; arguments
a call writes are declared ``(a!)``. torch_npu keeps ``_npu_paged_attention`` in namespace ``atb``; here it
is ``torch.ops.npu._npu_paged_attention``. The fake implementations validate what a call signature fixes
(``context_lens`` values are read when the operator runs).
"""

from __future__ import annotations

import torch

from .library import LIB, define, public
from .ops import fused_v2, paged_attention

V2_ARGS = (
    "Tensor query, Tensor key, Tensor value, *, Tensor? query_rope=None, Tensor? key_rope=None, "
    "Tensor? pse_shift=None, Tensor? atten_mask=None, SymInt[]? actual_seq_qlen=None, SymInt[]? actual_seq_kvlen=None, "
    "Tensor? block_table=None, Tensor? dequant_scale_query=None, Tensor? dequant_scale_key=None, "
    "Tensor? dequant_offset_key=None, Tensor? dequant_scale_value=None, Tensor? dequant_offset_value=None, "
    "Tensor? dequant_scale_key_rope=None, Tensor? quant_scale_out=None, Tensor? quant_offset_out=None, "
    "Tensor? quant_scale_p=None, Tensor? learnable_sink=None, int num_query_heads=1, int num_key_value_heads=0, "
    "float softmax_scale=1.0, int pre_tokens=2147483647, int next_tokens=2147483647, str input_layout=\"BSH\", "
    "int sparse_mode=0, int block_size=0, int query_quant_mode=0, int key_quant_mode=0, int value_quant_mode=0, "
    "int inner_precise=0, bool return_softmax_lse=False, int? query_dtype=None, int? key_dtype=None, "
    "int? value_dtype=None, int? query_rope_dtype=None, int? key_rope_dtype=None, int? key_shared_prefix_dtype=None, "
    "int? value_shared_prefix_dtype=None, int? dequant_scale_query_dtype=None, int? dequant_scale_key_dtype=None, "
    "int? dequant_scale_value_dtype=None, int? dequant_scale_key_rope_dtype=None, int? out_dtype=None"
)
V2_OUT_ARGS = f"{V2_ARGS}, Tensor(c!)? workspace=None, Tensor(a!) attention_out, Tensor(b!) softmax_lse"
V2 = "npu_fused_infer_attention_score_v2"
PAGED_ARGS = ("Tensor query, Tensor key_cache, Tensor value_cache, int num_kv_heads, int num_heads, "
              "float scale_value, Tensor block_table, Tensor context_lens, Tensor(a!) out")


def _v2_into(query, key, value, **kwargs) -> None:
    fused_v2.npu_fused_infer_attention_score_v2_out(query, key, value, **kwargs)


def _v2_into_fake(query, key, value, *, workspace=None, attention_out, softmax_lse, **kwargs) -> None:
    fused_v2.validate(query, key, value, **kwargs)


def _v2_out(query, key, value, *, workspace=None, attention_out, softmax_lse, **kwargs):
    torch.ops.npu._npu_fused_infer_attention_score_v2_into(query, key, value, workspace=workspace,
                                                           attention_out=attention_out, softmax_lse=softmax_lse,
                                                           **kwargs)
    return attention_out, softmax_lse


def _v2_workspace_fake(query, key, value, **kwargs):
    return query.new_empty((fused_v2.workspace_numel(query, key, value, **kwargs),))


define(f"{V2}({V2_ARGS}) -> (Tensor, Tensor)", fused_v2.npu_fused_infer_attention_score_v2, fused_v2.outputs)
define(f"_npu_fused_infer_attention_score_v2_into({V2_OUT_ARGS}) -> ()", _v2_into, _v2_into_fake)
LIB.define(f"{V2}.out({V2_OUT_ARGS}) -> (Tensor(a!), Tensor(b!))")
LIB.impl(f"{V2}.out", _v2_out, "CompositeImplicitAutograd")
define(f"_npu_fused_infer_attention_score_v2_get_max_workspace({V2_ARGS}) -> Tensor", fused_v2.get_max_workspace,
       _v2_workspace_fake)
define("_npu_fused_infer_attention_score_v2_infer_output(Tensor query, Tensor value, *, int? query_dtype=None, "
       "int? value_dtype=None, str input_layout=\"BSH\", Tensor? quant_scale_out=None, Tensor? block_table=None, "
       "int num_query_heads=1, int num_key_value_heads=0, bool return_softmax_lse=False, Tensor? query_rope=None, "
       "int? out_dtype=None) -> (Tensor, Tensor)", fused_v2.infer_output, fused_v2.infer_output)


def _paged_fake(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value, block_table, context_lens, out,
                *, workspace=None) -> None:
    paged_attention.validate_static(query, key_cache, value_cache, num_kv_heads, num_heads, scale_value,
                                    block_table, context_lens, out, workspace)


define(f"_npu_paged_attention({PAGED_ARGS}, *, Tensor? workspace=None) -> ()", paged_attention._npu_paged_attention,
       _paged_fake)
define(f"_npu_paged_attention_get_workspace({PAGED_ARGS}) -> Tensor", paged_attention.get_workspace,
       paged_attention.get_workspace)


_v2_entry = public(V2, fused_v2.npu_fused_infer_attention_score_v2,
                   "torch_npu.npu_fused_infer_attention_score_v2 (spec ops §4.5).")
_v2_into_entry = public("_npu_fused_infer_attention_score_v2_into", fused_v2.npu_fused_infer_attention_score_v2_out,
                        "The ``.out`` form of npu_fused_infer_attention_score_v2, returning its outputs.")


class FusedInferAttentionScoreV2:
    """torch_npu.npu_fused_infer_attention_score_v2 (spec ops §4.5): call it, or ``.out(..., workspace=ws,
    out=[attention_out, softmax_lse])``."""

    def __call__(self, query, key, value, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        return _v2_entry(query, key, value, **kwargs)

    def out(self, query, key, value, *, out, workspace=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        attention_out, softmax_lse = out
        _v2_into_entry(query, key, value, workspace=workspace, attention_out=attention_out, softmax_lse=softmax_lse,
                       **kwargs)
        return attention_out, softmax_lse


npu_fused_infer_attention_score_v2 = FusedInferAttentionScoreV2()
_npu_fused_infer_attention_score_v2_get_max_workspace = public(
    "_npu_fused_infer_attention_score_v2_get_max_workspace", fused_v2.get_max_workspace,
    "torch_npu._npu_fused_infer_attention_score_v2_get_max_workspace: the ``.out`` workspace of a call.")
_npu_fused_infer_attention_score_v2_infer_output = public(
    "_npu_fused_infer_attention_score_v2_infer_output", fused_v2.infer_output,
    "torch_npu._npu_fused_infer_attention_score_v2_infer_output: uninitialised outputs of a call.")
_npu_paged_attention = public("_npu_paged_attention", paged_attention._npu_paged_attention,
                              "torch_npu._npu_paged_attention (spec vllm-ascend-ops §1.1): writes ``out``.")
_npu_paged_attention_get_workspace = public(
    "_npu_paged_attention_get_workspace", paged_attention.get_workspace,
    "torch_npu._npu_paged_attention_get_workspace (spec vllm-ascend-ops §1.2).")
