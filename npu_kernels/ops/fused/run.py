"""The fused operator's entry points: the functional call, ``.out``, ``_get_max_workspace`` and
``_infer_output``, each planned once per call signature (``npu_kernels.plans``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from ... import alloc, checks, plans, tasks
from ...device import execution
from ...errors import require
from ...layouts import FUSED_LAYOUTS, TOKEN_LAYOUTS, Layout, as_bnsd, bnsd_shape, out_shape
from .. import incre, prompt
from . import workspace
from .call import DEFAULTS, LIST_ARGS, OP, TENSOR_ARGS, FusedCall, per_batch, validate, window_opens, with_defaults
from .prefill_path import kv_view, token_rows


class Planned(plans.Entry):
    """A fused call planned for its signature (``plans.Entry``, its call without batches), with the 4-byte
    words of scratch it needs (``_scratch_words``) and, on the prefill kernel, the (token tiles, BLOCK_M)
    its parameter block is packed with."""

    __slots__ = ("scratch", "tiling")

    def __init__(self, call: FusedCall, prepared: plans.Prepared, out: torch.Tensor, scratch: int, kwargs: dict):
        """``kwargs``: the call's keyword arguments (those its signature holds)."""
        super().__init__(prepared, call, out, kwargs, TENSOR_ARGS, _DYNAMIC, _DYNAMIC_DEFAULTS)
        self.scratch = scratch
        if call.incre is None:
            meta = dict(prepared.static.meta)
            self.tiling = (prepared.static.grid[0] if meta["TOKEN_GRID"] else 0, meta["BLOCK_M"])


_plans = plans.Cache()
_PER_CALL = frozenset((*LIST_ARGS, "pre_tokens", "next_tokens"))
_DYNAMIC = (*LIST_ARGS, "pre_tokens", "next_tokens")
_DYNAMIC_DEFAULTS = tuple(DEFAULTS[name] for name in _DYNAMIC)
_LISTS = frozenset(LIST_ARGS)


def _extra(query, kwargs: dict) -> tuple:
    """What the signature holds beyond ``plans.signature``: whether pre_tokens opens the decode sliding
    window, and the token-major parameter-block rows."""
    q_lens, layout = kwargs.get("actual_seq_lengths"), kwargs.get("input_layout", DEFAULTS["input_layout"])
    rows = 0
    if isinstance(layout, str) and layout.partition("_")[0] in TOKEN_LAYOUTS and isinstance(q_lens, (list, tuple)) \
            and isinstance(query, torch.Tensor) and query.dim() == 3:
        rows = token_rows(query.shape[0] if layout.startswith("T") else query.shape[1], len(q_lens))
    return window_opens(kwargs.get("pre_tokens", DEFAULTS["pre_tokens"])), rows


def outputs(call: FusedCall) -> tuple[torch.Tensor, torch.Tensor]:
    device = (call.prompt or call.incre).heads.q.device
    return (alloc.empty(call.out_shape, call.out_dtype, device),
            alloc.empty(call.lse_shape, torch.float32, device))


def _scratch_words(call: FusedCall) -> int:
    """4-byte words of scratch: the mask summary on the prefill kernel (``prompt.summary_words``), the
    split-KV scratch (partial outputs, per-split max and sum, float32) on the decode kernels."""
    if call.incre is None:
        return prompt.summary_words(call.prompt, call.prompt.heads.q.device.type == "cuda")
    device = call.incre.heads.q.device
    out = torch.empty(call.out_shape, dtype=call.out_dtype, device="meta")
    return sum(incre.plan(call.incre, out, None, on_gpu=device.type == "cuda").static.workspace)


def _prepare(call: FusedCall, args: tuple, out: torch.Tensor, lse: torch.Tensor, scratch: Optional[torch.Tensor]
             ) -> tuple[plans.Prepared, torch.Tensor]:
    """The kernel call of a fully validated ``call`` writing ``out``/``lse`` (views of ``args``), and its
    parameter block."""
    lse_k = call.lse_view(lse) if call.lse_flag else None
    how = execution(out.device)
    if call.incre is not None:
        pl = incre.plan(call.incre, out, lse_k)
        o4 = as_bnsd(out, call.layout.out, call.incre.heads.N)
        ops = incre.operands(call.incre, o4, lse_k, *incre.scratch(pl.static, scratch))
        return incre.Prepared(call.incre, pl.static, ops, lse_k is not None, args, how), pl.params
    pl = prompt.plan(call.prompt, out, lse_k)
    summary = None if pl.static.summary is None else scratch.view(torch.int32)
    return prompt.Prepared(call.prompt, pl.static, prompt.out_view(call.prompt, out), lse_k, args, how,
                           summary), pl.params


def _block(planned: Planned, kwargs: dict) -> torch.Tensor:
    """The parameter block of this call's per-call integers, validated (``kwargs`` as given: a plan's
    signature holds the names given, so none is unknown)."""
    dynamic = planned.dynamic(kwargs)
    if planned.call.incre is not None:
        return planned.recent.block(dynamic, lambda: incre.pack(*per_batch(planned.call, with_defaults(kwargs))))
    return planned.recent.block(dynamic, lambda: prompt.pack(*per_batch(planned.call, with_defaults(kwargs)),
                                                             *planned.tiling))


def update(query, key, value, kwargs: dict, outs: Optional[tuple], ws: Optional[torch.Tensor]) -> Optional[tuple]:
    """``submit``'s task-update fast path (as ``library.attention``'s), which the entry points try first in
    task-update mode: (attention_out, softmax_lse), or None. Per-call values equal to the plan's last ones
    (``Given.same`` gives its block) imply the signature's ``_extra``."""
    cap = tasks.captured(OP)
    if cap is None:
        return None
    params = cap.given.same(query, key, value, kwargs) if outs is None else \
        cap.given.same(query, key, value, *outs, ws, kwargs)
    if type(params) is not torch.Tensor:      # per-call values new to the plan: the signature's extra may differ
        if params is None or _extra(query, kwargs) != cap.given.extra:
            return None
        params = plans.fresh(cap, params, kwargs, _block)
        if params is None:
            return None
    cap.rewrite(params)
    if outs is not None:
        return outs
    return cap.spared if cap.spared is not None else _spares(cap, query.device)


def _spares(cap: tasks.Captured, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What the updates of a functional call's task return: its group's spare outputs
    (``tasks.Captured.spare``), kept on the task."""
    if cap.spared is None:
        call = cap.given.plan.call
        cap.spared = (cap.spare(call.out_shape, call.out_dtype, device, 0),
                      cap.spare(call.lse_shape, torch.float32, device, 1))
    return cap.spared


def submit(query, key, value, kwargs: dict, outs: Optional[tuple], ws: Optional[torch.Tensor]) -> tuple:
    """Plan (or look up) and submit one call writing ``outs`` (``.out``; else new outputs), with the
    caller's workspace ``ws`` (``.out``; else scratch of its own); a task update that matches its captured
    call (``plans.rewritten``) only rewrites its block. Returns (attention_out, softmax_lse). ``kwargs``: a
    dict it may keep (the entry points pass theirs)."""
    kwargs = checks.host_lists(kwargs, _LISTS)
    extra = _extra(query, kwargs)
    if tasks.captured is not None:
        cap = plans.rewritten(OP, _given_args(query, key, value, outs, ws), kwargs, _block, extra)
        if cap is not None:
            return outs if outs is not None else _spares(cap, query.device)
    sig = plans.signature(query, key, value, kwargs, _PER_CALL)
    sig += extra
    if outs is not None:
        sig += map(plans.meta, (*outs, ws))
    key_ = tuple(sig)
    planned = _plans.get(key_)
    if planned is None:
        args = (query, key, value, *map(kwargs.get, TENSOR_ARGS))
        kw = with_defaults(kwargs)
        call = validate(query, key, value, **kw)
        out, lse = outs if outs is not None else outputs(call)
        if outs is not None:
            _check_outputs(call, out, lse, ws)
        scratch_words = _scratch_words(call)
        own = None if ws is not None or not (scratch_words or call.incre) else \
            alloc.empty((scratch_words,), torch.float32, out.device)
        scratch = workspace.scratch(scratch_words, call, ws) if ws is not None else own
        full = (*args, out, lse, ws, own)
        prepared, block = _prepare(call, full, out, lse, scratch)
        block_buffer = workspace.block(scratch_words, ws, block.numel()) if ws is not None else None
        if prepared.cacheable:
            planned = Planned(_without_batches(call), prepared, out, scratch_words, kwargs)
            _plans.put(key_, planned)
    else:
        call, prepared = planned.call, planned.prepared
        args = (query, key, value, *planned.pick(kwargs))
        block = _block(planned, kwargs)
        out, lse = outs if outs is not None else outputs(call)     # the caller's passed the checks before
        own = None
        if ws is not None:
            block_buffer = workspace.block(planned.scratch, ws, block.numel())
        else:
            block_buffer = None
            if planned.scratch or call.incre is not None:
                own = alloc.empty((planned.scratch,), torch.float32, out.device)
        full = (*args, out, lse, ws, own)
    if out.numel() or (call.lse_flag and lse.numel()):
        roles = _ROLES_OUT if outs is not None else _ROLES
        if prepared.extras:                              # only an uncached plan has them
            full, roles = (*full, *prepared.extras), roles + tasks.INPUT * len(prepared.extras)
        tasks.submit(tasks.Task(OP, prepared.static, block, out.device, run=prepared.run, args=full, roles=roles,
                                block_buffer=block_buffer,
                                given=planned and (plans.Given, planned, _given_args(query, key, value, outs, ws),
                                                   kwargs, _PER_CALL, extra, () if outs is None else _OUTS)))
    return out, lse


def _given_args(query, key, value, outs: Optional[tuple], ws) -> tuple:
    """The tensors a call passes outside its keyword arguments (``plans.Given``; ``.out``'s outputs and
    workspace at ``_OUTS``)."""
    return (query, key, value) if outs is None else (query, key, value, *outs, ws)


_OUTS = (3, 4, 5)


_ROLES = tasks.INPUT * (3 + len(TENSOR_ARGS)) + tasks.OWN * 2 + tasks.OUTPUT + tasks.OWN
_ROLES_OUT = tasks.INPUT * (3 + len(TENSOR_ARGS)) + tasks.OUTPUT * 3 + tasks.OWN


def _without_batches(call: FusedCall) -> FusedCall:
    """The cached form of a validated call: its per-call lists are recomputed by every call."""
    if call.incre is not None:
        return replace(call, incre=replace(call.incre, kvlens=[]))
    return replace(call, prompt=replace(call.prompt, qlens=[], kvlens=[], bands=[], offsets=()))


def _check_outputs(call: FusedCall, attention_out, softmax_lse, ws) -> None:
    checks.tensor("attention_out", attention_out)
    require(tuple(attention_out.shape) == call.out_shape and attention_out.dtype == call.out_dtype, "attention_out",
            attention_out, f"must be {call.out_shape} {call.out_dtype}")
    checks.tensor("softmax_lse", softmax_lse)
    if call.lse_flag:
        require(tuple(softmax_lse.shape) == call.lse_shape and softmax_lse.dtype == torch.float32, "softmax_lse",
                softmax_lse, f"must be {call.lse_shape} float32 with softmax_lse_flag=True")
    if ws is not None:
        checks.tensor("workspace", ws)
    checks.written((("attention_out", attention_out), ("softmax_lse", softmax_lse if call.lse_flag else None),
                    ("workspace", ws)))


def npu_fused_infer_attention_score(query, key, value, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager implementation behind ``torch.ops.npu.npu_fused_infer_attention_score``."""
    return submit(query, key, value, kwargs, None, None)


def npu_fused_infer_attention_score_out(query, key, value, *, workspace=None, attention_out, softmax_lse,
                                        **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``.out``: writes ``attention_out`` (and ``softmax_lse`` when the flag is set; untouched otherwise)."""
    return submit(query, key, value, kwargs, (attention_out, softmax_lse), workspace)


def get_max_workspace(query, key, value, **kwargs) -> torch.Tensor:
    """A 1-D tensor of the query's dtype large enough for the call's scratch and parameter block."""
    call = validate(query, key, value, **kwargs)
    return alloc.empty((workspace.numel(_scratch_words(call), call, query.element_size()),), query.dtype,
                       query.device)


def workspace_numel(call: FusedCall, element_size: int) -> int:
    return workspace.numel(_scratch_words(call), call, element_size)


def infer_output(query, value, *, input_layout="BSH", quant_scale2=None, block_table=None, num_heads=1,
                 num_key_value_heads=0, softmax_lse_flag=False, query_rope=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised (attention_out, softmax_lse) with the shapes and dtypes of the call."""
    layout = Layout.parse(input_layout, FUSED_LAYOUTS)
    kv_n = checks.head_counts(num_heads, num_key_value_heads)
    b, n, s, _ = bnsd_shape(query, layout.inp, num_heads)
    v4 = kv_view(value, layout, kv_n, block_table, "value")
    dv = v4.shape[3]
    token = layout.inp in TOKEN_LAYOUTS
    dtype = torch.int8 if quant_scale2 is not None else \
        (query_rope.dtype if query_rope is not None else torch.float16) if query.dtype == torch.int8 else query.dtype
    lse = ((s, n, 1) if token else (b, n, s, 1)) if softmax_lse_flag else (0,)
    return (alloc.empty(out_shape(layout.out, b, n, s, dv), dtype, query.device),
            alloc.empty(lse, torch.float32, query.device))
