"""``graph(..., auto_dispatch_capture=True)`` and ``NPUGraph.update`` (spec/runtime.md §1.7).

During such a capture a dispatch mode wraps every call of an operator that has a handler: it creates an
ExternalEvent, waits and resets it on the current stream, lets the handler prepare the call (e.g. switch
to the ``.out`` overload with a maximal workspace), brackets the call in a task group and keeps a record
(event, handle, call). ``NPUGraph.update(cpu_update_input)`` takes one dict per record in capture order
(a one-element list applies to all), replaces the named arguments, re-issues each call in task-update
mode on the update stream shared by all graphs, then records the record's event there.

Handlers are looked up by ``func.__name__`` (``"op.overload"``), then by the packet name (``"op"``).
As in torch_npu, a key of an update dict that names no argument of a record is left out for that record
(one dict may serve records of different operators); a key that no record of the update uses is ignored
as torch_npu ignores it, with a warning naming it.

The built-in handlers are torch_npu's (``torch_npu/npu/_npugraph_handlers``): the fused operator v1 and v2
(the functional form captured as ``.out`` with the maximal workspace and outputs allocated at capture;
lengths ``actual_seq_lengths(_kv)`` / ``actual_seq_qlen`` / ``actual_seq_kvlen``), ``_npu_paged_attention``
(``context_lens``, argument 7) and ``npu_multi_head_latent_attention.out`` (``context_lens``, argument 5).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_handlers: dict = {}  # op name ("pkg_op" or "pkg_op.overload") -> handler class


class NpuGraphOpHandler:
    """How an operator is captured for update and how update inputs map onto its arguments.

    ``UPDATE_SPECS`` maps an op name (``"op.overload"`` or ``"op"``) to ``[("arg", index, key) |
    ("kwarg", name, key), ...]``: the update dict's ``key`` goes to that positional or keyword argument.
    Keys that name a keyword argument of the captured call replace it without a spec. Hooks are class
    methods with torch_npu's signatures.
    """

    UPDATE_SPECS: dict = {}

    @classmethod
    def should_handle(cls, func, args, kwargs) -> bool:
        return True

    @classmethod
    def prepare_capture(cls, func, args, kwargs):
        return func, args, kwargs

    @classmethod
    def postprocess_result(cls, result, kwargs):
        return result

    @classmethod
    def get_update_specs(cls, op_name: str) -> list:
        """The update specs of ``op_name`` (``"op.overload"`` or ``"op"``); empty when it has none."""
        return cls.UPDATE_SPECS.get(op_name, [])

    @classmethod
    def update_args(cls, record: "CaptureRecord", update_input: dict) -> None:
        """Apply ``update_input`` to the record in place, as torch_npu: keys that name a keyword argument
        of the captured call replace it, then the op's ``UPDATE_SPECS`` place their keys."""
        for key in update_input.keys() & record.kwargs.keys():
            record.kwargs[key] = update_input[key]
        for kind, where, key in specs_of(cls, record):
            if key in update_input:
                if kind == "arg":
                    record.args[where] = update_input[key]
                else:
                    record.kwargs[where] = update_input[key]


def specs_of(handler, record: "CaptureRecord") -> list:
    """The record's update specs under its overload name, else its packet name; "arg" slots past the
    captured positional arguments are left out (those arguments were passed by keyword)."""
    name = record.func.__name__
    specs = handler.get_update_specs(name) or handler.get_update_specs(name.split(".")[0])
    return [(kind, where, key) for kind, where, key in specs if kind == "kwarg" or where < len(record.args)]


def updatable_keys(record: "CaptureRecord") -> set:
    """The update keys the record's call takes."""
    return set(record.kwargs) | {key for _, _, key in specs_of(record.handler, record)}


def register_npu_graph_handler(op_names):
    """Class decorator: use the handler for the operators named by ``op_names``, one name or a list of
    names (``func.__name__`` such as ``"op.default"``, or the packet name ``"op"``)."""
    names = [op_names] if isinstance(op_names, str) else op_names
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"register_npu_graph_handler: op_names={op_names!r}: expected a str or a list of str")

    def register(handler):
        for name in names:
            _handlers[name] = handler
        return handler

    return register


def handler_of(func):
    """The handler registered for ``func`` (an OpOverload), or None."""
    return _handlers.get(func.__name__) or _handlers.get(func.__name__.split(".")[0])


@dataclass(eq=False)
class CaptureRecord:
    """One auto-dispatched call; ``update`` changes ``args`` and ``kwargs`` in place."""

    func: object
    args: list
    kwargs: dict
    handler: type
    event: object
    handle: object

    @property
    def op_cache_entry(self):
        """The captured overload (torch_npu's name for ``func``)."""
        return self.func


def _keep(value):
    """Tensors are kept as captured; other arguments are copied (they may be mutated by the caller)."""
    return value if isinstance(value, torch.Tensor) else copy.deepcopy(value)


class GraphDispatchMode(TorchDispatchMode):
    """The capture side of auto dispatch for ``npu_graph`` (torch_npu's ``NPUGraph.graph_dispatch_mode``)."""

    def __init__(self, npu_graph):
        super().__init__()
        self.npu_graph = npu_graph

    @property
    def update_stream(self):
        """The stream every graph's ``update`` runs on (one per process and backend)."""
        return update_stream()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from . import ExternalEvent, current_stream, graph_task_group_begin, graph_task_group_end

        kwargs = kwargs or {}
        handler = handler_of(func)
        if handler is None or not handler.should_handle(func, args, kwargs):
            return func(*args, **kwargs)
        stream = current_stream()
        event = ExternalEvent()
        event.wait(stream)
        event.reset(stream)
        func, args, kwargs = handler.prepare_capture(func, args, kwargs)
        graph_task_group_begin(stream)
        result = func(*args, **kwargs)
        handle = graph_task_group_end(stream)
        args, kwargs = [_keep(a) for a in args], {k: _keep(v) for k, v in kwargs.items()}
        self.npu_graph._records.append(CaptureRecord(func, args, kwargs, handler, event, handle))
        return handler.postprocess_result(result, kwargs)


def update_stream():
    from .streams import shared_stream

    return shared_stream("NPUGraph.update")


def update(npu_graph, cpu_update_input: list) -> None:
    from . import graph_task_update_begin, graph_task_update_end, stream

    if not npu_graph.auto_dispatch_capture:
        raise RuntimeError(
            "The current graph configuration does not support update, Try to capture by setting "
            "auto_dispatch_capture=True during capture"
        )
    records = npu_graph._records
    inputs = list(cpu_update_input)
    if len(inputs) == 1:
        inputs *= len(records)
    if len(inputs) != len(records):
        raise RuntimeError(
            f"NPUGraph.update: cpu_update_input has {len(cpu_update_input)} entries; expected 1 or one "
            f"per captured updatable call ({len(records)})"
        )
    unused = {key for update_input in inputs for key in update_input}.difference(*map(updatable_keys, records))
    if unused:
        warnings.warn(f"NPUGraph.update: no captured call has an argument named {sorted(unused)} (left out, as "
                      f"torch_npu does); the updatable calls are {', '.join(str(r.func) for r in records)}",
                      stacklevel=3)
    u = update_stream()
    with stream(u):
        for record, update_input in zip(records, inputs):
            record.handler.update_args(record, update_input)
            graph_task_update_begin(u, record.handle)
            record.func(*record.args, **record.kwargs)
            graph_task_update_end(u)
            record.event.record(u)


class _CapturedAsOut(NpuGraphOpHandler):
    """A fused operator's functional form, captured as its out form ``INTO`` (which returns nothing) with the
    maximal workspace (``WORKSPACE``) and the outputs of ``INFER_OUTPUT`` (called with the ``OUTPUT_ARGS``
    the call has), allocated at capture, which the call returns."""

    INTO = WORKSPACE = INFER_OUTPUT = ""
    OUTPUT_ARGS: tuple = ()

    @classmethod
    def prepare_capture(cls, func, args, kwargs):
        ops = torch.ops.npu
        workspace = getattr(ops, cls.WORKSPACE)(*args, **kwargs)
        query, _, value = args
        out, lse = getattr(ops, cls.INFER_OUTPUT)(query, value,
                                                  **{k: v for k, v in kwargs.items() if k in cls.OUTPUT_ARGS})
        kwargs = dict(kwargs, workspace=workspace, attention_out=out, softmax_lse=lse)
        return getattr(ops, cls.INTO).default, args, kwargs

    @classmethod
    def postprocess_result(cls, result, kwargs):
        return kwargs["attention_out"], kwargs["softmax_lse"]


def _specs(op: str, specs: list) -> dict:
    """``UPDATE_SPECS`` of ``specs`` under torch_npu's names of ``op``: packet, ``.default`` and ``.out``."""
    return {name: specs for name in (op, f"{op}.default", f"{op}.out")}


@register_npu_graph_handler(["npu_fused_infer_attention_score.out", "_npu_fused_infer_attention_score_into",
                             "_npu_fused_infer_attention_score_into.default"])
class FusedInferAttentionScoreOutHandler(NpuGraphOpHandler):
    """FIA v1 ``.out`` (which runs as ``_npu_fused_infer_attention_score_into``, returning nothing): captured
    as it is; updates replace ``actual_seq_lengths``, ``actual_seq_lengths_kv`` ... by name. The specs
    are torch_npu's (positional slots 5 and 6); here those arguments are keywords and match by name."""

    UPDATE_SPECS = _specs("npu_fused_infer_attention_score",
                          [("arg", 5, "actual_seq_lengths"), ("arg", 6, "actual_seq_lengths_kv")])


@register_npu_graph_handler(["npu_fused_infer_attention_score", "npu_fused_infer_attention_score.default"])
class FusedInferAttentionScoreHandler(_CapturedAsOut, FusedInferAttentionScoreOutHandler):
    """FIA v1, functional: captured as ``.out``."""

    INTO = "_npu_fused_infer_attention_score_into"
    WORKSPACE = "_npu_fused_infer_attention_score_get_max_workspace"
    INFER_OUTPUT = "_npu_fused_infer_attention_score_infer_output"
    OUTPUT_ARGS = ("input_layout", "quant_scale2", "block_table", "num_heads", "num_key_value_heads",
                   "softmax_lse_flag", "query_rope")


@register_npu_graph_handler(["npu_fused_infer_attention_score_v2.out", "_npu_fused_infer_attention_score_v2_into",
                             "_npu_fused_infer_attention_score_v2_into.default"])
class FusedInferAttentionScoreV2OutHandler(NpuGraphOpHandler):
    """FIA v2 ``.out`` (``_npu_fused_infer_attention_score_v2_into``): captured as it is; updates replace
    ``actual_seq_qlen`` and ``actual_seq_kvlen`` (torch_npu's slots 7 and 8, keywords here) by name."""

    UPDATE_SPECS = _specs("npu_fused_infer_attention_score_v2",
                          [("arg", 7, "actual_seq_qlen"), ("arg", 8, "actual_seq_kvlen")])


@register_npu_graph_handler(["npu_fused_infer_attention_score_v2", "npu_fused_infer_attention_score_v2.default"])
class FusedInferAttentionScoreV2Handler(_CapturedAsOut, FusedInferAttentionScoreV2OutHandler):
    """FIA v2, functional: captured as ``.out``."""

    INTO = "_npu_fused_infer_attention_score_v2_into"
    WORKSPACE = "_npu_fused_infer_attention_score_v2_get_max_workspace"
    INFER_OUTPUT = "_npu_fused_infer_attention_score_v2_infer_output"
    OUTPUT_ARGS = ("query_dtype", "value_dtype", "input_layout", "quant_scale_out", "block_table", "num_query_heads",
                   "num_key_value_heads", "return_softmax_lse", "query_rope", "out_dtype")


@register_npu_graph_handler(["_npu_paged_attention.default", "npu_multi_head_latent_attention.out"])
class ContextLensHandler(NpuGraphOpHandler):
    """Operators that write ``out`` and take their kv lengths as a ``context_lens`` tensor: captured as they
    are, updates replace ``context_lens`` (positional). ``npu_multi_head_latent_attention.out`` is not an
    operator of npu_kernels; its entry is torch_npu's, for an operator of that name a user defines."""

    UPDATE_SPECS = {"_npu_paged_attention.default": [("arg", 7, "context_lens")],
                    "npu_multi_head_latent_attention.out": [("arg", 5, "context_lens")]}
