"""torch.library registration of the operators in namespace ``npu`` (schemas as torch_npu's), and their
Python entry points.

The entry points call the eager implementation directly when nothing needs the dispatcher: plain tensors,
no tracing (``torch.compile``), and no dispatch mode on the stack other than the ones that run npu
operators as they are (``transparent_modes``: the runtime's backends add theirs). Otherwise they go through
``torch.ops.npu``, whose fake implementations serve tracing.
"""

from __future__ import annotations

import torch

from . import plans, tasks
from .ops import fused, incre, prompt

LIB = torch.library.Library("npu", "FRAGMENT")

PROMPT_SCHEMA = (
    "npu_prompt_flash_attention(Tensor query, Tensor key, Tensor value, *, Tensor? padding_mask=None, "
    "Tensor? atten_mask=None, Tensor? pse_shift=None, int[]? actual_seq_lengths=None, "
    "Tensor? deq_scale1=None, Tensor? quant_scale1=None, Tensor? deq_scale2=None, Tensor? quant_scale2=None, "
    "Tensor? quant_offset2=None, int num_heads=1, float scale_value=1.0, int pre_tokens=2147483647, "
    "int next_tokens=0, str input_layout=\"BSH\", int num_key_value_heads=0, "
    "int[]? actual_seq_lengths_kv=None, int sparse_mode=0) -> Tensor"
)


def define(schema: str, impl, fake) -> None:
    """Define ``schema`` with ``impl`` on CPU and CUDA and ``fake`` for tracing."""
    name = schema.split("(", 1)[0]
    LIB.define(schema)
    for key in ("CPU", "CUDA"):
        LIB.impl(name, impl, key)
    torch.library.register_fake(f"npu::{name}", fake, lib=LIB)


# Dispatch modes under which an npu operator runs its implementation as is (python dispatch disabled
# inside, as a mode's handler would run it): a mode class with ``npu_transparent = True``.


def _direct(query) -> int:
    """0: go through the dispatcher; 1: call the implementation; 2: call it with python dispatch disabled."""
    if type(query) is not torch.Tensor or _is_compiling():
        return 0
    depth = _stack_depth()
    if not depth:
        return 1
    if depth == 1:
        return 2 if getattr(_stack_at(0), "npu_transparent", False) else 0
    return 2 if all(getattr(_stack_at(i), "npu_transparent", False) for i in range(depth)) else 0


_stack_depth, _stack_at = torch._C._len_torch_dispatch_stack, torch._C._get_dispatch_stack_at
# False, but True where dynamo traces (torch.compile): it sees a traced tensor's type as torch.Tensor. Other
# tracers pass tensor subclasses (fake tensors) or put their own dispatch modes on the stack.
_is_compiling = torch.compiler.is_dynamo_compiling


def attention(name: str, entry, block, doc: str):
    """The Python entry point of the attention operator ``torch.ops.npu.<name>``: ``entry(query, key,
    value, kwargs)`` is its implementation, taking the keyword arguments as the dict made here; ``block(plan,
    kwargs)`` the parameter block of a cached call.

    Its task-update fast path, tried first in task-update mode (under the runtime's guard mode): a call that
    passes the objects of its task's last match (``plans.Given.same``) only rewrites the task's block and
    returns the task's spare output (``plans.spare_output``)."""
    def call(query, key, value, **kwargs):
        direct = _direct(query)
        if direct and tasks.captured is not None:
            cap = tasks.captured(name)
            if cap is not None:
                params = cap.given.same(query, key, value, kwargs)
                if type(params) is not torch.Tensor:
                    params = plans.fresh(cap, params, kwargs, block)
                if params is not None:
                    cap.rewrite(params)
                    return cap.spared if cap.spared is not None else plans.spare_output(cap, query.device)
        if direct == 1:
            return entry(query, key, value, kwargs)
        if direct:                      # a transparent mode is on the stack: run past it
            with torch._C._DisableTorchDispatch():
                return entry(query, key, value, kwargs)
        return getattr(torch.ops.npu, name)(query, key, value, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = doc
    return call


def public(name: str, impl, doc: str):
    """The Python entry point of ``torch.ops.npu.<name>`` (keyword arguments as torch_npu's)."""
    def call(query, *args, **kwargs):
        direct = _direct(query)
        if direct == 1:
            return impl(query, *args, **kwargs)
        if direct:                      # a transparent mode is on the stack: run past it
            with torch._C._DisableTorchDispatch():
                return impl(query, *args, **kwargs)
        return getattr(torch.ops.npu, name)(query, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = doc
    return call


define(PROMPT_SCHEMA, prompt.npu_prompt_flash_attention, prompt.fake)
npu_prompt_flash_attention = attention("npu_prompt_flash_attention", prompt.entry, prompt.cached_block,
                                       "torch_npu.npu_prompt_flash_attention (spec ops §2).")


INCRE_SCHEMA = (
    "npu_incre_flash_attention(Tensor query, Tensor key, Tensor value, *, Tensor? padding_mask=None, "
    "Tensor? atten_mask=None, Tensor? pse_shift=None, SymInt[]? actual_seq_lengths=None, "
    "Tensor? antiquant_scale=None, Tensor? antiquant_offset=None, Tensor? block_table=None, "
    "Tensor? dequant_scale1=None, Tensor? quant_scale1=None, Tensor? dequant_scale2=None, "
    "Tensor? quant_scale2=None, Tensor? quant_offset2=None, Tensor? kv_padding_size=None, int num_heads=1, "
    "float scale_value=1.0, str input_layout=\"BSH\", int num_key_value_heads=0, int block_size=0, "
    "int inner_precise=1) -> Tensor"
)
define(INCRE_SCHEMA, incre.npu_incre_flash_attention,
       lambda query, key, value, **kw: incre.output(incre.validate(query, key, value, **kw)))
npu_incre_flash_attention = attention("npu_incre_flash_attention", incre.entry, incre.cached_block,
                                      "torch_npu.npu_incre_flash_attention (spec ops §3).")


FUSED_ARGS = (
    "Tensor query, Tensor key, Tensor value, *, Tensor? pse_shift=None, Tensor? atten_mask=None, "
    "SymInt[]? actual_seq_lengths=None, SymInt[]? actual_seq_lengths_kv=None, Tensor? dequant_scale1=None, "
    "Tensor? quant_scale1=None, Tensor? dequant_scale2=None, Tensor? quant_scale2=None, "
    "Tensor? quant_offset2=None, Tensor? antiquant_scale=None, Tensor? antiquant_offset=None, "
    "Tensor? key_antiquant_scale=None, Tensor? key_antiquant_offset=None, Tensor? value_antiquant_scale=None, "
    "Tensor? value_antiquant_offset=None, Tensor? block_table=None, Tensor? query_padding_size=None, "
    "Tensor? kv_padding_size=None, Tensor? key_shared_prefix=None, Tensor? value_shared_prefix=None, "
    "SymInt[]? actual_shared_prefix_len=None, Tensor? query_rope=None, Tensor? key_rope=None, "
    "Tensor? key_rope_antiquant_scale=None, int num_heads=1, float scale=1.0, int pre_tokens=2147483647, "
    "int next_tokens=2147483647, str input_layout=\"BSH\", int num_key_value_heads=0, int sparse_mode=0, "
    "int inner_precise=0, int block_size=0, int antiquant_mode=0, int key_antiquant_mode=0, "
    "int value_antiquant_mode=0, bool softmax_lse_flag=False"
)


def _fused_fake(query, key, value, **kwargs):
    return fused.outputs(fused.validate(query, key, value, **fused.with_defaults(kwargs)))


def _fused_into_fake(query, key, value, *, workspace=None, attention_out, softmax_lse, **kwargs):
    fused.validate(query, key, value, **fused.with_defaults(kwargs))


def _fused_into(query, key, value, **kwargs) -> None:
    fused.npu_fused_infer_attention_score_out(query, key, value, **kwargs)


def _fused_out(query, key, value, *, workspace=None, attention_out, softmax_lse, **kwargs):
    torch.ops.npu._npu_fused_infer_attention_score_into(query, key, value, workspace=workspace,
                                                         attention_out=attention_out, softmax_lse=softmax_lse, **kwargs)
    return attention_out, softmax_lse


def _workspace_fake(query, key, value, **kwargs):
    call = fused.validate(query, key, value, **fused.with_defaults(kwargs))
    return query.new_empty((fused.workspace_numel(call, query.element_size()),))


define(f"npu_fused_infer_attention_score({FUSED_ARGS}) -> (Tensor, Tensor)",
       fused.npu_fused_infer_attention_score, _fused_fake)
# ``.out`` keeps torch_npu's schema (aliased returns) and decomposes into an op that returns nothing,
# which torch.compile can functionalise. The workspace is scratch the call writes: declared mutable.
OUT_ARGS = f"{FUSED_ARGS}, Tensor(c!)? workspace=None, Tensor(a!) attention_out, Tensor(b!) softmax_lse"
define(f"_npu_fused_infer_attention_score_into({OUT_ARGS}) -> ()", _fused_into, _fused_into_fake)
LIB.define(f"npu_fused_infer_attention_score.out({OUT_ARGS}) -> (Tensor(a!), Tensor(b!))")
LIB.impl("npu_fused_infer_attention_score.out", _fused_out, "CompositeImplicitAutograd")
define(f"_npu_fused_infer_attention_score_get_max_workspace({FUSED_ARGS}) -> Tensor", fused.get_max_workspace,
       _workspace_fake)
define("_npu_fused_infer_attention_score_infer_output(Tensor query, Tensor value, *, str input_layout=\"BSH\", "
       "Tensor? quant_scale2=None, Tensor? block_table=None, int num_heads=1, int num_key_value_heads=0, "
       "bool softmax_lse_flag=False, Tensor? query_rope=None) -> (Tensor, Tensor)", fused.infer_output,
       fused.infer_output)


class FusedInferAttentionScore:
    """torch_npu.npu_fused_infer_attention_score (spec ops §4): call it, or ``.out(..., workspace=ws,
    out=[attention_out, softmax_lse])``."""

    def __call__(self, query, key, value, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        direct = _direct(query)
        if direct and tasks.captured is not None:
            outs = fused.update(query, key, value, kwargs, None, None)
            if outs is not None:
                return outs
        if direct == 1:
            return fused.submit(query, key, value, kwargs, None, None)
        if direct:
            with torch._C._DisableTorchDispatch():
                return fused.submit(query, key, value, kwargs, None, None)
        return torch.ops.npu.npu_fused_infer_attention_score(query, key, value, **kwargs)

    def out(self, query, key, value, *, out, workspace=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        attention_out, softmax_lse = out
        direct = _direct(query)
        if direct and tasks.captured is not None:
            outs = fused.update(query, key, value, kwargs, (attention_out, softmax_lse), workspace)
            if outs is not None:
                return outs
        if direct == 1:
            return fused.submit(query, key, value, kwargs, (attention_out, softmax_lse), workspace)
        if direct:
            with torch._C._DisableTorchDispatch():
                return fused.submit(query, key, value, kwargs, (attention_out, softmax_lse), workspace)
        return torch.ops.npu.npu_fused_infer_attention_score.out(
            query, key, value, workspace=workspace, attention_out=attention_out, softmax_lse=softmax_lse, **kwargs)


npu_fused_infer_attention_score = FusedInferAttentionScore()
_npu_fused_infer_attention_score_get_max_workspace = public(
    "_npu_fused_infer_attention_score_get_max_workspace", fused.get_max_workspace,
    "torch_npu._npu_fused_infer_attention_score_get_max_workspace: the ``.out`` workspace of a call.")
_npu_fused_infer_attention_score_infer_output = public(
    "_npu_fused_infer_attention_score_infer_output", fused.infer_output,
    "torch_npu._npu_fused_infer_attention_score_infer_output: uninitialised outputs of a call.")
