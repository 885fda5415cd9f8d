"""``npu_fused_infer_attention_score_v2`` (spec ops §4.5): the fused operator under v2's argument names,
with its ``.out``, ``_get_max_workspace`` and ``_infer_output``.

A v2 call is translated into the fused operator's arguments (``V1_NAMES``) and runs as that call: the
same validation, plan cache, kernels and task (``ops.fused``); its errors name the v2 arguments.

What v2 adds: ``learnable_sink`` (bf16, (Q_N,)), an extra softmax logit per query head with no value row
(spec §1.6). The fused call computes (o, lse) without it; a second task then writes
``o' = o · e^lse / (e^lse + e^sink) = o · sigmoid(lse - sink)`` and, when asked for,
``lse' = log(e^lse + e^sink)``, in float32 from the fused call's output. Rows without keys (o = 0,
lse = +inf) stay 0 and +inf; a fully masked row (lse ≈ -3.4e38) becomes 0 with lse' = sink, as the
softmax over the sink alone gives. Rounding: o is rounded to the output dtype by the kernel before the
factor (≤ 1) is applied and the result is rounded again, so the result is within one unit in the last
place of the exact value plus the kernel's own error (a single rounding would give half a unit). A call
with a sink writes its own (o, lse) scratch, not the ``.out`` workspace. The NPU takes the sink with the
TND and NTD_TND layouts only, Dv <= 128, no quantisation (int8 key/value, quant_scale_out) and no pse.

Not supported, with an error naming the argument: the storage reinterpretations ``*_dtype`` and
``out_dtype`` (hifloat8/float8/float4 formats of newer chips); the reserved ``quant_scale_p`` and
``dequant_scale_key_rope``; MLA full quantisation (``dequant_scale_query``, ``query_quant_mode=3``), the
tree mask (``sparse_mode=9``) and the layouts BSH_BNSD, BSND_BNSD and NTD (MLA with D = 128) are not
implemented (``NotImplementedError``).
"""

from __future__ import annotations

import contextlib
import re
from typing import Optional

import torch

from .. import checks, masks, tasks
from ..errors import require
from ..layouts import FUSED_LAYOUTS, Layout
from . import fused
from .fused.prefill_path import kv_view
from .kv_cache import NO_PARAMS

OP = "npu_fused_infer_attention_score_v2"

# torch_npu's keyword arguments and defaults (spec §4.5), in schema order.
DEFAULTS = {
    "query_rope": None, "key_rope": None, "pse_shift": None, "atten_mask": None, "actual_seq_qlen": None,
    "actual_seq_kvlen": None, "block_table": None, "dequant_scale_query": None, "dequant_scale_key": None,
    "dequant_offset_key": None, "dequant_scale_value": None, "dequant_offset_value": None,
    "dequant_scale_key_rope": None, "quant_scale_out": None, "quant_offset_out": None, "quant_scale_p": None,
    "learnable_sink": None, "num_query_heads": 1, "num_key_value_heads": 0, "softmax_scale": 1.0,
    "pre_tokens": masks.INT_MAX, "next_tokens": masks.INT_MAX, "input_layout": "BSH", "sparse_mode": 0,
    "block_size": 0, "query_quant_mode": 0, "key_quant_mode": 0, "value_quant_mode": 0, "inner_precise": 0,
    "return_softmax_lse": False, "query_dtype": None, "key_dtype": None, "value_dtype": None,
    "query_rope_dtype": None, "key_rope_dtype": None, "key_shared_prefix_dtype": None,
    "value_shared_prefix_dtype": None, "dequant_scale_query_dtype": None, "dequant_scale_key_dtype": None,
    "dequant_scale_value_dtype": None, "dequant_scale_key_rope_dtype": None, "out_dtype": None,
}
# v2 name -> the fused operator's; the arguments not listed keep their names.
V1_NAMES = {
    "actual_seq_qlen": "actual_seq_lengths", "actual_seq_kvlen": "actual_seq_lengths_kv",
    "dequant_scale_key": "key_antiquant_scale", "dequant_offset_key": "key_antiquant_offset",
    "dequant_scale_value": "value_antiquant_scale", "dequant_offset_value": "value_antiquant_offset",
    "quant_scale_out": "quant_scale2", "quant_offset_out": "quant_offset2", "num_query_heads": "num_heads",
    "softmax_scale": "scale", "key_quant_mode": "key_antiquant_mode", "value_quant_mode": "value_antiquant_mode",
    "return_softmax_lse": "softmax_lse_flag",
}
NEWER_CHIPS = ("query_dtype", "key_dtype", "value_dtype", "query_rope_dtype", "key_rope_dtype",
               "key_shared_prefix_dtype", "value_shared_prefix_dtype", "dequant_scale_query_dtype",
               "dequant_scale_key_dtype", "dequant_scale_value_dtype", "dequant_scale_key_rope_dtype", "out_dtype")
RESERVED = ("quant_scale_p", "dequant_scale_key_rope")
V2_ONLY = ("dequant_scale_query", "learnable_sink", "query_quant_mode", *RESERVED, *NEWER_CHIPS)
MLA_D128_LAYOUTS = ("BSH_BNSD", "BSND_BNSD", "NTD")
SINK_LAYOUTS = ("TND", "NTD_TND")
SINK_MAX_DV = 128
NEWER_CHIPS_RULE = "reinterprets storage as a format of newer chips (hifloat8, float8, float4); not on Atlas A2/A3"

# v1 names as words of a message ("scale" only as an argument, "scale=...": the word also means a quant scale)
_V2_NAME = re.compile(r"\b(" + "|".join(n for n in V1_NAMES.values() if n != "scale") + r")\b|\b(scale)(?==)")
_FROM_V1 = {v1: v2 for v2, v1 in V1_NAMES.items()}


@contextlib.contextmanager
def v2_names():
    """Errors of the fused operator's validation, with the v2 argument names."""
    try:
        yield
    except (ValueError, TypeError, NotImplementedError) as e:
        raise type(e)(_V2_NAME.sub(lambda m: _FROM_V1[m.group(m.lastindex)], str(e))) from None


def with_defaults(kwargs: dict) -> dict:
    kw = {**DEFAULTS, **kwargs}
    if len(kw) != len(DEFAULTS):
        raise TypeError(f"{OP} got unexpected keyword arguments {sorted(set(kwargs) - set(DEFAULTS))}")
    return kw


def translate(query, value, kw: dict) -> tuple[dict, Optional[torch.Tensor]]:
    """v2's arguments (``with_defaults``) → (the fused operator's keyword arguments, the learnable sink)."""
    for name in NEWER_CHIPS:
        require(kw[name] is None, name, kw[name], NEWER_CHIPS_RULE)
    for name in RESERVED:
        require(kw[name] is None, name, kw[name], "is reserved by torch_npu (not used): pass None")
    require(kw["query_quant_mode"] in (0, 3), "query_quant_mode", kw["query_quant_mode"],
            "must be 0, or 3 (per token and head, with dequant_scale_query)")
    if kw["dequant_scale_query"] is not None or kw["query_quant_mode"] == 3:
        raise NotImplementedError("dequant_scale_query / query_quant_mode=3: MLA full quantisation (int8 query "
                                  "with per-token, per-head scales) is not implemented")
    if kw["sparse_mode"] == 9:
        raise NotImplementedError("sparse_mode=9: the tree mask (MLA speculative decoding) is not implemented")
    if kw["input_layout"] in MLA_D128_LAYOUTS:
        raise NotImplementedError(f"input_layout={kw['input_layout']!r} (MLA with D = 128) is not implemented")
    v1 = {V1_NAMES.get(k, k): v for k, v in kw.items() if k not in V2_ONLY}
    sink = kw["learnable_sink"]
    if sink is not None:
        _check_sink(query, value, sink, v1)
        v1["softmax_lse_flag"] = True
    return v1, sink


def _check_sink(query, value, sink, v1: dict) -> None:
    """The NPU's learnable-sink rules (spec §4.5)."""
    checks.tensor("learnable_sink", sink, ndim=(1,), dtypes=(torch.bfloat16,))
    n = v1["num_heads"]
    require(tuple(sink.shape) == (n,), "learnable_sink", sink, f"must be (Q_N,) = ({n},): one logit per query head")
    layout = v1["input_layout"]
    require(layout in SINK_LAYOUTS, "learnable_sink", sink, f"is supported with {' and '.join(SINK_LAYOUTS)} only, "
            f"got input_layout={layout!r}")
    with v2_names():
        parsed = Layout.parse(layout, FUSED_LAYOUTS)
        kv_n = checks.head_counts(n, v1["num_key_value_heads"])
        dv = kv_view(value, parsed, kv_n, v1["block_table"], "value").shape[3]
    require(dv <= SINK_MAX_DV, "learnable_sink", sink, f"needs a value head dim <= {SINK_MAX_DV}, got {dv}")
    for name in ("quant_scale2", "pse_shift"):
        require(v1[name] is None, "learnable_sink", sink, f"cannot be combined with {_FROM_V1.get(name, name)}")
    require(query.dtype != torch.int8 and value.dtype != torch.int8, "learnable_sink", sink,
            "needs float query, key and value (no quantisation)")


def _sink(block: torch.Tensor, args: tuple) -> None:
    """The learnable sink on a fused call's (o (T, N, Dv), lse (T, N, 1)): writes ``out`` and ``lse_out``."""
    o, lse, sink, out, lse_out = args
    logit = sink.float()[:, None]                                   # [N, 1]
    l = lse.float()
    out.copy_((o.float() * torch.sigmoid(l - logit)).to(out.dtype))
    if lse_out is not None:
        lse_out.copy_(torch.logaddexp(l, logit))


def _submit_sink(o, lse, sink, out, lse_out, roles: str) -> None:
    static = (OP, "learnable_sink", tuple(o.shape), o.dtype, lse_out is not None, o.device)
    tasks.submit(tasks.Task(OP, static, NO_PARAMS, o.device, run=_sink, args=(o, lse, sink, out, lse_out),
                            roles=tasks.OWN * 2 + tasks.INPUT + roles * 2))


def _empty_lse(query) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32, device=query.device)


def npu_fused_infer_attention_score_v2(query, key, value, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager implementation behind ``torch.ops.npu.npu_fused_infer_attention_score_v2``."""
    kw = with_defaults(kwargs)
    v1, sink = translate(query, value, kw)
    with v2_names():
        o, lse = fused.npu_fused_infer_attention_score(query, key, value, **v1)
    if sink is None:
        return o, lse
    lse_out = lse if kw["return_softmax_lse"] else None
    _submit_sink(o, lse, sink, o, lse_out, tasks.OWN)
    return o, lse if lse_out is not None else _empty_lse(query)


def npu_fused_infer_attention_score_v2_out(query, key, value, *, workspace=None, attention_out, softmax_lse,
                                           **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``.out``: writes ``attention_out`` (and ``softmax_lse`` when return_softmax_lse is set)."""
    kw = with_defaults(kwargs)
    v1, sink = translate(query, value, kw)
    if sink is None:
        with v2_names():
            return fused.npu_fused_infer_attention_score_out(query, key, value, workspace=workspace,
                                                             attention_out=attention_out, softmax_lse=softmax_lse,
                                                             **v1)
    with v2_names():
        o, lse = fused.npu_fused_infer_attention_score(query, key, value, **v1)
    lse_flag = kw["return_softmax_lse"]
    _check_outputs(o, lse, attention_out, softmax_lse, lse_flag, workspace)
    _submit_sink(o, lse, sink, attention_out, softmax_lse if lse_flag else None, tasks.OUTPUT)
    return attention_out, softmax_lse


def _check_outputs(o, lse, attention_out, softmax_lse, lse_flag: bool, workspace) -> None:
    """``.out``'s outputs of a call with a sink: those of its fused call ``(o, lse)`` (made with the lse)."""
    checks.tensor("attention_out", attention_out)
    require(attention_out.shape == o.shape and attention_out.dtype == o.dtype, "attention_out", attention_out,
            f"must be {tuple(o.shape)} {o.dtype}")
    checks.tensor("softmax_lse", softmax_lse)
    if lse_flag:
        require(softmax_lse.shape == lse.shape and softmax_lse.dtype == torch.float32, "softmax_lse", softmax_lse,
                f"must be {tuple(lse.shape)} float32 with return_softmax_lse=True")
    if workspace is not None:
        checks.tensor("workspace", workspace)
    checks.written((("attention_out", attention_out), ("softmax_lse", softmax_lse if lse_flag else None),
                    ("workspace", workspace)))


def validate(query, key, value, **kwargs) -> tuple[fused.FusedCall, Optional[torch.Tensor], bool]:
    """(the fused call, the sink, return_softmax_lse) of a v2 call, validated."""
    kw = with_defaults(kwargs)
    v1, sink = translate(query, value, kw)
    with v2_names():
        return fused.validate(query, key, value, **v1), sink, kw["return_softmax_lse"]


def outputs(query, key, value, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """New (attention_out, softmax_lse) of a v2 call (its fake implementation)."""
    call, sink, lse_flag = validate(query, key, value, **kwargs)
    o, lse = fused.outputs(call)
    return o, lse if sink is None or lse_flag else _empty_lse(query)


def get_max_workspace(query, key, value, **kwargs) -> torch.Tensor:
    """The fused call's ``.out`` workspace (a call with a sink does not use it)."""
    kw = with_defaults(kwargs)
    v1, _ = translate(query, value, kw)
    with v2_names():
        return fused.get_max_workspace(query, key, value, **v1)


def workspace_numel(query, key, value, **kwargs) -> int:
    call, _, _ = validate(query, key, value, **kwargs)
    return fused.workspace_numel(call, query.element_size())


def infer_output(query, value, *, query_dtype=None, value_dtype=None, input_layout="BSH", quant_scale_out=None,
                 block_table=None, num_query_heads=1, num_key_value_heads=0, return_softmax_lse=False,
                 query_rope=None, out_dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised (attention_out, softmax_lse) with the shapes and dtypes of the call."""
    for name, v in (("query_dtype", query_dtype), ("value_dtype", value_dtype), ("out_dtype", out_dtype)):
        require(v is None, name, v, NEWER_CHIPS_RULE)
    if input_layout in MLA_D128_LAYOUTS:
        raise NotImplementedError(f"input_layout={input_layout!r} (MLA with D = 128) is not implemented")
    with v2_names():
        return fused.infer_output(query, value, input_layout=input_layout, quant_scale2=quant_scale_out,
                                  block_table=block_table, num_heads=num_query_heads,
                                  num_key_value_heads=num_key_value_heads, softmax_lse_flag=return_softmax_lse,
                                  query_rope=query_rope)
